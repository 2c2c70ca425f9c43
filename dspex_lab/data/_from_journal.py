"""A run's examples read back from the journal, filtered and corrected by people's annotations.

The data layer does not import the journal: it reads a journal through the reader calls it is given
(``experiment``, ``dataset_examples``, ``annotation_rows``) and opens a journal file through the plug
the package root fills (:data:`dspex_lab._hooks.journal_opener`).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from dspex_lab import _hooks
from dspex_lab.data._annotation_filter import AnnotationState, parse_where
from dspex_lab.errors import DatasetError

if TYPE_CHECKING:
    from dspex_lab.data._dataset import Dataset

__all__ = ["dataset_from_journal"]


def _reader(journal: Any) -> Any:
    """Return the journal to read: the one given, or the journal file at a path."""
    if isinstance(journal, (str, os.PathLike)):
        if _hooks.journal_opener is None:  # pragma: no cover - the package root always fills it
            raise DatasetError("no journal opener is installed: import dspex_lab, or pass an open journal")
        return _hooks.journal_opener(journal)
    missing = [name for name in ("experiment", "dataset_examples", "annotation_rows") if not hasattr(journal, name)]
    if missing:
        raise TypeError(f"from_journal needs a journal or a journal file's path, got {type(journal).__name__}")
    return journal


def _current_by_example(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Return each example's annotation in force: the latest of its trials' current ones (rows oldest first)."""
    current: dict[str, dict[str, Any]] = {}
    for row in rows:
        current[str(row["example_id"])] = row
    return current


def dataset_from_journal(journal: Any, run_id: str, *, where: str | None = None, name: str | None = None) -> Dataset:
    """Return the examples of run ``run_id`` as a dataset (see :meth:`Dataset.from_journal`)."""
    from dspex_lab.data._dataset import Dataset

    keep = None if where is None else parse_where(where)  # a bad filter fails before the journal is read
    reader = _reader(journal)
    record = reader.experiment(run_id)
    fingerprint = record.get("dataset_fingerprint")
    stored = reader.dataset_examples(fingerprint) if isinstance(fingerprint, str) and fingerprint else []
    if not stored:
        raise DatasetError(
            f"the examples of run {run_id!r} are not in {reader.location} (a dataset is stored with its run "
            "up to 20,000 examples); load the dataset from its source instead"
        )
    annotations = _current_by_example(reader.annotation_rows(run_id, current=True))
    inputs = next((stored_record["inputs"] for _, stored_record in stored if stored_record.get("inputs")), None)
    examples, ids = [], []
    for example_id, stored_record in stored:
        annotation = annotations.get(example_id)
        gold = None if annotation is None else annotation["corrected_gold"]
        state = AnnotationState(
            label=None if annotation is None else annotation["label"],
            annotated=annotation is not None,
            corrected=gold is not None,
        )
        if keep is not None and not keep(state):
            continue
        fields = dict(stored_record["fields"])
        fields.update(gold or {})
        examples.append(fields)
        ids.append(example_id)
    dataset_name = name or record.get("dataset_name") or f"run {run_id}"
    return Dataset(examples, inputs=inputs, name=dataset_name, ids=ids)

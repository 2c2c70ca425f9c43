"""A run's examples read back from the journal, filtered and corrected by people's annotations.

The data layer does not import the journal: it reads a journal through the reader calls it is given
(``experiment``, ``children``, ``dataset_examples``, ``annotation_rows``) and opens a journal file through the plug
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
    missing = [
        name for name in ("experiment", "children", "dataset_examples", "annotation_rows", "hold")
        if not hasattr(journal, name)
    ]  # fmt: skip
    if missing:
        raise TypeError(f"from_journal needs a journal or a journal file's path, got {type(journal).__name__}")
    return journal


def _family(reader: Any, run_id: str, record: dict[str, Any]) -> dict[str, str | None]:
    """Return the run and every experiment nested under it, by id, each with its dataset's fingerprint.

    An evaluation is one experiment. Any other run (an optimization, a DSPy compile ``dx.autolog()``
    journaled) keeps its trials, and so their annotations, in the evaluations nested in it: they are
    read through the journal's parent links, never through the shape of an id.
    """
    family: dict[str, str | None] = {run_id: record.get("dataset_fingerprint")}
    if record.get("kind") == "evaluation":
        return family
    parents = [run_id]
    while parents:
        children = reader.children(parents.pop())
        for child in children:
            family[child.id] = child.dataset_fingerprint
            if child.kind != "evaluation":
                parents.append(child.id)
    return family


def _current_by_example(rows: list[dict[str, Any]], family: dict[str, str | None]) -> dict[Any, dict[str, Any]]:
    """Return each example's annotation in force: the latest current one of its trials in ``family``.

    Keyed by (dataset fingerprint, example id): an example is one of a dataset's, so two datasets of a
    run that use the same id are never mixed up. ``rows`` are oldest first.
    """
    current: dict[Any, dict[str, Any]] = {}
    for row in rows:
        if row["experiment_id"] in family:
            current[(family[row["experiment_id"]], str(row["example_id"]))] = row
    return current


def _stored_examples(reader: Any, run_id: str, family: dict[str, str | None]) -> list[tuple[str, str, dict[str, Any]]]:
    """Return the (fingerprint, example id, stored record) of every dataset of the run, each example once, in order.

    The run's own dataset comes first, then each nested evaluation's in the order they were made.

    Raises:
        DatasetError: no dataset of the run is stored, or two of them hold different examples under one id.
    """
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    stored: list[tuple[str, str, dict[str, Any]]] = []
    for fingerprint in dict.fromkeys(value for value in family.values() if isinstance(value, str) and value):
        for example_id, stored_record in reader.dataset_examples(fingerprint):
            earlier = seen.get(example_id)
            if earlier is None:
                seen[example_id] = (fingerprint, stored_record)
                stored.append((fingerprint, example_id, stored_record))
            elif earlier[1]["fields"] != stored_record["fields"]:
                nested = ", ".join(experiment for experiment, value in family.items() if value == fingerprint)
                raise DatasetError(
                    f"the datasets of run {run_id!r} hold two different examples with id {example_id!r}; "
                    f"read one of its evaluations instead (those on the second dataset: {nested})"
                )
    if not stored:
        raise DatasetError(
            f"the examples of run {run_id!r} are not in {reader.location} (a dataset is stored with its run "
            "up to 20,000 examples); load the dataset from its source instead"
        )
    return stored


def dataset_from_journal(journal: Any, run_id: str, *, where: str | None = None, name: str | None = None) -> Dataset:
    """Return the examples of run ``run_id`` as a dataset (see :meth:`Dataset.from_journal`)."""
    from dspex_lab.data._dataset import Dataset

    keep = None if where is None else parse_where(where)  # a bad filter fails before the journal is read
    reader = _reader(journal)
    with reader.hold():  # one opening of a journal file for the run's records, datasets and annotations
        record = reader.experiment(run_id)
        family = _family(reader, run_id, record)
        stored = _stored_examples(reader, run_id, family)
        rows = reader.annotation_rows(run_id if len(family) == 1 else None, current=True)
    annotations = _current_by_example(rows, family)
    inputs = next((stored_record["inputs"] for _, _, stored_record in stored if stored_record.get("inputs")), None)
    examples, ids = [], []
    for fingerprint, example_id, stored_record in stored:
        annotation = annotations.get((fingerprint, example_id))
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
    # The run's dataset's name when its examples are all there are; a run's several datasets are the run's.
    own = {fingerprint for fingerprint, _, _ in stored} == {record.get("dataset_fingerprint")}
    dataset_name = name or (record.get("dataset_name") if own else None) or f"run {run_id}"
    return Dataset(examples, inputs=inputs, name=dataset_name, ids=ids)

"""``dx.load``: rebuild an evaluation's result from the journal, in another process or on another day."""

from __future__ import annotations

import os
import warnings
from typing import Any

import pandas as pd

from dspex_lab.data import Dataset
from dspex_lab.errors import DspexLabWarning, JournalError
from dspex_lab.evaluation._result import EvaluationResult
from dspex_lab.journal import JournalStore
from dspex_lab.session import journal_store, resolve_experiment

__all__ = ["load"]

# What to use instead of dx.load for the other kinds of experiment a journal holds.
_OTHER_KINDS = {
    "optimization": "read it with dx.OptimizationResult.from_journal(journal, {id!r})",
    "comparison": (
        "a comparison stores only its summary; load its two evaluations (config 'a' and 'b') with dx.load "
        "and call dx.compare on them"
    ),
}


def load(
    experiment_id: str,
    *,
    journal: str | os.PathLike[str] | JournalStore | None = None,
    dataset: Dataset | None = None,
) -> EvaluationResult:
    """Rebuild a finished (or interrupted) evaluation's result from the journal.

    The result has the trials, program spec, dataset manifest, metric, status and spending the run
    recorded, so ``dx.compare(dx.load(a), dx.load(b))`` works on runs from other processes. A traced
    evaluation keeps the journal, so :meth:`EvaluationResult.trace` reads its span trees.

    Args:
        experiment_id: the evaluation's experiment id (``dspex journal list`` shows them), or its name when
            one evaluation has it (see :func:`~dspex_lab.session.resolve_experiment`).
        journal: a journal path or object (default: the current :class:`~dspex_lab.Context`'s journal).
        dataset: the evaluation's dataset, needed only to rebuild clustered statistics of a run clustered
            by a field (``cluster=``) whose examples were not stored in the journal.

    Returns:
        The :class:`EvaluationResult`, its statistics computed from the stored trials.

    Raises:
        JournalError: no such experiment, a name several experiments share (they are listed), an experiment
            that is not an evaluation (an optimization run or a comparison), or a ``dataset`` other than the
            one the evaluation ran on.
    """
    if not isinstance(experiment_id, str) or not experiment_id:
        raise JournalError(f"experiment_id must be a non-empty string, got {experiment_id!r}")
    store = journal_store(journal)
    experiment_id = resolve_experiment(store, experiment_id, kinds=("evaluation",))
    record = store.experiment(experiment_id)
    kind = record.get("kind")
    if kind != "evaluation":
        instead = _OTHER_KINDS.get(str(kind), "dx.load rebuilds evaluations only").format(id=experiment_id)
        raise JournalError(
            f"experiment {experiment_id!r} in {store.location} is an {kind!r}, not an evaluation: {instead}"
        )
    config = record.get("config") or {}
    summary = record.get("summary") or {}
    trials = store.trials(experiment_id).drop(columns=["experiment_id"], errors="ignore")
    traced = bool(config.get("trace"))
    return EvaluationResult(
        experiment_id=experiment_id,
        name=str(record.get("name")),
        status=str(record.get("status")),
        trials=trials.reset_index(drop=True),
        program=record.get("program_spec"),
        dataset=record.get("dataset_manifest"),
        metric=record.get("metric"),
        wall_seconds=summary.get("wall_seconds"),
        confidence=float(summary.get("confidence") or 0.95),
        clusters=_clusters(store, record, config.get("cluster"), dataset),
        status_detail=record.get("status_detail"),
        spending=summary.get("spending"),
        journal=store,
        traced=traced,
        identical_repeats=bool(summary.get("identical_repeats", False)),
    )


def _clusters(
    store: JournalStore, record: dict[str, Any], cluster: str | None, dataset: Dataset | None
) -> pd.Series | None:
    """Rebuild the cluster key of every example: from the given dataset, else from the stored examples."""
    if cluster is None:
        return None
    fingerprint = record.get("dataset_fingerprint")
    if dataset is not None:
        if dataset.fingerprint != fingerprint:
            raise JournalError(
                f"experiment {record['id']!r} ran on dataset {fingerprint!s:.12}, the dataset given is "
                f"{dataset.fingerprint:.12}: pass the dataset it was evaluated on"
            )
        pairs = [
            (example_id, example.toDict()) for example_id, example in zip(dataset.example_ids, dataset, strict=True)
        ]
    else:
        pairs = [(example_id, stored.get("fields") or {}) for example_id, stored in store.dataset_examples(fingerprint)]
    if not pairs:
        warnings.warn(
            f"experiment {record['id']!r} was clustered by {cluster!r}, but its examples are not stored in "
            f"{store.location}: the standard error and interval of this result are NOT clustered; pass the dataset "
            "(dx.load(..., dataset=...)) to rebuild the clustered statistics",
            DspexLabWarning,
            stacklevel=3,
        )
        return None
    missing = [example_id for example_id, fields in pairs if cluster not in fields]
    if missing:
        raise JournalError(
            f"experiment {record['id']!r} was clustered by {cluster!r}, but {len(missing)} of its examples have "
            f"no such field (first: {missing[0]})"
        )
    return pd.Series(
        [str(fields[cluster]) for _, fields in pairs], index=[example_id for example_id, _ in pairs], name=cluster
    )

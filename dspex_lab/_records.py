"""The stored records, defined once: the trial record (its fields, stored types and id) and the experiment record.

The engine builds :class:`~dspex_lab.engine.TrialResult` values with exactly these
fields; the journal derives its Arrow schema, the trials table's DDL and its insert
statement from :data:`TRIAL_FIELDS`; exports and frames take their column order from
:data:`TRIAL_COLUMNS`. Change a field here and every one of them follows (a test checks
that a journal migrated from an older version has the same table as a new one).

:class:`ExperimentRecord` is what is known about an experiment when it starts: every layer that starts
one builds it, and every journal stores it (the journal service carries it by name, registered in
``journal/_wire.py``).

This module imports nothing from the rest of dspex_lab, so every layer may use it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TRIAL_COLUMNS", "TRIAL_FIELDS", "ExperimentRecord", "TrialField", "trial_id"]


@dataclass(frozen=True)
class TrialField:
    """One field of the trial record.

    Args:
        name: the attribute of ``TrialResult`` (``None`` for a column the store adds).
        column: the trials table's column.
        sql: the column's DuckDB type.
        arrow: the Arrow type's name (``pyarrow.<arrow>()``) of the in-memory row.
        required: the column is NOT NULL.
    """

    name: str | None
    column: str
    sql: str
    arrow: str
    required: bool = False


# In the trials table's order. ``experiment_id`` is added by the store from the run; every other
# column is a TrialResult attribute (``trial_id`` computed by :func:`trial_id`).
TRIAL_FIELDS: tuple[TrialField, ...] = (
    TrialField(None, "experiment_id", "VARCHAR", "string", required=True),
    TrialField("trial_id", "trial_id", "VARCHAR", "string", required=True),
    TrialField("example_id", "example_id", "VARCHAR", "string", required=True),
    TrialField("index", "example_index", "BIGINT", "int64"),
    TrialField("repeat", "repeat", "INTEGER", "int32", required=True),
    TrialField("status", "status", "VARCHAR", "string", required=True),
    TrialField("score", "score", "DOUBLE", "float64"),
    TrialField("prediction", "prediction", "JSON", "string"),
    TrialField("error_type", "error_type", "VARCHAR", "string"),
    TrialField("error_message", "error_message", "VARCHAR", "string"),
    TrialField("error_stage", "error_stage", "VARCHAR", "string"),
    TrialField("traceback", "traceback", "VARCHAR", "string"),
    TrialField("latency", "latency", "DOUBLE", "float64"),
    TrialField("input_tokens", "input_tokens", "BIGINT", "int64"),
    TrialField("output_tokens", "output_tokens", "BIGINT", "int64"),
    TrialField("cost", "cost", "DOUBLE", "float64"),
    TrialField("lm_calls", "lm_calls", "INTEGER", "int32"),
    TrialField("attempts", "attempts", "INTEGER", "int32"),
    TrialField("started_at", "started_at", "TIMESTAMP", "float64"),
    TrialField("finished_at", "finished_at", "TIMESTAMP", "float64"),
    # One entry per failed attempt that was retried: {"attempt", "error_type", "error_message", "wait"}.
    TrialField("retries", "retries", "JSON", "string"),
    # Models whose calls in this trial had no known price (their cost is not in ``cost``).
    TrialField("unpriced_models", "unpriced_models", "VARCHAR", "string"),
    # What the metric said about the prediction, beyond its score (a feedback metric's text).
    TrialField("feedback", "feedback", "VARCHAR", "string"),
    # The part of ``lm_calls`` and ``cost`` the metric spent (a judge's LM calls).
    TrialField("metric_lm_calls", "metric_lm_calls", "INTEGER", "int32"),
    TrialField("metric_cost", "metric_cost", "DOUBLE", "float64"),
)

TRIAL_COLUMNS: tuple[str, ...] = tuple(item.column for item in TRIAL_FIELDS)


def trial_id(example_id: str, repeat: int) -> str:
    """Return the id of the trial of ``example_id``'s repeat ``repeat`` (stable across resumes).

    Examples:
        >>> trial_id("arith-0-17", 2)
        'arith-0-17/r2'
    """
    return f"{example_id}/r{repeat}"


@dataclass(frozen=True)
class ExperimentRecord:
    """What is known about an experiment when it starts.

    A nested run (an optimization's candidate evaluations) names the experiment it belongs to in
    ``parent_id`` and what it is there for in ``role`` (one of
    :data:`~dspex_lab.journal.EXPERIMENT_ROLES`); a top-level experiment has neither. Readers
    follow these fields, never the shape of an id.
    """

    kind: str
    name: str
    program_name: str | None = None
    program_fingerprint: str | None = None
    program_spec: dict[str, Any] | None = None
    dataset_name: str | None = None
    dataset_fingerprint: str | None = None
    dataset_manifest: dict[str, Any] | None = None
    metric: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    n_planned: int | None = None
    examples: tuple[tuple[str, dict[str, Any]], ...] = ()
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    parent_id: str | None = None
    role: str | None = None

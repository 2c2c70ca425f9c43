"""The journal's tables, its schema version, and the migrations between versions.

Records are append-only and flat: experiments (one row per run, updated in
place only for status and summary; a run nested in another, such as an
optimization's candidate evaluations, names it in ``parent_id`` and says what it
is for in ``role``), trials (one row per finished trial), annotations (a person's verdict on a trial:
a label, a note, a corrected gold; a later one supersedes, every one is kept).
Trees and most aggregates are computed when read; each experiment's trial
counts and score sums (``experiment_stats``) are kept up to date by the writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cache
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import duckdb

from dspex_lab._records import TRIAL_COLUMNS, TRIAL_FIELDS

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    ROW_SCHEMA: pa.Schema
    SPAN_SCHEMA: pa.Schema

__all__ = [
    "ROW_SCHEMA",
    "SCHEMA_VERSION",
    "SPAN_SCHEMA",
    "TRIAL_COLUMNS",
    "current_version",
    "ensure_schema",
    "row_table",
    "trials_ddl",
    "trials_frame",
]

SCHEMA_VERSION = 8


@cache
def _arrow_schemas() -> dict[str, pa.Schema]:
    # pyarrow (and pandas) load on the first write or frame, not for reading a journal: `dspex journal
    # list` stays fast (bench/bench_startup.py). ROW_SCHEMA and SPAN_SCHEMA are served by __getattr__.
    import pyarrow as pa

    return {
        # The in-memory trial row (``TrialResult.to_row()``), typed from the one record definition, so an
        # all-None column still has a type.
        "ROW_SCHEMA": pa.schema(
            [(item.name, getattr(pa, item.arrow)()) for item in TRIAL_FIELDS if item.name is not None]
        ),
        # The columns of Span.to_row() (dspex_lab.trace), in the spans table's order after experiment_id.
        "SPAN_SCHEMA": pa.schema(
            [
                ("trace_id", pa.string()),
                ("span_id", pa.string()),
                ("parent_id", pa.string()),
                ("kind", pa.string()),
                ("name", pa.string()),
                ("start_ns", pa.int64()),
                ("end_ns", pa.int64()),
                ("status", pa.string()),
                ("attributes", pa.string()),
                ("error", pa.string()),
            ]
        ),
    }


def __getattr__(name: str) -> Any:
    if name in ("ROW_SCHEMA", "SPAN_SCHEMA"):
        return _arrow_schemas()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def trials_ddl() -> str:
    """Return the CREATE TABLE statement of the trials table, derived from the trial record."""
    columns = ",\n".join(f"    {item.column} {item.sql}{' NOT NULL' if item.required else ''}" for item in TRIAL_FIELDS)
    return f"CREATE TABLE IF NOT EXISTS trials (\n{columns},\n    PRIMARY KEY (experiment_id, trial_id)\n);"


def row_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Return trial rows (``TrialResult.to_row()`` dicts) as an Arrow table with :data:`ROW_SCHEMA`.

    Built a column at a time (one ``itemgetter`` pass per field): the writer's thread converts every
    trial of a run, and ``Table.from_pylist`` takes twice as long. A row without some field gives a
    missing value there, as ``from_pylist`` does.
    """
    import pyarrow as pa

    row_schema = _arrow_schemas()["ROW_SCHEMA"]
    columns = []
    for field in row_schema:
        try:
            values = list(map(itemgetter(field.name), rows))
        except KeyError:
            values = [row.get(field.name) for row in rows]
        columns.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(columns, schema=row_schema)


def span_table(spans: Sequence[Any]) -> pa.Table:
    """Return spans (``dspex_lab.trace.Span`` objects) as an Arrow table with :data:`SPAN_SCHEMA`.

    Built a column at a time from the spans' fields: the writer's thread does this for every span of a
    traced run, and going through ``Span.to_row`` dicts and ``Table.from_pylist`` costs three times as much.
    """
    import pyarrow as pa

    span_schema = _arrow_schemas()["SPAN_SCHEMA"]
    columns = [
        pa.array([getattr(span, name) for span in spans], type=field.type)
        for name, field in zip(span_schema.names, span_schema, strict=True)
        if name != "attributes"
    ]
    columns.insert(span_schema.names.index("attributes"), pa.array([span.attributes_text for span in spans]))
    return pa.Table.from_arrays(columns, schema=span_schema)


def trials_frame(rows: Sequence[Mapping[str, Any]], *, experiment_id: str | None) -> pd.DataFrame:
    """Return trial rows (``TrialResult.to_row()`` dicts) as a frame in the trials table's column order.

    Without an ``experiment_id`` (an in-memory run) that column is left out.
    """
    import pandas as pd
    import pyarrow as pa

    columns = [column for column in TRIAL_COLUMNS if experiment_id is not None or column != "experiment_id"]
    if not rows:
        return pd.DataFrame(columns=columns)
    # Through Arrow with a fixed schema: several times faster than pandas on dicts, and typed.
    renames = {item.name: item.column for item in TRIAL_FIELDS if item.name is not None and item.name != item.column}
    frame = pa.Table.from_pylist(list(rows), schema=_arrow_schemas()["ROW_SCHEMA"]).to_pandas().rename(columns=renames)
    if experiment_id is not None:
        frame["experiment_id"] = experiment_id
    for item in TRIAL_FIELDS:
        if item.sql == "TIMESTAMP":
            frame[item.column] = pd.to_datetime(frame[item.column], unit="s")
    return frame[columns]


# Migrations are history: each brings a journal written by an older dspex_lab one version up. A new
# journal is created at the current version directly (the trials table from the record definition).
_VERSION_1 = """
CREATE TABLE IF NOT EXISTS dspex_meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE IF NOT EXISTS experiments (
    id VARCHAR PRIMARY KEY,
    kind VARCHAR NOT NULL,
    name VARCHAR,
    status VARCHAR NOT NULL,
    status_detail VARCHAR,
    program_name VARCHAR,
    program_fingerprint VARCHAR,
    program_spec JSON,
    dataset_name VARCHAR,
    dataset_fingerprint VARCHAR,
    dataset_manifest JSON,
    metric VARCHAR,
    config JSON,
    environment JSON,
    summary JSON,
    n_planned BIGINT,
    host VARCHAR,
    pid BIGINT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    heartbeat_at TIMESTAMP,
    finished_at TIMESTAMP
);
"""

# Version 2: the examples of small datasets (so an experiment can be exported and re-run from
# the journal alone) and pre-registered hypotheses.
_VERSION_2 = """
CREATE TABLE IF NOT EXISTS dataset_examples (
    dataset_fingerprint VARCHAR NOT NULL,
    position BIGINT NOT NULL,
    example_id VARCHAR NOT NULL,
    record JSON NOT NULL,
    PRIMARY KEY (dataset_fingerprint, position)
);
CREATE TABLE IF NOT EXISTS hypotheses (
    id VARCHAR PRIMARY KEY,
    statement VARCHAR NOT NULL,
    metric VARCHAR,
    baseline VARCHAR NOT NULL,
    treatment VARCHAR NOT NULL,
    direction VARCHAR NOT NULL,
    min_effect DOUBLE NOT NULL,
    alpha DOUBLE NOT NULL,
    status VARCHAR NOT NULL,
    verdict JSON,
    registered_at TIMESTAMP NOT NULL,
    decided_at TIMESTAMP
);
"""

# Version 3: one row per span of a traced trial (the tree is built when read).
_VERSION_3 = """
CREATE TABLE IF NOT EXISTS spans (
    experiment_id VARCHAR NOT NULL,
    trace_id VARCHAR NOT NULL,
    span_id VARCHAR NOT NULL,
    parent_id VARCHAR,
    kind VARCHAR NOT NULL,
    name VARCHAR,
    start_ns BIGINT,
    end_ns BIGINT,
    status VARCHAR,
    attributes JSON,
    error VARCHAR,
    PRIMARY KEY (experiment_id, trace_id, span_id)
);
"""

# Version 4: every retried attempt's cause, and the models a trial could not price.
_VERSION_4 = """
ALTER TABLE trials ADD COLUMN IF NOT EXISTS retries JSON;
ALTER TABLE trials ADD COLUMN IF NOT EXISTS unpriced_models VARCHAR;
"""

# Version 5: optimization runs (the run itself is an experiment of kind 'optimization'): every
# candidate with its parent and why it exists, and every step's decision with its numbers.
_VERSION_5 = """
CREATE TABLE IF NOT EXISTS optimization_candidates (
    run_id VARCHAR NOT NULL,
    candidate_id VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    parent_id VARCHAR,
    strategy VARCHAR NOT NULL,
    rationale VARCHAR,
    "values" JSON NOT NULL,
    program_spec JSON NOT NULL,
    fingerprint VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (run_id, candidate_id)
);
CREATE TABLE IF NOT EXISTS optimization_steps (
    run_id VARCHAR NOT NULL,
    step INTEGER NOT NULL,
    status VARCHAR NOT NULL,
    incumbent_id VARCHAR NOT NULL,
    accepted_id VARCHAR,
    minibatch JSON,
    screening JSON,
    evaluations JSON,
    best_mean DOUBLE,
    best_ci_low DOUBLE,
    best_ci_high DOUBLE,
    lm_calls BIGINT,
    tokens BIGINT,
    cost DOUBLE,
    detail VARCHAR,
    started_at TIMESTAMP NOT NULL,
    finished_at TIMESTAMP,
    PRIMARY KEY (run_id, step)
);
"""

# Version 6: running totals per experiment, kept by every write of trials in the same transaction, so
# the experiment list and the leaderboard read one row per experiment instead of scanning the trials.
# ``n_scored``/``score_sum`` cover every scored trial (the listing's mean); the ``ok_`` columns cover
# the scored ``ok`` trials (the leaderboard's mean and interval, from the sum of squares).
_STATS_DDL = """
CREATE TABLE IF NOT EXISTS experiment_stats (
    experiment_id VARCHAR PRIMARY KEY,
    n_trials BIGINT NOT NULL,
    n_errors BIGINT NOT NULL,
    n_scored BIGINT NOT NULL,
    score_sum DOUBLE NOT NULL,
    ok_n_scored BIGINT NOT NULL,
    ok_score_sum DOUBLE NOT NULL,
    ok_score_sum_squares DOUBLE NOT NULL
);
"""

# The totals of some trials per experiment: ``{source}`` has the trials table's status and score columns.
STATS_TOTALS = """
SELECT {experiment}, count(*), count(*) FILTER (status = 'error'), count(score), coalesce(sum(score), 0),
       count(score) FILTER (status = 'ok'), coalesce(sum(score) FILTER (status = 'ok'), 0),
       coalesce(sum(score * score) FILTER (status = 'ok'), 0)
FROM {source}"""

_VERSION_6 = _STATS_DDL + (
    "INSERT OR REPLACE INTO experiment_stats "
    + STATS_TOTALS.format(experiment="experiment_id", source="trials")
    + " GROUP BY experiment_id;"
)

# Version 7: runs nest through a real link: ``parent_id`` is the experiment a run belongs to (an
# optimization's candidate evaluations are its children) and ``role`` what it is there for (see
# dspex_lab.journal.EXPERIMENT_ROLES). A new journal adds the same columns the same way, so a migrated
# journal and a new one have the same columns in the same order.
_VERSION_7 = """
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS parent_id VARCHAR;
ALTER TABLE experiments ADD COLUMN IF NOT EXISTS role VARCHAR;
"""


def _role_from_old_id(rest: str) -> str | None:
    """Return the role of a child experiment from its id after ``<run id>/``, as versions up to 6 wrote it.

    Versions up to 6 named an optimization's evaluations ``<run>/<candidate>/val|screen|confirm``,
    ``<run>/s<step>/explore<n>`` (SIMBA-C's exploration) and ``<run>/compile[<k>]/e<n>`` (the
    configurations DSPy scored during a compile). This migration is the one place that reads that
    format: from version 7 on, the relation is stored and nothing parses an id.
    """
    parts = rest.split("/")
    if len(parts) != 2:
        return None
    first, second = parts
    if second == "val":
        return "baseline" if first == "c0" else "candidate-validation"
    if second == "screen":
        return "candidate-screen"
    if second == "confirm":
        return "confirmation"
    if first.startswith("s") and second.startswith("explore"):
        return "exploration"
    if first.startswith("compile") and second.startswith("e"):
        return "compile"
    return None


def _migrate_to_7(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute(_VERSION_7)
    identities = dict(connection.execute("SELECT id, kind FROM experiments").fetchall())
    links = []
    for experiment_id in identities:
        parent, separator, rest = experiment_id.partition("/")
        if separator and identities.get(parent) == "optimization":
            links.append([parent, _role_from_old_id(rest), experiment_id])
    if links:
        connection.executemany("UPDATE experiments SET parent_id = ?, role = ? WHERE id = ?", links)


# Version 8: what a feedback metric said about each trial and what the metric spent (a judge's LM
# calls), and people's annotations of trials. An annotation is never updated: a later one of the same
# trial supersedes it in the current views (``created_at``, then ``seq``, decides), and the history
# stays. ``example_id`` is copied from the trial so a dataset can be filtered by annotations without
# reading trial ids; ``corrected_gold`` is the example's gold fields as the annotator says they should
# be (a JSON object).
_ANNOTATIONS_DDL = """
CREATE SEQUENCE IF NOT EXISTS annotation_seq;
CREATE TABLE IF NOT EXISTS annotations (
    id VARCHAR PRIMARY KEY,
    seq BIGINT NOT NULL DEFAULT nextval('annotation_seq'),
    experiment_id VARCHAR NOT NULL,
    trial_id VARCHAR NOT NULL,
    example_id VARCHAR NOT NULL,
    label VARCHAR,
    note VARCHAR,
    corrected_gold JSON,
    author VARCHAR NOT NULL,
    created_at TIMESTAMP NOT NULL
);
"""

_VERSION_8 = (
    "ALTER TABLE trials ADD COLUMN IF NOT EXISTS feedback VARCHAR;"
    "ALTER TABLE trials ADD COLUMN IF NOT EXISTS metric_lm_calls INTEGER;"
    "ALTER TABLE trials ADD COLUMN IF NOT EXISTS metric_cost DOUBLE;" + _ANNOTATIONS_DDL
)

# version -> statements that bring a journal from (version - 1) to version. Version 1 is never a
# migration target: a file without journal tables is created at the current version (_create).
MIGRATIONS: dict[int, Callable[[duckdb.DuckDBPyConnection], None]] = {
    2: lambda connection: connection.execute(_VERSION_2),
    3: lambda connection: connection.execute(_VERSION_3),
    4: lambda connection: connection.execute(_VERSION_4),
    5: lambda connection: connection.execute(_VERSION_5),
    6: lambda connection: connection.execute(_VERSION_6),
    7: _migrate_to_7,
    8: lambda connection: connection.execute(_VERSION_8),
}


def _create(connection: duckdb.DuckDBPyConnection) -> None:
    connection.execute(_VERSION_1)
    connection.execute(_VERSION_7)
    connection.execute(trials_ddl())
    connection.execute(_VERSION_2)
    connection.execute(_VERSION_3)
    connection.execute(_VERSION_5)
    connection.execute(_STATS_DDL)
    connection.execute(_ANNOTATIONS_DDL)


def current_version(connection: duckdb.DuckDBPyConnection) -> int:
    """Return the schema version a journal was written with (0 for a file with no journal tables)."""
    tables = {row[0] for row in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "dspex_meta" not in tables:
        return 0
    rows = connection.execute("SELECT value FROM dspex_meta WHERE key = 'schema_version'").fetchall()
    return int(rows[0][0]) if rows else 0


def ensure_schema(connection: duckdb.DuckDBPyConnection) -> int:
    """Create or migrate the schema to :data:`SCHEMA_VERSION`; return the version found before.

    Raises:
        RuntimeError: the journal was written by a newer dspex_lab.
    """
    found = current_version(connection)
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"journal schema version {found} is newer than this dspex_lab supports ({SCHEMA_VERSION}); "
            "upgrade dspex_lab"
        )
    if found == SCHEMA_VERSION:
        return found
    connection.execute("BEGIN TRANSACTION")
    try:
        if found == 0:
            _create(connection)
        else:
            for version in range(found + 1, SCHEMA_VERSION + 1):
                MIGRATIONS[version](connection)
        connection.execute("INSERT OR REPLACE INTO dspex_meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        connection.execute("COMMIT")
    except Exception:
        connection.execute("ROLLBACK")
        raise
    return found

"""The views every reader shares: the leaderboard, score intervals, trial pages, paired scores, and ``sql()``.

The dashboard's queries return DataFrames (one read each); ``score_intervals`` is the one interval
rule every view shows. ``sql()`` is the user's read-only escape hatch: one query statement, on a
connection the store makes read-only (``_read_only``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import duckdb

from dspex_lab.errors import JournalError
from dspex_lab.journal._base import DuckDBStore, _check_bounds, _check_limit, _is_dead

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["LEADERBOARD_COLUMNS", "TRIAL_SORTS", "ViewQueries"]

LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "experiment_id", "name", "kind", "status", "created_at", "program", "model",
    "n_trials", "n_errors", "mean", "ci_low", "ci_high", "ci_method", "parent_id", "role", "n_children",
)  # fmt: skip
"""The columns of :meth:`DuckDBJournal.leaderboard`, in order."""


TRIAL_SORTS: tuple[str, ...] = (
    "example_id", "example_index", "repeat", "trial_id", "status", "score", "latency", "input_tokens",
    "output_tokens", "cost", "lm_calls", "attempts", "started_at", "finished_at", "error_type",
)  # fmt: skip
"""The trial columns :meth:`DuckDBJournal.trial_page` may sort by."""


# Per experiment (from the totals the writes keep, never a scan of the trials): counts over every trial,
# the count of scored ok trials, and how many experiments are nested in it; ``p`` is the experiment it is
# nested in (for the order that lists each nested experiment after it).
_LEADERBOARD_SQL = """
SELECT e.id AS experiment_id, e.name, e.kind, e.status, e.created_at, e.program_name AS program,
       json_extract_string(e.config, '$.lm') AS model,
       coalesce(t.n_trials, 0) AS n_trials, coalesce(t.n_errors, 0) AS n_errors,
       coalesce(t.ok_n_scored, 0) AS n_scored, e.summary, e.host, e.pid, e.heartbeat_at, e.parent_id, e.role,
       coalesce(c.n_children, 0) AS n_children
FROM experiments e LEFT JOIN experiment_stats t ON t.experiment_id = e.id
LEFT JOIN experiments p ON p.id = e.parent_id
LEFT JOIN (SELECT parent_id, count(*) AS n_children FROM experiments WHERE parent_id IS NOT NULL GROUP BY parent_id) c
    ON c.parent_id = e.id
WHERE true"""


# What :meth:`DuckDBJournal.score_intervals` needs per experiment (the totals, never a scan of the trials).
_INTERVAL_SOURCES_SQL = """
SELECT e.id AS experiment_id, e.kind, e.status, e.summary, coalesce(t.ok_n_scored, 0) AS n_scored
FROM experiments e LEFT JOIN experiment_stats t ON t.experiment_id = e.id"""


# Per experiment given, the totals of its per-example mean scores (repeats averaged: they are not
# independent): how many, their mean and sample variance, and whether every one is 0 or 1. Aggregated
# here rather than read: fetching a million trials' 200,000 per-example means into Python made the
# leaderboard 300-470 ms (bench/README.md, bench_journal.py).
_EXAMPLE_TOTALS_SQL = """
WITH examples AS (
    SELECT experiment_id, avg(score) AS score FROM trials
    WHERE list_contains(?, experiment_id) AND status = 'ok' AND score IS NOT NULL
    GROUP BY experiment_id, example_id)
SELECT experiment_id, count(*) AS n, avg(score) AS mean, coalesce(var_samp(score), 0) AS variance,
       bool_and(score = 0 OR score = 1) AS binary
FROM examples GROUP BY experiment_id"""


# The compare page's opening pair: the newest evaluation (the researcher's own before an optimization's
# candidates) and, of the others, the one sharing the most scored examples with it (the researcher's own
# first among those sharing any; then the newest). Each side counts examples as paired_scores pairs them.
_COMPARABLE_PAIR_SQL = """
WITH evaluations AS (
    SELECT id, created_at, parent_id IS NOT NULL AS nested FROM experiments WHERE kind = 'evaluation'),
anchor AS (SELECT id FROM evaluations ORDER BY nested, created_at DESC, id DESC LIMIT 1),
anchor_examples AS (
    SELECT DISTINCT example_id FROM trials
    WHERE experiment_id = (SELECT id FROM anchor) AND status = 'ok' AND score IS NOT NULL),
shared AS (
    SELECT t.experiment_id, count(DISTINCT t.example_id) AS n
    FROM trials t JOIN anchor_examples a ON a.example_id = t.example_id
    WHERE t.status = 'ok' AND t.score IS NOT NULL AND t.experiment_id <> (SELECT id FROM anchor)
    GROUP BY t.experiment_id)
SELECT e.id AS baseline, (SELECT id FROM anchor) AS newest, coalesce(s.n, 0) AS shared
FROM evaluations e LEFT JOIN shared s ON s.experiment_id = e.id
WHERE e.id <> (SELECT id FROM anchor)
ORDER BY coalesce(s.n, 0) > 0 DESC, e.nested, coalesce(s.n, 0) DESC, e.created_at DESC, e.id DESC
LIMIT 1"""


class ViewQueries(DuckDBStore):
    """The dashboard's DataFrame queries, the interval every view shows, and the read-only ``sql()``."""

    def leaderboard(
        self,
        *,
        name: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        limit: int = 500,
        children: bool = False,
        parent: str | None = None,
    ) -> pd.DataFrame:
        """Return one row per experiment, newest first (then by id), with its trial counts, mean and interval.

        The mean and interval are the ones every view shows (see :meth:`score_intervals`): an
        evaluation that ended shows the interval its result reported; any other experiment the
        interval of :func:`dspex_lab.stats.score_interval` (Wilson for 0/1 scores, t otherwise)
        over its per-example mean scores.

        Runs nest: an optimization's candidate evaluations are its children (``parent_id``), left out
        by default so they cannot fill the board; each row counts its own in ``n_children``. With
        ``children`` they are listed too, each right after the experiment it is nested in (oldest
        first), so the board reads as a tree whose top level is newest first.

        Args:
            name: only experiments whose name contains this text (case-sensitive).
            kind: only experiments of this kind (``evaluation``, ``comparison``, ``optimization``...).
            status: only experiments with this status; a running experiment whose process is gone
                counts as ``interrupted``.
            limit: at most this many rows.
            children: include nested experiments (an optimization's candidate evaluations, which
                would otherwise fill the board); by default only top-level experiments are listed.
            parent: only the experiments nested in this one (oldest first); implies ``children``.

        Returns:
            Columns ``experiment_id``, ``name``, ``kind``, ``status``, ``created_at``, ``program``,
            ``model``, ``n_trials``, ``n_errors``, ``mean``, ``ci_low``, ``ci_high``, ``ci_method``,
            ``parent_id``, ``role``, ``n_children``. An absent journal gives no rows.

        Raises:
            JournalError: a negative or non-integer limit, a filter that is not text, or a journal that
                cannot be read.
        """
        import pandas as pd

        _check_leaderboard_filters(name=name, kind=kind, status=status, limit=limit, children=children, parent=parent)
        if not self._exists():
            return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
        query, parameters = _leaderboard_query(
            name=name, kind=kind, status=status, limit=limit, children=children, parent=parent
        )
        frame = self._frame(query, parameters)
        dead = [
            row.status == "running" and _is_dead(row.host, row.pid, row.heartbeat_at)
            for row in frame[["status", "host", "pid", "heartbeat_at"]].itertuples(index=False)
        ]
        frame.loc[dead, "status"] = "interrupted"
        if status is not None:
            frame = frame[frame["status"] == status].head(limit)
        frame = frame.reset_index(drop=True)
        intervals = self._intervals(frame.to_dict("records"))
        for column, position in (("mean", 0), ("ci_low", 1), ("ci_high", 2), ("ci_method", 3)):
            frame[column] = [intervals[experiment][position] for experiment in frame["experiment_id"]]
        for column in ("mean", "ci_low", "ci_high"):
            frame[column] = frame[column].astype(float)
        frame["n_children"] = frame["n_children"].astype("int64")
        return frame[list(LEADERBOARD_COLUMNS)].reset_index(drop=True)

    def score_intervals(self) -> dict[str, tuple[float, float, float, str]]:
        """Return ``(mean, ci_low, ci_high, ci_method)`` per experiment id: the numbers every view shows.

        One rule for every view (result, progress, browser, dashboard, ``dspex journal list``): an
        evaluation that ended shows the mean and interval its result reported (stored in its summary:
        repeats averaged per example, clustered when asked); any other experiment with scores gets
        :func:`dspex_lab.stats.score_interval` over its per-example mean scores, built from their
        count, mean and variance aggregated in the database (never read one by one; see
        :func:`dspex_lab.stats.score_interval_from_totals`). Without a score: NaN, NaN, NaN and
        ``""``. Reading a journal whose experiments all have stored intervals loads neither pandas nor
        scipy.
        """
        if not self._exists():
            return {}
        return self._intervals(self._rows(_INTERVAL_SOURCES_SQL))

    def _intervals(self, rows: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float, float, str]]:
        """Return the interval of each row (``experiment_id``, ``kind``, ``status``, ``summary``, ``n_scored``)."""
        intervals: dict[str, tuple[float, float, float, str]] = {}
        computed = []
        for row in rows:
            experiment = str(row["experiment_id"])
            stored = _stored_interval(row)
            if stored is not None:
                intervals[experiment] = stored
            elif (row.get("n_scored") or 0) > 0:
                computed.append(experiment)
            else:
                intervals[experiment] = (math.nan, math.nan, math.nan, "")
        if computed:
            # Only when an experiment needs it: scipy is slow to load.
            from dspex_lab.stats import score_interval_from_totals

            for experiment in computed:
                intervals[experiment] = (math.nan, math.nan, math.nan, "")
            for row in self._rows(_EXAMPLE_TOTALS_SQL, [computed]):
                n, mean = int(row["n"]), float(row["mean"])
                interval = score_interval_from_totals(n, mean, float(row["variance"]), binary=bool(row["binary"]))
                intervals[row["experiment_id"]] = (mean, interval.low, interval.high, interval.method)
        return intervals

    def trial_page(
        self,
        experiment_id: str,
        *,
        status: str | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        sort: str = "example_id",
        descending: bool = False,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[pd.DataFrame, int]:
        """Return one page of an experiment's trials, filtered and sorted, and how many trials match in all.

        Ties in ``sort`` are broken by example order, then repeat and trial id, so pages never overlap.

        Args:
            experiment_id: the experiment.
            status: only trials with this status (``ok`` or ``error``).
            min_score: only trials scored at least this (unscored trials are left out).
            max_score: only trials scored at most this (unscored trials are left out).
            sort: the column to sort by, one of :data:`TRIAL_SORTS`; a missing value sorts last.
            descending: sort from the largest value down.
            limit: at most this many rows.
            offset: skip this many matching rows first.

        Returns:
            The page (every trial column, in the trials table's order) and the number of matching trials.

        Raises:
            JournalError: a sort column that is not allowed (the message names those that are), a bad limit,
                offset or score bound, or a journal that cannot be read.
        """
        if sort not in TRIAL_SORTS:
            raise JournalError(f"trial_page(sort={sort!r}) is not allowed; sort by one of {', '.join(TRIAL_SORTS)}")
        _check_limit(limit, "limit")
        _check_limit(offset, "offset")
        _check_bounds(min_score, max_score)
        where = "experiment_id = ?"
        parameters: list[Any] = [experiment_id]
        for clause, value in (("status = ?", status), ("score >= ?", min_score), ("score <= ?", max_score)):
            if value is not None:
                where += f" AND {clause}"
                parameters.append(value)
        direction = "DESC" if descending else "ASC"
        order = f'"{sort}" {direction} NULLS LAST, example_index, repeat, trial_id'
        # One statement, so page and total come from one snapshot. The page is found by sorting only the sort
        # columns and row ids, then its rows are fetched whole: sorting every column of 100,000 trials to keep
        # 100 cost a third more at a million trials.
        frame = self._frame(
            f"""SELECT *, (SELECT count(*) FROM trials WHERE {where}) AS matching_total FROM trials
                WHERE rowid IN (SELECT rowid FROM trials WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?)
                  AND {where}
                ORDER BY {order}""",
            [*parameters, *parameters, limit, offset, *parameters],
        )
        if frame.empty:
            total = int(self._rows(f"SELECT count(*) AS n FROM trials WHERE {where}", parameters)[0]["n"])
        else:
            total = int(frame["matching_total"].iloc[0])
        return frame.drop(columns="matching_total").reset_index(drop=True), total

    def paired_scores(self, a: str, b: str) -> pd.DataFrame:
        """Return the per-example scores of two experiments side by side: the pairs a comparison tests.

        Each score is the mean over the example's ``ok`` repeats with a score; an example is kept only if
        both experiments have such a score for it. Rows are in the first experiment's example order.

        Returns:
            Columns ``example_id``, ``score_a``, ``score_b``.
        """
        return self._frame(
            # One aggregate per experiment (each a range of the table), not one over both split by a self-join:
            # a third less time at a million trials.
            """WITH x AS (
                   SELECT example_id, avg(score) AS score, min(example_index) AS example_index FROM trials
                   WHERE experiment_id = ? AND status = 'ok' AND score IS NOT NULL GROUP BY example_id),
               y AS (
                   SELECT example_id, avg(score) AS score FROM trials
                   WHERE experiment_id = ? AND status = 'ok' AND score IS NOT NULL GROUP BY example_id)
               SELECT x.example_id, x.score AS score_a, y.score AS score_b
               FROM x JOIN y ON x.example_id = y.example_id
               ORDER BY x.example_index, x.example_id""",
            [a, b],
        )

    def comparable_pair(self) -> tuple[str, str, int] | None:
        """Return two evaluations worth comparing: ``(baseline, newest, examples in common)``, or None.

        ``newest`` is the newest evaluation (a top-level one before any nested in an optimization);
        ``baseline`` is the other evaluation with the most examples scored in both (counted as
        :meth:`paired_scores` pairs them), a top-level one before a nested one, the newer on a tie. When
        none shares an example, ``baseline`` is the newest other evaluation and the count is 0. None
        with fewer than two evaluations. One query, so the compare page never opens on an empty plot
        when a pair with examples in common exists.
        """
        if not self._exists():
            return None
        rows = self._rows(_COMPARABLE_PAIR_SQL)
        if not rows:
            return None
        return str(rows[0]["baseline"]), str(rows[0]["newest"]), int(rows[0]["shared"])

    def sql(self, query: str, parameters: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query over the journal's tables and return a DataFrame.

        One query statement (``SELECT``, ``WITH``, ``FROM``, ``VALUES``, ``DESCRIBE``,
        ``SHOW``, ``SUMMARIZE``, ``EXPLAIN`` of one of those) runs on a connection that can
        neither change the journal nor read local files, attach databases, install or load
        extensions, or change settings: a file journal opens one of its own, read-only, with
        external access disabled and its configuration locked (a run in this process that
        holds the file lets go of it for the query and reopens it for its next write); an
        in-memory journal runs it in a transaction it rolls back, on a database whose
        external access and configuration were locked when it was made.

        Raises:
            JournalError: the query is not a read-only query, is refused, or fails.
        """
        _check_read_only_query(query, self.location)
        if not self._exists():
            raise JournalError(f"{self.location} does not exist yet")
        with self._read_only() as connection:
            try:
                return connection.execute(query, parameters or []).df()
            except duckdb.Error as error:
                refused = isinstance(error, duckdb.PermissionException) or (
                    isinstance(error, duckdb.InvalidInputException)
                    and ("read-only" in str(error) or "configuration has been locked" in str(error))
                )
                if not refused:
                    raise JournalError(f"query failed on {self.location}: {error}") from error
                raise JournalError(
                    f"sql() is read-only and cannot read local files, attach databases, load extensions or "
                    f"change settings; refused on {self.location}: {error}"
                ) from error


def _check_leaderboard_filters(*, name: Any, kind: Any, status: Any, limit: Any, children: Any, parent: Any) -> None:
    """Refuse a leaderboard filter of the wrong type, naming it."""
    _check_limit(limit, "limit")
    for label, value in (("name", name), ("kind", kind), ("status", status), ("parent", parent)):
        if value is not None and not isinstance(value, str):
            raise JournalError(f"leaderboard({label}=...) must be text or None, got {value!r}")
    if not isinstance(children, bool):
        raise JournalError(f"leaderboard(children=...) must be True or False, got {children!r}")


def _leaderboard_query(
    *, name: str | None, kind: str | None, status: str | None, limit: int, children: bool, parent: str | None
) -> tuple[str, list[Any]]:
    """Return the leaderboard's query and parameters for its filters (``status`` is sorted out after reading)."""
    query = _LEADERBOARD_SQL
    parameters: list[Any] = []
    if parent is not None:
        query += " AND e.parent_id = ?"
        parameters.append(parent)
    elif not children:
        query += " AND e.parent_id IS NULL"
    if name is not None:
        query += " AND contains(e.name, ?)"
        parameters.append(name)
    if kind is not None:
        query += " AND e.kind = ?"
        parameters.append(kind)
    if status is not None:
        # A dead run is stored as 'running' and reported as 'interrupted': both are fetched, then sorted out.
        query += " AND e.status IN (?, 'running')"
        parameters.append(status)
    if parent is not None:
        query += " ORDER BY e.created_at, e.id"
    else:
        # Each nested experiment right after the one it is nested in (its parent's place), oldest first.
        query += (
            " ORDER BY coalesce(p.created_at, e.created_at) DESC, coalesce(p.id, e.id), e.parent_id IS NOT NULL,"
            " e.created_at, e.id"
        )
    if status is None:
        query += " LIMIT ?"
        parameters.append(limit)
    return query, parameters


def _stored_interval(row: dict[str, Any]) -> tuple[float, float, float, str] | None:
    """Return the mean and interval an ended evaluation's result reported, if its summary holds them."""
    if row.get("kind") != "evaluation" or row.get("status") == "running":
        return None  # a running (or resumed) evaluation's summary, if any, is of an earlier part of it
    summary = row.get("summary")
    if isinstance(summary, str):
        try:
            summary = json.loads(summary)
        except ValueError:
            return None
    if not isinstance(summary, dict) or "ci_method" not in summary or not isinstance(summary.get("ci"), list):
        return None
    bounds = summary["ci"]
    if len(bounds) != 2:
        return None

    def number(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan

    if math.isnan(number(summary.get("mean"))):
        return (math.nan, math.nan, math.nan, "")
    return (number(summary.get("mean")), number(bounds[0]), number(bounds[1]), str(summary["ci_method"]))


# The EXPLAIN before the statement it explains: ``EXPLAIN ANALYZE ...`` (runs it), ``EXPLAIN (FORMAT json) ...``.
_EXPLAIN_PREFIX = re.compile(r"^\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^)]*\)\s*)?", re.IGNORECASE)


def _check_read_only_query(query: Any, location: str) -> None:
    """Refuse anything but one query statement, or an EXPLAIN of one, before it reaches a connection.

    A read-only file connection would also refuse an ``EXPLAIN ANALYZE DELETE``; an in-memory database
    cannot be opened read-only, so the statement inside an EXPLAIN is checked here, for both stores.
    """
    if not isinstance(query, str) or not query.strip():
        raise JournalError("sql() needs a query string, e.g. 'select count(*) from trials'")
    explained: list[duckdb.StatementType] | None = None  # what an EXPLAIN explains
    try:
        kinds = [statement.type for statement in duckdb.extract_statements(query)]
        if kinds == [duckdb.StatementType.EXPLAIN]:
            explained = [statement.type for statement in duckdb.extract_statements(_EXPLAIN_PREFIX.sub("", query))]
    except duckdb.Error as error:
        raise JournalError(f"query failed on {location}: {error}") from error
    allowed = (duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN)
    if len(kinds) != 1 or kinds[0] not in allowed or explained not in (None, [duckdb.StatementType.SELECT]):
        shown = ", ".join(kind.name for kind in kinds) or "no statement"
        if explained is not None:
            shown = f"EXPLAIN of {', '.join(kind.name for kind in explained) or 'no statement'}"
        raise JournalError(
            f"sql() is read-only: it runs one query (SELECT, WITH, FROM, DESCRIBE...), not {shown}; "
            "journals are changed only through dspex_lab"
        )

"""Trials and spans: the append-only record of every finished trial and its span tree.

A flush appends trials and their spans in one transaction and advances the experiment's totals
(``experiment_stats``) by exactly the rows it inserted, so a replayed flush adds nothing. Spans are
stored as rows; turning them into trace objects is the trace layer's job (``read_spans``,
``read_trace`` in ``_store.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from dspex_lab._records import TRIAL_COLUMNS, TRIAL_FIELDS, ExperimentRecord, TrialField
from dspex_lab.errors import JournalError
from dspex_lab.journal._base import DuckDBStore, _check_bounds, _now, _trial_column
from dspex_lab.journal._schema import row_table
from dspex_lab.journal._store import TRIAL_ORDERS, TrialOrder, read_spans, read_trace
from dspex_lab.journal._writer import TrialWriter

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["TrialQueries"]


def _selected(item: TrialField) -> str:
    # How the insert reads each stored column from the incoming Arrow rows (TrialResult.to_row()).
    if item.name is None:
        return "?"  # the experiment id, a parameter of the insert
    source = f'"{item.name}"'
    if item.sql == "TIMESTAMP":
        return f"make_timestamp(CAST({source} * 1e6 AS BIGINT))"
    return source


# RETURNING gives back only the rows really inserted (a trial already recorded, by a flush retried after an
# error or a resumed run, is ignored), and the experiment's totals are advanced by exactly those.
_INSERT_TRIALS = (
    f"INSERT OR IGNORE INTO trials ({', '.join(TRIAL_COLUMNS)}) "
    f"SELECT {', '.join(_selected(item) for item in TRIAL_FIELDS)} FROM incoming_trials RETURNING status, score"
)


_STATS_COLUMNS = (
    "n_trials", "n_errors", "n_scored", "score_sum", "ok_n_scored", "ok_score_sum", "ok_score_sum_squares",
)  # fmt: skip


# An UPDATE, and an INSERT only for an experiment's first trials: a third of the time of one INSERT ... ON
# CONFLICT DO UPDATE (~1 ms against ~3 ms a flush).
_ADD_STATS = (
    f"UPDATE experiment_stats SET {', '.join(f'{column} = {column} + ?' for column in _STATS_COLUMNS)} "
    "WHERE experiment_id = ?"
)


_FIRST_STATS = (
    f"INSERT INTO experiment_stats (experiment_id, {', '.join(_STATS_COLUMNS)}) "
    f"VALUES (?, {', '.join('?' for _ in _STATS_COLUMNS)})"
)


def _totals(inserted: dict[str, Any]) -> list[float]:
    """Return the ``experiment_stats`` totals of inserted trials (``fetchnumpy()`` of status and score).

    The same sums as ``STATS_TOTALS`` in ``_schema.py`` computes in SQL for a migration; a missing score is
    masked (a masked array), or the array is plain when no score is missing.
    """
    import numpy as np

    status = inserted["status"]
    score = inserted["score"]
    scored = ~np.ma.getmaskarray(score)
    values = np.ma.getdata(score).astype(float)
    ok = (status == "ok") & scored
    ok_values = values[ok]
    return [
        len(status),
        int((status == "error").sum()),
        int(scored.sum()),
        float(values[scored].sum()),
        int(ok.sum()),
        float(ok_values.sum()),
        float((ok_values * ok_values).sum()),
    ]


_TRIAL_ORDER_SQL: dict[str, str] = {
    "trial": "t.example_index, t.repeat, t.trial_id",
    "score": "t.score ASC NULLS FIRST, t.example_index, t.repeat, t.trial_id",
    "error": "t.status = 'ok', t.score ASC NULLS FIRST, t.example_index, t.repeat, t.trial_id",
    "latency": "t.latency DESC NULLS LAST, t.example_index, t.repeat, t.trial_id",
}


class TrialQueries(DuckDBStore):
    """Append trials and spans; read them back filtered, ordered and counted; stream them with a writer."""

    def append_trials(
        self, experiment_id: str, rows: Sequence[dict[str, Any]], *, spans: Sequence[dict[str, Any]] | pa.Table = ()
    ) -> int:
        """Append finished trials (and their spans) in one transaction; recorded ones are ignored.

        Args:
            experiment_id: the experiment the trials belong to.
            rows: ``TrialResult.to_row()`` dicts.
            spans: ``Span.to_row()`` dicts, or a table with :data:`SPAN_SCHEMA` (see ``span_table``).

        Returns:
            The number of trial rows given.
        """
        if not rows and not len(spans):
            with self._connect(write=True) as connection:
                connection.execute("UPDATE experiments SET heartbeat_at = ? WHERE id = ?", [_now(), experiment_id])
            return 0
        import pyarrow as pa  # loaded on the first write, so reading a journal does not pay for it

        from dspex_lab.journal._schema import SPAN_SCHEMA

        incoming = row_table(rows)
        with self._connect(write=True) as connection:
            connection.register("incoming_trials", incoming)
            connection.execute("BEGIN TRANSACTION")
            inserted = connection.execute(_INSERT_TRIALS, [experiment_id]).fetchnumpy()
            if len(inserted["status"]):
                totals = _totals(inserted)
                if not connection.execute(_ADD_STATS, [*totals, experiment_id]).fetchall()[0][0]:
                    connection.execute(_FIRST_STATS, [experiment_id, *totals])
            if len(spans):
                if not isinstance(spans, pa.Table):
                    spans = pa.Table.from_pylist(list(spans), schema=SPAN_SCHEMA)
                connection.register("incoming_spans", spans)
                connection.execute(
                    f"INSERT OR IGNORE INTO spans SELECT ?, {', '.join(SPAN_SCHEMA.names)} FROM incoming_spans",
                    [experiment_id],
                )
                connection.unregister("incoming_spans")
            connection.execute(
                "UPDATE experiments SET heartbeat_at = ?, updated_at = ? WHERE id = ?", [_now(), _now(), experiment_id]
            )
            connection.execute("COMMIT")
            connection.unregister("incoming_trials")
        return incoming.num_rows

    def trials(self, experiment_id: str, *, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Return an experiment's trials in example order, as a DataFrame."""
        selected = ", ".join(_trial_column(column) for column in columns) if columns else "*"
        return self.sql(
            f"SELECT {selected} FROM trials WHERE experiment_id = ? ORDER BY example_index, repeat, trial_id",
            [experiment_id],
        )

    def trial_rows(
        self,
        experiment_id: str,
        *,
        columns: Sequence[str] | None = None,
        status: str | None = None,
        order: TrialOrder = "trial",
        limit: int | None = None,
        traced_only: bool = False,
        with_span_counts: bool = False,
        min_score: float | None = None,
        max_score: float | None = None,
    ) -> list[dict[str, Any]]:
        """Return an experiment's trials as dicts (NULL as None), filtered, ordered and limited.

        Args:
            experiment_id: the experiment.
            columns: the trial columns to return (default: all).
            status: only trials with this status (``ok`` or ``error``).
            order: one of :data:`~dspex_lab.journal.TRIAL_ORDERS`: ``trial`` (example order), ``score``
                (lowest first, unscored first), ``error`` (failed first, then as ``score``) or ``latency``
                (slowest first).
            limit: at most this many trials.
            traced_only: only trials with at least one stored span.
            with_span_counts: add ``spans``, the number of stored spans of each trial.
            min_score: only trials scored at least this (unscored trials are left out).
            max_score: only trials scored at most this (unscored trials are left out).

        Raises:
            JournalError: an unknown column or order, a negative limit, a score bound that is not a finite
                number, or a journal that cannot be read.
        """
        if order not in _TRIAL_ORDER_SQL:
            raise JournalError(f"order must be one of {TRIAL_ORDERS}, got {order!r}")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise JournalError(f"limit must be a non-negative integer or None, got {limit!r}")
        _check_bounds(min_score, max_score)
        selected = ", ".join(f"t.{_trial_column(column)}" for column in columns) if columns else "t.*"
        query = f"SELECT {selected}"
        parameters: list[Any] = []
        if traced_only or with_span_counts:
            query += ", coalesce(s.n_spans, 0) AS spans" if with_span_counts else ""
            query += (
                f" FROM trials t {'JOIN' if traced_only else 'LEFT JOIN'} "
                "(SELECT trace_id, count(*) AS n_spans FROM spans WHERE experiment_id = ? GROUP BY trace_id) s "
                "ON s.trace_id = t.trial_id"
            )
            parameters.append(experiment_id)
        else:
            query += " FROM trials t"
        query += " WHERE t.experiment_id = ?"
        parameters.append(experiment_id)
        if status is not None:
            query += " AND t.status = ?"
            parameters.append(status)
        if min_score is not None:
            query += " AND t.score >= ?"
            parameters.append(float(min_score))
        if max_score is not None:
            query += " AND t.score <= ?"
            parameters.append(float(max_score))
        query += f" ORDER BY {_TRIAL_ORDER_SQL[order]}"
        if limit is not None:
            query += " LIMIT ?"
            parameters.append(limit)
        return self._rows(query, parameters)

    def trial_counts(self, experiment_id: str) -> dict[str, int]:
        """Return the number of recorded trials of an experiment per status (absent statuses left out)."""
        rows = self._rows(
            "SELECT status, count(*) AS n FROM trials WHERE experiment_id = ? GROUP BY status ORDER BY status",
            [experiment_id],
        )
        return {row["status"]: int(row["n"]) for row in rows}

    def finished_keys(self, experiment_id: str) -> set[tuple[str, int]]:
        """Return (example_id, repeat) of every recorded trial of an experiment."""
        rows = self._rows("SELECT example_id, repeat FROM trials WHERE experiment_id = ?", [experiment_id])
        return {(row["example_id"], int(row["repeat"])) for row in rows}

    def span_rows(self, experiment_id: str, trials: str | Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Return span rows as stored, attributes still JSON text: for readers that decode few of them.

        Args:
            experiment_id: the experiment.
            trials: one trial id, several, or None for every trial of the experiment.

        Returns:
            Rows ordered by trial, then start time with an enclosing span before the spans it contains.
        """
        query = "SELECT * EXCLUDE (experiment_id) FROM spans WHERE experiment_id = ?"
        parameters: list[Any] = [experiment_id]
        if isinstance(trials, str):
            query += " AND trace_id = ?"
            parameters.append(trials)
        elif trials is not None:
            query += " AND list_contains(?, trace_id)"
            parameters.append(list(trials))
        # Python rows, not a DataFrame: NULL stays None, and 10,000 rows load in a third of the time
        # (the trace viewer reads a whole trial on every selection).
        return self._rows(query + " ORDER BY trace_id, start_ns, end_ns DESC, span_id", parameters)

    def span_counts(self, experiment_id: str, trials: Sequence[str]) -> dict[str, int]:
        """Return how many spans are stored for each of the given trials of an experiment.

        Every trial asked for has an entry, in the order given: 0 for one without spans (an untraced
        trial, or one the experiment does not have). An absent journal file has no spans.

        Raises:
            JournalError: ``trials`` is not a sequence of trial ids (text), or the journal cannot be read.
        """
        if isinstance(trials, str) or not all(isinstance(trial, str) for trial in trials):
            raise JournalError(f"span_counts(trials=...) must be a list of trial ids, got {trials!r}")
        wanted = list(dict.fromkeys(trials))
        counts = dict.fromkeys(wanted, 0)
        if not wanted or not self._exists():
            return counts
        rows = self._rows(
            """SELECT trace_id, count(*) AS spans FROM spans
               WHERE experiment_id = ? AND list_contains(?, trace_id) GROUP BY trace_id""",
            [experiment_id, wanted],
        )
        counts.update({row["trace_id"]: int(row["spans"]) for row in rows})
        return counts

    def spans(self, experiment_id: str, trials: str | Sequence[str] | None = None) -> list[Any]:
        """Return the spans (``dspex_lab.trace.Span``) of one trial, of several, or of every trial of an experiment.

        Built from :meth:`span_rows` by the trace reader ``import dspex_lab`` registers (the journal does
        not import the trace layer).
        """
        return read_spans(self.span_rows(experiment_id, trials))

    def trace(self, experiment_id: str, trial_id: str) -> Any:
        """Return one trial's span tree (a ``dspex_lab.trace.TraceTree``), loading only that trial's spans."""
        rows = self.span_rows(experiment_id, trial_id)
        if not rows:
            raise JournalError(
                f"no spans for trial {trial_id!r} of experiment {experiment_id!r}: "
                "was it evaluated with dx.evaluate(..., trace=True)?"
            )
        return read_trace(rows)

    def writer(
        self, experiment_id: str, *, flush_interval: float = 0.4, create: ExperimentRecord | None = None
    ) -> TrialWriter:
        """Return a background writer that streams trials of ``experiment_id`` into this journal.

        With ``create``, the writer inserts that experiment first, on its own thread, so a run
        does not wait for the journal before its first trial.
        """
        return TrialWriter(self, experiment_id, flush_interval=flush_interval, create=create)

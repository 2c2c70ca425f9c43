"""The DuckDB journal: one file shared by several processes through short transactions and a service.

DuckDB lets one process at a time open a database file for writing (and
readers need the writer to be gone). Outside a run, every read or write opens
the file, does its work in one transaction and closes it, retrying with backoff
while another process holds the lock. A run holds the file (``hold``) and its
process serves every other process's journal calls meanwhile (``_service.py``),
so many writers and pollers do not take turns at the file. Writers flush
finished trials at least twice a second, so a crash loses well under a second
of work, and each flush also refreshes the experiment's heartbeat, from which
an experiment whose process died is seen as interrupted.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from dspex_lab._records import TRIAL_COLUMNS, TRIAL_FIELDS, TrialField
from dspex_lab.errors import JournalError
from dspex_lab.journal._schema import (
    SCHEMA_VERSION,
    current_version,
    ensure_schema,
    row_table,
    span_table,
)
from dspex_lab.journal._service import (
    JournalService,
    ServiceGone,
    ServiceUnavailable,
    call_service,
    process_start_time,
    service_address,
    service_available,
)
from dspex_lab.journal._store import TRIAL_ORDERS, ExperimentSummary, TrialOrder, read_spans, read_trace
from dspex_lab.journal._wire import wire_record

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

__all__ = ["LEADERBOARD_COLUMNS", "TRIAL_SORTS", "DuckDBJournal", "ExperimentRecord", "TrialWriter", "open_journal"]

# The store's summaries travel over the journal service by name. Registered here, with the service, so
# that `import dspex_lab` (which loads _store for the protocol) does not load the wire format.
wire_record(ExperimentSummary)

# A running experiment whose heartbeat is older than this is shown as interrupted.
STALE_HEARTBEAT_SECONDS = 15.0
_process_lock = threading.RLock()


@dataclass
class _Held:
    """A journal file this process keeps open across transactions (see ``DuckDBJournal.hold``).

    While it has the file open, the process also serves other processes' calls (``service``).
    """

    connection: duckdb.DuckDBPyConnection | None = None
    holders: int = 0
    service: JournalService | None = None


_held: dict[Path, _Held] = {}
_closing: dict[Path, threading.Thread] = {}

# The journal calls another process may make through this one's service (see _service.py): each is one
# call with picklable arguments and result, and every one that writes is idempotent.
_SERVED: set[str] = set()
_WRITES = frozenset(
    {
        "create_experiment", "claim_experiment", "finish_experiment", "append_trials", "register_hypothesis",
        "decide_hypothesis", "record_candidates", "record_step", "finish_children",
    }
)  # fmt: skip
_Method = TypeVar("_Method", bound=Callable[..., Any])


class _UseService(Exception):  # noqa: N818 - control flow between _open and _served, never shown
    """The file is locked by a process that serves the journal: make the call through it."""


@dataclass
class _Waits:
    """How long this process's journal accesses waited before they could run (see :func:`access_waits`)."""

    count: int = 0
    total: float = 0.0
    longest: float = 0.0


_waits: dict[str, _Waits] = {"read": _Waits(), "write": _Waits()}
_waits_lock = threading.Lock()


def _record_wait(kind: str, seconds: float) -> None:
    with _waits_lock:
        waits = _waits[kind]
        waits.count += 1
        waits.total += seconds
        waits.longest = max(waits.longest, seconds)


def access_waits() -> dict[str, dict[str, float]]:
    """Return how long this process's journal reads and writes waited for access, since it started.

    A call made on the file waits from asking for it (this process's other users included) until it has
    it open; a call made through another process's service counts its whole round trip as waiting.
    Read by ``bench/bench_journal.py``.
    """
    with _waits_lock:
        return {kind: dataclasses.asdict(waits) for kind, waits in _waits.items()}


def _hosting(path: Path) -> bool:
    held = _held.get(path)
    return held is not None and held.service is not None


def _served(method: _Method) -> _Method:
    """Make a journal method go through the serving process when another process holds the journal."""
    name = method.__name__
    _SERVED.add(name)

    @functools.wraps(method)
    def call(self: Any, *arguments: Any, **options: Any) -> Any:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            if not _hosting(self.path):
                start = time.perf_counter()
                try:
                    result = call_service(self.path, name, arguments, options)
                except ServiceGone:
                    pass  # no service, or it just stopped: the file itself
                else:
                    _record_wait("write" if name in _WRITES else "read", time.perf_counter() - start)
                    return result
            try:
                return method(self, *arguments, **options)
            except _UseService as error:
                if time.monotonic() > deadline:
                    raise JournalError(
                        f"journal {self.path} stayed locked by another process for {self.lock_timeout:g} s"
                    ) from error

    return call  # type: ignore[return-value]


# Every journal call another process may make through this one's service: the file store's writes and
# queries, one call each with picklable arguments and result.
_SERVED_CALLS = (
    "create_experiment", "claim_experiment", "finish_experiment", "append_trials", "register_hypothesis",
    "decide_hypothesis", "record_candidates", "record_step", "finish_children", "sql", "experiment_summaries",
    "children", "parent", "ended_summaries", "experiment", "trial_rows", "trial_counts", "leaderboard",
    "score_intervals", "trial_page", "paired_scores", "span_rows", "span_counts", "dataset_examples",
    "hypothesis_rows", "candidate_rows", "step_rows", "children_trial_rows", "finished_keys",
)  # fmt: skip
_Class = TypeVar("_Class", bound=type)


def _serve_calls(cls: _Class) -> _Class:
    """Route the served calls of a file journal class through the serving process (see :func:`_served`).

    Applied to the file store only: the shared implementation stays unwrapped, so an in-memory journal
    never looks for a service.
    """
    for name in _SERVED_CALLS:
        setattr(cls, name, _served(getattr(cls, name)))
    return cls


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


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_conflict(error: duckdb.Error) -> bool:
    # Matched on DuckDB's own phrases: a loose "lock" would also match "block" in a corruption report.
    text = str(error)
    return "Could not set lock" in text or "Conflicting lock" in text or "different configuration" in text


def _leave_marker(folder: Path | None) -> Path | None:
    """Create this waiter's marker in the private waiting folder (None where there is no safe folder)."""
    if folder is None:
        return None
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    marker = folder / f"{os.getpid()}-{process_start_time(os.getpid())}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.close(descriptor)
    return marker


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@wire_record
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


class _DuckDBStore(abc.ABC):
    """Every write and query of a journal kept in one DuckDB database, over one seam: :meth:`_connect`.

    Both stores are this class with a different seam, so they cannot disagree on what a write
    keeps or a query answers: :class:`DuckDBJournal` opens a file shared by several processes,
    :class:`~dspex_lab.journal.MemoryJournal` holds an in-memory database for its own life.
    """

    path: Path | None

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the journal is, for messages (``journal /x/dspex.duckdb`` or an in-memory journal)."""

    @property
    @abc.abstractmethod
    def durable(self) -> bool:
        """Whether what is written outlives this process (True for a file, False in memory)."""

    @abc.abstractmethod
    def _connect(self, *, write: bool) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """Return a context giving a connection for one call (``write``: the call changes the journal)."""

    @abc.abstractmethod
    def _read_only(self) -> contextlib.AbstractContextManager[duckdb.DuckDBPyConnection]:
        """Return a context giving :meth:`sql` a connection that can neither change the journal nor read files."""

    @abc.abstractmethod
    def _exists(self) -> bool:
        """Whether the journal exists yet (a file journal is created by its first write)."""

    @abc.abstractmethod
    def hold(self) -> contextlib.AbstractContextManager[None]:
        """Return a context that keeps the journal ready across many writes (a run)."""

    # -- writing -------------------------------------------------------------------------------

    def create_experiment(self, record: ExperimentRecord) -> str:
        """Insert a new running experiment (and its small dataset's examples) and return its id."""
        now = _now()
        with self._connect(write=True) as connection:
            self._mark_dead_experiments(connection)
            if record.examples:
                import pyarrow as pa  # loaded on the first write, so reading a journal does not pay for it

                connection.register(
                    "incoming_examples",
                    pa.table(
                        {
                            "dataset_fingerprint": [record.dataset_fingerprint] * len(record.examples),
                            "position": list(range(len(record.examples))),
                            "example_id": [example_id for example_id, _ in record.examples],
                            "record": [_json(fields) for _, fields in record.examples],
                        }
                    ),
                )
                connection.execute("INSERT OR IGNORE INTO dataset_examples SELECT * FROM incoming_examples")
                connection.unregister("incoming_examples")
            connection.execute(
                """INSERT OR IGNORE INTO experiments (id, kind, name, status, program_name, program_fingerprint,
                   program_spec, dataset_name, dataset_fingerprint, dataset_manifest, metric, config, environment,
                   n_planned, host, pid, created_at, updated_at, heartbeat_at, parent_id, role)
                   VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    record.id,
                    record.kind,
                    record.name,
                    record.program_name,
                    record.program_fingerprint,
                    _json(record.program_spec),
                    record.dataset_name,
                    record.dataset_fingerprint,
                    _json(record.dataset_manifest),
                    record.metric,
                    _json(record.config),
                    _json(record.environment),
                    record.n_planned,
                    socket.gethostname(),
                    os.getpid(),
                    now,
                    now,
                    now,
                    record.parent_id,
                    record.role,
                ],
            )
        return record.id

    def claim_experiment(self, experiment_id: str) -> None:
        """Mark an existing experiment as running again in this process (resume)."""
        now = _now()
        with self._connect(write=True) as connection:
            connection.execute(
                """UPDATE experiments SET status = 'running', status_detail = NULL, host = ?, pid = ?,
                   updated_at = ?, heartbeat_at = ?, finished_at = NULL WHERE id = ?""",
                [socket.gethostname(), os.getpid(), now, now, experiment_id],
            )

    def finish_experiment(
        self, experiment_id: str, *, status: str, detail: str | None = None, summary: dict[str, Any] | None = None
    ) -> None:
        """Record how an experiment ended, with its summary."""
        now = _now()
        with self._connect(write=True) as connection:
            connection.execute(
                """UPDATE experiments SET status = ?, status_detail = ?, summary = ?, updated_at = ?,
                   heartbeat_at = ?, finished_at = ? WHERE id = ?""",
                [status, detail, _json(summary), now, now, now, experiment_id],
            )

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

    def _mark_dead_experiments(self, connection: duckdb.DuckDBPyConnection) -> None:
        rows = connection.execute(
            "SELECT id, host, pid, heartbeat_at FROM experiments WHERE status = 'running'"
        ).fetchall()
        dead = [row[0] for row in rows if _is_dead(row[1], row[2], row[3])]
        for experiment_id in dead:
            connection.execute(
                "UPDATE experiments SET status = 'interrupted', status_detail = 'process ended without finishing', "
                "updated_at = ? WHERE id = ?",
                [_now(), experiment_id],
            )

    # -- reading (the JournalStore queries) ---------------------------------------------------

    def _rows(self, query: str, parameters: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a read query and return its rows as dicts (NULL as None), without pandas."""
        if not self._exists():
            raise JournalError(f"{self.location} does not exist yet")
        with self._connect(write=False) as connection:
            try:
                cursor = connection.execute(query, list(parameters))
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            except duckdb.Error as error:
                raise JournalError(f"query failed on {self.location}: {error}") from error

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

    def experiment_summaries(self, *, children: bool = True) -> list[ExperimentSummary]:
        """Return every experiment, newest first (then by id), with trial counts, errors and mean score.

        A running experiment whose process is gone (or whose heartbeat is stale) is reported as
        ``interrupted``. An absent journal file has no experiments.

        Args:
            children: include nested experiments (an optimization's candidate evaluations); without
                it only top-level experiments (no ``parent_id``) are returned.
        """
        if not isinstance(children, bool):
            raise JournalError(f"experiment_summaries(children=...) must be True or False, got {children!r}")
        if not self._exists():
            return []
        where = "" if children else "WHERE e.parent_id IS NULL"
        return self._summaries(_SUMMARY_SQL.format(where=where, order="e.created_at DESC, e.id"))

    def children(self, experiment_id: str, *, role: str | None = None) -> list[ExperimentSummary]:
        """Return the experiments nested in ``experiment_id``, oldest first (then by id).

        Args:
            experiment_id: the parent (e.g. an optimization run).
            role: only children of this role (see :data:`~dspex_lab.journal.EXPERIMENT_ROLES`).
        """
        if role is not None and not isinstance(role, str):
            raise JournalError(f"children(role=...) must be text or None, got {role!r}")
        if not self._exists():
            return []
        where, parameters = "WHERE e.parent_id = ?", [experiment_id]
        if role is not None:
            where += " AND e.role = ?"
            parameters.append(role)
        return self._summaries(_SUMMARY_SQL.format(where=where, order="e.created_at, e.id"), parameters)

    def parent(self, experiment_id: str) -> str | None:
        """Return the id of the experiment ``experiment_id`` is nested in, or None for a top-level one.

        Raises:
            JournalError: no such experiment.
        """
        rows = []
        if self._exists():
            rows = self._rows("SELECT parent_id FROM experiments WHERE id = ?", [experiment_id])
        if not rows:
            raise JournalError(f"no experiment {experiment_id!r} in {self.location}")
        return rows[0]["parent_id"]

    def ended_summaries(self) -> dict[str, dict[str, Any]]:
        """Return the summary each ended experiment stored when it finished, decoded, by experiment id.

        An experiment is in it once it was finished (any status but ``running`` is stored) with a
        summary that is a JSON object; one still running, or whose process died before it finished
        (read as ``interrupted``), stored none and is left out, as is one finished without a summary.
        Ordered by id. An absent journal file has none.
        """
        if not self._exists():
            return {}
        rows = self._rows(
            "SELECT id, summary FROM experiments WHERE status <> 'running' AND summary IS NOT NULL ORDER BY id"
        )
        summaries = {}
        for row in rows:
            summary = json.loads(row["summary"]) if isinstance(row["summary"], str) else row["summary"]
            if isinstance(summary, dict):
                summaries[row["id"]] = summary
        return summaries

    def _summaries(self, query: str, parameters: Sequence[Any] = ()) -> list[ExperimentSummary]:
        rows = self._rows(query, parameters)
        summaries = []
        for row in rows:
            host, pid, heartbeat = row.pop("host"), row.pop("pid"), row.pop("heartbeat_at")
            if row["status"] == "running" and _is_dead(host, pid, heartbeat):
                row["status"] = "interrupted"
            summaries.append(ExperimentSummary(**row))
        return summaries

    def experiments(self) -> pd.DataFrame:
        """Return every experiment as a DataFrame, newest first (see :meth:`experiment_summaries`)."""
        import pandas as pd

        columns = [item.name for item in dataclasses.fields(ExperimentSummary)]
        return pd.DataFrame([dataclasses.astuple(summary) for summary in self.experiment_summaries()], columns=columns)

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """Return one experiment as a dict (JSON columns decoded)."""
        rows = self._rows("SELECT * FROM experiments WHERE id = ?", [experiment_id])
        if not rows:
            raise JournalError(f"no experiment {experiment_id!r} in {self.location}")
        row = rows[0]
        for column in ("program_spec", "dataset_manifest", "config", "environment", "summary"):
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
        if row["status"] == "running" and _is_dead(row["host"], row["pid"], row["heartbeat_at"]):
            row["status"] = "interrupted"
        return row

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
        for bound, value in (("min_score", min_score), ("max_score", max_score)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            ):
                raise JournalError(f"{bound} must be a finite number or None, got {value!r}")
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

    # -- the dashboard's queries (DataFrames, one read each) ---------------------------------------

    def _frame(self, query: str, parameters: Sequence[Any] = ()) -> pd.DataFrame:
        """Run a read query and return a DataFrame (its columns typed by DuckDB, even when empty)."""
        if not self._exists():
            raise JournalError(f"{self.location} does not exist yet")
        with self._connect(write=False) as connection:
            try:
                return connection.execute(query, list(parameters)).df()
            except duckdb.Error as error:
                raise JournalError(f"query failed on {self.location}: {error}") from error

    def leaderboard(
        self,
        *,
        name: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        limit: int = 500,
        children: bool = False,
    ) -> pd.DataFrame:
        """Return one row per experiment, newest first (then by id), with its trial counts, mean and interval.

        The mean and interval are the ones every view shows (see :meth:`score_intervals`): an
        evaluation that ended shows the interval its result reported; any other experiment the
        interval of :func:`dspex_lab.stats.score_interval` (Wilson for 0/1 scores, t otherwise)
        over its per-example mean scores.

        Args:
            name: only experiments whose name contains this text (case-sensitive).
            kind: only experiments of this kind (``evaluation``, ``comparison``, ``optimization``...).
            status: only experiments with this status; a running experiment whose process is gone
                counts as ``interrupted``.
            limit: at most this many rows.
            children: include nested experiments (an optimization's candidate evaluations, which
                would otherwise fill the board); by default only top-level experiments are listed.

        Returns:
            Columns ``experiment_id``, ``name``, ``kind``, ``status``, ``created_at``, ``program``,
            ``model``, ``n_trials``, ``n_errors``, ``mean``, ``ci_low``, ``ci_high``, ``ci_method``,
            ``parent_id``, ``role``. An absent journal gives no rows.

        Raises:
            JournalError: a negative or non-integer limit, or a journal that cannot be read.
        """
        import pandas as pd

        _check_limit(limit, "limit")
        for label, value in (("name", name), ("kind", kind), ("status", status)):
            if value is not None and not isinstance(value, str):
                raise JournalError(f"leaderboard({label}=...) must be text or None, got {value!r}")
        if not isinstance(children, bool):
            raise JournalError(f"leaderboard(children=...) must be True or False, got {children!r}")
        if not self._exists():
            return pd.DataFrame(columns=list(LEADERBOARD_COLUMNS))
        query = _LEADERBOARD_SQL
        parameters: list[Any] = []
        if not children:
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
        query += " ORDER BY e.created_at DESC, e.id"
        if status is None:
            query += " LIMIT ?"
            parameters.append(limit)
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
        return frame[list(LEADERBOARD_COLUMNS)].reset_index(drop=True)

    def score_intervals(self) -> dict[str, tuple[float, float, float, str]]:
        """Return ``(mean, ci_low, ci_high, ci_method)`` per experiment id: the numbers every view shows.

        One rule for every view (result, progress, browser, dashboard, ``dspex journal list``): an
        evaluation that ended shows the mean and interval its result reported (stored in its summary:
        repeats averaged per example, clustered when asked); any other experiment with scores gets
        :func:`dspex_lab.stats.score_interval` over its per-example mean scores, computed here from
        its trials. Without a score: NaN, NaN, NaN and ``""``. Reading a journal whose experiments
        all have stored intervals loads neither pandas nor scipy.
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
            from dspex_lab.stats import score_interval  # only when an experiment needs it: scipy is slow to load

            scores: dict[str, list[float]] = {experiment: [] for experiment in computed}
            for row in self._rows(_EXAMPLE_SCORES_SQL, [computed]):
                scores[row["experiment_id"]].append(float(row["score"]))
            for experiment, values in scores.items():
                interval = score_interval(values)
                mean = sum(values) / len(values) if values else math.nan
                intervals[experiment] = (mean, interval.low, interval.high, interval.method if values else "")
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

    def dataset_examples(self, fingerprint: str) -> list[tuple[str, dict[str, Any]]]:
        """Return the stored (example id, fields) of a dataset, in order (empty if it was not stored)."""
        rows = self._rows(
            "SELECT example_id, record FROM dataset_examples WHERE dataset_fingerprint = ? ORDER BY position",
            [fingerprint],
        )
        return [(row["example_id"], json.loads(row["record"])) for row in rows]

    def register_hypothesis(self, record: dict[str, Any]) -> str:
        """Insert a pre-registered hypothesis (status ``registered``) and return its id.

        Idempotent, as every write the journal service may retry: registering the same hypothesis
        again changes nothing. A pre-registration is never rewritten: the same id with another
        statement, metric, arms, direction, minimum effect or alpha is a :class:`JournalError`.
        """
        registered = [
            record["statement"],
            record.get("metric"),
            record["baseline"],
            record["treatment"],
            record["direction"],
            record["min_effect"],
            record["alpha"],
        ]
        with self._connect(write=True) as connection:
            connection.execute(
                """INSERT OR IGNORE INTO hypotheses (id, statement, metric, baseline, treatment, direction, min_effect,
                   alpha, status, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'registered', ?)""",
                [record["id"], *registered, _now()],
            )
            stored = connection.execute(
                """SELECT statement, metric, baseline, treatment, direction, min_effect, alpha FROM hypotheses
                   WHERE id = ?""",
                [record["id"]],
            ).fetchone()
        if stored is None or list(stored) != registered:
            raise JournalError(
                f"hypothesis {record['id']!r:.80} is already registered in {self.location} with other terms; "
                "a pre-registration is never changed: register the new claim under a new id"
            )
        return str(record["id"])

    def decide_hypothesis(self, hypothesis_id: str, *, status: str, verdict: dict[str, Any]) -> None:
        """Record a hypothesis' verdict."""
        with self._connect(write=True) as connection:
            connection.execute(
                "UPDATE hypotheses SET status = ?, verdict = ?, decided_at = ? WHERE id = ?",
                [status, _json(verdict), _now(), hypothesis_id],
            )

    def hypothesis_rows(self) -> list[dict[str, Any]]:
        """Return every hypothesis as a dict (verdict decoded), oldest first (then by id)."""
        if not self._exists():
            return []
        rows = self._rows("SELECT * FROM hypotheses ORDER BY registered_at, id")
        for row in rows:
            if isinstance(row.get("verdict"), str):
                row["verdict"] = json.loads(row["verdict"])
        return rows

    def hypotheses(self) -> pd.DataFrame:
        """Return every hypothesis as a DataFrame, oldest first (the verdict as stored JSON text)."""
        if not self._exists():
            import pandas as pd

            return pd.DataFrame(columns=["id", "statement", "status", "registered_at"])
        return self.sql("SELECT * FROM hypotheses ORDER BY registered_at, id")

    # -- optimization runs ----------------------------------------------------------------------

    def record_candidates(self, run_id: str, candidates: Sequence[dict[str, Any]]) -> None:
        """Insert an optimization run's new candidates (one already recorded is left as it was).

        Each dict has ``candidate_id``, ``step``, ``parent_id``, ``strategy``, ``rationale``,
        ``values`` and ``program_spec`` (JSON values) and ``fingerprint``.
        """
        if not candidates:
            return
        now = _now()
        with self._connect(write=True) as connection:
            connection.executemany(
                """INSERT OR IGNORE INTO optimization_candidates (run_id, candidate_id, step, parent_id, strategy,
                   rationale, "values", program_spec, fingerprint, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    [
                        run_id,
                        item["candidate_id"],
                        item["step"],
                        item.get("parent_id"),
                        item["strategy"],
                        item.get("rationale"),
                        _json(item["values"]),
                        _json(item["program_spec"]),
                        item["fingerprint"],
                        now,
                    ]
                    for item in candidates
                ],
            )
            connection.execute(_TOUCH_EXPERIMENT, [now, now, run_id])

    def record_step(self, run_id: str, step: dict[str, Any]) -> None:
        """Insert or replace one step of an optimization run (a step is written when it starts and when it ends).

        ``step`` has the columns of ``optimization_steps`` but ``run_id``; ``minibatch``,
        ``screening`` and ``evaluations`` are JSON values.
        """
        now = _now()
        columns = (
            "step", "status", "incumbent_id", "accepted_id", "minibatch", "screening", "evaluations", "best_mean",
            "best_ci_low", "best_ci_high", "lm_calls", "tokens", "cost", "detail",
        )  # fmt: skip
        values = [
            _json(step.get(name)) if name in ("minibatch", "screening", "evaluations") else step.get(name)
            for name in columns
        ]
        finished = now if step["status"] != "running" else None
        with self._connect(write=True) as connection:
            started = connection.execute(
                "SELECT started_at FROM optimization_steps WHERE run_id = ? AND step = ?", [run_id, step["step"]]
            ).fetchall()
            connection.execute(
                f"""INSERT OR REPLACE INTO optimization_steps (run_id, {", ".join(columns)}, started_at, finished_at)
                    VALUES (?, {", ".join("?" for _ in columns)}, ?, ?)""",
                [run_id, *values, started[0][0] if started else now, finished],
            )
            connection.execute(_TOUCH_EXPERIMENT, [now, now, run_id])

    def finish_children(self, run_id: str, *, status: str) -> None:
        """Mark the still-running experiments nested in ``run_id`` (its ``parent_id`` children) as ended."""
        now = _now()
        with self._connect(write=True) as connection:
            connection.execute(
                """UPDATE experiments SET status = ?, updated_at = ?, heartbeat_at = ?, finished_at = ?
                   WHERE parent_id = ? AND status = 'running'""",
                [status, now, now, now, run_id],
            )

    def children_trial_rows(self, parent_id: str) -> list[dict[str, Any]]:
        """Return the trials of every experiment nested in ``parent_id`` (NULL as None), by experiment then example.

        An optimization run reads back all its evaluations' trials with this when it resumes.
        """
        if not self._exists():
            return []
        return self._rows(
            """SELECT t.* FROM trials t JOIN experiments e ON e.id = t.experiment_id WHERE e.parent_id = ?
               ORDER BY t.experiment_id, t.example_index, t.repeat, t.trial_id""",
            [parent_id],
        )

    def candidate_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Return an optimization run's candidates in the order they were made (JSON columns decoded)."""
        rows = self._rows(
            "SELECT * FROM optimization_candidates WHERE run_id = ? ORDER BY step, created_at, candidate_id", [run_id]
        )
        for row in rows:
            for column in ("values", "program_spec"):
                if isinstance(row.get(column), str):
                    row[column] = json.loads(row[column])
        return rows

    def step_rows(self, run_id: str) -> list[dict[str, Any]]:
        """Return an optimization run's steps in order (JSON columns decoded)."""
        rows = self._rows("SELECT * FROM optimization_steps WHERE run_id = ? ORDER BY step", [run_id])
        for row in rows:
            for column in ("minibatch", "screening", "evaluations"):
                if isinstance(row.get(column), str):
                    row[column] = json.loads(row[column])
        return rows

    def finished_keys(self, experiment_id: str) -> set[tuple[str, int]]:
        """Return (example_id, repeat) of every recorded trial of an experiment."""
        rows = self._rows("SELECT example_id, repeat FROM trials WHERE experiment_id = ?", [experiment_id])
        return {(row["example_id"], int(row["repeat"])) for row in rows}

    def writer(
        self, experiment_id: str, *, flush_interval: float = 0.4, create: ExperimentRecord | None = None
    ) -> TrialWriter:
        """Return a background writer that streams trials of ``experiment_id`` into this journal.

        With ``create``, the writer inserts that experiment first, on its own thread, so a run
        does not wait for the journal before its first trial.
        """
        return TrialWriter(self, experiment_id, flush_interval=flush_interval, create=create)


@_serve_calls
class DuckDBJournal(_DuckDBStore):
    """The default journal: a DuckDB file shared by kernels, the CLI and the dashboard.

    Thread safety: every method may be called from any thread; calls within one
    process are serialised, calls from other processes wait for the file lock
    (up to ``lock_timeout`` seconds) and then raise :class:`JournalError`.
    """

    path: Path

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        # Resolved once, so a later change of working directory cannot move the journal.
        self.path = Path(path).resolve()
        self.lock_timeout = lock_timeout
        if self.path.is_dir():
            raise JournalError(f"journal path {self.path} is a directory; give a file such as dspex.duckdb")
        if self.path.exists() and not service_available(self.path) and not self._is_current():
            # Migrate a journal written by an older dspex_lab (ensure_schema runs on write).
            with self._connect(write=True):
                pass

    def __repr__(self) -> str:
        return f"DuckDBJournal({str(self.path)!r})"

    @property
    def location(self) -> str:
        """Where the journal is, for messages: ``journal <resolved path>``."""
        return f"journal {self.path}"

    @property
    def durable(self) -> bool:
        """True: what is written is in the file, for other processes and later sessions."""
        return True

    # -- connections ---------------------------------------------------------------------------

    def _exists(self) -> bool:
        return self.path.exists()

    @contextlib.contextmanager
    def _read_only(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with _process_lock:
            closer = _closing.pop(self.path, None)
            if closer is not None:
                closer.join()
            held = _held.get(self.path)
            if held is not None and held.connection is not None:
                # DuckDB opens a file once per process with one configuration, so the writer's must close first.
                held.connection.close()
                held.connection = None
            connection = self._open(write=False)
            try:
                connection.execute("SET enable_external_access = false")
                connection.execute("SET lock_configuration = true")
                yield connection
            finally:
                connection.close()

    def _is_current(self) -> bool:
        try:
            with self._connect(write=False) as connection:
                return self._readonly_ok(connection)
        except _UseService:
            return True  # the serving process opened it for writing, which migrates it

    @staticmethod
    def _readonly_ok(connection: duckdb.DuckDBPyConnection) -> bool:
        return current_version(connection) == SCHEMA_VERSION

    @property
    def _waiting_dir(self) -> Path | None:
        # In the user's private runtime folder: a folder in the journal's (shared) folder could be planted.
        try:
            return service_address(self.path).waiting
        except ServiceUnavailable:
            return None

    def _open(self, *, write: bool) -> duckdb.DuckDBPyConnection:
        """Open the file, retrying while another process holds it; announce the wait meanwhile."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        marker: Path | None = None
        waited = False
        try:
            while True:
                try:
                    if write or not self.path.exists():
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        connection = duckdb.connect(str(self.path))
                        ensure_schema(connection)
                    else:
                        connection = duckdb.connect(str(self.path), read_only=True)
                    return connection
                except duckdb.Error as error:
                    if not _is_lock_conflict(error):
                        if "not a valid DuckDB database" in str(error) or "Corrupt" in str(error):
                            raise JournalError(
                                f"journal {self.path} is corrupt (not a readable DuckDB file): {error}; "
                                "move it aside and start a new journal, or restore it from a copy"
                            ) from error
                        raise JournalError(f"cannot open journal {self.path}: {error}") from error
                    if time.monotonic() > deadline:
                        raise JournalError(
                            f"journal {self.path} stayed locked by another process for {self.lock_timeout:g} s"
                        ) from error
                    if waited and not _hosting(self.path) and service_available(self.path):
                        raise _UseService from error
                    if not waited:
                        # Tells a process that holds the file across a run to let go after its next flush.
                        marker = _leave_marker(self._waiting_dir)
                        waited = True
                    time.sleep(delay)
                    delay = min(delay * 1.5, 0.2)
                except RuntimeError as error:
                    raise JournalError(f"cannot open journal {self.path}: {error}") from error
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # another waiter may still be using the folder
                    marker.parent.rmdir()

    def _others_waiting(self) -> bool:
        folder = self._waiting_dir
        if folder is None:
            return False
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return False
        own = os.getpid()
        for name in names:
            # <pid>-<start time>-...: a marker left by a killed process whose pid was reused does not count.
            pid_text, _, rest = name.partition("-")
            start_text = rest.partition("-")[0]
            if not (pid_text.isdigit() and start_text.isdigit()) or int(pid_text) == own:
                continue
            if process_start_time(int(pid_text)) == int(start_text):
                return True
        return False

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        start = time.perf_counter()
        with _process_lock:
            held = _held.get(self.path)
            closer = _closing.pop(self.path, None)
            if closer is not None:
                closer.join()
            if held is None:
                connection = self._open(write=write)
                _record_wait("write" if write else "read", time.perf_counter() - start)
                try:
                    yield connection
                finally:
                    connection.close()
                return
            if held.connection is None:
                held.connection = self._open(write=True)
                if held.service is None:
                    # This process has the file for its run: it answers other processes' calls meanwhile.
                    held.service = JournalService.start(self, _SERVED, call_lock=_process_lock)
            cursor = held.connection.cursor()
            _record_wait("write" if write else "read", time.perf_counter() - start)
            try:
                yield cursor
            finally:
                cursor.close()
                if self._others_waiting():
                    held.connection.close()
                    held.connection = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the file open across many writes (a run), and serve other processes' calls meanwhile.

        Opening a DuckDB file costs tens of milliseconds, so a run holds it. While this process has
        the file, it answers the journal calls of other processes through a service on 127.0.0.1
        (see ``_service.py``), so they do not wait for the file. A process that finds the file
        locked without a service (one that starts before the service is advertised) leaves a
        marker in its private runtime folder (``_service.runtime_dir``) and the holder closes the file after its next
        transaction, reopening it for the one after.
        """
        with _process_lock:
            held = _held.setdefault(self.path, _Held())
            held.holders += 1
        try:
            yield
        finally:
            with _process_lock:
                held.holders -= 1
                if held.holders == 0:
                    if held.service is not None and time.monotonic() - held.service.last_call < SERVICE_LINGER:
                        # Others are writing through us: handing the file over costs every one of them
                        # a wait, so keep serving until they have been quiet for a while.
                        threading.Thread(target=_linger, args=(self.path, held), daemon=True).start()
                    else:
                        _release(self.path, held)


def _close_connection(connection: duckdb.DuckDBPyConnection) -> None:
    connection.close()


# After its run, a serving process keeps the file and the service while other processes still call it,
# until they have been quiet this long (or the process exits).
SERVICE_LINGER = 2.0


def _release(path: Path, held: _Held) -> None:
    """Stop serving and close a held file (the caller has ``_process_lock`` and no holders are left)."""
    if _held.get(path) is held:
        del _held[path]
    if held.service is not None:
        held.service.stop()
        held.service = None
    if held.connection is not None:
        # Closing checkpoints the file (tens of ms): done off the caller's path; the next open of this
        # file in this process waits for it (see _connect).
        closer = threading.Thread(target=_close_connection, args=(held.connection,), daemon=True)
        _closing[path] = closer
        closer.start()
        held.connection = None


def _linger(path: Path, held: _Held) -> None:
    while True:
        time.sleep(SERVICE_LINGER / 4)
        with _process_lock:
            if held.holders > 0 or _held.get(path) is not held:
                return  # a new run in this process holds it again, or it was released
            service = held.service
            if service is None or time.monotonic() - service.last_call >= SERVICE_LINGER:
                _release(path, held)
                return


@atexit.register
def _finish_closing() -> None:
    # A daemon thread killed at interpreter exit in the middle of DuckDB's close aborts the process.
    with _process_lock:
        for path, held in list(_held.items()):
            if held.holders == 0:
                _release(path, held)  # a lingering service
    for closer in list(_closing.values()):
        closer.join()


def _is_dead(host: Any, pid: Any, heartbeat: Any) -> bool:
    # A missing value may come as None, NaN or NaT (all unequal to themselves but None).
    if host == socket.gethostname() and pid is not None and pid == pid:
        return not _pid_alive(int(pid))
    if heartbeat is None or heartbeat != heartbeat:
        return True
    if hasattr(heartbeat, "to_pydatetime"):
        heartbeat = heartbeat.to_pydatetime()
    return (_now() - heartbeat).total_seconds() > STALE_HEARTBEAT_SECONDS


def _trial_column(column: str) -> str:
    # Column names go into SQL text, so only the trials table's own columns are accepted.
    if column not in TRIAL_COLUMNS:
        raise JournalError(f"unknown trial column {column!r}; the trials table has {', '.join(TRIAL_COLUMNS)}")
    return f'"{column}"'


_TRIAL_ORDER_SQL: dict[str, str] = {
    "trial": "t.example_index, t.repeat, t.trial_id",
    "score": "t.score ASC NULLS FIRST, t.example_index, t.repeat, t.trial_id",
    "error": "t.status = 'ok', t.score ASC NULLS FIRST, t.example_index, t.repeat, t.trial_id",
    "latency": "t.latency DESC NULLS LAST, t.example_index, t.repeat, t.trial_id",
}


LEADERBOARD_COLUMNS: tuple[str, ...] = (
    "experiment_id", "name", "kind", "status", "created_at", "program", "model",
    "n_trials", "n_errors", "mean", "ci_low", "ci_high", "ci_method", "parent_id", "role",
)  # fmt: skip
"""The columns of :meth:`DuckDBJournal.leaderboard`, in order."""

TRIAL_SORTS: tuple[str, ...] = (
    "example_id", "example_index", "repeat", "trial_id", "status", "score", "latency", "input_tokens",
    "output_tokens", "cost", "lm_calls", "attempts", "started_at", "finished_at", "error_type",
)  # fmt: skip
"""The trial columns :meth:`DuckDBJournal.trial_page` may sort by."""

# Per experiment (from the totals the writes keep, never a scan of the trials): counts over every trial;
# mean, spread (from the sum of squares) and count over the scores of ok trials.
_LEADERBOARD_SQL = """
SELECT e.id AS experiment_id, e.name, e.kind, e.status, e.created_at, e.program_name AS program,
       json_extract_string(e.config, '$.lm') AS model,
       coalesce(t.n_trials, 0) AS n_trials, coalesce(t.n_errors, 0) AS n_errors,
       coalesce(t.ok_n_scored, 0) AS n_scored, e.summary, e.host, e.pid, e.heartbeat_at, e.parent_id, e.role
FROM experiments e LEFT JOIN experiment_stats t ON t.experiment_id = e.id
WHERE true"""

# The experiment list's lines (ExperimentSummary), from the totals the writes keep; ``{where}`` and
# ``{order}`` are fixed text chosen by the caller, never user input.
_SUMMARY_SQL = """
SELECT e.id, e.name, e.kind, e.status, e.status_detail, e.program_name, e.program_fingerprint,
       e.dataset_name, e.dataset_fingerprint, e.metric, e.n_planned,
       coalesce(t.n_trials, 0) AS n_trials, coalesce(t.n_errors, 0) AS n_errors,
       t.score_sum / nullif(t.n_scored, 0) AS mean_score,
       e.created_at, e.finished_at, e.parent_id, e.role, e.heartbeat_at, e.host, e.pid
FROM experiments e LEFT JOIN experiment_stats t ON t.experiment_id = e.id
{where}
ORDER BY {order}"""

# What :meth:`DuckDBJournal.score_intervals` needs per experiment (the totals, never a scan of the trials).
_INTERVAL_SOURCES_SQL = """
SELECT e.id AS experiment_id, e.kind, e.status, e.summary, coalesce(t.ok_n_scored, 0) AS n_scored
FROM experiments e LEFT JOIN experiment_stats t ON t.experiment_id = e.id"""

# Per-example mean scores (repeats averaged: they are not independent) of the experiments given.
_EXAMPLE_SCORES_SQL = """
SELECT experiment_id, avg(score) AS score FROM trials
WHERE list_contains(?, experiment_id) AND status = 'ok' AND score IS NOT NULL
GROUP BY experiment_id, example_id ORDER BY experiment_id, min(example_index), example_id"""


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


def _check_limit(value: Any, label: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise JournalError(f"{label} must be a non-negative integer, got {value!r}")


def _check_bounds(min_score: Any, max_score: Any) -> None:
    for bound, value in (("min_score", min_score), ("max_score", max_score)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
        ):
            raise JournalError(f"{bound} must be a finite number or None, got {value!r}")


_TOUCH_EXPERIMENT = "UPDATE experiments SET heartbeat_at = ?, updated_at = ? WHERE id = ?"


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    """Give ``json`` the Python value of a numpy scalar (``numpy.bool_`` is no bool), else the repr."""
    if (
        type(value).__module__ == "numpy"
        and getattr(value, "ndim", None) == 0
        and callable(getattr(value, "item", None))
    ):
        return value.item()
    return repr(value)


class TrialWriter:
    """Stream finished trials into the journal from a background thread.

    ``add`` is cheap and never blocks on the database; a flusher thread writes
    what accumulated every ``flush_interval`` seconds in one transaction per
    experiment. A flush that fails (journal locked too long) keeps its rows for
    the next one; ``close`` makes a final flush and raises JournalError if rows
    remain unsaved.

    One writer may serve several experiments (an optimization run's candidate
    evaluations): :meth:`create` queues another experiment's record, and ``add``
    takes the experiment a row belongs to. Records are inserted before any of
    their trials, in the order they were queued.
    """

    def __init__(
        self,
        journal: _DuckDBStore,
        experiment_id: str,
        *,
        flush_interval: float = 0.4,
        create: ExperimentRecord | None = None,
    ) -> None:
        if create is not None and create.id != experiment_id:
            raise JournalError(f"writer for {experiment_id} was given the record of {create.id}")
        self.journal = journal
        self.experiment_id = experiment_id
        self.flush_interval = flush_interval
        self.written = 0
        self.last_error: BaseException | None = None
        self._pending_records: list[ExperimentRecord] = [create] if create is not None else []
        self._buffer: list[tuple[str, dict[str, Any]]] = []
        self._span_buffer: list[tuple[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dspex-journal", daemon=True)
        self._thread.start()

    def create(self, record: ExperimentRecord) -> str:
        """Queue another experiment's record; its trials may be added at once. Returns its id."""
        with self._lock:
            self._pending_records.append(record)
        return record.id

    def add(self, row: dict[str, Any], *, spans: Sequence[Any] = (), experiment_id: str | None = None) -> None:
        """Queue one trial row (and its spans, serialised later on the writer's thread) for the next flush."""
        target = experiment_id or self.experiment_id
        with self._lock:
            self._buffer.append((target, row))
            if spans:
                self._span_buffer.extend((target, span) for span in spans)

    def add_spans(self, trial_id: str, spans: Sequence[Any], *, experiment_id: str | None = None) -> None:
        """Queue the spans of one trial (a span sink: thread-safe, called from the trial's worker thread)."""
        if spans:
            target = experiment_id or self.experiment_id
            with self._lock:
                self._span_buffer.extend((target, span) for span in spans)

    def flush(self) -> None:
        """Write everything queued so far."""
        with self._lock:
            records, self._pending_records = self._pending_records, []
            rows, self._buffer = self._buffer, []
            spans, self._span_buffer = self._span_buffer, []
        # experiment -> (rows, spans); what is left in here after an error is put back.
        unsaved: dict[str, tuple[list[dict[str, Any]], list[Any]]] = {}
        for target, row in rows:
            unsaved.setdefault(target, ([], []))[0].append(row)
        for target, item in spans:
            unsaved.setdefault(target, ([], []))[1].append(item)
        if not unsaved:
            unsaved[self.experiment_id] = ([], [])  # a heartbeat for the writer's own experiment
        try:
            while records:
                self.journal.create_experiment(records[0])
                records.pop(0)
            for target, (trial_rows, trial_spans) in list(unsaved.items()):
                table = span_table(trial_spans) if trial_spans else ()
                self.written += self.journal.append_trials(target, trial_rows, spans=table)
                del unsaved[target]
            self.last_error = None
        except Exception as error:
            self.last_error = error
            with self._lock:
                self._pending_records[:0] = records
                self._buffer[:0] = [(target, row) for target, (items, _) in unsaved.items() for row in items]
                self._span_buffer[:0] = [(target, item) for target, (_, items) in unsaved.items() for item in items]

    def _loop(self) -> None:
        if self._pending_records:
            self.flush()
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def close(self) -> None:
        """Stop the flusher and write what remains."""
        self._stop.set()
        self._thread.join()
        self.flush()
        if self._buffer or self._pending_records:
            raise JournalError(
                f"{len(self._buffer)} trials could not be written to {self.journal.location}: {self.last_error}"
            )


def open_journal(path: str | os.PathLike[str] = "dspex.duckdb", *, lock_timeout: float = 60.0) -> DuckDBJournal:
    """Open (or prepare to create) the DuckDB journal at ``path``."""
    return DuckDBJournal(path, lock_timeout=lock_timeout)

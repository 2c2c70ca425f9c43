"""The DuckDB journal: one file shared by several processes through short transactions.

DuckDB lets one process at a time open a database file for writing (and
readers need the writer to be gone), so this journal never holds the file:
every read or write opens it, does its work in one transaction and closes it,
retrying with backoff while another process holds the lock. Writers flush
finished trials at least twice a second, so a crash loses well under a second
of work, and each flush also refreshes the experiment's heartbeat, from which
an experiment whose process died is seen as interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from dspex_lab.errors import JournalError
from dspex_lab.journal._schema import (
    ROW_SCHEMA,
    SCHEMA_VERSION,
    SPAN_SCHEMA,
    TRIAL_COLUMNS,
    current_version,
    ensure_schema,
    span_table,
)

__all__ = ["DuckDBJournal", "ExperimentRecord", "TrialWriter", "open_journal"]

# A running experiment whose heartbeat is older than this is shown as interrupted.
STALE_HEARTBEAT_SECONDS = 15.0
_process_lock = threading.RLock()


@dataclass
class _Held:
    """A journal file this process keeps open across transactions (see ``DuckDBJournal.hold``)."""

    connection: duckdb.DuckDBPyConnection | None = None
    holders: int = 0


_held: dict[Path, _Held] = {}
_closing: dict[Path, threading.Thread] = {}


_SELECTED = {
    "experiment_id": "?",
    "trial_id": "example_id || '/r' || CAST(repeat AS VARCHAR)",
    "example_index": '"index"',
    "started_at": "make_timestamp(CAST(started_at * 1e6 AS BIGINT))",
    "finished_at": "make_timestamp(CAST(finished_at * 1e6 AS BIGINT))",
}
_INSERT_TRIALS = (
    f"INSERT OR IGNORE INTO trials ({', '.join(TRIAL_COLUMNS)}) "
    f"SELECT {', '.join(_SELECTED.get(column, column) for column in TRIAL_COLUMNS)} FROM incoming_trials"
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _is_lock_conflict(error: duckdb.Error) -> bool:
    text = str(error)
    return "lock" in text.lower() or "different configuration" in text or "Conflicting lock" in text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class ExperimentRecord:
    """What is known about an experiment when it starts."""

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


class DuckDBJournal:
    """The default journal: a DuckDB file shared by kernels, the CLI and the dashboard.

    Thread safety: every method may be called from any thread; calls within one
    process are serialised, calls from other processes wait for the file lock
    (up to ``lock_timeout`` seconds) and then raise :class:`JournalError`.
    """

    def __init__(self, path: str | os.PathLike[str], *, lock_timeout: float = 60.0) -> None:
        # Resolved once, so a later change of working directory cannot move the journal.
        self.path = Path(path).resolve()
        self.lock_timeout = lock_timeout
        if self.path.is_dir():
            raise JournalError(f"journal path {self.path} is a directory; give a file such as dspex.duckdb")
        if self.path.exists() and not self._is_current():
            # Migrate a journal written by an older dspex_lab (ensure_schema runs on write).
            with self._connect(write=True):
                pass

    def __repr__(self) -> str:
        return f"DuckDBJournal({str(self.path)!r})"

    # -- connections ---------------------------------------------------------------------------

    def _is_current(self) -> bool:
        with self._connect(write=False) as connection:
            return self._readonly_ok(connection)

    @staticmethod
    def _readonly_ok(connection: duckdb.DuckDBPyConnection) -> bool:
        return current_version(connection) == SCHEMA_VERSION

    @property
    def _waiting_dir(self) -> Path:
        return self.path.with_name(self.path.name + ".waiting")

    def _open(self, *, write: bool) -> duckdb.DuckDBPyConnection:
        """Open the file, retrying while another process holds it; announce the wait meanwhile."""
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.01
        marker: Path | None = None
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
                        raise JournalError(f"cannot open journal {self.path}: {error}") from error
                    if time.monotonic() > deadline:
                        raise JournalError(
                            f"journal {self.path} stayed locked by another process for {self.lock_timeout:g} s"
                        ) from error
                    if marker is None:
                        # Tells a process that holds the file across a run to let go after its next flush.
                        self._waiting_dir.mkdir(exist_ok=True)
                        marker = self._waiting_dir / f"{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
                        marker.touch()
                    time.sleep(delay)
                    delay = min(delay * 1.5, 0.2)
                except RuntimeError as error:
                    raise JournalError(f"cannot open journal {self.path}: {error}") from error
        finally:
            if marker is not None:
                marker.unlink(missing_ok=True)
                with contextlib.suppress(OSError):  # another waiter may still be using the folder
                    self._waiting_dir.rmdir()

    def _others_waiting(self) -> bool:
        try:
            names = os.listdir(self._waiting_dir)
        except FileNotFoundError:
            return False
        own = os.getpid()
        for name in names:
            pid_text = name.split("-", 1)[0]
            if pid_text.isdigit() and int(pid_text) != own and _pid_alive(int(pid_text)):
                return True
        return False

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        with _process_lock:
            held = _held.get(self.path)
            closer = _closing.pop(self.path, None)
            if closer is not None:
                closer.join()
            if held is None:
                connection = self._open(write=write)
                try:
                    yield connection
                finally:
                    connection.close()
                return
            if held.connection is None:
                held.connection = self._open(write=True)
            cursor = held.connection.cursor()
            try:
                yield cursor
            finally:
                cursor.close()
                if self._others_waiting():
                    held.connection.close()
                    held.connection = None

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Keep the file open across many writes (a run), letting go whenever another process waits.

        Opening a DuckDB file costs tens of milliseconds, so a run holds it; a process that
        finds it locked leaves a marker in ``<journal>.waiting/`` and the holder closes the
        file after its next transaction, reopening it for the one after.
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
                    del _held[self.path]
                    if held.connection is not None:
                        # Closing checkpoints the file (tens of ms): done off the caller's path; the
                        # next open of this file in this process waits for it (see _connect).
                        closer = threading.Thread(target=_close_connection, args=(held.connection,), daemon=True)
                        _closing[self.path] = closer
                        closer.start()

    # -- writing -------------------------------------------------------------------------------

    def create_experiment(self, record: ExperimentRecord) -> str:
        """Insert a new running experiment (and its small dataset's examples) and return its id."""
        now = _now()
        with self._connect(write=True) as connection:
            self._mark_dead_experiments(connection)
            if record.examples:
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
                """INSERT INTO experiments (id, kind, name, status, program_name, program_fingerprint, program_spec,
                   dataset_name, dataset_fingerprint, dataset_manifest, metric, config, environment, n_planned,
                   host, pid, created_at, updated_at, heartbeat_at)
                   VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
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
        if not rows:
            with self._connect(write=True) as connection:
                connection.execute("UPDATE experiments SET heartbeat_at = ? WHERE id = ?", [_now(), experiment_id])
            return 0
        incoming = pa.Table.from_pylist(list(rows), schema=ROW_SCHEMA)
        with self._connect(write=True) as connection:
            connection.register("incoming_trials", incoming)
            connection.execute("BEGIN TRANSACTION")
            connection.execute(_INSERT_TRIALS, [experiment_id])
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

    # -- reading -------------------------------------------------------------------------------

    def sql(self, query: str, parameters: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query over the journal's tables and return a DataFrame."""
        if not self.path.exists():
            raise JournalError(f"journal {self.path} does not exist yet")
        with self._connect(write=False) as connection:
            try:
                return connection.execute(query, parameters or []).df()
            except duckdb.Error as error:
                raise JournalError(f"query failed on {self.path}: {error}") from error

    def experiments(self) -> pd.DataFrame:
        """Return every experiment, newest first, with trial counts and its current status."""
        if not self.path.exists():
            return pd.DataFrame(columns=["id", "name", "kind", "status", "n_trials", "n_errors", "created_at"])
        frame = self.sql(
            """SELECT e.id, e.name, e.kind, e.status, e.status_detail, e.program_name, e.program_fingerprint,
                      e.dataset_name, e.dataset_fingerprint, e.metric, e.n_planned,
                      coalesce(t.n_trials, 0) AS n_trials, coalesce(t.n_errors, 0) AS n_errors, t.mean_score,
                      e.created_at, e.finished_at, e.heartbeat_at, e.host, e.pid
               FROM experiments e LEFT JOIN (
                   SELECT experiment_id, count(*) AS n_trials, count(*) FILTER (status = 'error') AS n_errors,
                          avg(score) AS mean_score
                   FROM trials GROUP BY experiment_id) t ON t.experiment_id = e.id
               ORDER BY e.created_at DESC"""
        )
        if len(frame):
            running = frame["status"] == "running"
            dead = [
                bool(is_running) and _is_dead(host, pid, heartbeat)
                for is_running, host, pid, heartbeat in zip(
                    running, frame["host"], frame["pid"], frame["heartbeat_at"], strict=True
                )
            ]
            frame.loc[dead, "status"] = "interrupted"
        return frame

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """Return one experiment as a dict (JSON columns decoded)."""
        frame = self.sql("SELECT * FROM experiments WHERE id = ?", [experiment_id])
        if frame.empty:
            raise JournalError(f"no experiment {experiment_id!r} in {self.path}")
        row = frame.iloc[0].to_dict()
        for column in ("program_spec", "dataset_manifest", "config", "environment", "summary"):
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
        if row["status"] == "running" and _is_dead(row["host"], row["pid"], row["heartbeat_at"]):
            row["status"] = "interrupted"
        return row

    def trials(self, experiment_id: str, *, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """Return an experiment's trials in example order."""
        selected = ", ".join(columns) if columns else "*"
        return self.sql(
            f"SELECT {selected} FROM trials WHERE experiment_id = ? ORDER BY example_index, repeat",
            [experiment_id],
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
        if not self.path.exists():
            raise JournalError(f"journal {self.path} does not exist yet")
        # Fetched as Python rows, not through a DataFrame: NULL stays None, and 10,000 rows load in a third
        # of the time (the trace viewer reads a whole trial on every selection).
        with self._connect(write=False) as connection:
            try:
                cursor = connection.execute(query + " ORDER BY trace_id, start_ns, end_ns DESC, span_id", parameters)
                names = [column[0] for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
            except duckdb.Error as error:
                raise JournalError(f"query failed on {self.path}: {error}") from error

    def spans(self, experiment_id: str, trials: str | Sequence[str] | None = None) -> list[Any]:
        """Return the spans (``dspex_lab.trace.Span``) of one trial, of several, or of every trial of an experiment."""
        from dspex_lab.trace import Span

        return [Span.from_row(row) for row in self.span_rows(experiment_id, trials)]

    def trace(self, experiment_id: str, trial_id: str) -> Any:
        """Return one trial's span tree (a ``dspex_lab.trace.TraceTree``), loading only that trial's spans."""
        from dspex_lab.trace import TraceTree

        spans = self.spans(experiment_id, trial_id)
        if not spans:
            raise JournalError(
                f"no spans for trial {trial_id!r} of experiment {experiment_id!r}: "
                "was it evaluated with dx.evaluate(..., trace=True)?"
            )
        return TraceTree.from_spans(spans)

    def dataset_examples(self, fingerprint: str) -> list[tuple[str, dict[str, Any]]]:
        """Return the stored (example id, fields) of a dataset, in order (empty if it was not stored)."""
        frame = self.sql(
            "SELECT example_id, record FROM dataset_examples WHERE dataset_fingerprint = ? ORDER BY position",
            [fingerprint],
        )
        return [
            (example_id, json.loads(record))
            for example_id, record in zip(frame["example_id"], frame["record"], strict=True)
        ]

    def register_hypothesis(self, record: dict[str, Any]) -> str:
        """Insert a pre-registered hypothesis (status ``registered``) and return its id."""
        with self._connect(write=True) as connection:
            connection.execute(
                """INSERT INTO hypotheses (id, statement, metric, baseline, treatment, direction, min_effect, alpha,
                   status, registered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'registered', ?)""",
                [
                    record["id"],
                    record["statement"],
                    record.get("metric"),
                    record["baseline"],
                    record["treatment"],
                    record["direction"],
                    record["min_effect"],
                    record["alpha"],
                    _now(),
                ],
            )
        return str(record["id"])

    def decide_hypothesis(self, hypothesis_id: str, *, status: str, verdict: dict[str, Any]) -> None:
        """Record a hypothesis' verdict."""
        with self._connect(write=True) as connection:
            connection.execute(
                "UPDATE hypotheses SET status = ?, verdict = ?, decided_at = ? WHERE id = ?",
                [status, _json(verdict), _now(), hypothesis_id],
            )

    def hypotheses(self) -> pd.DataFrame:
        """Return every hypothesis, oldest first."""
        if not self.path.exists():
            return pd.DataFrame(columns=["id", "statement", "status", "registered_at"])
        return self.sql("SELECT * FROM hypotheses ORDER BY registered_at")

    def finished_keys(self, experiment_id: str) -> set[tuple[str, int]]:
        """Return (example_id, repeat) of every recorded trial of an experiment."""
        frame = self.sql("SELECT example_id, repeat FROM trials WHERE experiment_id = ?", [experiment_id])
        return set(zip(frame["example_id"], frame["repeat"].astype(int), strict=True))

    def writer(
        self, experiment_id: str, *, flush_interval: float = 0.4, create: ExperimentRecord | None = None
    ) -> TrialWriter:
        """Return a background writer that streams trials of ``experiment_id`` into this journal.

        With ``create``, the writer inserts that experiment first, on its own thread, so a run
        does not wait for the journal before its first trial.
        """
        return TrialWriter(self, experiment_id, flush_interval=flush_interval, create=create)


def _close_connection(connection: duckdb.DuckDBPyConnection) -> None:
    connection.close()


@atexit.register
def _finish_closing() -> None:
    # A daemon thread killed at interpreter exit in the middle of DuckDB's close aborts the process.
    for closer in list(_closing.values()):
        closer.join()


def _is_dead(host: Any, pid: Any, heartbeat: Any) -> bool:
    if host == socket.gethostname() and pid is not None and not pd.isna(pid):
        return not _pid_alive(int(pid))
    if heartbeat is None or pd.isna(heartbeat):
        return True
    return (_now() - pd.Timestamp(heartbeat).to_pydatetime()).total_seconds() > STALE_HEARTBEAT_SECONDS


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=repr)


class TrialWriter:
    """Stream finished trials into the journal from a background thread.

    ``add`` is cheap and never blocks on the database; a flusher thread writes
    what accumulated every ``flush_interval`` seconds in one transaction. A
    flush that fails (journal locked too long) keeps its rows for the next one;
    ``close`` makes a final flush and raises JournalError if rows remain unsaved.
    """

    def __init__(
        self,
        journal: DuckDBJournal,
        experiment_id: str,
        *,
        flush_interval: float = 0.4,
        create: ExperimentRecord | None = None,
    ) -> None:
        if create is not None and create.id != experiment_id:
            raise JournalError(f"writer for {experiment_id} was given the record of {create.id}")
        self.journal = journal
        self.experiment_id = experiment_id
        self._pending_record = create
        self.flush_interval = flush_interval
        self.written = 0
        self.last_error: BaseException | None = None
        self._buffer: list[dict[str, Any]] = []
        self._span_buffer: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dspex-journal", daemon=True)
        self._thread.start()

    def add(self, row: dict[str, Any], *, spans: Sequence[Any] = ()) -> None:
        """Queue one trial row (and its spans, serialised later on the writer's thread) for the next flush."""
        with self._lock:
            self._buffer.append(row)
            if spans:
                self._span_buffer.extend(spans)

    def flush(self) -> None:
        """Write everything queued so far."""
        with self._lock:
            rows, self._buffer = self._buffer, []
            spans, self._span_buffer = self._span_buffer, []
        try:
            if self._pending_record is not None:
                self.journal.create_experiment(self._pending_record)
                self._pending_record = None
            table = span_table(spans) if spans else ()
            self.written += self.journal.append_trials(self.experiment_id, rows, spans=table)
            self.last_error = None
        except Exception as error:
            self.last_error = error
            with self._lock:
                self._buffer[:0] = rows
                self._span_buffer[:0] = spans

    def _loop(self) -> None:
        if self._pending_record is not None:
            self.flush()
        while not self._stop.wait(self.flush_interval):
            self.flush()

    def close(self) -> None:
        """Stop the flusher and write what remains."""
        self._stop.set()
        self._thread.join()
        self.flush()
        if self._buffer or self._pending_record is not None:
            raise JournalError(
                f"{len(self._buffer)} trials could not be written to {self.journal.path}: {self.last_error}"
            )


def open_journal(path: str | os.PathLike[str] = "dspex.duckdb", *, lock_timeout: float = 60.0) -> DuckDBJournal:
    """Open (or prepare to create) the DuckDB journal at ``path``."""
    return DuckDBJournal(path, lock_timeout=lock_timeout)

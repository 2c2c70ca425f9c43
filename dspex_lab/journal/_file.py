"""Access to a journal file shared by several processes: short transactions, a held file, and the journal service.

DuckDB lets one process at a time open a database file for writing (and
readers need the writer to be gone). Outside a run, every read or write opens
the file, does its work in one transaction and closes it, retrying with backoff
while another process holds the lock. A run holds the file (``hold``) and its
process serves every other process's journal calls meanwhile (``_service.py``),
so many writers and pollers do not take turns at the file. :class:`FileAccess`
is this seam for :class:`~dspex_lab.journal.DuckDBJournal`; :func:`serve_calls`
routes its calls through another process's service. None of it runs for an
in-memory journal.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from dspex_lab.errors import JournalError
from dspex_lab.journal._base import DuckDBStore, keeping_interrupts, raise_if_interrupted
from dspex_lab.journal._schema import SCHEMA_VERSION, current_version, ensure_schema
from dspex_lab.journal._service import (
    JournalService,
    ServiceGone,
    ServiceUnavailable,
    call_service,
    process_start_time,
    service_address,
    service_available,
)

__all__ = ["SERVICE_LINGER", "FileAccess", "access_waits", "serve_calls"]

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
# call with picklable arguments and result, and every one that writes is idempotent. Filled by _served.
_SERVED: set[str] = set()
_WRITES = frozenset(
    {
        "create_experiment", "claim_experiment", "finish_experiment", "append_trials", "register_hypothesis",
        "decide_hypothesis", "record_candidates", "record_step", "finish_children", "record_annotation",
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


# The file journal's methods that serve_calls routes through another process's service: its writes and
# queries (the DataFrame conveniences call these).
_SERVED_CALLS = (
    "create_experiment", "claim_experiment", "finish_experiment", "append_trials", "register_hypothesis",
    "decide_hypothesis", "record_candidates", "record_step", "finish_children", "sql", "experiment_summaries",
    "children", "parent", "ended_summaries", "experiment", "trial_rows", "trial_counts", "leaderboard",
    "score_intervals", "trial_page", "paired_scores", "comparable_pair", "span_rows", "span_counts",
    "dataset_examples", "hypothesis_rows", "candidate_rows", "step_rows", "children_trial_rows", "finished_keys",
    "child_timeline", "record_annotation", "annotation_rows",
)  # fmt: skip


_Class = TypeVar("_Class", bound=type)


def serve_calls(cls: _Class) -> _Class:
    """Route the served calls of a file journal class through the serving process (see :func:`_served`).

    Applied to the file store only: the shared implementation stays unwrapped, so an in-memory journal
    never looks for a service.
    """
    for name in _SERVED_CALLS:
        setattr(cls, name, _served(getattr(cls, name)))
    return cls


def _is_lock_conflict(error: duckdb.Error) -> bool:
    # Matched on DuckDB's own phrases: a loose "lock" would also match "block" in a corruption report.
    text = str(error)
    return "Could not set lock" in text or "Conflicting lock" in text or "different configuration" in text


def _leave_marker(folder: Path | None) -> Path | None:
    """Create this waiter's marker in the private waiting folder (None where there is no safe folder)."""
    if folder is None:
        return None
    marker = folder / f"{os.getpid()}-{process_start_time(os.getpid())}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    for _ in range(_MARKER_ATTEMPTS):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        try:
            descriptor = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # another waiter removed the folder as it left, between our mkdir and open: make it again
        os.close(descriptor)
        return marker
    return None  # the folder kept vanishing: wait unannounced (the holder lets go at the end of its run)


# Attempts at leaving a waiting marker while other waiters come and go from the folder.
_MARKER_ATTEMPTS = 20


class FileAccess(DuckDBStore):
    """How a :class:`~dspex_lab.journal.DuckDBJournal` reaches its file: the seam of :class:`DuckDBStore`.

    Thread safety: calls within one process are serialised; calls from other processes wait for the
    file lock (up to ``lock_timeout`` seconds, then :class:`JournalError`), or go through the process
    that holds the file and serves it.
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
        return f"{type(self).__name__}({str(self.path)!r})"

    @property
    def location(self) -> str:
        """Where the journal is, for messages: ``journal <resolved path>``."""
        return f"journal {self.path}"

    @property
    def durable(self) -> bool:
        """True: what is written is in the file, for other processes and later sessions."""
        return True

    def _exists(self) -> bool:
        return self.path.exists()

    @contextlib.contextmanager
    def _read_only(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with _process_lock, keeping_interrupts():
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
                    raise_if_interrupted(error)
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
                    raise_if_interrupted(error)
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
        with _process_lock, keeping_interrupts():
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

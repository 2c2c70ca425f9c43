"""The in-memory journal: what a run writes when the user asks for no journal file.

"No journal" is a store, never ``None`` (as optuna's ``InMemoryStorage``): the upper layers write
and read it exactly as they would a file, through one code path. It is an in-memory DuckDB
database with the file journal's schema, written and queried by the very same mixins as the file
journal (``_experiments``, ``_trials``, ``_optimization``, ``_views``) over its own seam, so the
two cannot disagree on what a write keeps or a query answers. What it lacks is everything a
shared file needs: no file, no file lock, no journal service for other processes, no waiting
markers. It lives as long as the object and is seen by this process only.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import duckdb

from dspex_lab.journal._annotations import AnnotationQueries
from dspex_lab.journal._base import keeping_interrupts
from dspex_lab.journal._experiments import ExperimentQueries
from dspex_lab.journal._optimization import OptimizationQueries
from dspex_lab.journal._schema import ensure_schema
from dspex_lab.journal._trials import TrialQueries
from dspex_lab.journal._views import ViewQueries

__all__ = ["MemoryJournal", "memory_journal"]


class MemoryJournal(ExperimentQueries, TrialQueries, OptimizationQueries, ViewQueries, AnnotationQueries):
    """A journal kept in this process's memory for the object's life: nothing is written to disk.

    Thread safety: every method may be called from any thread; calls are serialised by one lock, each
    on a cursor of the one connection the journal holds, so a reader sees every write that returned
    before it started. Another ``MemoryJournal`` shares nothing with this one.

    Examples:
        >>> journal = memory_journal()
        >>> journal.durable, journal.path, journal.experiment_summaries()
        (False, None, [])
    """

    path: None

    def __init__(self) -> None:
        self.path = None
        self._lock = threading.RLock()
        self._database = duckdb.connect(":memory:")
        ensure_schema(self._database)
        # Set once for the database's life, so sql() can neither read local files nor change settings (a file
        # journal sets both on the read-only connection it opens for each query).
        self._database.execute("SET enable_external_access = false")
        self._database.execute("SET lock_configuration = true")

    def __repr__(self) -> str:
        return "MemoryJournal()"

    @property
    def location(self) -> str:
        """Where the journal is, for messages: an in-memory journal, kept for this process only."""
        return "an in-memory journal (kept for this process only)"

    @property
    def durable(self) -> bool:
        """False: what is written is gone when this process ends (or the journal is dropped)."""
        return False

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Do nothing: the database is held for the journal's whole life (the file journal's ``hold`` opens it)."""
        yield

    def _exists(self) -> bool:
        return True  # the schema is made with the database

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        # One call at a time: two writers updating one experiment's totals at once would conflict.
        with self._lock, keeping_interrupts():
            cursor = self._database.cursor()
            try:
                yield cursor
            finally:
                cursor.close()  # rolls back a transaction a failed call left open

    @contextlib.contextmanager
    def _read_only(self) -> Iterator[duckdb.DuckDBPyConnection]:
        # An in-memory database cannot be opened read-only: whatever the query does is rolled back.
        with self._lock, keeping_interrupts():
            cursor = self._database.cursor()
            try:
                cursor.execute("BEGIN TRANSACTION")
                yield cursor
            finally:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
                cursor.close()


def memory_journal() -> MemoryJournal:
    """Return a new, empty in-memory journal (what a run uses when asked for no journal file).

    Examples:
        >>> memory_journal()
        MemoryJournal()
    """
    return MemoryJournal()

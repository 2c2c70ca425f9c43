"""The seam both journals share: one DuckDB database reached through ``_connect``, and the helpers every query uses.

:class:`DuckDBStore` is what the query mixins (``_experiments``, ``_trials``, ``_optimization``,
``_views``) are written against: a connection for one call, whether the journal exists yet, where it
is (for messages), and a connection :meth:`~DuckDBStore.sql` may run a user's query on. The file
journal (``_file.py``) and the in-memory journal (``_memory.py``) each provide that seam once; every
write and query is written once, above it, so the two stores cannot disagree on what they keep or
answer.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from dspex_lab._records import TRIAL_COLUMNS
from dspex_lab.errors import JournalError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["STALE_HEARTBEAT_SECONDS", "DuckDBStore", "keeping_interrupts", "raise_if_interrupted"]

# A running experiment whose heartbeat is older than this is shown as interrupted.
STALE_HEARTBEAT_SECONDS = 15.0


class DuckDBStore(abc.ABC):
    """A journal kept in one DuckDB database with the journal's schema, reached through one seam.

    A store provides :meth:`_connect` (a connection for one call), :meth:`_read_only` (one for
    :meth:`sql`), :meth:`_exists`, :meth:`hold`, :attr:`location` and :attr:`durable`; the query
    mixins provide everything else, on top of them.
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

    @abc.abstractmethod
    def sql(self, query: str, parameters: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run a read-only SQL query over the journal's tables (see ``_views.ViewQueries.sql``)."""

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

    def _frame(self, query: str, parameters: Sequence[Any] = ()) -> pd.DataFrame:
        """Run a read query and return a DataFrame (its columns typed by DuckDB, even when empty)."""
        if not self._exists():
            raise JournalError(f"{self.location} does not exist yet")
        with self._connect(write=False) as connection:
            try:
                return connection.execute(query, list(parameters)).df()
            except duckdb.Error as error:
                raise JournalError(f"query failed on {self.location}: {error}") from error


def raise_if_interrupted(error: BaseException) -> None:
    """Raise KeyboardInterrupt if ``error``, or what caused it, is DuckDB reporting a Ctrl-C it caught.

    DuckDB's Python client watches for a pending interrupt while it works and, finding one, consumes
    it and raises ``RuntimeError('Query interrupted')``. Turned into a JournalError, the user's stop
    button (a notebook interrupt, Ctrl-C) would be lost: a caller that tolerates journal errors
    (a warning's lookup before a run) would carry on as if nothing had been asked.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, RuntimeError) and "Query interrupted" in str(seen):
            raise KeyboardInterrupt("interrupted during a journal query") from error
        seen = seen.__cause__


@contextlib.contextmanager
def keeping_interrupts() -> Iterator[None]:
    """Give back, as KeyboardInterrupt, an interrupt DuckDB consumed in the block (see raise_if_interrupted)."""
    try:
        yield
    except Exception as error:
        raise_if_interrupted(error)
        raise


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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

"""The DuckDB file journal: one file shared by several processes through short transactions and a service.

:class:`DuckDBJournal` is the file access of ``_file.py`` (open per call, hold for a run, serve the
other processes meanwhile) with the query mixins every store shares: experiments and hypotheses
(``_experiments.py``), trials and spans (``_trials.py``, streamed by the ``TrialWriter`` of
``_writer.py``), optimization runs (``_optimization.py``), the views (``_views.py``) and people's
annotations of trials (``_annotations.py``). The
in-memory journal (``_memory.py``) is the same mixins over an in-memory database.
"""

from __future__ import annotations

import os

from dspex_lab._records import ExperimentRecord
from dspex_lab.journal import _base, _experiments, _file, _trials, _views
from dspex_lab.journal._annotations import AnnotationQueries
from dspex_lab.journal._experiments import ExperimentQueries
from dspex_lab.journal._file import FileAccess, serve_calls
from dspex_lab.journal._optimization import OptimizationQueries
from dspex_lab.journal._trials import TrialQueries
from dspex_lab.journal._views import LEADERBOARD_COLUMNS, TRIAL_SORTS, ViewQueries
from dspex_lab.journal._writer import TrialWriter

__all__ = ["LEADERBOARD_COLUMNS", "TRIAL_SORTS", "DuckDBJournal", "ExperimentRecord", "TrialWriter", "open_journal"]


@serve_calls
class DuckDBJournal(FileAccess, ExperimentQueries, TrialQueries, OptimizationQueries, ViewQueries, AnnotationQueries):
    """The default journal: a DuckDB file shared by kernels, the CLI and the dashboard.

    What is written is durable: it is in the file for other processes and later sessions.

    Thread safety: every method may be called from any thread; calls within one
    process are serialised, calls from other processes wait for the file lock
    (up to ``lock_timeout`` seconds) and then raise :class:`JournalError`, or go
    through the process whose run holds the file (see :meth:`hold`).
    """


def open_journal(path: str | os.PathLike[str] = "dspex.duckdb", *, lock_timeout: float = 60.0) -> DuckDBJournal:
    """Open (or prepare to create) the DuckDB journal at ``path``."""
    return DuckDBJournal(path, lock_timeout=lock_timeout)


# This module was the whole journal before it was split by concern: the names it defined stay importable
# from here, since code and benchmarks outside the journal import them (bench_journal reads access_waits).
STALE_HEARTBEAT_SECONDS = _base.STALE_HEARTBEAT_SECONDS
_TOUCH_EXPERIMENT = _base._TOUCH_EXPERIMENT
_check_bounds = _base._check_bounds
_check_limit = _base._check_limit
_is_dead = _base._is_dead
_json = _base._json
_json_default = _base._json_default
_now = _base._now
_pid_alive = _base._pid_alive
_trial_column = _base._trial_column
SERVICE_LINGER = _file.SERVICE_LINGER
_SERVED = _file._SERVED
_WRITES = _file._WRITES
_Held = _file._Held
_Method = _file._Method
_UseService = _file._UseService
_Waits = _file._Waits
_close_connection = _file._close_connection
_closing = _file._closing
_finish_closing = _file._finish_closing
_held = _file._held
_hosting = _file._hosting
_is_lock_conflict = _file._is_lock_conflict
_leave_marker = _file._leave_marker
_linger = _file._linger
_process_lock = _file._process_lock
_record_wait = _file._record_wait
_release = _file._release
_served = _file._served
_waits = _file._waits
_waits_lock = _file._waits_lock
access_waits = _file.access_waits
_SUMMARY_SQL = _experiments._SUMMARY_SQL
_ADD_STATS = _trials._ADD_STATS
_FIRST_STATS = _trials._FIRST_STATS
_INSERT_TRIALS = _trials._INSERT_TRIALS
_STATS_COLUMNS = _trials._STATS_COLUMNS
_TRIAL_ORDER_SQL = _trials._TRIAL_ORDER_SQL
_selected = _trials._selected
_totals = _trials._totals
_EXAMPLE_TOTALS_SQL = _views._EXAMPLE_TOTALS_SQL
_INTERVAL_SOURCES_SQL = _views._INTERVAL_SOURCES_SQL
_LEADERBOARD_SQL = _views._LEADERBOARD_SQL
_stored_interval = _views._stored_interval

"""The journal: a record of every experiment, trial and span, in DuckDB.

This layer owns the store contract (:class:`JournalWriter` for what runs write,
:class:`JournalReader` for the queries the CLI, the widgets, the result HTML and
the dashboard share, and :class:`JournalStore`, both), its two
implementations (:class:`DuckDBJournal`, a durable file shared by several
processes, and :class:`MemoryJournal`, kept in memory for one process when the
user asks for no journal file), the storage schema and its migrations,
concurrent access from several processes and streaming trial writes. It stores
span rows and never imports the trace layer. Names load on first use, so
importing the contract does not load DuckDB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dspex_lab._lazy import lazy_exports

if TYPE_CHECKING:
    from dspex_lab._records import ExperimentRecord
    from dspex_lab.journal._annotations import ANNOTATION_BOUNDS, ANNOTATION_COLUMNS, is_withdrawal
    from dspex_lab.journal._duckdb import DuckDBJournal, open_journal
    from dspex_lab.journal._memory import MemoryJournal, memory_journal
    from dspex_lab.journal._schema import SCHEMA_VERSION, trials_frame
    from dspex_lab.journal._store import (
        EXPERIMENT_ROLES,
        TRIAL_ORDERS,
        ExperimentSummary,
        JournalReader,
        JournalStore,
        JournalWriter,
        TraceReader,
        TrialOrder,
        set_trace_reader,
    )
    from dspex_lab.journal._views import LEADERBOARD_COLUMNS, TRIAL_SORTS
    from dspex_lab.journal._writer import TrialWriter

__all__ = [
    "ANNOTATION_BOUNDS",
    "ANNOTATION_COLUMNS",
    "EXPERIMENT_ROLES",
    "LEADERBOARD_COLUMNS",
    "SCHEMA_VERSION",
    "TRIAL_ORDERS",
    "TRIAL_SORTS",
    "DuckDBJournal",
    "ExperimentRecord",
    "ExperimentSummary",
    "JournalReader",
    "JournalStore",
    "JournalWriter",
    "MemoryJournal",
    "TraceReader",
    "TrialOrder",
    "TrialWriter",
    "is_withdrawal",
    "memory_journal",
    "open_journal",
    "set_trace_reader",
    "trials_frame",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "ANNOTATION_BOUNDS": "dspex_lab.journal._annotations",
        "ANNOTATION_COLUMNS": "dspex_lab.journal._annotations",
        "EXPERIMENT_ROLES": "dspex_lab.journal._store",
        "LEADERBOARD_COLUMNS": "dspex_lab.journal._views",
        "SCHEMA_VERSION": "dspex_lab.journal._schema",
        "TRIAL_ORDERS": "dspex_lab.journal._store",
        "TRIAL_SORTS": "dspex_lab.journal._views",
        "DuckDBJournal": "dspex_lab.journal._duckdb",
        "ExperimentRecord": "dspex_lab._records",
        "ExperimentSummary": "dspex_lab.journal._store",
        "JournalReader": "dspex_lab.journal._store",
        "JournalStore": "dspex_lab.journal._store",
        "JournalWriter": "dspex_lab.journal._store",
        "MemoryJournal": "dspex_lab.journal._memory",
        "TrialOrder": "dspex_lab.journal._store",
        "TraceReader": "dspex_lab.journal._store",
        "set_trace_reader": "dspex_lab.journal._store",
        "TrialWriter": "dspex_lab.journal._writer",
        "is_withdrawal": "dspex_lab.journal._annotations",
        "memory_journal": "dspex_lab.journal._memory",
        "open_journal": "dspex_lab.journal._duckdb",
        "trials_frame": "dspex_lab.journal._schema",
    },
)

"""A Ctrl-C (or a notebook's stop button) that lands while DuckDB works is given back, never lost.

DuckDB's Python client consumes a pending interrupt and raises RuntimeError('Query interrupted');
a journal that turned that into a JournalError would lose the user's stop (a caller tolerating
journal errors carries on). Both stores give it back as KeyboardInterrupt.
"""

from __future__ import annotations

import _thread
import threading
from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal._base import raise_if_interrupted

LONG_QUERY = "select count(*) from range(100000000000) a"  # minutes of work: only the interrupt ends it


@pytest.fixture(params=["file", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "memory":
        return dx.journal.memory_journal()
    journal = dx.open_journal(tmp_path / "j.duckdb")
    journal.experiment_summaries()  # the file exists
    journal.register_hypothesis(
        {
            "id": "h",
            "statement": "s",
            "baseline": "a",
            "treatment": "b",
            "direction": "greater",
            "min_effect": 0.1,
            "alpha": 0.05,
        }
    )
    return journal


def test_an_interrupt_during_a_query_is_raised_as_keyboard_interrupt(store):
    timer = threading.Timer(0.5, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            store.sql(LONG_QUERY)
    finally:
        timer.cancel()
    assert store.sql("select 42 as answer")["answer"][0] == 42  # the journal is still usable


def test_an_interrupt_wrapped_in_a_journal_error_is_still_an_interrupt():
    cause = RuntimeError("Query interrupted")
    wrapped = JournalError("cannot open journal /x.duckdb: Query interrupted")
    wrapped.__cause__ = cause
    with pytest.raises(KeyboardInterrupt):
        raise_if_interrupted(wrapped)
    raise_if_interrupted(JournalError("query failed: Binder Error"))  # any other error is left as it is

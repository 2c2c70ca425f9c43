"""The context a run reads its surroundings from: which journal it keeps, whatever the user asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import DuckDBJournal, JournalStore, MemoryJournal, memory_journal
from dspex_lab.session import journal_store


def test_no_journal_is_a_fresh_in_memory_store_for_each_context():
    first, second = dx.Context(journal=False), dx.Context(journal=False)
    assert isinstance(first.journal, MemoryJournal) and isinstance(first.journal, JournalStore)
    assert first.journal is not second.journal, "two contexts without a journal file must not share trials"
    assert not first.journal.durable and first.journal.path is None
    assert f"journal={first.journal.location!r}" in repr(first) and "in-memory" in repr(first)


def test_a_path_opens_a_file_journal_and_repr_says_where(journal_path: Path):
    context = dx.Context(journal=journal_path)
    assert isinstance(context.journal, DuckDBJournal) and context.journal.durable
    assert f"journal={context.journal.location!r}" in repr(context) and str(journal_path) in repr(context)


def test_the_default_journal_is_the_settings_file(tmp_path: Path):
    # conftest runs each test in its own temp folder, where the settings' default journal lands.
    assert dx.Context().journal.path == Path("dspex.duckdb").resolve()
    assert dx.Context(journal=True).journal.path == Path("dspex.duckdb").resolve()


@pytest.mark.parametrize("make", [memory_journal, lambda: dx.open_journal("given.duckdb")])
def test_a_journal_object_is_used_as_given(make):
    store = make()
    assert dx.Context(journal=store).journal is store


def test_a_journal_of_another_type_is_refused_with_what_is_accepted():
    with pytest.raises(JournalError, match=r"Context\(journal=\.\.\.\) takes a path.*got int"):
        dx.Context(journal=3)  # type: ignore[arg-type]


def test_journal_store_resolves_a_journal_argument_once(journal_path: Path):
    with dx.Context(journal=False) as context:
        assert journal_store() is context.journal, "omitted: the current context's journal"
        given = memory_journal()
        assert journal_store(given) is given
        opened = journal_store(journal_path)
        assert isinstance(opened, DuckDBJournal) and opened.path == journal_path
        with pytest.raises(JournalError, match="journal= takes a path or a journal"):
            journal_store(True)  # type: ignore[arg-type]

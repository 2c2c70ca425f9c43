"""The in-memory journal's own behaviour; what every store shares (durability, independence, threads and writers
included) is checked on both stores in test_store_conformance.py."""

from __future__ import annotations

import subprocess
import sys

import pytest
from journal_rows import trial_row

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import ExperimentRecord, JournalStore, MemoryJournal, memory_journal


def evaluation(journal: JournalStore, name: str) -> str:
    return journal.create_experiment(ExperimentRecord(kind="evaluation", name=name, id=name))


def test_a_memory_journal_says_it_is_kept_in_memory_only():
    journal = memory_journal()
    assert isinstance(journal, MemoryJournal) and isinstance(journal, JournalStore)
    assert (journal.path, journal.durable, repr(journal)) == (None, False, "MemoryJournal()")
    assert journal.location == "an in-memory journal (kept for this process only)"
    file_journal = dx.open_journal("somewhere/journal.duckdb")
    assert file_journal.durable is True and file_journal.location == f"journal {file_journal.path}"
    with pytest.raises(JournalError, match="no experiment 'missing' in an in-memory journal"):
        journal.experiment("missing")


def test_a_fresh_memory_journal_is_empty_and_answers_every_view():
    journal = memory_journal()
    assert journal.experiment_summaries() == [] and journal.hypothesis_rows() == []
    assert journal.ended_summaries() == {} and journal.score_intervals() == {}
    assert journal.leaderboard().empty and journal.experiments().empty and journal.hypotheses().empty
    assert journal.trial_rows("anything") == [] and journal.trial_counts("anything") == {}


def test_hold_is_harmless_and_nests():
    journal = memory_journal()
    with journal.hold(), journal.hold():
        evaluation(journal, "held")
        journal.append_trials("held", [trial_row("e0", 0)])
    assert journal.trial_counts("held") == {"ok": 1}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("DELETE FROM trials", "sql() is read-only: it runs one query"),
        ("EXPLAIN ANALYZE DELETE FROM trials", "not EXPLAIN of DELETE"),
        ("explain analyze update trials set score = 0", "not EXPLAIN of UPDATE"),
        ("SELECT * FROM read_csv('/etc/passwd')", "cannot read local files"),
        ("SET threads = 1", "sql() is read-only"),
    ],
)
def test_sql_on_a_memory_journal_is_read_only(query, message):
    journal = memory_journal()
    experiment = evaluation(journal, "kept")
    journal.append_trials(experiment, [trial_row("e0", 0), trial_row("e1", 1)])
    with pytest.raises(JournalError, match="read-only") as caught:
        journal.sql(query)
    assert message in str(caught.value)
    assert int(journal.sql("select count(*) as n from trials")["n"].iloc[0]) == 2
    assert len(journal.sql("EXPLAIN ANALYZE SELECT * FROM trials")) == 1
    journal.append_trials(experiment, [trial_row("e2", 2)])  # still writable after a refused query
    assert journal.trial_counts(experiment) == {"ok": 3}


def test_the_memory_journal_never_goes_through_the_journal_service():
    # The file journal's calls look for another process's service first; the in-memory one has no file to share.
    for name in ("create_experiment", "append_trials", "trial_rows", "sql", "leaderboard"):
        assert not hasattr(getattr(MemoryJournal, name), "__wrapped__"), name
        assert hasattr(getattr(dx.journal.DuckDBJournal, name), "__wrapped__"), name


def test_a_memory_journal_loads_neither_the_service_nor_the_file_journal():
    code = (
        "import sys\n"
        "from dspex_lab.journal import ExperimentRecord, memory_journal\n"
        "journal = memory_journal()\n"
        "journal.create_experiment(ExperimentRecord(kind='evaluation', name='x', id='x'))\n"
        "writer = journal.writer('x', flush_interval=0.01)\n"
        "writer.close()\n"
        "journal.leaderboard(); journal.sql('select 1')\n"
        "print(sorted(m for m in sys.modules if m.startswith('dspex_lab.journal.')))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    loaded = completed.stdout.strip()
    assert "_service" not in loaded and "_wire" not in loaded and "_duckdb" not in loaded and "_file" not in loaded
    assert "dspex_lab.journal._memory" in loaded

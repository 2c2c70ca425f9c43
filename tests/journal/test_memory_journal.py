"""What the in-memory journal does differently from the file journal; what it shares is in test_store_conformance."""

from __future__ import annotations

import subprocess
import sys
import threading

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


def test_two_memory_journals_share_nothing():
    first, second = memory_journal(), memory_journal()
    evaluation(first, "only-in-first")
    first.append_trials("only-in-first", [trial_row("e0", 0)])
    second.register_hypothesis(
        dict(id="h1", statement="s", baseline="a", treatment="b", direction="greater", min_effect=0.0, alpha=0.05)
    )
    assert [summary.id for summary in first.experiment_summaries()] == ["only-in-first"]
    assert second.experiment_summaries() == [] and second.trial_counts("only-in-first") == {}
    assert first.hypothesis_rows() == [] and [row["id"] for row in second.hypothesis_rows()] == ["h1"]


def test_hold_is_harmless_and_nests():
    journal = memory_journal()
    with journal.hold(), journal.hold():
        evaluation(journal, "held")
        journal.append_trials("held", [trial_row("e0", 0)])
    assert journal.trial_counts("held") == {"ok": 1}


def test_threads_write_one_experiment_at_once_and_every_trial_counts_once():
    journal = memory_journal()
    experiment = evaluation(journal, "busy")
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            for batch in range(10):
                # Each batch repeats the previous batch's last trial, as a retried flush would.
                first = max(0, batch * 5 - 1)
                rows = [
                    trial_row(f"t{thread}-{index}", index, score=index % 2) for index in range(first, batch * 5 + 5)
                ]
                journal.append_trials(experiment, rows)
                journal.experiment_summaries()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    [summary] = journal.experiment_summaries()
    assert (summary.n_trials, summary.n_errors) == (8 * 50, 0)
    assert summary.mean_score == pytest.approx(0.5)
    assert journal.trial_counts(experiment) == {"ok": 400}


def test_a_trial_writer_streams_into_a_memory_journal_from_many_threads():
    journal = memory_journal()
    writer = journal.writer(
        "run", flush_interval=0.01, create=ExperimentRecord(kind="evaluation", name="run", id="run")
    )
    nested = writer.create(
        ExperimentRecord(kind="evaluation", name="run/c1", id="run/c1", parent_id="run", role="baseline")
    )

    def add(thread: int) -> None:
        for index in range(40):
            writer.add(trial_row(f"t{thread}-{index}", index), experiment_id=nested if index % 4 == 0 else None)

    threads = [threading.Thread(target=add, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert writer.written == 240 and writer.last_error is None
    assert journal.trial_counts("run") == {"ok": 180} and journal.trial_counts(nested) == {"ok": 60}
    assert [summary.id for summary in journal.children("run")] == [nested]


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

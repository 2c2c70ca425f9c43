"""journal.sql() and `dspex journal sql` are read-only: no writes, no local files, no attached databases."""

from __future__ import annotations

from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import JournalError


@pytest.fixture
def journal_with_trials(tmp_path: Path) -> Path:
    path = tmp_path / "journal.duckdb"
    program = dx.Program("dspy.Predict", signature="question -> answer")
    with dx.Context(lm="lab/small", journal=path, threads=2):
        dx.evaluate(program, dx.datasets.arithmetic(4, seed=3), metric=dx.metrics.numeric_match, progress=False)
    return path


def trial_count(path: Path) -> int:
    return int(dx.open_journal(path).sql("select count(*) as n from trials")["n"].iloc[0])


HOSTILE_QUERIES = [
    ("DELETE FROM trials", "sql() is read-only"),
    ("UPDATE trials SET score = 1", "sql() is read-only"),
    ("DROP TABLE trials", "sql() is read-only"),
    ("CREATE TABLE notes AS SELECT 1", "sql() is read-only"),
    ("COPY trials TO 'stolen.csv'", "sql() is read-only"),
    ("ATTACH 'other.duckdb' AS other", "sql() is read-only"),
    ("INSTALL httpfs", "sql() is read-only"),
    ("LOAD httpfs", "sql() is read-only"),
    ("SET threads = 1", "sql() is read-only"),
    ("PRAGMA enable_profiling", "sql() is read-only"),
    ("SELECT 1; DELETE FROM trials", "sql() is read-only"),
    ("EXPLAIN ANALYZE DELETE FROM trials", "sql() is read-only"),
    ("SELECT * FROM read_csv('/etc/passwd')", "cannot read local files"),
    ("SELECT * FROM read_text('/etc/hostname')", "cannot read local files"),
    ("SELECT * FROM glob('/etc/*')", "cannot read local files"),
    ("SELECT * FROM read_csv_auto('/etc/passwd')", "cannot read local files"),
]


@pytest.mark.parametrize(("query", "message"), HOSTILE_QUERIES)
def test_sql_refuses_writes_files_attachments_and_settings(journal_with_trials, query, message, tmp_path):
    journal = dx.open_journal(journal_with_trials)
    before = trial_count(journal_with_trials)
    with pytest.raises(JournalError, match="read-only") as caught:
        journal.sql(query)
    assert message in str(caught.value)
    assert trial_count(journal_with_trials) == before == 4
    assert not (tmp_path / "stolen.csv").exists()


def test_reading_queries_still_work_with_parameters(journal_with_trials):
    journal = dx.open_journal(journal_with_trials)
    frame = journal.sql("with t as (select * from trials) select count(*) as n from t where status = ?", ["ok"])
    assert int(frame["n"].iloc[0]) == trial_count(journal_with_trials)
    assert "trials" in set(journal.sql("show tables")["name"])


def test_sql_cannot_delete_while_a_run_holds_the_journal(journal_with_trials):
    journal = dx.open_journal(journal_with_trials)
    with journal.hold():
        # The run's writable connection is open in this process; sql() must not borrow it.
        journal.trial_counts(journal.experiments()["id"].iloc[0])
        with pytest.raises(JournalError, match="sql\\(\\) is read-only"):
            journal.sql("EXPLAIN ANALYZE DELETE FROM trials")
        assert int(journal.sql("select count(*) as n from trials")["n"].iloc[0]) == 4
        # The run can still write after the query.
        assert sum(journal.trial_counts(journal.experiments()["id"].iloc[0]).values()) == 4
    assert trial_count(journal_with_trials) == 4


def test_dspex_journal_sql_refuses_a_delete_and_a_file_read(journal_with_trials, capsys):
    where = ["journal", "--journal", str(journal_with_trials), "sql"]
    assert main([*where, "DELETE FROM trials"]) == 2
    assert "sql() is read-only" in capsys.readouterr().err
    assert main([*where, "select * from read_csv('/etc/passwd')"]) == 2
    error = capsys.readouterr().err
    assert "cannot read local files" in error and "root:" not in error
    assert trial_count(journal_with_trials) == 4

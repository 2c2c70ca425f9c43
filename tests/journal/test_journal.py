import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import SCHEMA_VERSION, ExperimentRecord

WORKER = Path(__file__).with_name("evaluation_worker.py")


def row(example_id: str, *, score: float | None = 1.0, status: str = "ok") -> dict:
    now = time.time()
    return dict(
        index=int(example_id[1:]),
        example_id=example_id,
        repeat=0,
        status=status,
        score=score,
        prediction="{}",
        error_type=None if status == "ok" else "ValueError",
        error_message=None,
        error_stage=None,
        traceback=None,
        latency=0.01,
        input_tokens=3,
        output_tokens=1,
        cost=0.0,
        lm_calls=1,
        attempts=1,
        started_at=now,
        finished_at=now,
        trial_id="",
    )


def test_new_journal_has_schema_version_and_empty_listing(journal_path):
    journal = dx.open_journal(journal_path)
    assert journal.experiments().empty
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="x"))
    assert journal.sql("select value from dspex_meta where key = 'schema_version'")["value"][0] == str(SCHEMA_VERSION)


def test_trials_are_append_only_and_deduplicated(journal_path):
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="dedupe"))
    journal.append_trials(experiment, [row("e0"), row("e1")])
    journal.append_trials(experiment, [row("e1"), row("e2", score=None, status="error")])
    trials = journal.trials(experiment)
    assert list(trials["trial_id"]) == ["e0/r0", "e1/r0", "e2/r0"]
    assert journal.finished_keys(experiment) == {("e0", 0), ("e1", 0), ("e2", 0)}
    listing = journal.experiments().set_index("id")
    assert listing.loc[experiment, "n_trials"] == 3 and listing.loc[experiment, "n_errors"] == 1


def test_writer_streams_while_running(journal_path):
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="stream"))
    writer = journal.writer(experiment, flush_interval=0.05)
    for i in range(10):
        writer.add(row(f"e{i}"))
    time.sleep(0.4)
    assert len(journal.trials(experiment)) == 10  # written before close
    writer.add(row("e10"))
    writer.close()
    assert len(journal.trials(experiment)) == 11


def test_sql_errors_and_missing_experiments_are_journal_errors(journal_path):
    journal = dx.open_journal(journal_path)
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="x"))
    with pytest.raises(JournalError, match="query failed"):
        journal.sql("select * from no_such_table")
    with pytest.raises(JournalError, match="no experiment 'nope'"):
        journal.experiment("nope")


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    bogus = tmp_path / "notes.duckdb"
    bogus.write_text("hello, not a database")
    with pytest.raises(JournalError, match="cannot open journal"):
        dx.open_journal(bogus).experiments()


def test_newer_schema_is_refused(journal_path):
    journal = dx.open_journal(journal_path)
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="x"))
    import duckdb

    connection = duckdb.connect(str(journal_path))
    connection.execute("update dspex_meta set value = '999' where key = 'schema_version'")
    connection.close()
    with pytest.raises(JournalError, match="newer than this dspex_lab"):
        dx.open_journal(journal_path)


def read_log(path: Path) -> list[tuple[float, str]]:
    entries = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0][0].isdigit():
            entries.append((float(parts[0]), parts[1]))
    return entries


def start_worker(journal: Path, log: Path, *, n: int, latency: float, threads: int, resume: str | None = None):
    arguments = [sys.executable, str(WORKER), str(journal), str(n), str(latency), str(threads), str(log)]
    if resume:
        arguments.append(resume)
    return subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_trials(log: Path, count: int, *, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and len(read_log(log)) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"worker did not finish {count} trials in {timeout} s")


@pytest.mark.slow
def test_kill_9_loses_under_a_second_and_resume_finishes_without_duplicates(tmp_path):
    journal_path, log = tmp_path / "crash.duckdb", tmp_path / "first.log"
    n = 400
    worker = start_worker(journal_path, log, n=n, latency=0.05, threads=8)
    wait_for_trials(log, 120)
    time.sleep(0.3)
    os.kill(worker.pid, signal.SIGKILL)
    killed_at = time.time()
    worker.wait(timeout=10)
    finished = read_log(log)
    assert len(finished) < n, "the run ended before the kill; make it longer"

    journal = dx.open_journal(journal_path)
    experiments = journal.experiments()
    assert len(experiments) == 1
    experiment = experiments.iloc[0]
    assert experiment["status"] == "interrupted"
    recorded = journal.trials(experiment["id"])
    assert recorded["trial_id"].is_unique
    settled = {example for finished_at, example in finished if finished_at < killed_at - 1.0}
    assert settled <= set(recorded["example_id"]), "lost trials that finished more than a second before the kill"
    assert set(recorded["example_id"]) <= {example for _, example in finished}

    resume_log = tmp_path / "resume.log"
    resumed = start_worker(journal_path, resume_log, n=n, latency=0.0, threads=8, resume=experiment["id"])
    _output, errors = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, errors
    rerun = {example for _, example in read_log(resume_log)}
    assert rerun.isdisjoint(set(recorded["example_id"])), "resume re-ran finished trials"
    final = journal.trials(experiment["id"])
    assert len(final) == n and final["trial_id"].is_unique
    assert len(rerun) == n - len(recorded)
    listing = journal.experiments().set_index("id")
    assert listing.loc[experiment["id"], "status"] == "finished"


@pytest.mark.slow
def test_sigint_cancels_promptly_keeps_trials_and_marks_interrupted(tmp_path):
    journal_path, log = tmp_path / "cancel.duckdb", tmp_path / "cancel.log"
    worker = start_worker(journal_path, log, n=2000, latency=0.2, threads=16)
    wait_for_trials(log, 40)
    worker.send_signal(signal.SIGINT)
    interrupted_at = time.monotonic()
    worker.communicate(timeout=30)
    assert time.monotonic() - interrupted_at < 2.0
    assert worker.returncode != 0
    finished = {example for _, example in read_log(log)}
    journal = dx.open_journal(journal_path)
    experiment = journal.experiments().iloc[0]
    assert experiment["status"] == "interrupted"
    assert set(journal.trials(experiment["id"])["example_id"]) == finished


@pytest.mark.slow
def test_concurrent_reader_and_second_writer(tmp_path):
    journal_path = tmp_path / "shared.duckdb"
    first = start_worker(journal_path, tmp_path / "a.log", n=600, latency=0.02, threads=8)
    wait_for_trials(tmp_path / "a.log", 20)
    second = start_worker(journal_path, tmp_path / "b.log", n=300, latency=0.02, threads=4)
    reader = subprocess.run(
        [sys.executable, "-c", READER, str(journal_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reader.returncode == 0, reader.stderr
    counts = [int(line) for line in reader.stdout.split()]
    assert len(counts) >= 5 and counts == sorted(counts) and counts[-1] > counts[0]
    for worker in (first, second):
        _output, errors = worker.communicate(timeout=120)
        assert worker.returncode == 0, errors
    experiments = dx.open_journal(journal_path).experiments()
    assert sorted(experiments["n_trials"]) == [300, 600]
    assert set(experiments["status"]) == {"finished"}


READER = """
import sys, time
import dspex_lab as dx
journal = dx.open_journal(sys.argv[1], lock_timeout=30)
deadline = time.monotonic() + 4
while time.monotonic() < deadline:
    listing = journal.experiments()
    total = int(journal.sql("select count(*) as n from trials")["n"][0])
    print(total, flush=True)
    time.sleep(0.2)
"""


def test_experiments_frame_types(journal_path):
    journal = dx.open_journal(journal_path)
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="typed", n_planned=3))
    frame = journal.experiments()
    assert {"id", "name", "kind", "status", "n_trials", "n_errors", "created_at"} <= set(frame.columns)
    assert pd.api.types.is_datetime64_any_dtype(frame["created_at"])


def test_a_version_1_journal_is_migrated_and_keeps_its_records(tmp_path):
    import shutil

    old = tmp_path / "old.duckdb"
    shutil.copy(Path(__file__).with_name("fixtures") / "journal_v1.duckdb", old)
    journal = dx.open_journal(old)
    assert journal.sql("select value from dspex_meta where key = 'schema_version'")["value"][0] == str(SCHEMA_VERSION)
    experiments = journal.experiments()
    assert list(experiments["name"]) == ["v1-predict"] and list(experiments["n_trials"]) == [12]
    assert journal.hypotheses().empty
    assert journal.dataset_examples("no-such-fingerprint") == []


def test_small_datasets_are_stored_with_the_experiment(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(6, seed=1), name="stored")
    with dx.Context(journal=journal_path, threads=2):
        result = dx.evaluate(
            dx.Program("dspy.Predict", signature="question -> answer"),
            problems,
            metric=dx.metrics.exact_match,
            progress=False,
        )
    journal = dx.open_journal(journal_path)
    stored = journal.dataset_examples(problems.fingerprint)
    assert [example_id for example_id, _ in stored] == list(problems.example_ids)
    assert stored[0][1]["fields"]["question"] == problems[0].question
    assert journal.experiment(result.experiment_id)["config"]["lm_state"]["model"] == "lab/small"

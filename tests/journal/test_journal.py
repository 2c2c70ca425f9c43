import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from journal_rows import trial_row

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import SCHEMA_VERSION, ExperimentRecord

WORKER = Path(__file__).with_name("evaluation_worker.py")


def row(example_id: str, *, score: float | None = 1.0, status: str = "ok", repeat: int = 0) -> dict:
    return trial_row(example_id, int(example_id[1:]), repeat=repeat, status=status, score=score)


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
    with pytest.raises(JournalError, match="is corrupt"):
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
    # The same LM settings as the first run: resume refuses a different LM.
    resumed = start_worker(journal_path, resume_log, n=n, latency=0.05, threads=8, resume=experiment["id"])
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
    before = len(read_log(log))
    worker.send_signal(signal.SIGINT)
    worker.communicate(timeout=60)  # a hang guard only: promptness is counted in trials below
    assert worker.returncode != 0
    entries = read_log(log)
    # Sixteen trials were in flight; a run that kept starting trials would finish 80 a second until 2,000.
    assert len(entries) - before <= 3 * 16, f"{len(entries) - before} trials finished after the interrupt"
    assert "done" not in log.read_text()
    finished = {example for _, example in entries}
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


# Reads while both workers write, until both have finished (the reader starts in a fraction of a second, a
# worker needs seconds to import DSPy, so a fixed reading window could end before the second one writes).
READER = """
import sys, time
import dspex_lab as dx
journal = dx.open_journal(sys.argv[1], lock_timeout=30)
deadline = time.monotonic() + 100
while time.monotonic() < deadline:
    listing = journal.experiment_summaries()
    total = int(journal.sql("select count(*) as n from trials")["n"][0])
    print(total, flush=True)
    if len(listing) == 2 and all(summary.status == "finished" for summary in listing):
        break
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


# -- the JournalStore contract: the queries the CLI, widgets and result HTML share -------------------


def span(trial_id: str, span_id: str, *, parent: str | None, start: int, end: int, kind: str = "module") -> dict:
    return dict(
        trace_id=trial_id,
        span_id=span_id,
        parent_id=parent,
        kind=kind,
        name=f"step-{span_id}",
        start_ns=start,
        end_ns=end,
        status="ok",
        attributes='{"note": "stored as text"}',
        error=None,
    )


@pytest.fixture
def filled(journal_path):
    """A journal with one experiment of five trials (two failed), spans for three of them, and a hypothesis."""
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="store", n_planned=5))
    rows = [
        row("e0", score=1.0),
        row("e1", score=0.25),
        row("e2", score=None, status="error"),
        row("e3", score=0.5),
        row("e4", score=None, status="error"),
    ]
    spans = [
        span("e1/r0", "b", parent="a", start=20, end=30),
        span("e1/r0", "a", parent=None, start=10, end=40),
        span("e1/r0", "c", parent="a", start=20, end=25, kind="lm"),
        span("e2/r0", "x", parent=None, start=5, end=6),
        span("e0/r0", "y", parent=None, start=1, end=2),
    ]
    journal.append_trials(experiment, rows, spans=spans)
    journal.finish_experiment(experiment, status="finished")
    return journal, experiment


def test_both_stores_implement_the_writer_and_reader_protocols(journal_path):
    from dspex_lab.journal import JournalReader, JournalStore, JournalWriter, memory_journal

    for store in (dx.open_journal(journal_path), memory_journal()):
        for protocol in (JournalWriter, JournalReader, JournalStore):
            assert isinstance(store, protocol), (store, protocol)
    assert not isinstance(object(), JournalStore)

    class OnlyReads:  # every query, no write: a reader, not a store
        pass

    for name in dir(JournalReader):
        if not name.startswith("_"):
            setattr(OnlyReads, name, getattr(dx.journal.MemoryJournal, name))
    assert isinstance(OnlyReads(), JournalReader)
    assert not isinstance(OnlyReads(), JournalWriter) and not isinstance(OnlyReads(), JournalStore)


def test_experiment_summaries_are_newest_first_with_counts_and_mean(filled):
    from dspex_lab.journal import ExperimentSummary

    journal, experiment = filled
    newer = journal.create_experiment(ExperimentRecord(kind="evaluation", name="newer"))
    summaries = journal.experiment_summaries()
    assert [summary.id for summary in summaries] == [newer, experiment]
    first = summaries[1]
    assert isinstance(first, ExperimentSummary)
    assert (first.n_trials, first.n_errors, first.n_planned, first.status) == (5, 2, 5, "finished")
    assert first.mean_score == pytest.approx((1.0 + 0.25 + 0.5) / 3)
    assert summaries[0].n_trials == 0 and summaries[0].mean_score is None and summaries[0].status == "running"
    with pytest.raises(AttributeError):
        first.status = "edited"  # frozen
    frame = journal.experiments()
    assert list(frame["id"]) == [newer, experiment] and list(frame["n_trials"]) == [0, 5]


def test_experiment_summaries_report_a_dead_run_as_interrupted(journal_path):
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="orphan"))
    import duckdb

    connection = duckdb.connect(str(journal_path))
    # A pid that cannot be alive on this host: the run's process is gone.
    connection.execute("update experiments set pid = 2147483646 where id = ?", [experiment])
    connection.close()
    assert journal.experiment_summaries()[0].status == "interrupted"
    assert journal.experiment(experiment)["status"] == "interrupted"


def test_an_absent_journal_lists_nothing(tmp_path):
    journal = dx.open_journal(tmp_path / "absent.duckdb")
    assert journal.experiment_summaries() == [] and journal.hypothesis_rows() == []
    assert journal.experiments().empty
    with pytest.raises(JournalError, match="does not exist yet"):
        journal.trial_rows("anything")
    assert not (tmp_path / "absent.duckdb").exists()  # reading never creates the file


def test_trial_rows_order_filter_limit_and_columns(filled):
    journal, experiment = filled

    def ids(**options):
        return [trial["trial_id"] for trial in journal.trial_rows(experiment, columns=["trial_id"], **options)]

    assert ids() == ["e0/r0", "e1/r0", "e2/r0", "e3/r0", "e4/r0"]
    assert ids(order="score") == ["e2/r0", "e4/r0", "e1/r0", "e3/r0", "e0/r0"]
    assert ids(order="error") == ["e2/r0", "e4/r0", "e1/r0", "e3/r0", "e0/r0"]
    assert ids(status="ok", order="score") == ["e1/r0", "e3/r0", "e0/r0"]
    assert ids(order="error", limit=3) == ["e2/r0", "e4/r0", "e1/r0"]
    assert ids(limit=0) == []
    full = journal.trial_rows(experiment, limit=1)[0]
    assert full["example_id"] == "e0" and full["score"] == 1.0 and full["error_message"] is None  # NULL as None
    errored = journal.trial_rows(experiment, columns=["trial_id", "score"], status="error")
    assert errored == [{"trial_id": "e2/r0", "score": None}, {"trial_id": "e4/r0", "score": None}]


def test_trial_rows_with_spans_and_traced_only(filled):
    journal, experiment = filled
    counted = journal.trial_rows(experiment, columns=["trial_id"], with_span_counts=True)
    assert {trial["trial_id"]: trial["spans"] for trial in counted} == {
        "e0/r0": 1,
        "e1/r0": 3,
        "e2/r0": 1,
        "e3/r0": 0,
        "e4/r0": 0,
    }
    traced = journal.trial_rows(experiment, columns=["trial_id", "status"], traced_only=True, order="error")
    assert [trial["trial_id"] for trial in traced] == ["e2/r0", "e1/r0", "e0/r0"]
    assert "spans" not in traced[0]


def test_trial_rows_refuses_bad_columns_orders_and_limits(filled):
    journal, experiment = filled
    with pytest.raises(JournalError, match="unknown trial column 'score; drop table trials'"):
        journal.trial_rows(experiment, columns=["score; drop table trials"])
    with pytest.raises(JournalError, match="order must be one of"):
        journal.trial_rows(experiment, order="random")
    with pytest.raises(JournalError, match="limit must be a non-negative integer"):
        journal.trial_rows(experiment, limit=-1)
    with pytest.raises(JournalError, match="unknown trial column"):
        journal.trials(experiment, columns=["nope"])
    assert len(journal.trials(experiment)) == 5  # nothing was dropped


def test_trial_counts_by_status(filled):
    journal, experiment = filled
    assert journal.trial_counts(experiment) == {"error": 2, "ok": 3}
    assert journal.trial_counts("no-such-experiment") == {}


def test_span_rows_parents_first_and_trace_objects_built_above_the_journal(filled):
    journal, experiment = filled
    rows = journal.span_rows(experiment, "e1/r0")
    # By start time; of two spans starting together, the longer (enclosing) one first.
    assert [row["span_id"] for row in rows] == ["a", "b", "c"]
    assert rows[0]["parent_id"] is None and rows[0]["attributes"] == '{"note": "stored as text"}'
    assert [row["trace_id"] for row in journal.span_rows(experiment, ["e0/r0", "e2/r0"])] == ["e0/r0", "e2/r0"]
    assert len(journal.span_rows(experiment)) == 5
    spans = journal.spans(experiment, "e1/r0")
    assert [type(item).__name__ for item in spans] == ["Span"] * 3
    assert spans[0].attributes == {"note": "stored as text"}
    tree = journal.trace(experiment, "e1/r0")
    assert type(tree).__name__ == "TraceTree" and "step-c" in tree.to_text()
    with pytest.raises(JournalError, match="no spans for trial 'e3/r0'"):
        journal.trace(experiment, "e3/r0")


def test_hypothesis_rows_decode_the_verdict(journal_path):
    journal = dx.open_journal(journal_path)
    for number in (1, 2):
        journal.register_hypothesis(
            dict(
                id=f"h{number}",
                statement=f"claim {number}",
                metric="exact_match",
                baseline="a",
                treatment="b",
                direction="greater",
                min_effect=0.05,
                alpha=0.05,
            )
        )
    journal.decide_hypothesis("h1", status="confirmed", verdict={"p_value": 0.01})
    rows = journal.hypothesis_rows()
    assert [row["id"] for row in rows] == ["h1", "h2"]
    assert rows[0]["verdict"] == {"p_value": 0.01} and rows[1]["verdict"] is None
    assert list(journal.hypotheses()["id"]) == ["h1", "h2"]


def test_a_fresh_process_reads_traces_without_importing_the_trace_layer_itself(filled):
    journal, experiment = filled
    code = (
        "import sys\n"
        "from dspex_lab.journal import open_journal\n"
        f"journal = open_journal({str(journal.path)!r})\n"
        "assert 'dspex_lab.trace' not in sys.modules\n"
        "rows = journal.trial_rows(" + repr(experiment) + ")\n"
        "assert 'dspex_lab.trace' not in sys.modules and 'dspy' not in sys.modules\n"
        f"print(type(journal.trace({experiment!r}, 'e1/r0')).__name__)\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "TraceTree"


@pytest.mark.parametrize("store", ["DuckDBJournal", "MemoryJournal"])
def test_both_stores_match_the_protocol_signatures(store):
    import inspect

    from dspex_lab import journal
    from dspex_lab.journal import JournalReader, JournalWriter

    implementation = getattr(journal, store)
    for protocol, required in (
        (JournalWriter, {"create_experiment", "append_trials", "record_step", "writer", "hold"}),
        (JournalReader, {"experiment_summaries", "trial_rows", "trial_counts", "span_rows", "hypothesis_rows"}),
    ):
        members = [name for name in vars(protocol) if not name.startswith("_") and callable(vars(protocol)[name])]
        assert required <= set(members), protocol.__name__
        for name in members:
            expected = inspect.signature(getattr(protocol, name)).parameters
            actual = inspect.signature(getattr(implementation, name)).parameters
            assert list(actual) == list(expected), name
            for parameter in expected.values():
                assert actual[parameter.name].kind == parameter.kind, f"{name}({parameter.name})"
                assert actual[parameter.name].default == parameter.default, f"{name}({parameter.name})"
        for name in ("durable", "location"):
            assert isinstance(vars(JournalWriter)[name], property) and hasattr(implementation, name), name

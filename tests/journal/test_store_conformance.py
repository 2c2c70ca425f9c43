"""One conformance suite for the journal store protocols, run on every backend.

In the style of optuna's ``optuna/testing/pytest_storages.py``: each test is written against
:class:`~dspex_lab.journal.JournalWriter` and :class:`~dspex_lab.journal.JournalReader` and the
guarantees their docstrings state, never against a backend's tables, and the ``store`` fixture runs
it on every backend in :data:`BACKENDS`: the DuckDB file journal and the in-memory journal. What
only some backends can do (an experiment left running by a process that is gone, a second process
calling through the journal service) is a hook of their :class:`Backend`, and the tests that need a
hook run on the backends that have it. What differs by design (durability) is a field of the
backend, checked on each.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from journal_rows import trial_row

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import ExperimentRecord, ExperimentSummary, JournalStore, _wire
from dspex_lab.stats import score_interval

# -- the backends --------------------------------------------------------------------------------------


def _orphan_in_another_process(store: Any, record: ExperimentRecord) -> None:
    """Create ``record`` as a running experiment from a process that then exits without finishing it."""
    script = textwrap.dedent(
        """
        import sys
        import dspex_lab as dx
        from dspex_lab.journal import ExperimentRecord
        record = ExperimentRecord(kind="evaluation", name=sys.argv[3], id=sys.argv[2])
        dx.open_journal(sys.argv[1]).create_experiment(record)
        """
    )
    completed = subprocess.run(
        [sys.executable, "-c", script, str(store.path), record.id, record.name],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr


@dataclass(frozen=True)
class Backend:
    """A journal backend under test.

    Attributes:
        name: the test id.
        open: makes a store in a test's folder (a file store there; an in-memory store ignores it).
        durable: what the store writes outlives the store object and the process.
        orphan: creates a running experiment whose owning process is gone (None: no other process
            can own an experiment of this store).
        other_process: runs ``calls`` (method, arguments, options) in a second process against the
            store, as that process's journal would, and returns their results (None: the store is
            not shared with other processes).
    """

    name: str
    open: Callable[[Path], JournalStore]
    durable: bool
    orphan: Callable[[Any, ExperimentRecord], None] | None = None
    other_process: Callable[[Any, list[tuple[str, list[Any], dict[str, Any]]]], list[Any]] | None = None


# The second process's side of :func:`_calls_from_another_process`: the calls come as a wire message on stdin
# and their results go back as one on stdout, so they travel with the service's own typed format.
_CALLER = """
import sys
import dspex_lab as dx
from dspex_lab.journal import _wire

def read_message(stream):
    header = stream.read(8)
    n_json = int.from_bytes(header[:4], "big"); n_blobs = int.from_bytes(header[4:], "big")
    lengths = [int.from_bytes(stream.read(8), "big") for _ in range(n_blobs)]
    payload = stream.read(n_json)
    return _wire.decode(payload, [stream.read(length) for length in lengths])

def write_message(stream, value):
    payload, blobs = _wire.encode(value)
    stream.write(len(payload).to_bytes(4, "big") + len(blobs).to_bytes(4, "big"))
    for blob in blobs:
        stream.write(len(blob).to_bytes(8, "big"))
    stream.write(payload)
    for blob in blobs:
        stream.write(blob)
    stream.flush()

journal = dx.open_journal(sys.argv[1], lock_timeout=30)
results = []
for method, arguments, options in read_message(sys.stdin.buffer):
    try:
        results.append({"value": getattr(journal, method)(*arguments, **options)})
    except dx.errors.DspexLabError as error:
        results.append({"error": f"{type(error).__name__}: {error}"})
write_message(sys.stdout.buffer, results)
"""


def _calls_from_another_process(store: Any, calls: list[tuple[str, list[Any], dict[str, Any]]]) -> list[Any]:
    """Hold the journal here (so this process serves it) and make ``calls`` from a second process."""
    payload, blobs = _wire.encode(calls)
    message = (
        len(payload).to_bytes(4, "big")
        + len(blobs).to_bytes(4, "big")
        + b"".join(len(blob).to_bytes(8, "big") for blob in blobs)
        + payload
        + b"".join(blobs)
    )
    with store.hold():
        completed = subprocess.run(
            [sys.executable, "-c", _CALLER, str(store.path)], input=message, capture_output=True, timeout=300
        )
    assert completed.returncode == 0, completed.stderr.decode()
    output = completed.stdout
    n_json, n_blobs = int.from_bytes(output[:4], "big"), int.from_bytes(output[4:8], "big")
    lengths = [int.from_bytes(output[8 + 8 * index : 16 + 8 * index], "big") for index in range(n_blobs)]
    start = 8 + 8 * n_blobs
    payload, start = output[start : start + n_json], start + n_json
    received = []
    for length in lengths:
        received.append(output[start : start + length])
        start += length
    return _wire.decode(payload, received)


BACKENDS = [
    Backend(
        name="duckdb",
        open=lambda folder: dx.open_journal(folder / "journal.duckdb"),
        durable=True,
        orphan=_orphan_in_another_process,
        other_process=_calls_from_another_process,
    ),
    Backend(name="memory", open=lambda folder: dx.journal.memory_journal(), durable=False),
]
# The backends other processes can use: an experiment of theirs can be orphaned, and their calls served.
SHARED = [backend for backend in BACKENDS if backend.orphan is not None and backend.other_process is not None]


@pytest.fixture(params=BACKENDS, ids=[backend.name for backend in BACKENDS])
def backend(request) -> Backend:
    return request.param


@pytest.fixture
def store(backend: Backend, tmp_path: Path) -> JournalStore:
    store = backend.open(tmp_path)
    assert isinstance(store, JournalStore)
    return store


def test_every_backend_is_in_the_suite(tmp_path):
    assert {type(backend.open(tmp_path)).__name__ for backend in BACKENDS} == {"DuckDBJournal", "MemoryJournal"}
    assert [backend.name for backend in SHARED] == ["duckdb"]


# -- what the tests write ------------------------------------------------------------------------------


def trial(example_id: str, *, score: float | None = 1.0, status: str = "ok", repeat: int = 0, **extra: Any) -> dict:
    """A ``TrialResult.to_row()`` dict of example ``e<n>``."""
    failed = {} if status == "ok" else {"error_message": "bad", "error_stage": "program"}
    return trial_row(example_id, int(example_id[1:]), repeat=repeat, status=status, score=score, **failed, **extra)


def span(trial_id: str, span_id: str, *, parent: str | None, start: int, end: int) -> dict:
    return dict(
        trace_id=trial_id,
        span_id=span_id,
        parent_id=parent,
        kind="module",
        name=f"step-{span_id}",
        start_ns=start,
        end_ns=end,
        status="ok",
        attributes='{"note": "stored as text"}',
        error=None,
    )


def evaluation(store: JournalStore, name: str, **fields: Any) -> str:
    return store.create_experiment(ExperimentRecord(kind="evaluation", name=name, id=name, **fields))


@pytest.fixture
def filled(store: JournalStore) -> tuple[JournalStore, str]:
    """An evaluation of five trials (e2 and e4 failed, e1 with a second repeat) and spans for two trials."""
    experiment = evaluation(store, "filled", n_planned=6)
    rows = [
        trial("e0", score=1.0, latency=0.5),
        trial("e1", score=0.25),
        trial("e1", score=0.75, repeat=1),
        trial("e2", score=None, status="error", latency=2.0),
        trial("e3", score=0.5),
        trial("e4", score=None, status="error"),
    ]
    spans = [
        span("e1/r0", "b", parent="a", start=20, end=30),
        span("e1/r0", "a", parent=None, start=10, end=40),
        span("e0/r0", "y", parent=None, start=1, end=2),
    ]
    assert store.append_trials(experiment, rows, spans=spans) == len(rows)
    store.finish_experiment(experiment, status="finished", summary={"n": 4, "mean": 0.6, "ok": True})
    return store, experiment


# -- experiments: create, claim, finish -------------------------------------------------------------------


def test_a_created_experiment_runs_until_it_is_finished(store):
    experiment = evaluation(store, "life", program_name="qa", metric="exact_match", n_planned=3)
    record = store.experiment(experiment)
    assert (record["id"], record["kind"], record["name"], record["status"]) == (
        experiment,
        "evaluation",
        "life",
        "running",
    )
    assert (record["program_name"], record["metric"], record["n_planned"]) == ("qa", "exact_match", 3)
    assert record["finished_at"] is None
    store.finish_experiment(experiment, status="failed", detail="no trial scored", summary={"n": 0})
    record = store.experiment(experiment)
    assert (record["status"], record["status_detail"], record["summary"]) == ("failed", "no trial scored", {"n": 0})
    assert record["finished_at"] is not None


def test_creating_an_existing_id_again_changes_nothing(store):
    experiment = evaluation(store, "twice", program_name="first")
    store.finish_experiment(experiment, status="finished")
    again = store.create_experiment(
        ExperimentRecord(kind="evaluation", name="other", id="twice", program_name="second")
    )
    assert again == experiment
    record = store.experiment(experiment)
    assert (record["name"], record["program_name"], record["status"]) == ("twice", "first", "finished")
    assert [summary.id for summary in store.experiment_summaries()] == [experiment]


def test_claiming_an_ended_experiment_runs_it_again_and_keeps_its_trials(store):
    experiment = evaluation(store, "resumed")
    store.append_trials(experiment, [trial("e0"), trial("e1")])
    store.finish_experiment(experiment, status="cancelled", detail="interrupted by the user")
    store.claim_experiment(experiment)
    record = store.experiment(experiment)
    assert (record["status"], record["status_detail"], record["finished_at"]) == ("running", None, None)
    assert store.finished_keys(experiment) == {("e0", 0), ("e1", 0)}


def test_an_unknown_experiment_is_an_error(store):
    evaluation(store, "known")
    with pytest.raises(JournalError, match="nowhere"):
        store.experiment("nowhere")
    with pytest.raises(JournalError, match="nowhere"):
        store.parent("nowhere")


# -- trials ------------------------------------------------------------------------------------------------


def test_appending_a_trial_twice_records_it_once(store):
    experiment = evaluation(store, "idempotent")
    first = trial("e0", score=0.5)
    assert store.append_trials(experiment, [first], spans=[span("e0/r0", "a", parent=None, start=1, end=2)]) == 1
    # A retried flush: the same trial (even with other values) and span, with one new trial.
    again = [trial("e0", score=0.9), trial("e1", score=1.0)]
    assert store.append_trials(experiment, again, spans=[span("e0/r0", "a", parent=None, start=1, end=2)]) == 2
    rows = store.trial_rows(experiment)
    assert [(row["trial_id"], row["score"]) for row in rows] == [("e0/r0", 0.5), ("e1/r0", 1.0)]
    assert store.trial_counts(experiment) == {"ok": 2}
    assert len(store.span_rows(experiment)) == 1
    [summary] = store.experiment_summaries()
    assert (summary.n_trials, summary.mean_score) == (2, 0.75)


def test_trial_rows_order_and_filters(filled):
    store, experiment = filled
    by_trial = [row["trial_id"] for row in store.trial_rows(experiment)]
    assert by_trial == ["e0/r0", "e1/r0", "e1/r1", "e2/r0", "e3/r0", "e4/r0"]
    by_score = [row["trial_id"] for row in store.trial_rows(experiment, order="score")]
    assert by_score == ["e2/r0", "e4/r0", "e1/r0", "e3/r0", "e1/r1", "e0/r0"]
    by_error = [row["trial_id"] for row in store.trial_rows(experiment, order="error")]
    assert by_error == ["e2/r0", "e4/r0", "e1/r0", "e3/r0", "e1/r1", "e0/r0"]
    assert [row["trial_id"] for row in store.trial_rows(experiment, order="latency", limit=2)] == ["e2/r0", "e0/r0"]
    failed = store.trial_rows(experiment, status="error", columns=["trial_id", "score"])
    assert failed == [{"trial_id": "e2/r0", "score": None}, {"trial_id": "e4/r0", "score": None}]
    middle = store.trial_rows(experiment, min_score=0.25, max_score=0.75)
    assert [row["trial_id"] for row in middle] == ["e1/r0", "e1/r1", "e3/r0"]
    traced = store.trial_rows(experiment, traced_only=True, with_span_counts=True, columns=["trial_id"])
    assert traced == [{"trial_id": "e0/r0", "spans": 1}, {"trial_id": "e1/r0", "spans": 2}]
    assert store.trial_rows(experiment, limit=0) == []
    with pytest.raises(JournalError, match="order"):
        store.trial_rows(experiment, order="fastest")
    with pytest.raises(JournalError, match="unknown trial column"):
        store.trial_rows(experiment, columns=["score; DROP TABLE trials"])
    with pytest.raises(JournalError, match="min_score"):
        store.trial_rows(experiment, min_score=math.nan)


def test_trial_page_sorts_filters_and_counts_every_match(filled):
    store, experiment = filled
    page, total = store.trial_page(experiment, sort="score", descending=True, limit=2)
    assert (list(page["trial_id"]), total) == (["e0/r0", "e1/r1"], 6)
    page, total = store.trial_page(experiment, sort="score", descending=True, limit=2, offset=2)
    assert list(page["trial_id"]) == ["e3/r0", "e1/r0"]
    # Unscored trials sort last either way; ties fall back to example order.
    page, _ = store.trial_page(experiment, sort="score", offset=4)
    assert list(page["trial_id"]) == ["e2/r0", "e4/r0"]
    page, total = store.trial_page(experiment, status="ok", min_score=0.5)
    assert (list(page["trial_id"]), total) == (["e0/r0", "e1/r1", "e3/r0"], 3)
    with pytest.raises(JournalError, match="sort by one of"):
        store.trial_page(experiment, sort="prediction")


def test_trial_counts_finished_keys_and_paired_scores(filled):
    store, experiment = filled
    assert store.trial_counts(experiment) == {"error": 2, "ok": 4}
    assert store.finished_keys(experiment) == {("e0", 0), ("e1", 0), ("e1", 1), ("e2", 0), ("e3", 0), ("e4", 0)}
    other = evaluation(store, "other")
    store.append_trials(other, [trial("e3", score=0.0), trial("e1", score=1.0), trial("e2", score=1.0)])
    pairs = store.paired_scores(experiment, other)
    # Repeats averaged per example; an example without an ok score on both sides is left out (e2 failed).
    assert pairs.to_dict("records") == [
        {"example_id": "e1", "score_a": 0.5, "score_b": 1.0},
        {"example_id": "e3", "score_a": 0.5, "score_b": 0.0},
    ]


def test_comparable_pair_is_the_newest_evaluation_and_the_one_sharing_most_with_it(store):
    assert store.comparable_pair() is None  # no journal yet
    old = evaluation(store, "old")
    store.append_trials(old, [trial("e0"), trial("e1"), trial("e2", score=0.0), trial("e7")])
    assert store.comparable_pair() is None  # one evaluation: nothing to pair it with
    mid = evaluation(store, "mid")
    store.append_trials(mid, [trial("e0"), trial("e1", score=None, status="error"), trial("e2", score=None)])
    run = store.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    candidate = store.create_experiment(
        ExperimentRecord(kind="evaluation", name="run/c0", id="c0", parent_id=run, role="candidate-validation")
    )
    store.append_trials(candidate, [trial(f"e{index}") for index in range(4)])
    unrelated = evaluation(store, "unrelated")
    store.append_trials(unrelated, [trial("e8"), trial("e9")])
    newest = evaluation(store, "newest")
    store.append_trials(newest, [trial("e0"), trial("e1"), trial("e2", repeat=1), trial("e3")])
    # Examples scored in both, as paired_scores pairs them: e0-e2 with "old"; "mid" failed or left unscored
    # e1 and e2; the run's candidate shares more but is nested, so the researcher's own comes first.
    assert store.comparable_pair() == (old, newest, 3)
    assert len(store.paired_scores(old, newest)) == 3
    lonely = evaluation(store, "lonely")
    store.append_trials(lonely, [trial("e5")])
    # Nothing in common with the newest: the newest other evaluation, and 0 to say so.
    assert store.comparable_pair() == (newest, lonely, 0)


# -- the experiment list -----------------------------------------------------------------------------------


def test_experiment_summaries_count_trials_and_errors_newest_first(filled):
    store, experiment = filled
    later = evaluation(store, "later")
    [newest, oldest] = store.experiment_summaries()
    assert isinstance(newest, ExperimentSummary) and (newest.id, oldest.id) == (later, experiment)
    assert (newest.status, newest.n_trials, newest.n_errors, newest.mean_score) == ("running", 0, 0, None)
    assert (oldest.status, oldest.n_planned, oldest.n_trials, oldest.n_errors) == ("finished", 6, 6, 2)
    assert oldest.mean_score == pytest.approx((1.0 + 0.25 + 0.75 + 0.5) / 4)
    assert oldest.created_at is not None and oldest.finished_at is not None and newest.finished_at is None


@pytest.mark.parametrize("backend", SHARED, ids=[backend.name for backend in SHARED], indirect=True)
def test_a_running_experiment_whose_process_is_gone_reads_interrupted(store, backend):
    alive = evaluation(store, "alive")
    assert backend.orphan is not None
    backend.orphan(store, ExperimentRecord(kind="evaluation", name="orphan", id="orphan"))
    statuses = {summary.id: summary.status for summary in store.experiment_summaries()}
    assert statuses == {alive: "running", "orphan": "interrupted"}
    assert store.experiment("orphan")["status"] == "interrupted"
    assert store.experiment(alive)["status"] == "running"


def test_ended_summaries_hold_what_each_ended_experiment_stored(filled):
    store, experiment = filled
    evaluation(store, "still-running")
    bare = evaluation(store, "bare")
    store.finish_experiment(bare, status="finished")
    resumed = evaluation(store, "resumed")
    store.finish_experiment(resumed, status="cancelled", summary={"n": 1})
    assert store.ended_summaries() == {experiment: {"n": 4, "mean": 0.6, "ok": True}, resumed: {"n": 1}}
    store.claim_experiment(resumed)  # running again: its summary is of an earlier part
    assert store.ended_summaries() == {experiment: {"n": 4, "mean": 0.6, "ok": True}}


# -- spans -------------------------------------------------------------------------------------------------


def test_spans_round_trip_in_tree_order(filled):
    store, experiment = filled
    rows = store.span_rows(experiment)
    assert [(row["trace_id"], row["span_id"]) for row in rows] == [("e0/r0", "y"), ("e1/r0", "a"), ("e1/r0", "b")]
    assert rows[2] == {
        key: value for key, value in span("e1/r0", "b", parent="a", start=20, end=30).items() if key in rows[2]
    }
    assert set(rows[2]) >= set(span("e1/r0", "b", parent="a", start=20, end=30))
    assert [row["span_id"] for row in store.span_rows(experiment, "e1/r0")] == ["a", "b"]
    assert [row["span_id"] for row in store.span_rows(experiment, ["e0/r0", "e3/r0"])] == ["y"]
    assert store.span_rows(experiment, "e3/r0") == []


def test_span_counts_answer_for_every_trial_asked(filled):
    store, experiment = filled
    counts = store.span_counts(experiment, ["e3/r0", "e1/r0", "e0/r0", "no-such-trial"])
    assert counts == {"e3/r0": 0, "e1/r0": 2, "e0/r0": 1, "no-such-trial": 0}
    assert list(counts) == ["e3/r0", "e1/r0", "e0/r0", "no-such-trial"]
    assert store.span_counts(experiment, []) == {}
    assert store.span_counts(evaluation(store, "untraced"), ["e1/r0"]) == {"e1/r0": 0}
    with pytest.raises(JournalError, match="list of trial ids"):
        store.span_counts(experiment, "e1/r0")


# -- hypotheses --------------------------------------------------------------------------------------------


def hypothesis(identifier: str) -> dict[str, Any]:
    return dict(
        id=identifier,
        statement="cot beats predict",
        metric="exact_match",
        baseline="base",
        treatment="cot",
        direction="greater",
        min_effect=0.05,
        alpha=0.05,
    )


def test_hypotheses_are_registered_then_decided(store):
    assert store.register_hypothesis(hypothesis("h1")) == "h1"
    assert store.register_hypothesis(hypothesis("h2")) == "h2"
    first, second = store.hypothesis_rows()
    assert (first["id"], second["id"]) == ("h1", "h2")
    assert (first["status"], first["verdict"], first["decided_at"]) == ("registered", None, None)
    assert (first["baseline"], first["treatment"], first["min_effect"]) == ("base", "cot", 0.05)
    verdict = {"supported": False, "p_value": 0.31, "diff": [0.01, -0.02]}
    store.decide_hypothesis("h1", status="rejected", verdict=verdict)
    first, second = store.hypothesis_rows()
    assert (first["status"], first["verdict"]) == ("rejected", verdict)
    assert first["verdict"]["supported"] is False
    assert first["decided_at"] is not None and second["status"] == "registered"


def test_registering_a_hypothesis_again_changes_nothing_and_other_terms_are_refused(store):
    assert store.register_hypothesis(hypothesis("h1")) == "h1"
    assert store.register_hypothesis(hypothesis("h1")) == "h1"  # a write the service may retry
    assert [row["id"] for row in store.hypothesis_rows()] == ["h1"]
    with pytest.raises(JournalError, match="already registered"):
        store.register_hypothesis({**hypothesis("h1"), "min_effect": 0.01})
    assert store.hypothesis_rows()[0]["min_effect"] == 0.05


# -- optimization runs -------------------------------------------------------------------------------------


def candidate(identifier: str, step: int, *, parent: str | None = None, **values: Any) -> dict[str, Any]:
    return dict(
        candidate_id=identifier,
        step=step,
        parent_id=parent,
        strategy="seed" if parent is None else "mutate",
        rationale=None if parent is None else "more demos",
        values=values,
        program_spec={"module": "dspy.Predict", "variables": {"cot": values.get("cot", False)}},
        fingerprint=f"fp-{identifier}",
    )


def test_candidates_round_trip_with_their_json_types(store):
    run = store.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    seed = candidate("c0", 0, temperature=0.7, cot=False, demos=[])
    store.record_candidates(run, [seed])
    store.record_candidates(
        run, [candidate("c0", 0, temperature=0.1, cot=True), candidate("c1", 1, parent="c0", cot=True, k=3)]
    )
    rows = store.candidate_rows(run)
    assert [row["candidate_id"] for row in rows] == ["c0", "c1"]
    assert rows[0]["values"] == {"temperature": 0.7, "cot": False, "demos": []}  # the first write stays
    assert rows[0]["values"]["cot"] is False and rows[1]["values"]["cot"] is True
    assert type(rows[1]["values"]["k"]) is int
    assert rows[1]["program_spec"]["variables"]["cot"] is True
    assert (rows[1]["parent_id"], rows[1]["strategy"], rows[1]["rationale"], rows[1]["fingerprint"]) == (
        "c0",
        "mutate",
        "more demos",
        "fp-c1",
    )
    assert store.candidate_rows("another-run") == []


def test_a_step_is_written_when_it_starts_and_replaced_when_it_ends(store):
    run = store.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    store.record_step(run, {"step": 1, "status": "running", "incumbent_id": "c0", "minibatch": ["e1", "e2"]})
    store.record_step(run, {"step": 0, "status": "finished", "incumbent_id": "c0", "best_mean": 0.5})
    [first, running] = store.step_rows(run)
    assert (first["step"], running["step"]) == (0, 1)
    assert running["finished_at"] is None and running["minibatch"] == ["e1", "e2"]
    started = running["started_at"]
    screening = {"c1": {"accepted": True, "mean": 0.75}, "c2": {"accepted": False, "mean": None}}
    store.record_step(
        run,
        {
            "step": 1, "status": "finished", "incumbent_id": "c0", "accepted_id": "c1", "minibatch": ["e1", "e2"],
            "screening": screening, "evaluations": [{"candidate": "c1", "n": 2}], "best_mean": 0.75,
            "best_ci_low": 0.5, "best_ci_high": 1.0, "lm_calls": 12, "tokens": 340, "cost": 0.0, "detail": None,
        },
    )  # fmt: skip
    [_, ended] = store.step_rows(run)
    assert (ended["status"], ended["accepted_id"], ended["best_mean"], ended["lm_calls"]) == (
        "finished",
        "c1",
        0.75,
        12,
    )
    assert ended["screening"] == screening and ended["screening"]["c2"]["accepted"] is False
    assert ended["evaluations"] == [{"candidate": "c1", "n": 2}]
    assert ended["started_at"] == started and ended["finished_at"] is not None


# -- nested runs -------------------------------------------------------------------------------------------


@pytest.fixture
def nested(store: JournalStore) -> tuple[JournalStore, str, list[str]]:
    """An optimization run with three nested evaluations (one finished; ids fall as they are made), one top-level."""
    run = store.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    roles = ["baseline", "candidate-screen", "candidate-validation"]
    children = [
        store.create_experiment(
            ExperimentRecord(kind="evaluation", name=f"run/c{number}", id=f"z{9 - number}", parent_id=run, role=role)
        )
        for number, role in enumerate(roles)
    ]
    store.append_trials(children[0], [trial("e1", score=0.0), trial("e0", score=1.0)])
    store.append_trials(children[2], [trial("e0", score=0.5)])
    store.finish_experiment(children[0], status="finished")
    evaluation(store, "top")
    return store, run, children


def test_children_and_parent_follow_the_link(nested):
    store, run, children = nested
    assert [summary.id for summary in store.children(run)] == children  # oldest first, whatever their ids
    assert (store.children(run)[0].parent_id, store.children(run)[0].role) == (run, "baseline")
    assert [summary.id for summary in store.children(run, role="candidate-screen")] == [children[1]]
    assert store.children(run, role="exploration") == []
    assert store.children(children[0]) == []
    assert store.parent(children[2]) == run
    assert store.parent(run) is None
    assert [summary.id for summary in store.experiment_summaries(children=False)] == ["top", run]
    assert {summary.id for summary in store.experiment_summaries()} == {"top", run, *children}


def test_finish_children_ends_only_the_running_ones(nested):
    store, run, children = nested
    store.finish_children(run, status="cancelled")
    statuses = {summary.id: summary.status for summary in store.children(run)}
    assert statuses == {children[0]: "finished", children[1]: "cancelled", children[2]: "cancelled"}
    assert store.experiment(run)["status"] == "running"
    assert store.experiment("top")["status"] == "running"


def test_children_trial_rows_are_by_experiment_then_example(nested):
    store, run, children = nested
    rows = store.children_trial_rows(run)
    # By experiment id (z7 before z9, though z9 was made first), then example order.
    assert [(row["experiment_id"], row["trial_id"]) for row in rows] == [
        (children[2], "e0/r0"),
        (children[0], "e0/r0"),
        (children[0], "e1/r0"),
    ]
    assert store.children_trial_rows("top") == []


def test_child_timeline_says_when_each_child_ran_and_how_it_ended(nested):
    store, run, children = nested
    store.create_experiment(
        ExperimentRecord(
            kind="evaluation", name="run c1 val", id="z0", parent_id=run, role="candidate-validation",
            config={"candidate": "c1", "phase": "val"},
        )
    )  # fmt: skip
    rows = store.child_timeline(run)
    assert [row["experiment_id"] for row in rows] == [*children, "z0"]  # oldest first, as children()
    summaries = {summary.id: summary for summary in store.children(run)}
    for row in rows:
        summary = summaries[row["experiment_id"]]
        assert (row["role"], row["status"], row["n_trials"], row["n_errors"]) == (
            summary.role, summary.status, summary.n_trials, summary.n_errors,
        )  # fmt: skip
        assert (row["started_at"], row["finished_at"]) == (summary.created_at, summary.finished_at)
        assert row["last_seen_at"] >= row["started_at"]
    trials = store.trial_rows(children[0])
    assert (rows[0]["first_trial_at"], rows[0]["last_trial_at"]) == (
        min(row["started_at"] for row in trials), max(row["finished_at"] for row in trials),
    )  # fmt: skip
    assert (rows[1]["first_trial_at"], rows[1]["last_trial_at"], rows[1]["n_planned"]) == (None, None, None)
    assert (rows[0]["mean_score"], rows[0]["candidate"]) == (0.5, None)
    assert rows[0]["finished_at"] is not None and rows[1]["finished_at"] is None
    assert (rows[-1]["candidate"], rows[-1]["phase"]) == ("c1", "val")
    assert store.child_timeline("top") == []


# -- the views every reader shares ----------------------------------------------------------------------


def test_score_intervals_are_stored_for_an_ended_evaluation_and_computed_otherwise(filled):
    store, experiment = filled
    reported = evaluation(store, "reported")
    store.append_trials(reported, [trial("e0", score=1.0), trial("e1", score=0.0)])
    store.finish_experiment(
        reported, status="finished", summary={"mean": 0.5, "ci": [0.1, 0.9], "ci_method": "clustered"}
    )
    running = evaluation(store, "running")
    store.append_trials(running, [trial("e0", score=1.0), trial("e1", score=0.0), trial("e2", score=1.0)])
    empty = evaluation(store, "empty")
    intervals = store.score_intervals()
    assert set(intervals) == {experiment, reported, running, empty}
    assert intervals[reported] == (0.5, 0.1, 0.9, "clustered")  # as its result reported it
    # filled stored no interval: per-example means of its ok trials (e1's repeats averaged), as dx.stats gives.
    expected = score_interval([1.0, 0.5, 0.5])
    mean, low, high, method = intervals[experiment]
    assert (mean, low, high, method) == pytest.approx((2 / 3, expected.low, expected.high, expected.method))
    expected = score_interval([1.0, 0.0, 1.0])
    assert intervals[running] == pytest.approx((2 / 3, expected.low, expected.high, "wilson"))
    assert all(math.isnan(value) for value in intervals[empty][:3]) and intervals[empty][3] == ""


def test_the_leaderboard_shows_the_same_numbers_newest_first(filled):
    store, experiment = filled
    later = evaluation(store, "later")
    store.append_trials(later, [trial("e0", score=1.0), trial("e1", score=None, status="error")])
    board = store.leaderboard()
    assert list(board["experiment_id"]) == [later, experiment]
    assert list(board["n_trials"]) == [2, 6] and list(board["n_errors"]) == [1, 2]
    intervals = store.score_intervals()
    for row in board.to_dict("records"):
        assert (row["mean"], row["ci_low"], row["ci_high"], row["ci_method"]) == pytest.approx(
            intervals[row["experiment_id"]], nan_ok=True
        )
    assert list(store.leaderboard(status="finished")["experiment_id"]) == [experiment]
    assert list(store.leaderboard(name="lat", limit=1)["experiment_id"]) == [later]
    assert store.leaderboard(limit=0).empty


def test_spans_and_trace_build_trace_objects_from_the_stored_rows(filled):
    store, experiment = filled
    assert [span.span_id for span in store.spans(experiment, "e1/r0")] == ["a", "b"]
    assert {span.trace_id for span in store.spans(experiment)} == {"e0/r0", "e1/r0"}
    tree = store.trace(experiment, "e1/r0")
    [root] = tree.roots
    assert (root.span.span_id, [child.span.span_id for child in root.children]) == ("a", ["b"])
    with pytest.raises(JournalError, match="no spans for trial 'e3/r0'"):
        store.trace(experiment, "e3/r0")


# -- what differs by design, and many threads at once ----------------------------------------------------


def test_a_store_says_whether_what_it_keeps_outlives_the_process(store, backend, tmp_path):
    assert store.durable is backend.durable
    if backend.durable:
        assert store.path == (tmp_path / "journal.duckdb").resolve()
        assert store.location == f"journal {store.path}"
    else:
        assert store.path is None
        assert store.location == "an in-memory journal (kept for this process only)"
    evaluation(store, "somewhere")
    with pytest.raises(JournalError, match=re.escape(f"no experiment 'nowhere' in {store.location}")):
        store.experiment("nowhere")


def test_a_new_store_on_the_same_place_sees_what_was_written_only_if_durable(backend, tmp_path):
    first = backend.open(tmp_path)
    evaluation(first, "kept")
    first.append_trials("kept", [trial("e0")])
    again = backend.open(tmp_path)
    assert [summary.id for summary in again.experiment_summaries()] == (["kept"] if backend.durable else [])
    assert again.trial_counts("kept") == ({"ok": 1} if backend.durable else {})


def test_two_stores_share_nothing(backend, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = backend.open(tmp_path / "a"), backend.open(tmp_path / "b")
    evaluation(first, "first")
    first.append_trials("first", [trial("e0")])
    second.register_hypothesis(hypothesis("h1"))
    evaluation(second, "second")
    assert [summary.id for summary in first.experiment_summaries()] == ["first"]
    assert [summary.id for summary in second.experiment_summaries()] == ["second"]
    assert first.hypothesis_rows() == [] and [row["id"] for row in second.hypothesis_rows()] == ["h1"]
    assert second.trial_counts("first") == {}


def test_threads_append_to_one_experiment_at_once_and_each_trial_counts_once(store):
    experiment = evaluation(store, "busy")
    errors: list[BaseException] = []

    def write(thread: int) -> None:
        try:
            for batch in range(6):
                # Each batch repeats the previous batch's last trial, as a retried flush would.
                rows = [
                    trial(f"e{thread * 100 + index}", score=index % 2)
                    for index in range(max(0, batch * 5 - 1), batch * 5 + 5)
                ]
                store.append_trials(experiment, rows)
                store.experiment_summaries()
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(number,)) for number in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    [summary] = store.experiment_summaries()
    assert (summary.n_trials, summary.n_errors, summary.mean_score) == (6 * 30, 0, pytest.approx(0.5))
    assert store.trial_counts(experiment) == {"ok": 180} and len(store.finished_keys(experiment)) == 180


def test_a_trial_writer_streams_trials_added_from_many_threads(store):
    writer = store.writer(
        "run", flush_interval=0.01, create=ExperimentRecord(kind="optimization", name="run", id="run")
    )
    child = writer.create(ExperimentRecord(kind="evaluation", name="run/c0", id="c0", parent_id="run", role="baseline"))

    def add(thread: int) -> None:
        for index in range(40):
            row = trial(f"e{thread * 100 + index}", score=1.0)
            writer.add(row, experiment_id=child if index % 4 == 0 else None)

    threads = [threading.Thread(target=add, args=(number,)) for number in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert (writer.written, writer.last_error) == (200, None)
    assert store.trial_counts("run") == {"ok": 150} and store.trial_counts(child) == {"ok": 50}
    assert [summary.id for summary in store.children("run")] == [child]


# -- the same answers through another process's journal service ------------------------------------------


def _same(local: Any, remote: Any) -> None:
    if isinstance(local, pd.DataFrame):
        pd.testing.assert_frame_equal(remote, local)
    elif isinstance(local, tuple) and local and isinstance(local[0], pd.DataFrame):
        pd.testing.assert_frame_equal(remote[0], local[0])
        assert remote[1:] == local[1:]
    else:
        assert remote == local


@pytest.mark.parametrize("backend", SHARED, ids=[backend.name for backend in SHARED], indirect=True)
def test_every_method_answers_the_same_through_another_process(nested, backend):
    store, run, children = nested
    experiment = children[0]
    store.append_trials(
        children[2], [trial("e1", score=None, status="error")], spans=[span("e0/r0", "a", parent=None, start=1, end=3)]
    )
    store.register_hypothesis(hypothesis("h1"))
    store.record_candidates(run, [candidate("c0", 0, cot=False), candidate("c1", 1, parent="c0", cot=True)])
    store.record_step(
        run, {"step": 0, "status": "finished", "incumbent_id": "c0", "screening": {"c1": {"accepted": True}}}
    )
    reads: list[tuple[str, list[Any], dict[str, Any]]] = [
        ("experiment_summaries", [], {}),
        ("experiment_summaries", [], {"children": False}),
        ("ended_summaries", [], {}),
        ("children", [run], {}),
        ("children", [run], {"role": "baseline"}),
        ("parent", [children[1]], {}),
        ("parent", ["nowhere"], {}),
        ("experiment", [experiment], {}),
        ("trial_rows", [children[2]], {"order": "error", "with_span_counts": True}),
        ("trial_rows", [experiment], {"min_score": 0.5, "columns": ["trial_id", "score"]}),
        ("trial_page", [experiment], {"sort": "score", "descending": True, "limit": 1}),
        ("trial_counts", [children[2]], {}),
        ("finished_keys", [experiment], {}),
        ("paired_scores", [experiment, children[2]], {}),
        ("leaderboard", [], {"children": True}),
        ("span_rows", [children[2]], {}),
        ("span_counts", [children[2], ["e0/r0", "e1/r0"]], {}),
        ("dataset_examples", ["no-such-dataset"], {}),
        ("hypothesis_rows", [], {}),
        ("candidate_rows", [run], {}),
        ("step_rows", [run], {}),
        ("children_trial_rows", [run], {}),
        ("child_timeline", [run], {}),
        ("comparable_pair", [], {}),
    ]
    local = []
    for method, arguments, options in reads:
        try:
            local.append({"value": getattr(store, method)(*arguments, **options)})
        except JournalError as error:
            local.append({"error": f"{type(error).__name__}: {error}"})
    # Writes that repeat what is recorded change nothing, and a new trial lands, through the service too.
    writes: list[tuple[str, list[Any], dict[str, Any]]] = [
        ("append_trials", [experiment, [trial("e0", score=0.0), trial("e5", score=1.0)]], {}),
        ("create_experiment", [ExperimentRecord(kind="evaluation", name="renamed", id=experiment)], {}),
        ("record_candidates", [run, [candidate("c0", 0, cot=True)]], {}),
        ("trial_counts", [experiment], {}),
        ("candidate_rows", [run], {}),
    ]
    assert backend.other_process is not None
    remote = backend.other_process(store, [*reads, *writes])
    assert len(remote) == len(reads) + len(writes)
    assert "JournalError" in local[6]["error"]
    for (method, *_), mine, theirs in zip(reads, local, remote, strict=False):
        assert mine.keys() == theirs.keys(), method
        if "error" in mine:
            assert theirs["error"] == mine["error"], method
        else:
            _same(mine["value"], theirs["value"])
    appended, created, _, counts, candidates = (result["value"] for result in remote[len(reads) :])
    assert (appended, created, counts) == (2, experiment, {"ok": 3})
    assert [row["values"]["cot"] for row in candidates] == [False, True]
    assert store.experiment(experiment)["name"] == "run/c0"
    assert {row["trial_id"]: row["score"] for row in store.trial_rows(experiment)}["e0/r0"] == 1.0

"""What the trace viewer sends its front end: the header, per-span usage, the waterfall, attempts, expected vs got."""

from __future__ import annotations

import json

import duckdb
import pytest

import dspex_lab as dx
from dspex_lab.journal import ExperimentRecord, open_journal
from dspex_lab.providers import model_price
from dspex_lab.trace import Span

pytest.importorskip("anywidget")

COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


@pytest.fixture(scope="module")
def retried(tmp_path_factory):
    """A traced run on the lab LM with rate limits (retried) and provider errors (failed trials)."""
    path = tmp_path_factory.mktemp("viewer-data") / "journal.duckdb"
    problems = dx.Dataset(dx.datasets.arithmetic(16, seed=3), name="viewer-data")
    lm = dx.lab_lm("lab/small", error_rate=0.15, rate_limit_rate=0.3, seed=4)
    with dx.Context(lm=lm, journal=path, threads=4):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True, retries=2)
    return path, result


def test_header_gives_the_run_summary_and_sums_the_trials(retried):
    path, result = retried
    viewer = dx.widgets.TraceViewer(path, result.experiment_id)
    header = viewer.header
    assert header["experiment_id"] == result.experiment_id and header["name"] == "cot"
    assert header["mean"] == pytest.approx(result.mean)
    assert header["ci"] == pytest.approx(list(result.ci)) and header["confidence"] == 0.95
    assert header["n"] == result.n and header["n_errors"] == result.n_errors > 0
    assert sum(header["errors"].values()) == result.n_errors
    trials = result.table()
    assert header["tokens_in"] == trials["input_tokens"].sum() > 0
    assert header["tokens_out"] == trials["output_tokens"].sum() > 0
    assert header["cost"] == pytest.approx(trials["cost"].sum()) and header["unpriced_models"] == []
    entry = next(trial for trial in viewer.trials if trial["status"] == "error")
    recorded = trials.set_index("trial_id").loc[entry["trial_id"]]
    assert entry["error_type"] == recorded["error_type"] in {"LMProviderError", "LMRateLimitError"}
    assert "simulated" in entry["error"] and entry["error"] in recorded["error_message"]


def test_lm_spans_carry_model_temperature_tokens_and_cost_and_every_parent_sums_them(retried):
    path, result = retried
    trials = result.table().set_index("trial_id")
    priced = model_price("lab/small")
    checked = 0
    for trial_id in trials.query("status == 'ok'").index[:6]:
        viewer = dx.widgets.TraceViewer(path, result.experiment_id, trial_id=trial_id)
        lm_nodes = [node for node in viewer.nodes if node["kind"] == "lm" and node["tokens_in"] is not None]
        assert lm_nodes
        for node in lm_nodes:
            stored = viewer._spans[node["id"]]
            attributes = json.loads(stored.attributes)
            assert node["model"] == "lab/small" and node["temperature"] is None  # the LM's default
            assert (node["tokens_in"], node["tokens_out"]) == (
                attributes["prompt_tokens"],
                attributes["completion_tokens"],
            )
            assert node["cost"] == pytest.approx(priced.cost(node["tokens_in"], node["tokens_out"]))
            assert node["unpriced"] is False
        root = next(node for node in viewer.nodes if node["parent"] is None)
        # The trial's root row totals its LM calls, and agrees with the trial's own meter.
        assert root["tokens_in"] == sum(node["tokens_in"] for node in lm_nodes) == trials.loc[trial_id, "input_tokens"]
        assert root["tokens_out"] == trials.loc[trial_id, "output_tokens"]
        assert root["cost"] == pytest.approx(trials.loc[trial_id, "cost"])
        assert root["lm_calls"] == sum(node["kind"] == "lm" for node in viewer.nodes)
        checked += 1
    assert checked == 6


def test_nodes_place_each_span_on_the_trial_timeline(retried):
    path, result = retried
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, sort_by="trial")
    by_id = {node["id"]: node for node in viewer.nodes}
    root = next(node for node in viewer.nodes if node["parent"] is None)
    assert root["start_ms"] == 0
    for node in viewer.nodes:
        stored = viewer._spans[node["id"]]
        assert node["duration_ms"] == pytest.approx((stored.end_ns - stored.start_ns) / 1e6, abs=1e-3)
        if node["parent"] is not None:
            parent = by_id[node["parent"]]
            assert node["start_ms"] >= parent["start_ms"]
            assert node["start_ms"] + node["duration_ms"] <= parent["start_ms"] + parent["duration_ms"] + 0.002


def test_retried_attempts_are_labelled_with_the_error_they_retried_after(retried):
    path, result = retried
    trials = result.table()
    trial_id = trials.query("attempts > 1")["trial_id"].iloc[0]
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, trial_id=trial_id)
    attempts = [node for node in viewer.nodes if node["kind"] == "attempt"]
    assert [node["name"] for node in attempts] == [f"attempt {n}" for n in range(1, len(attempts) + 1)]
    assert "label" not in attempts[0]
    first_error = attempts[0]["error_type"]
    assert first_error == "LMRateLimitError"  # the exception's whole name, never cut
    assert attempts[1]["label"] == f"attempt 2 — {first_error}"
    assert attempts[0]["error"].startswith("LMRateLimitError: ") and "rate limit" in attempts[0]["error"]
    entry = next(trial for trial in viewer.trials if trial["trial_id"] == trial_id)
    assert entry["attempts"] == len(attempts)


def test_metric_detail_shows_expected_and_got(retried):
    path, result = retried
    ok_trial = result.table().query("status == 'ok'")["trial_id"].iloc[0]
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, trial_id=ok_trial)
    metric = next(node for node in viewer.nodes if node["kind"] == "metric")
    assert metric["score"] in (0.0, 1.0)
    viewer.selected_span = metric["id"]
    comparison = viewer.detail["comparison"]
    example = next(example for example in dx.datasets.arithmetic(16, seed=3) if ok_trial.startswith(example.id))
    assert comparison["expected"]["answer"] == example.answer
    assert set(comparison["got"]) == {"reasoning", "answer"} and comparison["score"] == metric["score"]


def write_trial(path, spans: list[Span], *, cost: float | None, unpriced: str | None) -> str:
    journal = open_journal(path)
    record = ExperimentRecord(kind="evaluation", name="hand-written", n_planned=1)
    journal.create_experiment(record)
    row = {
        "index": 0,
        "trial_id": "example-0/r0",
        "example_id": "example-0",
        "repeat": 0,
        "status": "ok",
        "score": 0.0,
        "input_tokens": 300,
        "output_tokens": 40,
        "cost": cost,
        "unpriced_models": unpriced,
    }
    journal.append_trials(record.id, [row], spans=[span.to_row() for span in spans])
    journal.finish_experiment(record.id, status="finished")
    return record.id


def span(span_id, parent, kind, name, start_ms, end_ms, **attributes) -> Span:
    start = 1_700_000_000_000_000_000
    return Span(
        "example-0/r0",
        span_id,
        parent_id=parent,
        kind=kind,
        name=name,
        start_ns=start + int(start_ms * 1e6),
        end_ns=start + int(end_ms * 1e6),
        attributes=attributes,
    )


def test_an_unpriced_model_is_shown_as_unpriced_never_as_zero(tmp_path):
    spans = [
        span("root", None, "trial", "example-0/r0", 0, 30),
        span("priced", "root", "lm", "lab/large", 1, 10, model="lab/large", temperature=0.7, cost=0.25,
             prompt_tokens=100, completion_tokens=20),
        span("unknown", "root", "lm", "acme/house-model", 12, 28, model="acme/house-model",
             parameters={"temperature": 0.2}, prompt_tokens=200, completion_tokens=20),
        span("metric", "root", "metric", "exact_match", 28, 29, expected={"answer": "sk-proj-AbC123xyz789"},
             got={"answer": "4"}, score=0.0),
    ]  # fmt: skip
    path = tmp_path / "journal.duckdb"
    experiment_id = write_trial(path, spans, cost=None, unpriced="acme/house-model")
    viewer = dx.widgets.TraceViewer(path, experiment_id)
    nodes = {node["id"]: node for node in viewer.nodes}
    assert nodes["priced"]["cost"] == 0.25 and nodes["priced"]["temperature"] == 0.7  # the cost DSPy reported
    assert nodes["unknown"]["cost"] is None and nodes["unknown"]["unpriced"] is True
    assert nodes["unknown"]["temperature"] == 0.2  # from the request's parameters
    assert nodes["root"]["cost"] == 0.25 and nodes["root"]["unpriced"] is True
    assert (nodes["root"]["tokens_in"], nodes["root"]["tokens_out"], nodes["root"]["lm_calls"]) == (300, 40, 2)
    assert [nodes[key]["start_ms"] for key in ("root", "priced", "unknown")] == [0, 1, 12]
    assert viewer.header["cost"] is None and viewer.header["unpriced_models"] == ["acme/house-model"]
    # No run summary was stored: the mean is the traced trials' own, without an interval.
    header = viewer.header
    assert (header["mean"], header["ci"], header["n"], header["n_errors"]) == (0.0, None, 1, 0)
    assert viewer.trials[0]["cost"] is None and viewer.trials[0]["unpriced"] is True
    viewer.selected_span = "unknown"
    assert viewer.detail["usage"]["unpriced"] is True and viewer.detail["usage"]["model"] == "acme/house-model"
    viewer.selected_span = "metric"
    # Redacted on read, like every other view of a span.
    assert viewer.detail["comparison"]["expected"] == {"answer": "[REDACTED]"}
    assert viewer.detail["comparison"]["got"] == {"answer": "4"}


def test_failed_lm_calls_add_no_tokens_and_errors_keep_their_whole_name(tmp_path):
    failure = "ContextWindowExceededError: the prompt has 140,000 tokens; the model takes 128,000"
    spans = [
        span("root", None, "trial", "example-0/r0", 0, 10),
        span("call", "root", "lm", "lab/small", 1, 9, model="lab/small"),
    ]
    path = tmp_path / "journal.duckdb"
    experiment_id = write_trial(path, spans, cost=0.0, unpriced=None)
    with duckdb.connect(str(path)) as connection:  # stored as a failed call is: an error, no usage
        connection.execute(
            "UPDATE spans SET status = 'error', error = ? WHERE experiment_id = ? AND span_id = 'call'",
            [failure, experiment_id],
        )
    viewer = dx.widgets.TraceViewer(path, experiment_id)
    nodes = {node["id"]: node for node in viewer.nodes}
    assert nodes["call"]["error_type"] == "ContextWindowExceededError" and nodes["call"]["error"] == failure
    assert nodes["call"]["tokens_in"] is None and nodes["call"]["cost"] is None and nodes["call"]["unpriced"] is False
    assert nodes["root"]["lm_calls"] == 1 and nodes["root"]["tokens_in"] is None and nodes["root"]["cost"] is None


@pytest.mark.parametrize(
    ("error", "label"),
    [
        ("AdapterParseError: could not parse the answer field", "AdapterParseError"),
        ("trial did not finish within 1 s", "trial did not finish within 1 s"),
        ("litellm.RateLimitError: slow down", "litellm.RateLimitError"),
        ("see: the docs", "see: the docs"),
        ("  ", "error"),
    ],
)
def test_error_labels_are_the_exception_name_or_the_first_line(error, label):
    from dspex_lab.notebook._trace_viewer import _error_type

    assert _error_type(error) == label

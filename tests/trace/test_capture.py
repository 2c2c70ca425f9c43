"""Span capture through DSPy's callbacks: nesting, threads, decisions, LM details."""

from __future__ import annotations

import contextvars
import functools
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import dspy
import pytest
from dspy.utils import DummyLM

from dspex_lab.lm import lab_lm
from dspex_lab.trace import (
    SPAN_STATUSES,
    SpanRecorder,
    TraceCollector,
    TraceTree,
    current_collector,
    decision,
    evaluation,
    metric,
    span,
)
from dspex_lab.trace.recorder import ABANDONED_STATUSES


def shape(tree: TraceTree) -> list[tuple[int, str, str]]:
    return [(node.depth, node.span.kind, node.span.name) for node in tree.walk()]


def assert_well_formed(spans, trace_id: str) -> None:
    """Every span is in the trace, exactly one root, every parent present, no orphan."""
    assert spans, "no spans captured"
    ids = {item.span_id for item in spans}
    assert len(ids) == len(spans), "duplicate span ids"
    roots = [item for item in spans if item.parent_id is None]
    assert len(roots) == 1
    assert roots[0].kind == "trial"
    for item in spans:
        assert item.trace_id == trace_id
        assert item.parent_id is None or item.parent_id in ids
        assert item.end_ns >= item.start_ns
    tree = TraceTree.from_spans(spans)
    assert not [node for node in tree.walk() if node.orphan]
    assert len(tree) == len(spans)


@pytest.fixture
def recorder() -> SpanRecorder:
    return SpanRecorder()


def test_predict_nesting(recorder: SpanRecorder, capturing) -> None:
    predict = dspy.Predict("question -> answer")
    with capturing(recorder, lm=lab_lm()), recorder.trial("t-predict") as collector:
        predict(question="What is 2 + 3?")
    assert_well_formed(collector.spans, "t-predict")
    assert shape(TraceTree.from_spans(collector.spans)) == [
        (0, "trial", "t-predict"),
        (1, "module", "Predict"),
        (2, "adapter_format", "ChatAdapter.format"),
        (2, "lm", "lab/small"),
        (2, "adapter_parse", "ChatAdapter.parse"),
    ]


def test_chain_of_thought_nesting_and_lm_details(recorder: SpanRecorder, capturing) -> None:
    program = dspy.ChainOfThought("question -> answer")
    with capturing(recorder, lm=lab_lm(temperature=0.7)), recorder.trial("t-cot") as collector:
        program(question="What is 4 + 4?")
    assert_well_formed(collector.spans, "t-cot")
    tree = TraceTree.from_spans(collector.spans)
    assert shape(tree) == [
        (0, "trial", "t-cot"),
        (1, "module", "ChainOfThought"),
        (2, "module", "Predict"),
        (3, "adapter_format", "ChatAdapter.format"),
        (3, "lm", "lab/small"),
        (3, "adapter_parse", "ChatAdapter.parse"),
    ]
    (lm_node,) = tree.find("lab/small", kind="lm")
    attributes = lm_node.span.json_attributes
    assert attributes["model"] == "lab/small"
    assert attributes["temperature"] == 0.7
    assert attributes["prompt_tokens"] > 0 and attributes["completion_tokens"] > 0
    assert attributes["total_tokens"] == attributes["prompt_tokens"] + attributes["completion_tokens"]
    assert attributes["cache_hit"] is False
    assert any("What is 4 + 4?" in message["content"] for message in attributes["messages"])
    assert "[[ ## answer ## ]]" in attributes["completion"][0]
    predict_node = tree.find("Predict", kind="module")[0]
    assert predict_node.span.json_attributes["signature"] == "question -> reasoning, answer"
    assert set(predict_node.span.json_attributes["outputs"]) == {"reasoning", "answer"}


def test_custom_multi_module_program(recorder: SpanRecorder, capturing, two_step, two_step_spans) -> None:
    with capturing(recorder, lm=lab_lm()), recorder.trial("t-two") as collector:
        two_step(question="What is 1 + 1?")
    assert_well_formed(collector.spans, "t-two")
    assert shape(TraceTree.from_spans(collector.spans)) == [(0, "trial", "t-two"), *two_step_spans(1)]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_react_with_a_python_tool_on_a_scripted_lm(recorder: SpanRecorder, capturing) -> None:
    answers = [
        {"next_thought": "Use the tool.", "next_tool_name": "add", "next_tool_args": {"a": 2, "b": 3}},
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "The tool said 5.", "answer": "5"},
    ]
    react = dspy.ReAct("question -> answer", tools=[add], max_iters=4)
    with capturing(recorder, lm=DummyLM(answers)), recorder.trial("t-react") as collector:
        result = react(question="What is 2 + 3?")
    assert result.answer == "5"
    assert_well_formed(collector.spans, "t-react")
    tree = TraceTree.from_spans(collector.spans)
    react_node = tree.roots[0].children[0]
    assert (react_node.span.kind, react_node.span.name) == ("module", "ReAct")
    children = [(child.span.kind, child.span.name) for child in react_node.children]
    assert children == [
        ("module", "Predict"),
        ("tool", "add"),
        ("module", "Predict"),
        ("tool", "finish"),
        ("module", "ChainOfThought"),
    ]
    tool = react_node.children[1].span
    assert tool.json_attributes["arguments"] == {"a": 2, "b": 3}
    assert tool.json_attributes["result"] == 5
    assert tool.status == "ok"


def test_react_on_the_lab_lm_terminates_and_records_tool_errors(recorder: SpanRecorder, capturing) -> None:
    react = dspy.ReAct("question -> answer", tools=[add], max_iters=3)
    with capturing(recorder, lm=lab_lm()), recorder.trial("t-react-lab") as collector:
        react(question="What is 2 + 3?")
    assert_well_formed(collector.spans, "t-react-lab")
    tools = [item for item in collector.spans if item.kind == "tool"]
    assert tools, "the lab LM should have attempted tool calls"
    # The lab LM invents tool arguments, so the tool fails; the span says so.
    assert all(item.status == "error" and item.error for item in tools)


def run_trial(recorder: SpanRecorder, program: dspy.Module, *, index: int):
    with recorder.trial(f"trial-{index:03d}") as collector:
        with decision("configure", values={"index": index}):
            program(question=f"Question number {index}: what is {index} + 1?")
        with metric("exact_match") as handle:
            handle.set(score=float(index % 2))
    return collector


def test_concurrent_trials_never_mix(recorder: SpanRecorder, capturing, two_step) -> None:
    program = two_step
    # A little simulated latency makes the threads' calls overlap rather than run one after another.
    with capturing(recorder, lm=lab_lm(latency=0.002)), ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(contextvars.copy_context().run, functools.partial(run_trial, recorder, program, index=index))
            for index in range(64)
        ]
        collectors = [future.result() for future in futures]
    for index, collector in enumerate(collectors):
        trace_id = f"trial-{index:03d}"
        spans = collector.spans
        assert_well_formed(spans, trace_id)
        # 1 trial + 1 decision + TwoStep (1 + 4 + 1 + 4) + 1 metric.
        assert len(spans) == 13
        # The content test: every LM call of this trial saw this trial's question and no other.
        for item in spans:
            if item.kind == "lm":
                prompt = json.dumps(item.json_attributes["messages"])
                assert f"Question number {index}:" in prompt
        tree = TraceTree.from_spans(spans)
        assert [child.span.kind for child in tree.roots[0].children] == ["decision", "metric"]
        assert tree.roots[0].children[0].children[0].span.name == "TwoStep"


def test_dspy_parallel_workers_are_attributed_through_the_active_call(recorder: SpanRecorder, capturing) -> None:
    class FanOut(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, questions: list[str]) -> list:
            # dspy.Parallel's worker threads do not inherit context variables, only DSPy's active call id.
            parallel = dspy.Parallel(num_threads=4, disable_progress_bar=True)
            return parallel([(self.predict, {"question": question}) for question in questions])

    with capturing(recorder, lm=lab_lm()), recorder.trial("t-parallel") as collector:
        FanOut()(questions=[f"q{index}" for index in range(6)])
    assert_well_formed(collector.spans, "t-parallel")
    tree = TraceTree.from_spans(collector.spans)
    fan_out = tree.roots[0].children[0]
    assert fan_out.span.name == "FanOut"
    assert [child.span.name for child in fan_out.children] == ["Predict"] * 6


def test_decision_contains_dspy_spans_and_nests_inside_modules(recorder: SpanRecorder, capturing) -> None:
    class Deciding(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, question: str) -> dspy.Prediction:
            with decision("pick prompt", rationale="inside a module"):
                return self.predict(question=question)

    with capturing(recorder, lm=lab_lm()), recorder.trial("t-decision") as collector:
        with decision("step 1", rationale="baseline first", values={"temperature": 0.0}):
            Deciding()(question="hi")
        with evaluation("dev score") as handle:
            handle.set(score=0.5)
    assert_well_formed(collector.spans, "t-decision")
    assert shape(TraceTree.from_spans(collector.spans)) == [
        (0, "trial", "t-decision"),
        (1, "decision", "step 1"),
        (2, "module", "Deciding"),
        (3, "decision", "pick prompt"),
        (4, "module", "Predict"),
        (5, "adapter_format", "ChatAdapter.format"),
        (5, "lm", "lab/small"),
        (5, "adapter_parse", "ChatAdapter.parse"),
        (1, "evaluation", "dev score"),
    ]
    step = next(item for item in collector.spans if item.name == "step 1")
    assert step.json_attributes == {"rationale": "baseline first", "values": {"temperature": 0.0}}


def test_decision_outside_a_trial_starts_its_own_trace(recorder: SpanRecorder, capturing) -> None:
    with capturing(recorder, lm=lab_lm()):
        with decision("optimizer step 3", trace_id="optimizer-run-1", rationale="explore") as handle:
            assert current_collector() is handle.collector
            dspy.Predict("question -> answer")(question="x")
        spans = handle.spans
        with decision("anonymous") as anonymous:
            pass
    assert {item.trace_id for item in spans} == {"optimizer-run-1"}
    tree = TraceTree.from_spans(spans)
    assert tree.roots[0].span.kind == "decision"
    assert tree.roots[0].children[0].span.name == "Predict"
    assert anonymous.trace_id and len(anonymous.spans) == 1
    assert current_collector() is None


def test_calls_outside_any_trial_are_ignored(recorder: SpanRecorder, capturing) -> None:
    with capturing(recorder, lm=lab_lm()):
        dspy.Predict("question -> answer")(question="untraced")
        with recorder.trial("t-after") as collector:
            pass
    assert [item.kind for item in collector.spans] == ["trial"]


def test_errors_are_recorded_and_the_trial_still_closes(recorder: SpanRecorder, capturing) -> None:
    failing = lab_lm(error_rate=1.0)
    seen = []
    recorder.on_trace = seen.append
    with (
        capturing(recorder, lm=failing),
        pytest.raises(Exception),  # noqa: B017 - any provider error will do
        recorder.trial("t-error") as collector,
    ):
        dspy.Predict("question -> answer")(question="boom")
    assert seen == [collector]
    by_kind = {item.kind: item for item in collector.spans}
    assert by_kind["lm"].status == "error" and by_kind["lm"].error
    assert by_kind["module"].status == "error"
    assert by_kind["trial"].status == "error"
    assert collector.closed


def test_unfinished_calls_are_closed_with_the_trial(recorder: SpanRecorder, capturing) -> None:
    with capturing(recorder), recorder.trial("t-unfinished") as collector:
        # A call that started and never ended, as when a timed-out worker is abandoned.
        recorder.on_module_start("abandoned-call", dspy.Predict("a -> b"), {"args": (), "kwargs": {"a": "1"}})
    recorder.on_module_end("abandoned-call", None)  # too late: ignored
    (abandoned,) = [item for item in collector.spans if item.span_id == "abandoned-call"]
    assert abandoned.status == "error" and abandoned.json_attributes["unfinished"] is True
    assert len(collector.spans) == 2


def test_cache_hits_are_marked(recorder: SpanRecorder, capturing) -> None:
    lm = lab_lm(cache=True)
    predict = dspy.Predict("question -> answer")
    # DSPy's cache outlives the test run, so the first call must ask something never asked before.
    question = f"cache probe {uuid.uuid4().hex}"
    with capturing(recorder, lm=lm):
        with recorder.trial("first") as first:
            predict(question=question)
        with recorder.trial("second") as second:
            predict(question=question)
    (miss,) = [item for item in first.spans if item.kind == "lm"]
    (hit,) = [item for item in second.spans if item.kind == "lm"]
    assert miss.json_attributes["cache_hit"] is False
    assert hit.json_attributes["cache_hit"] is True
    assert hit.json_attributes["total_tokens"] == miss.json_attributes["total_tokens"]


def test_span_helper_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown span kind"), span("x", kind="banana"):
        pass


def test_collector_span_helper_for_metrics(recorder: SpanRecorder) -> None:
    with recorder.trial("t-metric") as collector:
        pass
    # A collector can still be handed to code that runs without the context (then it is closed: ignored).
    with collector.span("late metric") as handle:
        handle.set(score=1)
    assert [item.kind for item in collector.spans] == ["trial"]
    with (
        recorder.trial("t-metric-2", attributes={"example": 3}) as collector,
        collector.span("exact_match", kind="metric") as handle,
    ):
        handle.set(score=1.0, api_key="sk-live-abcdef123456")
    by_kind = {item.kind: item for item in collector.spans}
    assert by_kind["metric"].parent_id == by_kind["trial"].span_id
    assert by_kind["metric"].json_attributes == {"score": 1.0, "api_key": "[REDACTED]"}
    assert by_kind["trial"].json_attributes == {"example": 3}


class Held(dspy.Module):
    """Answer with Predict, then wait (as a hung provider would) until released."""

    def __init__(self, started: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")
        self.started, self.release = started, release

    def forward(self, question: str) -> dspy.Prediction:
        prediction = self.predict(question=question)
        self.started.set()
        assert self.release.wait(30), "the test never released the held module"
        return prediction


def test_abandon_returns_the_spans_so_far_and_keeps_later_ones_out(recorder: SpanRecorder, capturing) -> None:
    started, release, handed = threading.Event(), threading.Event(), []
    recorder.on_trace = handed.append
    program = Held(started, release)
    trial: dict[str, TraceCollector] = {}

    def worker() -> None:
        with capturing(recorder, lm=lab_lm()), recorder.trial("t-held") as collector:
            trial["collector"] = collector
            program(question="What is 2 + 5?")
            with metric("exact_match") as handle:  # runs after the abandon: must not appear
                handle.set(score=1.0)

    thread = threading.Thread(target=worker)
    thread.start()
    assert started.wait(30)
    collector = trial["collector"]
    spans = collector.abandon(status="timeout", reason="trial did not finish within 0.5 s")
    release.set()
    thread.join(30)
    assert not thread.is_alive()

    assert_well_formed(spans, "t-held")
    by_kind = {(item.kind, item.name): item for item in spans}
    cut = [item for item in spans if item.status != "ok"]
    # Cut short: the trial and the module still waiting; Predict and its calls had finished.
    assert {(item.kind, item.name) for item in cut} == {("trial", "t-held"), ("module", "Held")}
    for item in cut:
        assert item.status == "timeout" and item.error == "trial did not finish within 0.5 s"
        assert item.json_attributes["unfinished"] is True
    assert by_kind[("module", "Predict")].status == "ok"
    assert by_kind[("lm", "lab/small")].status == "ok"
    assert ("metric", "exact_match") not in by_kind
    # Later spans stay out, the snapshot is what the collector keeps, and on_trace is left to the abandoner.
    assert [item.span_id for item in collector.spans] == [item.span_id for item in spans]
    assert [item.status for item in collector.spans] == [item.status for item in spans]
    assert collector.abandoned == "trial did not finish within 0.5 s" and collector.closed
    assert handed == []
    assert collector.abandon(status="timeout", reason="again") == spans  # idempotent
    assert collector.snapshot(status="timeout", reason="again") == spans  # the same, under the runner's name


@pytest.mark.parametrize("delay", [0.0, 0.003, 0.011, 0.023])
def test_abandon_mid_run_never_loses_or_doubles_a_span(recorder: SpanRecorder, capturing, delay: float) -> None:
    trial: dict[str, TraceCollector] = {}
    running = threading.Event()
    stop = threading.Event()

    def worker() -> None:
        predict = dspy.Predict("question -> answer")
        with capturing(recorder, lm=lab_lm()), recorder.trial("t-busy") as collector:
            trial["collector"] = collector
            running.set()
            index = 0
            while not stop.is_set() and index < 100_000:  # until abandoned: cached answers make calls fast
                predict(question=f"What is {index} + 1?")
                index += 1

    thread = threading.Thread(target=worker)
    thread.start()
    assert running.wait(30)
    stop.wait(delay)
    spans = trial["collector"].abandon(status="cancelled", reason="run stopped")
    stop.set()
    thread.join(30)
    # Every call open at the cut is there once, cut short or finished: one root, no orphan, no duplicate id.
    assert_well_formed(spans, "t-busy")
    assert all(item.status in ("ok", "cancelled") for item in spans)
    assert spans[0].kind == "trial" and spans[0].status == "cancelled"  # cut mid-run, not after the loop
    assert trial["collector"].spans == spans


def test_abandon_cuts_an_open_metric_span_and_masks_the_reason(recorder: SpanRecorder) -> None:
    inside, release = threading.Event(), threading.Event()
    trial: dict[str, TraceCollector] = {}

    def worker() -> None:
        with recorder.trial("t-metric-held") as collector:
            trial["collector"] = collector
            with metric("slow_judge") as handle:
                handle.set(rubric="strict")
                inside.set()
                assert release.wait(30)
                handle.set(score=0.5)

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(30)
    spans = trial["collector"].abandon(status="cancelled", reason="run stopped; key sk-live-abcdef1234567890")
    release.set()
    thread.join(30)
    by_kind = {item.kind: item for item in spans}
    assert set(by_kind) == {"trial", "metric"}
    assert by_kind["metric"].parent_id == by_kind["trial"].span_id
    assert by_kind["metric"].status == by_kind["trial"].status == "cancelled"
    assert by_kind["metric"].json_attributes == {"rubric": "strict", "unfinished": True}
    assert "sk-live-abcdef1234567890" not in by_kind["metric"].error
    assert "run stopped" in by_kind["metric"].error


def test_abandon_after_the_trial_closed_changes_nothing(recorder: SpanRecorder) -> None:
    with recorder.trial("t-done") as collector, metric("m") as handle:
        handle.set(score=1.0)
    before = collector.spans
    assert collector.abandon(status="timeout", reason="too late") == before
    assert collector.abandoned is None
    assert {item.status for item in collector.spans} == {"ok"}


def test_abandon_rejects_a_status_that_is_not_a_give_up(recorder: SpanRecorder) -> None:
    with recorder.trial("t-status") as collector:
        with pytest.raises(ValueError, match="cannot abandon a trace with status 'ok'"):
            collector.abandon(status="ok", reason="x")
        assert not collector.closed
    assert ABANDONED_STATUSES <= SPAN_STATUSES

"""Decision traces: one builder for every step's spans, each span timed when its decision or evaluation happened."""

from __future__ import annotations

import time

from dspex_lab.optimization._decisions import DecisionTrace
from dspex_lab.trace.spans import now_ns


def test_spans_carry_the_times_their_decisions_and_evaluations_happened() -> None:
    trace = DecisionTrace("run", 2)
    trace.decide("propose c4", candidate="c4", parent="c0", strategy="demo", rationale="why")
    proposed = now_ns()
    with trace.evaluation("screen c4") as outcome:
        time.sleep(0.02)
        outcome["mean"] = 0.75
    screened = now_ns()
    trace.conclude("accepted c4: t p=0.01")
    spans = trace.close()

    root, propose, screen, decision = spans
    assert [span.span_id for span in spans] == ["step-2-root", "step-2-0", "step-2-1", "step-2-2"]
    assert {span.trace_id for span in spans} == {"step-2"}
    assert all(span.parent_id == "step-2-root" for span in spans[1:])
    assert (root.kind, root.name) == ("decision", "step 2")
    assert root.attributes == {"run_id": "run", "step": 2, "decision": "accepted c4: t p=0.01"}
    assert (propose.kind, decision.kind, screen.kind) == ("decision", "decision", "evaluation")
    assert decision.name == "accepted c4" and decision.attributes == {"decision": "accepted c4: t p=0.01"}
    assert screen.attributes == {"mean": 0.75}
    # A decision without its work timed is an instant; an evaluation lasts as long as its block ran; the
    # outcome lasts from its last input (the screening's end) to its making; the root encloses them all.
    assert propose.start_ns == propose.end_ns <= proposed <= screen.start_ns
    assert screen.end_ns - screen.start_ns >= 20_000_000 and screen.end_ns <= screened <= decision.end_ns
    assert decision.start_ns == screen.end_ns
    assert root.start_ns <= propose.start_ns and root.end_ns >= decision.end_ns


def test_an_evaluation_timed_before_its_outcome_was_known_keeps_its_times() -> None:
    started = now_ns()
    trace = DecisionTrace("run", 1)
    ended = now_ns()
    trace.add("evaluation", "validate c1", {"significant": True}, start_ns=started, end_ns=ended)
    trace.conclude("budget: spent", name="stopped")
    root, validate, stopped = trace.close()
    assert (validate.start_ns, validate.end_ns) == (started, ended)
    assert root.start_ns <= started  # the root still encloses a span timed before the trace began
    assert (stopped.name, stopped.attributes) == ("stopped", {"decision": "budget: spent"})


def test_a_failing_evaluation_is_recorded_with_what_it_had() -> None:
    trace = DecisionTrace("run", 3)
    try:
        with trace.evaluation("screen c9") as outcome:
            outcome["candidate"] = "c9"
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    _, screen = trace.close()
    assert screen.name == "screen c9" and screen.attributes == {"candidate": "c9"}


def test_a_decision_is_timed_around_its_work_and_the_outcome_from_its_last_input() -> None:
    trace = DecisionTrace("run", 1)
    started = now_ns()
    time.sleep(0.01)  # the proposal's LM calls
    trace.decide("propose c1", since_ns=started, candidate="c1")
    with trace.evaluation("validate c1"):
        time.sleep(0.005)
    time.sleep(0.01)  # the paired tests and Holm's correction
    trace.conclude("accepted c1: t p=0.01")
    _, propose, validate, accepted = trace.close()
    assert propose.start_ns == started and propose.end_ns - propose.start_ns >= 10_000_000
    assert propose.attributes == {"candidate": "c1"}
    assert accepted.start_ns == validate.end_ns and accepted.end_ns - accepted.start_ns >= 10_000_000


def test_a_span_never_ends_before_it_starts() -> None:
    trace = DecisionTrace("run", 1)
    later = now_ns() + 10_000_000_000
    trace.decide("propose c1", since_ns=later)
    _, propose = trace.close()
    assert propose.start_ns == propose.end_ns < later

"""Attributes written as JSON when captured: a call's inputs as it received them, its outputs as it returned them."""

from __future__ import annotations

import json
import math

import dspy
import pytest

from dspex_lab.lm import lab_lm
from dspex_lab.trace import Span, SpanRecorder, decision
from dspex_lab.trace.redaction import REDACTED
from dspex_lab.trace.spans import encode_attributes, join_objects, to_jsonable

SECRET = "sk-test" + "9" * 30


class Tamper(dspy.Module):
    """Changes the list it was given while it runs, and the prediction it returned after it returned it."""

    def forward(self, notes: list[str]) -> dspy.Prediction:
        notes.append(f"key {SECRET}")  # a secret that arrives after the call started
        notes.append("added during the call")
        return dspy.Prediction(answer="done")


def test_inputs_are_stored_as_the_call_received_them(capturing) -> None:
    recorder = SpanRecorder()
    notes = ["first"]
    with capturing(recorder, lm=lab_lm()), recorder.trial("t-tamper") as collector:
        prediction = Tamper()(notes=notes)
        prediction.answer = "changed by the caller later"
    (module,) = [item for item in collector.spans if item.kind == "module"]
    stored = json.loads(module.to_row()["attributes"])
    assert stored["inputs"] == {"notes": ["first"]}
    assert stored["outputs"] == {"answer": "done"}
    assert SECRET not in module.to_row()["attributes"]
    assert module.json_attributes == stored


def test_lm_span_text_matches_the_exact_conversion(capturing) -> None:
    """The fast encoder and the exact, redacting conversion agree on a real LM call's attributes."""
    recorder = SpanRecorder()
    with capturing(recorder, lm=lab_lm()), recorder.trial("t-cot") as collector:
        dspy.ChainOfThought("question -> answer")(question="What is 4 + 5?")
    for item in collector.spans:
        exact = to_jsonable(item.attributes)
        assert json.loads(item.attributes_text) == exact, item.kind
    lm_span = next(item for item in collector.spans if item.kind == "lm")
    assert lm_span.json_attributes["messages"][-1]["content"].count("What is 4 + 5?") == 1
    assert lm_span.json_attributes["total_tokens"] > 0


def test_errors_quoting_a_key_are_masked(capturing) -> None:
    class Refuses(dspy.Module):
        def forward(self, question: str) -> dspy.Prediction:
            raise PermissionError(f"invalid API key {SECRET}")

    recorder = SpanRecorder()
    with capturing(recorder, lm=lab_lm()), recorder.trial("t-refused") as collector, pytest.raises(PermissionError):
        Refuses()(question="hello")
    (module,) = [item for item in collector.spans if item.kind == "module"]
    assert module.status == "error"
    assert SECRET not in module.error and REDACTED in module.error


def test_values_json_cannot_hold_take_the_exact_path() -> None:
    cyclic: list = []
    cyclic.append(cyclic)
    assert json.loads(encode_attributes({"score": math.nan})) == {"score": "nan"}
    assert json.loads(encode_attributes({"pair": {(1, 2): "a"}})) == {"pair": {"(1, 2)": "a"}}
    assert json.loads(encode_attributes({"flags": {True: 1, None: 2}})) == {"flags": {"true": 1, "null": 2}}
    loop = json.loads(encode_attributes({"loop": cyclic}))["loop"]  # cut off at the depth limit, not a crash
    depth = 0
    while isinstance(loop, list):
        loop, depth = loop[0], depth + 1
    assert depth == 15 and loop == "[[...]]"
    assert json.loads(encode_attributes({"signature": dspy.Signature("question -> answer")})) == {
        "signature": "question -> answer"
    }
    # Objects without a JSON form are converted and redacted on the way.
    assert SECRET not in encode_attributes({"prediction": dspy.Prediction(answer=f"use {SECRET}")})


def test_join_objects() -> None:
    assert json.loads(join_objects('{"a": 1}', '{"b": [2]}')) == {"a": 1, "b": [2]}
    assert join_objects("{}", '{"b": 2}') == '{"b": 2}'
    assert join_objects('{"a": 1}', "{}") == '{"a": 1}'


def test_a_stored_row_reads_back_to_the_same_row() -> None:
    text = '{"messages": 2, "demos": 0}'  # keys in capture order, not sorted
    row = {
        "trace_id": "t",
        "span_id": "s",
        "parent_id": None,
        "kind": "adapter_format",
        "name": "ChatAdapter.format",
        "start_ns": 1,
        "end_ns": 2,
        "status": "ok",
        "attributes": text,
        "error": None,
    }
    span = Span.from_row(row)
    assert span.to_row() == row
    assert span.json_attributes == {"messages": 2, "demos": 0}


def test_orchestration_spans_are_checked_again_when_they_end() -> None:
    notes = ["first"]
    with decision("choose a rule", values={"notes": notes}, trace_id="t-decision") as handle:
        notes.append(f"key {SECRET}")  # changed after the span captured it
        handle.set(score=0.5)
    (stored,) = handle.spans
    assert SECRET not in stored.to_row()["attributes"]
    assert stored.json_attributes["values"]["notes"] == ["first", f"key {REDACTED}"]
    assert stored.json_attributes["score"] == 0.5


def test_a_call_that_captured_only_text_is_written_once_and_still_cut_short_as_json() -> None:
    """An adapter's format captures the signature (as its text) and a count: nothing to write before it ends."""
    recorder = SpanRecorder()
    signature = dspy.ensure_signature("question -> answer")
    with recorder.trial("t-format") as collector:
        recorder.on_adapter_format_start(call_id="done", instance=dspy.ChatAdapter(), inputs={"signature": signature})
        recorder.on_adapter_format_end(call_id="done", outputs=[{"role": "user", "content": "q"}])
        recorder.on_adapter_parse_start(
            call_id="open", instance=dspy.ChatAdapter(), inputs={"signature": signature, "completion": "a"}
        )
        spans = collector.abandon(status="timeout", reason="trial did not finish within 1 s")
    by_id = {item.span_id: item for item in spans}
    assert json.loads(by_id["done"].attributes_text) == {"signature": "question -> answer", "demos": 0, "messages": 1}
    assert json.loads(by_id["open"].attributes_text) == {
        "signature": "question -> answer",
        "completion": "a",
        "unfinished": True,
    }
    assert by_id["open"].status == "timeout"
    for item in spans:
        assert json.loads(item.attributes_text) == to_jsonable(item.attributes), item.kind

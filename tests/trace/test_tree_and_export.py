"""Reading spans back: rows, trees, text rendering and OTLP/JSON export."""

from __future__ import annotations

import json

import dspy
import pytest

from dspex_lab.lm import lab_lm
from dspex_lab.trace import Span, SpanRecorder, TraceTree, decision, metric, to_otlp, to_otlp_json
from dspex_lab.trace.otlp import SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL, otlp_span_id, otlp_trace_id


@pytest.fixture(scope="module")
def spans() -> list[Span]:
    recorder = SpanRecorder()
    with dspy.context(lm=lab_lm(), callbacks=[recorder]), recorder.trial("trial-7", attributes={"example": 7}) as c:
        with decision("propose", rationale="first try", values={"temperature": 0.0}):
            dspy.ChainOfThought("question -> answer")(question="What is 2 + 2?")
        with metric("exact_match") as handle:
            handle.set(score=1.0)
        c.root.set(repeat=0)
    return c.spans


def test_rows_round_trip(spans: list[Span]) -> None:
    rows = [item.to_row() for item in spans]
    for row in rows:
        assert isinstance(row["attributes"], str)
        assert all(value is None or isinstance(value, (str, int)) for value in row.values())
    # Rows survive a JSON (or database) round trip.
    restored = [Span.from_row(row) for row in json.loads(json.dumps(rows))]
    assert [item.to_row() for item in restored] == rows
    assert [(item.span_id, item.parent_id, item.duration) for item in restored] == [
        (item.span_id, item.parent_id, item.duration) for item in spans
    ]
    original = TraceTree.from_spans(spans)
    rebuilt = TraceTree.from_spans(reversed(restored))  # order of rows must not matter
    assert [(n.depth, n.span.span_id) for n in rebuilt.walk()] == [(n.depth, n.span.span_id) for n in original.walk()]
    assert rebuilt.to_text() == original.to_text()


def test_tree_navigation(spans: list[Span]) -> None:
    tree = TraceTree.from_spans(spans)
    assert len(tree) == len(spans) == 8
    (root,) = tree.roots
    assert root.span.kind == "trial" and root.span.json_attributes == {"example": 7, "repeat": 0}
    assert [child.span.kind for child in root.children] == ["decision", "metric"]
    assert [node.span.kind for node in tree.find("2 + 2", kind="lm")] == ["lm"]
    assert tree.find("first try")[0].span.name == "propose"
    assert tree.find("no such text anywhere") == []
    lm_node = tree.find("lab/small")[0]
    assert tree.get(lm_node.span.span_id) is lm_node
    starts = [node.span.start_ns for node in root.walk()]
    assert starts == sorted(starts)


def test_orphans_attach_to_the_root_and_are_marked(spans: list[Span]) -> None:
    by_kind = {item.kind: item for item in spans}
    kept = [item for item in spans if item.span_id != by_kind["decision"].span_id]  # lose the decision
    tree = TraceTree.from_spans(kept)
    (root,) = tree.roots
    orphans = [node for node in tree.walk() if node.orphan]
    assert [node.span.name for node in orphans] == ["ChainOfThought"]
    assert orphans[0] in root.children and orphans[0].depth == 1
    assert "(orphan)" in tree.to_text()
    # Without any root, the earliest orphan stands in for it.
    rootless = TraceTree.from_spans([item for item in spans if item.kind != "trial"])
    assert len(rootless.roots) == 1 and rootless.roots[0].orphan
    assert len(rootless) == len(spans) - 1


def test_parent_cycles_do_not_loop() -> None:
    first = Span("t", "a", parent_id="b", kind="module", name="A", start_ns=1, end_ns=10)
    second = Span("t", "b", parent_id="a", kind="module", name="B", start_ns=2, end_ns=9)
    tree = TraceTree.from_spans([first, second])
    assert len(tree) == 2
    assert [(node.depth, node.span.name, node.orphan) for node in tree.walk()] == [(0, "A", True), (1, "B", False)]


def test_text_rendering(spans: list[Span]) -> None:
    tree = TraceTree.from_spans(spans)
    text = tree.to_text(width=90)
    lines = text.splitlines()
    assert len(lines) == 8
    assert all(len(line) <= 90 for line in lines)
    assert lines[0].startswith("trial trial-7")
    assert "├─ decision propose" in lines[1]
    lm_line = next(line for line in lines if "lm lab/small" in line)
    assert " tok (" in lm_line and lm_line.rstrip().endswith("ok")
    assert "score=1.0" in lines[-1]
    assert "What is 2 + 2?" not in text
    with_prompts = tree.to_text(show_prompts=True, width=90)
    assert "[user]" in with_prompts and "What is 2 + 2?" in with_prompts and "[completion]" in with_prompts


def test_show_prints(spans: list[Span], capsys: pytest.CaptureFixture[str]) -> None:
    TraceTree.from_spans(spans).show(width=100)
    assert "lm lab/small" in capsys.readouterr().out


# A JSON Schema for OTLP/JSON ExportTraceServiceRequest, written from opentelemetry-proto's trace.proto and
# common.proto and the OTLP specification's JSON encoding rules: lowerCamelCase field names, hex trace/span ids,
# 64-bit integers as decimal strings, enums as integers.
ANY_VALUE = {
    "type": "object",
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "stringValue": {"type": "string"},
        "boolValue": {"type": "boolean"},
        "intValue": {"type": "string", "pattern": "^-?[0-9]+$"},
        "doubleValue": {"type": "number"},
        "arrayValue": {"type": "object"},
        "kvlistValue": {"type": "object"},
        "bytesValue": {"type": "string"},
    },
    "additionalProperties": False,
}
KEY_VALUE = {
    "type": "object",
    "required": ["key", "value"],
    "properties": {"key": {"type": "string"}, "value": ANY_VALUE},
    "additionalProperties": False,
}
UNSIGNED_64 = {"type": "string", "pattern": "^[0-9]+$"}
OTLP_SCHEMA = {
    "type": "object",
    "required": ["resourceSpans"],
    "additionalProperties": False,
    "properties": {
        "resourceSpans": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "resource": {
                        "type": "object",
                        "properties": {
                            "attributes": {"type": "array", "items": KEY_VALUE},
                            "droppedAttributesCount": {"type": "integer"},
                        },
                        "additionalProperties": False,
                    },
                    "schemaUrl": {"type": "string"},
                    "scopeSpans": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "scope": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "version": {"type": "string"},
                                        "attributes": {"type": "array", "items": KEY_VALUE},
                                    },
                                    "additionalProperties": False,
                                },
                                "schemaUrl": {"type": "string"},
                                "spans": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": [
                                            "traceId",
                                            "spanId",
                                            "name",
                                            "kind",
                                            "startTimeUnixNano",
                                            "endTimeUnixNano",
                                        ],
                                        "additionalProperties": False,
                                        "properties": {
                                            "traceId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                                            "spanId": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                                            "parentSpanId": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                                            "traceState": {"type": "string"},
                                            "flags": {"type": "integer"},
                                            "name": {"type": "string"},
                                            "kind": {"type": "integer", "enum": [0, 1, 2, 3, 4, 5]},
                                            "startTimeUnixNano": UNSIGNED_64,
                                            "endTimeUnixNano": UNSIGNED_64,
                                            "attributes": {"type": "array", "items": KEY_VALUE},
                                            "droppedAttributesCount": {"type": "integer"},
                                            "events": {"type": "array"},
                                            "droppedEventsCount": {"type": "integer"},
                                            "links": {"type": "array"},
                                            "droppedLinksCount": {"type": "integer"},
                                            "status": {
                                                "type": "object",
                                                "properties": {
                                                    "message": {"type": "string"},
                                                    "code": {"type": "integer", "enum": [0, 1, 2]},
                                                },
                                                "additionalProperties": False,
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def test_otlp_export_matches_the_schema(spans: list[Span]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    payload = to_otlp(spans, service_name="lab")
    jsonschema.validate(json.loads(json.dumps(payload)), OTLP_SCHEMA)
    exported = payload["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert payload["resourceSpans"][0]["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "lab"}}
    ]
    assert len(exported) == len(spans)
    assert {item["traceId"] for item in exported} == {otlp_trace_id("trial-7")}
    ids = {item["spanId"] for item in exported}
    for item, original in zip(exported, spans, strict=True):
        assert item["spanId"] == otlp_span_id(original.span_id)
        assert int(item["endTimeUnixNano"]) - int(item["startTimeUnixNano"]) == original.duration_ns
        if original.parent_id is None:
            assert "parentSpanId" not in item
        else:
            assert item["parentSpanId"] in ids
        expected_kind = SPAN_KIND_CLIENT if original.kind == "lm" else SPAN_KIND_INTERNAL
        assert item["kind"] == expected_kind
    lm_span = next(item for item in exported if item["kind"] == SPAN_KIND_CLIENT)
    attributes = {entry["key"]: entry["value"] for entry in lm_span["attributes"]}
    assert attributes["gen_ai.request.model"] == {"stringValue": "lab/small"}
    assert int(attributes["gen_ai.usage.input_tokens"]["intValue"]) > 0
    assert json.loads(attributes["dspex.messages"]["stringValue"])[0]["role"] == "system"


def test_otlp_error_status_and_deterministic_ids() -> None:
    failed = Span(
        "trace-x",
        "s1",
        parent_id=None,
        kind="metric",
        name="m",
        start_ns=5,
        end_ns=9,
        status="error",
        error="ValueError: bad",
    )
    item = to_otlp([failed])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert item["status"] == {"code": 2, "message": "ValueError: bad"}
    assert otlp_trace_id("trace-x") == item["traceId"] == otlp_trace_id("trace-x")
    assert otlp_trace_id("trace-x") != otlp_trace_id("trace-y")


def test_otlp_round_trips_through_opentelemetry_proto(spans: list[Span]) -> None:
    json_format = pytest.importorskip("google.protobuf.json_format")
    trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    message = json_format.ParseDict(to_otlp(spans), trace_service.ExportTraceServiceRequest())
    assert len(message.resource_spans[0].scope_spans[0].spans) == len(spans)


def _span(span_id: str, *, parent_id: str | None, kind: str, name: str, **fields) -> Span:
    return Span("trial-9/r0", span_id, parent_id=parent_id, kind=kind, name=name, start_ns=10, end_ns=20, **fields)


def test_otlp_ids_are_unique_per_experiment_and_trial(spans: list[Span]) -> None:
    first = to_otlp(spans, experiment_id="exp-a", experiment_name="baseline")
    second = to_otlp(spans, experiment_id="exp-b", experiment_name="baseline")
    again = to_otlp(spans, experiment_id="exp-a", experiment_name="baseline")

    def ids(payload) -> tuple[set[str], set[str]]:
        exported = payload["resourceSpans"][0]["scopeSpans"][0]["spans"]
        return {item["traceId"] for item in exported}, {item["spanId"] for item in exported}

    assert ids(first) == ids(again)  # deterministic
    assert not ids(first)[0] & ids(second)[0] and not ids(first)[1] & ids(second)[1]
    assert ids(first)[0] == {otlp_trace_id("trial-7", "exp-a")} != {otlp_trace_id("trial-7")}
    # Parents still resolve within one experiment's export.
    exported = first["resourceSpans"][0]["scopeSpans"][0]["spans"]
    span_ids = {item["spanId"] for item in exported}
    assert all(item["parentSpanId"] in span_ids for item in exported if "parentSpanId" in item)
    # An id cannot be forged by moving text between the experiment and the trial.
    assert otlp_trace_id("b/r0", "exp-a") != otlp_trace_id("r0", "exp-a/b")
    assert first["resourceSpans"][0]["resource"]["attributes"] == [
        {"key": "service.name", "value": {"stringValue": "dspex_lab"}},
        {"key": "dspex.experiment.id", "value": {"stringValue": "exp-a"}},
        {"key": "dspex.experiment.name", "value": {"stringValue": "baseline"}},
    ]


def test_otlp_json_carries_the_experiment(spans: list[Span]) -> None:
    payload = json.loads(to_otlp_json(spans, experiment_id="exp-a", experiment_name="baseline"))
    resource = {item["key"]: item["value"] for item in payload["resourceSpans"][0]["resource"]["attributes"]}
    assert resource["dspex.experiment.id"] == {"stringValue": "exp-a"}
    assert payload == json.loads(json.dumps(to_otlp(spans, experiment_id="exp-a", experiment_name="baseline")))


def test_spans_cut_short_show_their_status_in_text_and_otlp() -> None:
    spans = [
        _span(
            "root",
            parent_id=None,
            kind="trial",
            name="trial-9/r0",
            status="timeout",
            error="did not finish",
            attributes={"unfinished": True},
        ),
        _span(
            "lm",
            parent_id="root",
            kind="lm",
            name="lab/small",
            status="timeout",
            error="did not finish",
            attributes={"model": "lab/small", "unfinished": True},
        ),
        _span("done", parent_id="root", kind="module", name="Predict", attributes={}),
    ]
    lines = TraceTree.from_spans(spans).to_text(width=100).splitlines()
    root_line = lines[0]
    assert root_line.rstrip().endswith("timeout") and "unfinished" in root_line
    # One reason cut both: it is printed once, under the outermost span.
    assert [line.strip() for line in lines].count("! did not finish") == 1
    lm_line = next(line for line in lines if "lm lab/small" in line)
    assert lm_line.rstrip().endswith("timeout") and "unfinished" in lm_line
    assert next(line for line in lines if "Predict" in line).rstrip().endswith("ok")

    exported = {item["name"]: item for item in to_otlp(spans)["resourceSpans"][0]["scopeSpans"][0]["spans"]}
    status = {item["key"]: item["value"] for item in exported["lab/small"]["attributes"]}
    assert exported["lab/small"]["status"] == {"code": 2, "message": "did not finish"}
    assert status["dspex.status"] == {"stringValue": "timeout"}
    assert status["dspex.unfinished"] == {"boolValue": True}
    assert exported["Predict"]["status"] == {"code": 1}


def test_show_colours_spans_cut_short(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("rich")
    spans = [_span("root", parent_id=None, kind="trial", name="t", status="cancelled", error="run stopped")]
    TraceTree.from_spans(spans).show(width=80)
    assert "cancelled" in capsys.readouterr().out


def test_retried_attempts_are_labelled() -> None:
    spans = [
        _span("root", parent_id=None, kind="trial", name="trial-9/r0", attributes={"attempt": 1}),
        _span(
            "a1",
            parent_id="root",
            kind="attempt",
            name="attempt 1",
            status="error",
            error="RateLimitError: 429",
            attributes={"attempt": 1},
        ),
        _span(
            "a2",
            parent_id="root",
            kind="attempt",
            name="attempt 2",
            attributes={"attempt": 2, "retry_cause": "RateLimitError: 429"},
        ),
        _span("m2", parent_id="a2", kind="module", name="Predict", attributes={"attempt": 3}),
        _span("m3", parent_id="a2", kind="module", name="Other", attributes={"retry_cause": "timeout"}),
    ]
    lines = TraceTree.from_spans(spans).to_text(width=120).splitlines()
    by_name = {name: next(line for line in lines if name in line) for name in ("trial-9", "attempt 1", "attempt 2")}
    assert "attempt" not in by_name["trial-9"].replace("trial-9/r0", "")  # the first attempt is not labelled
    assert "retry" not in by_name["attempt 1"]
    # An attempt span is named "attempt N" already: only the cause is added, not the label a second time.
    assert by_name["attempt 2"].startswith("└─ attempt 2  (retry after RateLimitError: 429)")
    assert "module Predict  attempt 3" in next(line for line in lines if "Predict" in line)
    assert "module Other  retried (retry after timeout)" in next(line for line in lines if "Other" in line)

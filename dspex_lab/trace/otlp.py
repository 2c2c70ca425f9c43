"""Export spans as OpenTelemetry OTLP/JSON, for Jaeger, Phoenix, Langfuse and other trace viewers.

The payload follows the OTLP/JSON encoding of ``ExportTraceServiceRequest``:
ids are lowercase hex (not base64), 64-bit integers are decimal strings, and
enum fields (span kind, status code) are integers, as the specification
requires. Trace and span ids are derived from the dspex ids by hashing, so the
same trial always exports to the same OTLP trace id; the original ids are kept
as ``dspex.trace_id`` / ``dspex.span_id`` attributes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

from dspex_lab.trace.spans import Span

__all__ = [
    "SPAN_KIND_CLIENT",
    "SPAN_KIND_INTERNAL",
    "STATUS_CODE_ERROR",
    "STATUS_CODE_OK",
    "otlp_span_id",
    "otlp_trace_id",
    "to_otlp",
    "to_otlp_json",
]

SPAN_KIND_INTERNAL = 1
SPAN_KIND_CLIENT = 3
STATUS_CODE_OK = 1
STATUS_CODE_ERROR = 2

_SCOPE_NAME = "dspex_lab.trace"
_SCOPE_VERSION = "0.1.0"

# OpenTelemetry's GenAI semantic-convention names for the LM attributes viewers know how to display.
_GEN_AI_NAMES = {
    "model": "gen_ai.request.model",
    "response_model": "gen_ai.response.model",
    "temperature": "gen_ai.request.temperature",
    "max_tokens": "gen_ai.request.max_tokens",
    "prompt_tokens": "gen_ai.usage.input_tokens",
    "completion_tokens": "gen_ai.usage.output_tokens",
}

_INT64_MINIMUM = -(2**63)
_INT64_MAXIMUM = 2**63 - 1


def otlp_trace_id(trace_id: str) -> str:
    """Derive a 32-hex-digit OTLP trace id from a dspex trace id (deterministic)."""
    return _hex_id(trace_id, 16)


def otlp_span_id(span_id: str) -> str:
    """Derive a 16-hex-digit OTLP span id from a dspex span id (deterministic)."""
    return _hex_id(span_id, 8)


def _hex_id(text: str, size: int) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[: size * 2]
    # An all-zero id is invalid in OTLP; a hash almost never gives one, but ruling it out costs nothing.
    return digest if digest.strip("0") else "0" * (size * 2 - 1) + "1"


def to_otlp(spans: Iterable[Span], *, service_name: str = "dspex_lab") -> dict[str, Any]:
    """Convert spans to an OTLP/JSON ``ExportTraceServiceRequest`` payload.

    Args:
        spans: the spans (any number of traces).
        service_name: the ``service.name`` resource attribute.

    Returns:
        A dict ready for ``json.dumps`` and a POST to ``/v1/traces``.
    """
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attribute("service.name", service_name)]},
                "scopeSpans": [
                    {
                        "scope": {"name": _SCOPE_NAME, "version": _SCOPE_VERSION},
                        "spans": [_otlp_span(item) for item in spans],
                    }
                ],
            }
        ]
    }


def to_otlp_json(spans: Iterable[Span], *, service_name: str = "dspex_lab") -> str:
    """Return :func:`to_otlp` serialised as a JSON string.

    Args:
        spans: the spans.
        service_name: the ``service.name`` resource attribute.

    Returns:
        The JSON text.
    """
    return json.dumps(to_otlp(spans, service_name=service_name), ensure_ascii=False)


def _otlp_span(item: Span) -> dict[str, Any]:
    attributes = [
        _attribute("dspex.kind", item.kind),
        _attribute("dspex.trace_id", item.trace_id),
        _attribute("dspex.span_id", item.span_id),
    ]
    for key, value in item.json_attributes.items():
        if value is None:
            continue
        if item.kind == "lm" and key in _GEN_AI_NAMES:
            attributes.append(_attribute(_GEN_AI_NAMES[key], value))
        attributes.append(_attribute(f"dspex.{key}", value))
    if item.kind == "lm":
        attributes.append(_attribute("gen_ai.operation.name", "chat"))
    status: dict[str, Any] = {"code": STATUS_CODE_OK if item.status == "ok" else STATUS_CODE_ERROR}
    if item.error:
        status["message"] = item.error
    payload: dict[str, Any] = {
        "traceId": otlp_trace_id(item.trace_id),
        "spanId": otlp_span_id(item.span_id),
        "name": item.name,
        "kind": SPAN_KIND_CLIENT if item.kind == "lm" else SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(item.start_ns),
        "endTimeUnixNano": str(item.end_ns),
        "attributes": attributes,
        "status": status,
    }
    if item.parent_id is not None:
        payload["parentSpanId"] = otlp_span_id(item.parent_id)
    return payload


def _attribute(key: str, value: Any) -> dict[str, Any]:
    return {"key": key, "value": _any_value(value)}


def _any_value(value: Any) -> dict[str, Any]:
    # bool before int: True is an int in Python but a boolValue in OTLP.
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int) and _INT64_MINIMUM <= value <= _INT64_MAXIMUM:
        return {"intValue": str(value)}
    if isinstance(value, float) and math.isfinite(value):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    # Nested values travel as JSON text: viewers display kvlistValue poorly and messages are easier to read as JSON.
    return {"stringValue": json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)}

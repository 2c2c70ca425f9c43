"""Export spans as OpenTelemetry OTLP/JSON, for Jaeger, Phoenix, Langfuse and other trace viewers.

The payload follows the OTLP/JSON encoding of ``ExportTraceServiceRequest``:
ids are lowercase hex (not base64), 64-bit integers are decimal strings, and
enum fields (span kind, status code) are integers, as the specification
requires.

Identity: a dspex trace id is a trial id (``"<example id>/r<repeat>"``), the
same in every experiment run on the same data. OTLP trace and span ids are
therefore derived by hashing the experiment id together with the dspex id, so
two experiments never share a trace in a viewer, and the same trial of the same
experiment always exports to the same ids. The resource carries the experiment
(``dspex.experiment.id``, ``dspex.experiment.name``) and the original ids are
kept as ``dspex.trace_id`` / ``dspex.span_id`` attributes.

Status: an ``"ok"`` span exports with status code OK, any other with ERROR and
its error as the message; ``dspex.status`` keeps the dspex status, which tells a
span cut short by a ``timeout`` or ``cancelled`` trial from one that failed.
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


def otlp_trace_id(trace_id: str, experiment_id: str | None = None) -> str:
    """Derive a 32-hex-digit OTLP trace id from an experiment id and a dspex trace id (deterministic).

    Args:
        trace_id: the dspex trace id (a trial id).
        experiment_id: the experiment the trace belongs to; None hashes the trace id alone.

    Returns:
        The OTLP trace id, as lowercase hex.
    """
    return _hex_id(_scoped(trace_id, experiment_id), 16)


def otlp_span_id(span_id: str, experiment_id: str | None = None) -> str:
    """Derive a 16-hex-digit OTLP span id from an experiment id and a dspex span id (deterministic).

    Args:
        span_id: the dspex span id.
        experiment_id: the experiment the span belongs to; None hashes the span id alone.

    Returns:
        The OTLP span id, as lowercase hex.
    """
    return _hex_id(_scoped(span_id, experiment_id), 8)


def _scoped(identifier: str, experiment_id: str | None) -> str:
    # A NUL cannot occur in either id, so no two (experiment, id) pairs join to the same text.
    return identifier if experiment_id is None else f"{experiment_id}\x00{identifier}"


def _hex_id(text: str, size: int) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[: size * 2]
    # An all-zero id is invalid in OTLP; a hash almost never gives one, but ruling it out costs nothing.
    return digest if digest.strip("0") else "0" * (size * 2 - 1) + "1"


def to_otlp(
    spans: Iterable[Span],
    *,
    experiment_id: str | None = None,
    experiment_name: str | None = None,
    service_name: str = "dspex_lab",
) -> dict[str, Any]:
    """Convert spans to an OTLP/JSON ``ExportTraceServiceRequest`` payload.

    Args:
        spans: the spans (any number of traces of one experiment).
        experiment_id: the experiment the spans belong to. Give it: trial ids repeat across experiments on the
            same data, and without it their traces would share OTLP ids and merge in a viewer.
        experiment_name: the experiment's name, for the resource.
        service_name: the ``service.name`` resource attribute.

    Returns:
        A dict ready for ``json.dumps`` and a POST to ``/v1/traces``.
    """
    resource = [_attribute("service.name", service_name)]
    if experiment_id is not None:
        resource.append(_attribute("dspex.experiment.id", experiment_id))
    if experiment_name is not None:
        resource.append(_attribute("dspex.experiment.name", experiment_name))
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": resource},
                "scopeSpans": [
                    {
                        "scope": {"name": _SCOPE_NAME, "version": _SCOPE_VERSION},
                        "spans": [_otlp_span(item, experiment_id) for item in spans],
                    }
                ],
            }
        ]
    }


def to_otlp_json(
    spans: Iterable[Span],
    *,
    experiment_id: str | None = None,
    experiment_name: str | None = None,
    service_name: str = "dspex_lab",
) -> str:
    """Return :func:`to_otlp` serialised as a JSON string.

    Args:
        spans: the spans (any number of traces of one experiment).
        experiment_id: the experiment the spans belong to (see :func:`to_otlp`).
        experiment_name: the experiment's name, for the resource.
        service_name: the ``service.name`` resource attribute.

    Returns:
        The JSON text.
    """
    payload = to_otlp(spans, experiment_id=experiment_id, experiment_name=experiment_name, service_name=service_name)
    return json.dumps(payload, ensure_ascii=False)


def _otlp_span(item: Span, experiment_id: str | None) -> dict[str, Any]:
    attributes = [
        _attribute("dspex.kind", item.kind),
        _attribute("dspex.status", item.status),
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
        "traceId": otlp_trace_id(item.trace_id, experiment_id),
        "spanId": otlp_span_id(item.span_id, experiment_id),
        "name": item.name,
        "kind": SPAN_KIND_CLIENT if item.kind == "lm" else SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(item.start_ns),
        "endTimeUnixNano": str(item.end_ns),
        "attributes": attributes,
        "status": status,
    }
    if item.parent_id is not None:
        payload["parentSpanId"] = otlp_span_id(item.parent_id, experiment_id)
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

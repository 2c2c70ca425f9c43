"""The stored span: one timed step of a trial, with its place in the trial's tree.

A span's ``attributes`` may hold references to live objects (a Prediction, a
Signature class, the message list sent to the LM) because serialising them on
the hot path would cost more than the step itself. They become JSON, and are
redacted once more, only when read: :attr:`Span.json_attributes`,
:meth:`Span.to_row` and every exporter go through the same conversion.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from dspex_lab.trace.redaction import REDACTED, is_clean_text, is_secret_key, mask_text

__all__ = ["SPAN_KINDS", "SPAN_STATUSES", "Span", "now_ns", "to_jsonable"]

SPAN_KINDS = frozenset(
    {"trial", "module", "adapter_format", "adapter_parse", "lm", "tool", "metric", "decision", "evaluation"}
)
SPAN_STATUSES = frozenset({"ok", "error"})

# Wall-clock timestamps come from one anchor plus the monotonic counter: one cheap clock read per event, and
# durations that never go negative when the system clock is adjusted mid-trial.
_WALL_ANCHOR_NS = time.time_ns()
_MONOTONIC_ANCHOR_NS = time.perf_counter_ns()

# One encoder for every row: json.dumps builds a new encoder on each call that passes options.
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, allow_nan=False)

_MAXIMUM_DEPTH = 16
_MAXIMUM_REPR = 2000


def now_ns() -> int:
    """Return the current time in nanoseconds since the Unix epoch, monotonic within this process."""
    return _WALL_ANCHOR_NS + time.perf_counter_ns() - _MONOTONIC_ANCHOR_NS


@dataclasses.dataclass(frozen=True)
class Span:
    """One timed step of a trial.

    Attributes:
        trace_id: the trial id every span of the trial shares.
        span_id: unique id (DSPy's call id for DSPy spans).
        parent_id: the enclosing span's id; None for a trace's root.
        kind: one of :data:`SPAN_KINDS`.
        name: what ran (``"Predict"``, ``"lab/small"``, ``"ChatAdapter.format"``...).
        start_ns: start, nanoseconds since the Unix epoch.
        end_ns: end, nanoseconds since the Unix epoch.
        status: ``"ok"`` or ``"error"``.
        attributes: details of the step; may hold live references until serialised.
        error: the exception's type and message when ``status`` is ``"error"``.
    """

    trace_id: str
    span_id: str
    _: dataclasses.KW_ONLY
    parent_id: str | None
    kind: str
    name: str
    start_ns: int
    end_ns: int
    status: str = "ok"
    attributes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @classmethod
    def build(
        cls,
        trace_id: str,
        span_id: str,
        *,
        parent_id: str | None,
        kind: str,
        name: str,
        start_ns: int,
        end_ns: int,
        status: str,
        attributes: Mapping[str, Any],
        error: str | None,
    ) -> Span:
        """Construct a span without the per-field checks of a frozen dataclass's ``__init__``.

        The recorder creates one span per DSPy call on the hot path; filling the
        instance dict directly costs a fraction of the generated initialiser.
        The result is an ordinary, still frozen, ``Span``.
        """
        instance = object.__new__(cls)
        instance.__dict__.update(
            trace_id=trace_id,
            span_id=span_id,
            parent_id=parent_id,
            kind=kind,
            name=name,
            start_ns=start_ns,
            end_ns=end_ns,
            status=status,
            attributes=attributes,
            error=error,
        )
        return instance

    @property
    def duration(self) -> float:
        """Return the span's length in seconds."""
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def duration_ns(self) -> int:
        """Return the span's length in nanoseconds."""
        return self.end_ns - self.start_ns

    @property
    def json_attributes(self) -> dict[str, Any]:
        """Return the attributes as redacted, JSON-ready values (computed once, on first read)."""
        # Cached by hand: functools.cached_property takes a lock shared by every Span on each read (Python 3.11),
        # which the journal writer and the threads building spans would contend for.
        cached = self.__dict__.get("_json_attributes")
        if cached is None:
            cached = _jsonable(self.attributes, 0, redacting=True)
            self.__dict__["_json_attributes"] = cached
        return cached

    def to_row(self) -> dict[str, Any]:
        """Flatten the span into a row of scalars, with the attributes as one JSON string.

        Returns:
            A dict with the span's fields; ``attributes`` is a JSON object string.
        """
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "kind": self.kind,
            "name": self.name,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "status": self.status,
            "attributes": _ENCODER.encode(self.json_attributes),
            "error": self.error,
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Span:
        """Rebuild a span from :meth:`to_row` output (extra keys are ignored).

        Args:
            row: a mapping with the span's fields; ``attributes`` may be a JSON string or a dict.

        Returns:
            The span.
        """
        attributes = row.get("attributes") or {}
        if isinstance(attributes, str):
            attributes = json.loads(attributes)
        parent_id = row.get("parent_id")
        error = row.get("error")
        return cls(
            str(row["trace_id"]),
            str(row["span_id"]),
            parent_id=None if parent_id is None else str(parent_id),
            kind=str(row["kind"]),
            name=str(row["name"]),
            start_ns=int(row["start_ns"]),
            end_ns=int(row["end_ns"]),
            status=str(row.get("status") or "ok"),
            attributes=dict(attributes),
            error=None if error is None else str(error),
        )


def to_jsonable(value: Any) -> Any:
    """Convert a value into plain JSON types (dict, list, str, int, float, bool, None).

    DSPy objects are given readable forms: a Signature class becomes its
    ``"inputs -> outputs"`` string, an Example or Prediction its fields, a
    pydantic model its ``model_dump``; anything else its (truncated) ``repr``.

    Args:
        value: any value.

    Returns:
        The JSON-ready value.
    """
    return _jsonable(value, 0, redacting=False)


def _jsonable(value: Any, depth: int, *, redacting: bool) -> Any:
    # One pass builds the JSON value and, when ``redacting``, masks secrets in it (keys naming secrets,
    # key-shaped strings, and the reprs of objects that have no JSON form). Exact types are tested first: this
    # runs for every value of every span, and isinstance against Mapping (an ABC) is slow for a non-mapping.
    kind = type(value)
    if kind is str:
        return mask_text(value) if redacting else value
    if value is None or kind is int or kind is bool:
        return value
    if kind is float:
        # JSON has no NaN or infinities; keep them readable instead of failing the whole row.
        return value if math.isfinite(value) else str(value)
    if depth >= _MAXIMUM_DEPTH and kind in _CONTAINERS:
        return _short_repr(value, redacting=redacting)
    if kind is dict:
        if redacting and _plain(value, depth):
            # Already JSON with nothing to mask (the common case): encoded as it is, not rebuilt.
            return value
        return _mapping(value, depth, redacting=redacting)
    if kind is list or kind is tuple:
        return [_jsonable(item, depth + 1, redacting=redacting) for item in value]
    if isinstance(value, type):
        return _type_text(value)
    if isinstance(value, str):
        return mask_text(str(value)) if redacting else str(value)
    if isinstance(value, (bool, int)):
        return int(value) if not isinstance(value, bool) else bool(value)
    if isinstance(value, float):
        return _jsonable(float(value), depth, redacting=redacting)
    if depth >= _MAXIMUM_DEPTH:
        return _short_repr(value, redacting=redacting)
    if isinstance(value, Mapping):
        return _mapping(value, depth, redacting=redacting)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(item, depth + 1, redacting=redacting) for item in value]
    if isinstance(value, (bytes, bytearray)):
        return f"<{len(value)} bytes>"
    for method in ("toDict", "model_dump"):
        converter = getattr(value, method, None)
        if callable(converter):
            try:
                converted = converter(mode="json") if method == "model_dump" else converter()
            except Exception:  # a broken converter must not lose the whole span
                break
            return _jsonable(converted, depth + 1, redacting=redacting)
    if dataclasses.is_dataclass(value):
        fields = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
        return _jsonable(fields, depth + 1, redacting=redacting)
    return _short_repr(value, redacting=redacting)


_CONTAINERS = frozenset({dict, list, tuple})


def _plain(value: dict[Any, Any] | list[Any], depth: int) -> bool:
    """Tell whether ``value`` is JSON already (string keys, plain values, no NaN) with no secret in it."""
    if depth >= _MAXIMUM_DEPTH:
        return False
    items = value.items() if type(value) is dict else enumerate(value)
    for key, item in items:
        if type(value) is dict and (type(key) is not str or is_secret_key(key)):
            return False
        kind = type(item)
        if kind is str:
            if not is_clean_text(item):
                return False
        elif kind is int or kind is bool or item is None:
            continue
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is dict or kind is list:
            if not _plain(item, depth + 1):
                return False
        else:
            return False
    return True


def _mapping(value: Mapping[Any, Any], depth: int, *, redacting: bool) -> dict[str, Any]:
    converted = {}
    for key, item in value.items():
        name = str(key)
        if redacting and is_secret_key(name):
            converted[name] = REDACTED
        else:
            converted[name] = _jsonable(item, depth + 1, redacting=redacting)
    return converted


@functools.lru_cache(maxsize=1024)
def _type_text(value: type) -> str:
    # A DSPy Signature class reads as "inputs -> outputs"; DSPy recomputes that string on every access.
    signature = getattr(value, "signature", None)
    if isinstance(signature, str):
        return signature
    return f"{value.__module__}.{value.__qualname__}"


def _short_repr(value: Any, *, redacting: bool) -> str:
    try:
        text = repr(value)
    except Exception:  # repr of arbitrary user objects can raise
        text = f"<{type(value).__name__}>"
    text = text if len(text) <= _MAXIMUM_REPR else text[:_MAXIMUM_REPR] + "..."
    return mask_text(text) if redacting else text

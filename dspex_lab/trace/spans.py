"""The stored span: one timed step of a trial, with its place in the trial's tree.

A span's ``attributes`` may hold references to live objects (a Prediction, a
Signature class, the message list sent to the LM). Spans the recorder builds
for DSPy calls also carry their attributes as JSON text, written when they were
captured: what a call received is written when it starts, what it returned when
it ends (:func:`encode_attributes`, :func:`join_objects`), so a container the
program changes later is stored as the call saw it, and the journal writer has
nothing left to convert. Any other span is converted, and redacted once more,
when read: :attr:`Span.json_attributes`, :meth:`Span.to_row` and every exporter
go through the same conversion.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections.abc import Mapping
from json.encoder import c_make_encoder, encode_basestring
from typing import Any

from dspex_lab.trace.redaction import REDACTED, is_clean_text, is_secret_key, mask_text

__all__ = [
    "SPAN_KINDS",
    "SPAN_STATUSES",
    "Span",
    "encode_attributes",
    "join_objects",
    "now_ns",
    "to_jsonable",
    "type_text",
]

SPAN_KINDS = frozenset(
    {
        "trial",
        "attempt",
        "module",
        "adapter_format",
        "adapter_parse",
        "lm",
        "tool",
        "interpreter",
        "compile",
        "metric",
        "decision",
        "evaluation",
    }
)
# "timeout" and "cancelled" mark the spans still open when a trial was given up (TraceCollector.abandon).
SPAN_STATUSES = frozenset({"ok", "error", "timeout", "cancelled"})

# Wall-clock timestamps come from one anchor plus the monotonic counter: one cheap clock read per event, and
# durations that never go negative when the system clock is adjusted mid-trial.
_WALL_ANCHOR_NS = time.time_ns()
_MONOTONIC_ANCHOR_NS = time.perf_counter_ns()
# now_ns() is time.perf_counter_ns() + WALL_OFFSET_NS; hot paths add the offset themselves rather than call it.
WALL_OFFSET_NS = _WALL_ANCHOR_NS - _MONOTONIC_ANCHOR_NS

# One encoder for every row: json.dumps builds a new encoder on each call that passes options.
_ENCODER = json.JSONEncoder(ensure_ascii=False, sort_keys=True, allow_nan=False)

_MAXIMUM_DEPTH = 16
_MAXIMUM_REPR = 2000


def now_ns() -> int:
    """Return the current time in nanoseconds since the Unix epoch, monotonic within this process."""
    return time.perf_counter_ns() + WALL_OFFSET_NS


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
        status: one of :data:`SPAN_STATUSES`: ``"ok"``, ``"error"``, or ``"timeout"``/``"cancelled"`` for a
            span cut short when its trial was given up.
        attributes: details of the step; may hold live references until serialised.
        error: the exception's type and message when ``status`` is not ``"ok"`` (why, for a span cut short).
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
        attributes_text: str | None = None,
    ) -> Span:
        """Construct a span without the per-field checks of a frozen dataclass's ``__init__``.

        The recorder creates one span per DSPy call on the hot path; filling the
        instance dict directly costs a fraction of the generated initialiser.
        The result is an ordinary, still frozen, ``Span``.

        Args:
            trace_id: the trial id every span of the trial shares.
            span_id: the span's id.
            parent_id: the enclosing span's id.
            kind: one of :data:`SPAN_KINDS`.
            name: what ran.
            start_ns: start, nanoseconds since the Unix epoch.
            end_ns: end, nanoseconds since the Unix epoch.
            status: ``"ok"`` or ``"error"``.
            attributes: details of the step.
            error: the exception's type and message, or None.
            attributes_text: the attributes as redacted JSON, when the caller wrote them at capture
                (:func:`encode_attributes`); otherwise they are converted when first read.

        Returns:
            The span.
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
        if attributes_text is not None:
            instance.__dict__["_attributes_text"] = attributes_text
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
            text = self.__dict__.get("_attributes_text")
            cached = json.loads(text) if text is not None else _jsonable(self.attributes, 0, redacting=True)
            self.__dict__["_json_attributes"] = cached
        return cached

    @property
    def attributes_text(self) -> str:
        """Return the attributes as one redacted JSON object string: as captured, or converted on first read."""
        text = self.__dict__.get("_attributes_text")
        if text is None:
            text = self.__dict__["_attributes_text"] = _ENCODER.encode(self.json_attributes)
        return text

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
            "attributes": self.attributes_text,
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
        text = attributes if isinstance(attributes, str) else None
        if text is not None:
            attributes = json.loads(text)
        parent_id = row.get("parent_id")
        error = row.get("error")
        span = cls(
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
        if text is not None:
            # A stored row is already redacted; keeping its text makes to_row give back exactly what was read.
            span.__dict__["_attributes_text"] = text
        return span


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


def encode_attributes(attributes: Mapping[str, Any]) -> str:
    """Write captured attributes as a redacted JSON object string, now.

    The C encoder writes dicts, lists, strings and numbers itself: the recorder
    has already checked those for secrets when it captured them
    (:func:`~dspex_lab.trace.redaction.scrub`). It calls back only for objects
    JSON has no form for (a Prediction, a Signature class), which are converted
    and redacted here. A value it refuses (NaN, a key that is neither a string
    nor a number, a reference cycle) takes the exact path of :func:`to_jsonable`
    with redaction.

    Args:
        attributes: a span's attributes (or the part captured at one moment).

    Returns:
        A JSON object string with sorted keys.
    """
    try:
        return "".join(_capture_encoder(attributes, 0))
    except (TypeError, ValueError, RecursionError):
        return _ENCODER.encode(_jsonable(attributes, 0, redacting=True))


def join_objects(first: str, second: str) -> str:
    """Join two JSON object strings into one holding the keys of both (keys of ``second`` last).

    Args:
        first: a JSON object string, e.g. what a call received.
        second: a JSON object string, e.g. what it returned.

    Returns:
        One JSON object string.
    """
    if second == "{}":
        return first
    if first == "{}":
        return second
    return f"{first[:-1]}, {second[1:]}"


def _converted(value: Any) -> Any:
    # The C encoder's hook for an object it cannot write; what this returns is encoded in turn.
    return _jsonable(value, 1, redacting=True)


def _c_encoder() -> Any:
    if c_make_encoder is None:  # a Python without the _json accelerator
        encoder = json.JSONEncoder(ensure_ascii=False, sort_keys=True, allow_nan=False, default=_converted)
        return lambda value, _level: encoder.iterencode(value)
    # Arguments: markers (None: no cycle bookkeeping; a cycle ends in RecursionError), default, string encoder,
    # indent, key separator, item separator, sort_keys, skipkeys, allow_nan.
    return c_make_encoder(None, _converted, encode_basestring, None, ": ", ", ", True, False, False)


_capture_encoder = _c_encoder()


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
        return mask_text(type_text(value)) if redacting else type_text(value)
    if isinstance(value, str):
        return mask_text(str(value)) if redacting else str(value)
    if isinstance(value, (bool, int)):
        return int(value) if not isinstance(value, bool) else bool(value)
    if isinstance(value, float):
        return _jsonable(float(value), depth, redacting=redacting)
    if (
        type(value).__module__ == "numpy"
        and getattr(value, "ndim", None) == 0
        and callable(getattr(value, "item", None))
    ):
        # A numpy scalar (numpy.bool_, numpy.int64, numpy.float32): its Python value, so a boolean stays a
        # boolean and a number a number, never their repr ("np.False_", which any reader takes for true).
        return _jsonable(value.item(), depth, redacting=redacting)
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
        name = _key_text(key)
        if redacting and is_secret_key(name):
            converted[name] = REDACTED
        else:
            converted[name] = _jsonable(item, depth + 1, redacting=redacting)
    return converted


def _key_text(key: Any) -> str:
    # As json writes a True, False or None key, so that both conversions name such a key alike.
    if key is True or key is False or key is None:
        return json.dumps(key)
    return str(key)


@functools.lru_cache(maxsize=1024)
def type_text(value: type) -> str:
    """Return how a class is written in a span: a DSPy Signature as ``"inputs -> outputs"``, else its dotted name.

    Cached: DSPy recomputes a signature's string on every access.
    """
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

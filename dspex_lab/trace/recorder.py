"""Capture one span tree per trial from DSPy's callbacks and from dspex orchestration steps.

Attribution: the trace a span belongs to is carried by a context variable that
holds the current *scope* (the open trial, decision, evaluation or metric span
and its :class:`TraceCollector`). A trial runner that submits each trial with
``contextvars.copy_context().run`` therefore gets every span of a trial, and
none of another's, from one shared :class:`SpanRecorder`.

Parents: DSPy's ``with_callbacks`` calls ``on_*_start`` *before* it sets
``ACTIVE_CALL_ID`` to the new call, so the value read there is the caller's
call id, which is the span's parent. A scope remembers the ``ACTIVE_CALL_ID``
that was current when it opened: while that is still the active id, no DSPy
call has started inside the scope, so the scope itself is the parent. This
orders decisions and DSPy calls correctly whichever encloses the other.

Threads that do not copy the context (``dspy.Parallel``, ``dspy.Evaluate``)
still see ``ACTIVE_CALL_ID`` (DSPy binds it into its workers); a span started
there with no scope is attributed to the trace of that open parent call.

``ACTIVE_CALL_ID`` is a private name of DSPy's: it is resolved in
:mod:`dspex_lab._dspy_compat` (``CURRENT_CALL_ID``), as is the layout of an LM's
``history`` read for token usage (``lm_call_usage``). A DSPy that moved the id
still imports: spans then nest under dspex scopes only, and a warning says why.

Cost: DSPy's own dispatch (``with_callbacks``) runs for every decorated call once
any callback is registered; the handlers here add their own on top of it, mostly
checking captured values for secrets and writing them as JSON
(``bench/bench_trace_capture.py``; figures in ``bench/README.md``).
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from time import perf_counter_ns
from typing import Any

from dspy.utils import BaseCallback

from dspex_lab._dspy_compat import CURRENT_CALL_ID, lm_call_usage
from dspex_lab.trace.redaction import mask_text, redact, scrub
from dspex_lab.trace.spans import (
    SPAN_KINDS,
    WALL_OFFSET_NS,
    Span,
    encode_attributes,
    join_objects,
    now_ns,
    type_text,
)

__all__ = [
    "ABANDONED_STATUSES",
    "SpanHandle",
    "SpanRecorder",
    "TraceCollector",
    "current_collector",
    "decision",
    "evaluation",
    "metric",
    "new_span_id",
    "span",
]

# How far back in an LM's shared history to look for this call's entry; other threads may append in between.
_HISTORY_LOOKBACK = 64
_UNFINISHED = "unfinished when its trace closed"
# The statuses TraceCollector.abandon may give the spans still open when a trial is given up.
ABANDONED_STATUSES = frozenset({"timeout", "cancelled"})


class _Pending:
    """A DSPy call whose start was seen and whose end is awaited.

    ``attributes`` holds what the start handler captured; the end handler puts
    what the call returned into ``ended``. A start handler that captured a
    container the program may change during the call (a module's inputs, the
    messages sent to an LM) writes it as JSON into ``start_text`` at once
    (:meth:`seal`); one that captured only strings and numbers leaves
    ``start_text`` None, and the span's attributes are written once, when it ends.
    """

    __slots__ = (
        "attributes",
        "collector",
        "ended",
        "instance",
        "kind",
        "name",
        "parent_id",
        "registry",
        "start_ns",
        "start_text",
    )

    # Positional parameters: one of these is made for every DSPy call of a traced trial.
    def __init__(
        self, collector: TraceCollector, kind: str, name: str, parent_id: str, start_ns: int, instance: Any
    ) -> None:
        self.collector = collector
        self.registry = _OPEN_CALLS
        self.kind = kind
        self.name = name
        self.parent_id = parent_id
        self.start_ns = start_ns
        self.attributes: dict[str, Any] = {}
        self.instance = instance
        self.start_text: str | None = None
        self.ended: dict[str, Any] = {}

    def seal(self) -> None:
        """Write what the start handler captured as JSON, before the program can change it."""
        self.start_text = encode_attributes(self.attributes)

    def text_with(self, extra: str) -> str:
        """Return the start's JSON text joined with ``extra`` (a JSON object string)."""
        start = self.start_text
        return join_objects(encode_attributes(self.attributes) if start is None else start, extra)


class _Scope:
    """The innermost open dspex span of a context and the collector of its trace."""

    __slots__ = ("call_id", "collector", "span_id")

    def __init__(self, collector: TraceCollector, span_id: str, *, call_id: str | None) -> None:
        self.collector = collector
        self.span_id = span_id
        self.call_id = call_id


_SCOPE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("dspex_lab_trace_scope", default=None)


class TraceCollector:
    """The spans of one trace (one trial), gathered from every thread that works for it.

    Thread safety: a span is added under the collector's own lock (one per trial,
    so worker threads rarely wait on it); :meth:`close` and :meth:`abandon` may be
    called from any thread and take the same lock.

    Args:
        trace_id: the trial id shared by all spans of the trace.
    """

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id
        self.root_id: str | None = None
        # The root span's handle, e.g. to put the trial's score on it: ``collector.root.set(score=1.0)``.
        self.root: SpanHandle | None = None
        self.closed = False
        # Why the trace was given up (:meth:`abandon`), or None.
        self.abandoned: str | None = None
        self._spans: list[Span] = []
        self._pending: dict[str, _Pending] = {}
        # dspex spans (trial, metric, decision...) whose ``with`` block is still open, by span id.
        self._open: dict[str, _OpenSpan] = {}
        # The spans as of abandon(): what ``spans`` returns from then on, whatever the abandoned worker does.
        self._final: tuple[Span, ...] | None = None
        self._lock = threading.Lock()

    @property
    def spans(self) -> list[Span]:
        """Return the finished spans, ordered by start time."""
        final = self._final
        return sorted(self._spans if final is None else final, key=_start_of)

    def add(self, finished: Span) -> None:
        """Append a finished span (ignored once the trace is closed).

        Args:
            finished: a span of this trace.
        """
        if not self.closed:
            self._spans.append(finished)

    @contextmanager
    def span(
        self, name: str, *, kind: str = "metric", attributes: Mapping[str, Any] | None = None
    ) -> Iterator[SpanHandle]:
        """Open a span in this trace, under the current scope when it belongs to this trace.

        Args:
            name: the span's name.
            kind: one of :data:`~dspex_lab.trace.spans.SPAN_KINDS` (``"metric"`` by default).
            attributes: initial attributes.

        Yields:
            A handle to add attributes while the span is open.
        """
        with _OpenSpan(self, name, kind=kind, attributes=attributes) as handle:
            yield handle

    def close(self) -> None:
        """Close the trace: end still-open DSPy calls as errors and ignore anything later.

        A call that outlives its trial (a hung LM request abandoned by a timeout)
        would otherwise attach to a trace that has already been stored.
        """
        with self._lock:
            if self.closed:
                return
            self._spans.extend(self._end_open_calls(status="error", error=_UNFINISHED, end_ns=now_ns()))
            self.closed = True

    def abandon(self, *, status: str = "cancelled", reason: str) -> list[Span]:
        """Give the trace up now, from any thread, and return the spans captured so far.

        For a trial that timed out or was cancelled while its worker thread still
        runs. Contract:

        - Every span that had finished is returned as it was. Every span still
          open at this moment (the trial's root, a metric, a DSPy call waiting on
          the LM) is returned ended now, with ``status`` and ``reason`` as its
          error, and ``unfinished: true`` among its attributes.
        - The trace is closed: whatever the abandoned worker finishes or starts
          later is not added, :attr:`spans` keeps returning exactly the spans
          returned here, and the trial's ``with`` block no longer hands the trace
          to the recorder's ``on_trace`` when it ends (the caller of this method
          owns the spans).
        - Safe to call from any thread, concurrently with the worker and with
          :meth:`close`. A trace that had already closed is returned unchanged;
          calling it again returns the same spans. A span ends, and the trace
          is abandoned, under the collector's lock, so each span open at that
          moment is returned exactly once: cut short, or finished.

        Args:
            status: the status of the spans cut short, one of :data:`ABANDONED_STATUSES`.
            reason: why, in words (e.g. ``"trial did not finish within 30 s"``); secrets are masked.

        Returns:
            The spans, ordered by start time.

        Raises:
            ValueError: ``status`` is not one of :data:`ABANDONED_STATUSES`.
        """
        if status not in ABANDONED_STATUSES:
            raise ValueError(f"cannot abandon a trace with status {status!r}; use one of {sorted(ABANDONED_STATUSES)}")
        with self._lock:
            if self._final is None:
                if not self.closed:
                    reason = mask_text(reason)
                    end = now_ns()
                    # Marked closed first: a worker checking it from now on adds nothing.
                    self.closed = True
                    self.abandoned = reason
                    cut = [*self._end_open_calls(status=status, error=reason, end_ns=end)]
                    cut.extend(self._end_open_spans(status=status, error=reason, end_ns=end))
                    self._final = (*self._spans, *cut)
                else:
                    self._final = tuple(self._spans)
            return sorted(self._final, key=_start_of)

    def snapshot(self, *, status: str = "cancelled", reason: str) -> list[Span]:
        """Return the spans captured so far of a trace given up: :meth:`abandon` under the name runners ask for.

        It closes the trace, exactly as :meth:`abandon` does (see its contract).

        Args:
            status: the status of the spans cut short, one of :data:`ABANDONED_STATUSES`.
            reason: why, in words; secrets are masked.

        Returns:
            The spans, ordered by start time.
        """
        return self.abandon(status=status, reason=reason)

    def _end_open_calls(self, *, status: str, error: str, end_ns: int) -> list[Span]:
        ended = []
        for call_id, pending in list(self._pending.items()):
            if self._pending.pop(call_id, None) is None:
                continue
            pending.registry.pop(call_id, None)
            ended.append(
                Span.build(
                    self.trace_id,
                    call_id,
                    parent_id=pending.parent_id,
                    kind=pending.kind,
                    name=pending.name,
                    start_ns=pending.start_ns,
                    end_ns=end_ns,
                    status=status,
                    attributes={**pending.attributes, "unfinished": True},
                    error=error,
                    attributes_text=pending.text_with('{"unfinished": true}'),
                )
            )
        return ended

    def _end_open_spans(self, *, status: str, error: str, end_ns: int) -> list[Span]:
        ended = []
        for span_id, block in list(self._open.items()):
            # Copied first (one atomic step): the abandoned worker may still be setting attributes on it.
            attributes = {**scrub(dict(block.handle.attributes)), "unfinished": True}
            ended.append(
                Span.build(
                    self.trace_id,
                    span_id,
                    parent_id=block.parent_id,
                    kind=block.kind,
                    name=block.name,
                    start_ns=block.start,
                    end_ns=end_ns,
                    status=status,
                    attributes=attributes,
                    error=error,
                    attributes_text=encode_attributes(attributes),
                )
            )
        self._open.clear()
        return ended

    def __repr__(self) -> str:
        return f"TraceCollector(trace_id={self.trace_id!r}, spans={len(self._spans)}, closed={self.closed})"


def _start_of(item: Span) -> tuple[int, int]:
    # A parent starts no later than its children; the end breaks ties so that an enclosing span sorts first.
    return item.start_ns, -item.end_ns


class SpanHandle:
    """An open dspex span: set attributes on it until its ``with`` block ends.

    Args:
        collector: the trace the span belongs to.
        span_id: the span's id.
        attributes: the attributes dict the span will be stored with.
    """

    def __init__(self, collector: TraceCollector, span_id: str, *, attributes: dict[str, Any]) -> None:
        self.collector = collector
        self.span_id = span_id
        self.attributes = attributes
        self.failure: str | None = None

    @property
    def trace_id(self) -> str:
        """Return the id of the trace the span belongs to."""
        return self.collector.trace_id

    @property
    def spans(self) -> list[Span]:
        """Return the finished spans of the trace, ordered by start time."""
        return self.collector.spans

    def fail(self, error: str) -> None:
        """Mark the span as failed without raising (e.g. a trial whose failure was recorded as data)."""
        self.failure = redact(error)

    def set(self, **attributes: Any) -> None:
        """Add or replace attributes (secrets are masked).

        Args:
            **attributes: the attributes.
        """
        self.attributes.update(scrub(attributes))


class _OpenSpan:
    """The ``with`` block of one dspex span; ``__enter__`` returns its :class:`SpanHandle`.

    A class rather than a generator-based context manager: trials open two of these each
    (the trial and its metric), and a generator costs several times more to enter and leave.
    """

    __slots__ = ("attributes", "collector", "handle", "kind", "name", "owns", "parent_id", "root", "start", "token")

    def __init__(
        self,
        collector: TraceCollector | None,
        name: str,
        *,
        kind: str,
        attributes: Mapping[str, Any] | None,
        trace_id: str | None = None,
        root: bool = False,
    ) -> None:
        if kind not in SPAN_KINDS:
            raise ValueError(f"unknown span kind {kind!r}; choose one of {sorted(SPAN_KINDS)}")
        self.name = name
        self.kind = kind
        self.attributes = attributes
        self.collector = collector
        self.root = root
        self.owns = trace_id  # the trace id asked for, until __enter__ decides who owns the collector

    def __enter__(self) -> SpanHandle:
        collector, trace_id = self.collector, self.owns
        active = CURRENT_CALL_ID.get()
        scope = _SCOPE.get()
        owns_collector = False
        parent_id: str | None = None
        if self.root:
            collector = TraceCollector(trace_id or new_span_id())
            owns_collector = True
        elif collector is None:
            if scope is not None and (trace_id is None or trace_id == scope.collector.trace_id):
                collector = scope.collector
                parent_id = _parent_under(scope, active)
            else:
                collector = _collector_of_active_call(active) if trace_id is None else None
                if collector is not None:
                    parent_id = active
                else:
                    # Outside any trace: this span starts a trace of its own.
                    collector = TraceCollector(trace_id or new_span_id())
                    owns_collector = True
        elif scope is not None and scope.collector is collector:
            parent_id = _parent_under(scope, active)
        elif active is not None and active in collector._pending:
            parent_id = active
        else:
            parent_id = collector.root_id

        span_id = new_span_id()
        if owns_collector:
            collector.root_id = span_id
        stored = dict(scrub(dict(self.attributes))) if self.attributes else {}
        handle = SpanHandle(collector, span_id, attributes=stored)
        if owns_collector:
            collector.root = handle
        self.collector, self.owns, self.parent_id, self.handle = collector, owns_collector, parent_id, handle
        self.token = _SCOPE.set(_Scope(collector, span_id, call_id=active))
        self.start = perf_counter_ns() + WALL_OFFSET_NS
        # Registered last, complete: TraceCollector.abandon may read it from another thread from now on.
        collector._open[span_id] = self
        return handle

    def __exit__(self, kind: type[BaseException] | None, exception: BaseException | None, traceback: Any) -> None:
        _SCOPE.reset(self.token)
        handle, collector = self.handle, self.collector
        status, error = ("ok", None) if exception is None else ("error", _describe(exception))
        if handle.failure is not None and status == "ok":
            status, error = "error", handle.failure
        end_ns = perf_counter_ns() + WALL_OFFSET_NS
        # Checked again as the span ends, since a container given to set() may have changed since, then
        # written as JSON now, so that the journal writer has nothing left to convert.
        attributes = scrub(handle.attributes)
        finished = Span.build(
            collector.trace_id,
            handle.span_id,
            parent_id=self.parent_id,
            kind=self.kind,
            name=self.name,
            start_ns=self.start,
            end_ns=end_ns,
            status=status,
            attributes=attributes,
            error=error,
            attributes_text=encode_attributes(attributes),
        )
        # Under the lock: TraceCollector.abandon either sees the span open or finished, never both or neither.
        with collector._lock:
            collector._open.pop(handle.span_id, None)
            if not collector.closed:
                collector._spans.append(finished)
        if self.owns:
            collector.close()


class _Trial(_OpenSpan):
    """The ``with`` block of :meth:`SpanRecorder.trial`: a root span whose target is its collector."""

    __slots__ = ("on_trace",)

    def __init__(
        self,
        name: str,
        *,
        trace_id: str,
        attributes: Mapping[str, Any] | None,
        on_trace: Callable[[TraceCollector], None] | None,
    ) -> None:
        super().__init__(None, name, kind="trial", attributes=attributes, trace_id=trace_id, root=True)
        self.on_trace = on_trace

    def __enter__(self) -> TraceCollector:  # type: ignore[override]
        return super().__enter__().collector

    def __exit__(self, kind: type[BaseException] | None, exception: BaseException | None, traceback: Any) -> None:
        try:
            super().__exit__(kind, exception, traceback)
        finally:
            # An abandoned trace belongs to whoever abandoned it (TraceCollector.abandon).
            if self.on_trace is not None and self.collector.abandoned is None:
                self.on_trace(self.collector)


def _parent_under(scope: _Scope, active: str | None) -> str:
    if active is None or active == scope.call_id:
        return scope.span_id
    # A DSPy call of this trace started inside the scope and is still running: it is the parent.
    return active if active in scope.collector._pending else scope.span_id


# Open DSPy calls of every recorder, by call id, so a worker thread without the scope can find its trace.
_OPEN_CALLS: dict[str, _Pending] = {}


def _collector_of_active_call(active: str | None) -> TraceCollector | None:
    if active is None:
        return None
    pending = _OPEN_CALLS.get(active)
    return None if pending is None else pending.collector


# Ids are a random per-process prefix plus a counter: unique across the processes writing one journal, and far
# cheaper than uuid4 (a system call for randomness) on the per-trial path.
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count()


def _reset_ids_after_fork() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_ids_after_fork)


def new_span_id() -> str:
    """Return a new span (or call) id, unique across processes writing one journal."""
    return f"{_id_prefix}{next(_id_counter):016x}"


def _signature_text(signature: Any) -> Any:
    # A Signature class as the text it is stored as ("question -> answer"), so that writing the span's JSON needs
    # no call back into Python for it.
    return mask_text(type_text(signature)) if isinstance(signature, type) else signature


def _adapter_name(adapter: Any) -> str:
    # An adapter may show under the name of the DSPy adapter it behaves as (dspex_lab's caching ChatAdapter does).
    return str(getattr(type(adapter), "display_name", None) or type(adapter).__name__)


def _describe(exception: BaseException) -> str:
    # Providers' errors may quote the credential they rejected.
    return mask_text(f"{type(exception).__name__}: {exception}")


def current_collector() -> TraceCollector | None:
    """Return the collector of the trace open in this context, if any."""
    scope = _SCOPE.get()
    return None if scope is None else scope.collector


def span(
    name: str,
    *,
    kind: str,
    attributes: Mapping[str, Any] | None = None,
    trace_id: str | None = None,
) -> contextlib.AbstractContextManager[SpanHandle]:
    """Open a dspex span in the current trace; DSPy calls made inside it become its children.

    Outside any trace (and outside a traced DSPy call) the span starts a trace
    of its own, with id ``trace_id`` or a fresh one; read it from ``handle.spans``
    after the block.

    Args:
        name: the span's name.
        kind: one of :data:`~dspex_lab.trace.spans.SPAN_KINDS`.
        attributes: initial attributes (secrets are masked).
        trace_id: the trace to open when none is current; when it differs from
            the current trace, a separate trace is started.

    Returns:
        A context manager whose ``with`` target is a handle to add attributes while the span is open.
    """
    return _OpenSpan(None, name, kind=kind, attributes=attributes, trace_id=trace_id)


@contextmanager
def decision(
    name: str,
    *,
    rationale: str | None = None,
    values: Mapping[str, Any] | None = None,
    trace_id: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[SpanHandle]:
    """Open an orchestration span (an optimizer step, a proposal) in the current trace.

    Args:
        name: what was decided (``"propose instructions"``, ``"step 3"``).
        rationale: why, in words.
        values: the variable values chosen (copied, as optimizers mutate theirs).
        trace_id: the trace to open when none is current (see :func:`span`).
        attributes: further attributes.

    Yields:
        A handle to add attributes while the span is open.
    """
    initial: dict[str, Any] = dict(attributes or {})
    if rationale is not None:
        initial["rationale"] = rationale
    if values is not None:
        initial["values"] = dict(values)
    with span(name, kind="decision", attributes=initial, trace_id=trace_id) as handle:
        yield handle


@contextmanager
def evaluation(
    name: str, *, attributes: Mapping[str, Any] | None = None, trace_id: str | None = None
) -> Iterator[SpanHandle]:
    """Open an evaluation span (a batch of trials, a candidate's score) in the current trace.

    Args:
        name: the evaluation's name.
        attributes: initial attributes.
        trace_id: the trace to open when none is current (see :func:`span`).

    Yields:
        A handle to add attributes (a score, a count) while the span is open.
    """
    with span(name, kind="evaluation", attributes=attributes, trace_id=trace_id) as handle:
        yield handle


def metric(
    name: str = "metric", *, attributes: Mapping[str, Any] | None = None
) -> contextlib.AbstractContextManager[SpanHandle]:
    """Open a metric span in the current trace; set the score with ``handle.set(score=...)``.

    Args:
        name: the metric's name.
        attributes: initial attributes.

    Returns:
        A context manager whose ``with`` target is a handle to add attributes while the span is open.
    """
    return _OpenSpan(None, name, kind="metric", attributes=attributes)


class SpanRecorder(BaseCallback):
    """A DSPy callback that turns module, adapter, LM and tool calls into spans.

    One instance serves every thread: register it once
    (``dspy.configure(callbacks=[recorder])`` or ``dspy.context(callbacks=[recorder])``)
    and wrap each trial in :meth:`trial`. Calls made outside any trace are ignored.

    Args:
        capture_prompts: keep LM messages and completions (and parser input) on spans.
        on_trace: called with each trial's collector when the trial's block ends,
            e.g. to hand the spans to a journal writer.
    """

    def __init__(
        self,
        *,
        capture_prompts: bool = True,
        on_trace: Callable[[TraceCollector], None] | None = None,
    ) -> None:
        super().__init__()
        self.capture_prompts = capture_prompts
        self.on_trace = on_trace

    def trial(
        self, trace_id: str, *, name: str | None = None, attributes: Mapping[str, Any] | None = None
    ) -> contextlib.AbstractContextManager[TraceCollector]:
        """Open a trial's root span; every span produced in this context joins its trace.

        Args:
            trace_id: the trial id.
            name: the root span's name; the trial id when omitted.
            attributes: attributes of the root span (example id, repeat...).

        Returns:
            A context manager whose ``with`` target is the trial's collector; read
            ``collector.spans`` after the block. Failed trials are handed to
            ``on_trace`` too: their traces are the ones worth reading.
        """
        return _Trial(name or trace_id, trace_id=trace_id, attributes=attributes, on_trace=self.on_trace)

    # --- the DSPy callback interface -------------------------------------------------------------------------
    # Each start handler first finds the call's trace and returns at once when there is none, so that untraced
    # calls (other threads, warm-up runs) cost next to nothing.

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a module span (a Predict, a ChainOfThought, a user module)."""
        pending = self._open(call_id, instance, kind="module", name=type(instance).__name__)
        if pending is None:
            return
        attributes = pending.attributes
        attributes["inputs"] = scrub(inputs.get("kwargs") or {})
        positional = inputs.get("args")
        if positional:
            attributes["args"] = scrub(positional)
        signature = getattr(instance, "signature", None)
        if signature is not None:
            attributes["signature"] = _signature_text(signature)
        pending.seal()

    def on_module_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close a module span with the prediction's fields."""
        pending = self._take(call_id)
        if pending is None:
            return
        if outputs is not None:
            to_dict = getattr(outputs, "toDict", None)
            # A Prediction can be changed by its caller later; its fields as of now are what this span saw.
            pending.ended["outputs"] = scrub(to_dict() if callable(to_dict) else outputs)
        self._finish(call_id, pending, exception=exception)

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an LM span with the model, request parameters and (optionally) the messages."""
        model = getattr(instance, "model", None)
        pending = self._open(call_id, instance, kind="lm", name=str(model or type(instance).__name__))
        if pending is None:
            return
        attributes = pending.attributes
        parameters = scrub({**getattr(instance, "kwargs", {}), **(inputs.get("kwargs") or {})})
        attributes["model"] = model if model is None else mask_text(str(model))
        attributes["parameters"] = parameters
        for key in ("temperature", "max_tokens", "n", "rollout_id"):
            if parameters.get(key) is not None:
                attributes[key] = parameters[key]
        if self.capture_prompts:
            messages = inputs.get("messages")
            if messages is not None:
                attributes["messages"] = scrub(messages)
            elif inputs.get("prompt") is not None:
                attributes["messages"] = scrub([{"role": "user", "content": inputs["prompt"]}])
        pending.seal()

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an LM span with the completion, token usage and cost of this very call."""
        pending = self._take(call_id)
        if pending is None:
            return
        if outputs is not None:
            if self.capture_prompts:
                pending.ended["completion"] = scrub(outputs)
            _add_usage(pending.ended, pending.instance, model=pending.attributes.get("model"), outputs=outputs)
        self._finish(call_id, pending, exception=exception)

    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an adapter-format span."""
        pending = self._open(call_id, instance, kind="adapter_format", name=f"{_adapter_name(instance)}.format")
        if pending is None:
            return
        demos = inputs.get("demos")
        pending.attributes["signature"] = _signature_text(inputs.get("signature"))
        pending.attributes["demos"] = len(demos) if demos else 0

    def on_adapter_format_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an adapter-format span with the number of messages built."""
        pending = self._take(call_id)
        if pending is None:
            return
        if isinstance(outputs, list):
            pending.ended["messages"] = len(outputs)
        self._finish(call_id, pending, exception=exception)

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an adapter-parse span."""
        pending = self._open(call_id, instance, kind="adapter_parse", name=f"{_adapter_name(instance)}.parse")
        if pending is None:
            return
        pending.attributes["signature"] = _signature_text(inputs.get("signature"))
        if self.capture_prompts and inputs.get("completion") is not None:
            pending.attributes["completion"] = scrub(inputs["completion"])

    def on_adapter_parse_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an adapter-parse span with the parsed fields."""
        pending = self._take(call_id)
        if pending is None:
            return
        if outputs is not None:
            pending.ended["parsed"] = scrub(outputs)
        self._finish(call_id, pending, exception=exception)

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a tool span with the tool's arguments."""
        name = str(getattr(instance, "name", None) or type(instance).__name__)
        pending = self._open(call_id, instance, kind="tool", name=name)
        if pending is None:
            return
        pending.attributes["tool"] = mask_text(name)
        pending.attributes["arguments"] = scrub(inputs.get("kwargs") or {})
        pending.seal()

    def on_tool_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close a tool span with the tool's result."""
        pending = self._take(call_id)
        if pending is None:
            return
        if outputs is not None:
            pending.ended["result"] = scrub(outputs)
        self._finish(call_id, pending, exception=exception)

    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open an evaluation span for a ``dspy.Evaluate`` run."""
        pending = self._open(call_id, instance, kind="evaluation", name=type(instance).__name__)
        if pending is None:
            return
        devset = inputs.get("devset") or getattr(instance, "devset", None)
        metric_function = inputs.get("metric") or getattr(instance, "metric", None)
        pending.attributes["examples"] = len(devset) if devset is not None else None
        pending.attributes["metric"] = mask_text(
            getattr(metric_function, "__name__", None) or type(metric_function).__name__
        )

    def on_evaluate_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an evaluation span with the score."""
        pending = self._take(call_id)
        if pending is None:
            return
        score = getattr(outputs, "score", outputs if isinstance(outputs, (int, float)) else None)
        if score is not None:
            pending.ended["score"] = score
        self._finish(call_id, pending, exception=exception)

    def on_interpreter_execute_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a span for code run by a code interpreter (the code itself only with ``capture_prompts``)."""
        pending = self._open(call_id, instance, kind="interpreter", name=f"{type(instance).__name__}.execute")
        if pending is None:
            return
        variables = inputs.get("variables")
        pending.attributes["operation"] = "execute"
        pending.attributes["variables"] = sorted(str(name) for name in variables) if variables else []
        if self.capture_prompts and inputs.get("code") is not None:
            pending.attributes["code"] = scrub(inputs["code"])

    def on_interpreter_execute_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close a code-execution span with what the code returned."""
        self._end_with(call_id, "result", outputs, exception)

    def on_interpreter_tool_call_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a span for a tool called from code running in an interpreter."""
        tool = str(inputs.get("tool_name") or "tool")
        pending = self._open(call_id, instance, kind="interpreter", name=f"{type(instance).__name__}.{tool}")
        if pending is None:
            return
        pending.attributes["operation"] = "tool_call"
        pending.attributes["tool"] = mask_text(tool)
        pending.attributes["arguments"] = scrub({key: inputs[key] for key in ("args", "kwargs") if key in inputs})
        pending.seal()

    def on_interpreter_tool_call_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close an interpreter tool-call span with the tool's result."""
        self._end_with(call_id, "result", outputs, exception)

    def on_interpreter_startup_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a span for a code interpreter starting up."""
        self._open_operation(call_id, instance, operation="startup", method="start")

    def on_interpreter_startup_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close an interpreter start-up span."""
        self._end_with(call_id, None, outputs, exception)

    def on_interpreter_shutdown_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a span for a code interpreter shutting down."""
        self._open_operation(call_id, instance, operation="shutdown", method="shutdown")

    def on_interpreter_shutdown_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        """Close an interpreter shutdown span."""
        self._end_with(call_id, None, outputs, exception)

    def on_compile_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        """Open a span for a DSPy optimizer's ``compile``, with the sizes of its data."""
        pending = self._open(call_id, instance, kind="compile", name=f"{type(instance).__name__}.compile")
        if pending is None:
            return
        for key in ("trainset", "valset"):
            data = inputs.get(key)
            if data is not None and hasattr(data, "__len__"):
                pending.attributes[key] = len(data)
        student = inputs.get("student")
        if student is not None:
            pending.attributes["student"] = type(student).__name__

    def on_compile_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        """Close an optimizer span with the type of the program it returned."""
        pending = self._take(call_id)
        if pending is None:
            return
        if outputs is not None:
            pending.ended["program"] = type(outputs).__name__
        self._finish(call_id, pending, exception=exception)

    # --- shared plumbing --------------------------------------------------------------------------------------

    def _open_operation(self, call_id: str, instance: Any, *, operation: str, method: str) -> None:
        pending = self._open(call_id, instance, kind="interpreter", name=f"{type(instance).__name__}.{method}")
        if pending is not None:
            pending.attributes["operation"] = operation

    def _end_with(self, call_id: str, key: str | None, outputs: Any, exception: BaseException | None) -> None:
        pending = self._take(call_id)
        if pending is None:
            return
        if key is not None and outputs is not None:
            pending.ended[key] = scrub(outputs)
        self._finish(call_id, pending, exception=exception)

    @staticmethod
    def _open(call_id: str, instance: Any, *, kind: str, name: str) -> _Pending | None:
        active = CURRENT_CALL_ID.get()
        scope = _SCOPE.get()
        if scope is not None:
            collector = scope.collector
            # _parent_under, inlined: this runs for every DSPy call of a traced trial.
            if active is None or active == scope.call_id or active not in collector._pending:
                parent_id = scope.span_id
            else:
                parent_id = active
        else:
            owner = _OPEN_CALLS.get(active) if active is not None else None
            if owner is None:
                return None
            collector = owner.collector
            parent_id = active
        if collector.closed:
            return None
        pending = _Pending(collector, kind, name, parent_id, perf_counter_ns() + WALL_OFFSET_NS, instance)
        collector._pending[call_id] = pending
        _OPEN_CALLS[call_id] = pending
        return pending

    @staticmethod
    def _take(call_id: str) -> _Pending | None:
        pending = _OPEN_CALLS.pop(call_id, None)
        if pending is None or call_id not in pending.collector._pending:
            # Not traced, or its trace closed first and already stored it as unfinished.
            return None
        # Left among the collector's open calls until _finish adds the span: see TraceCollector.abandon.
        return pending

    @staticmethod
    def _finish(call_id: str, pending: _Pending, *, exception: BaseException | None) -> None:
        end_ns = perf_counter_ns() + WALL_OFFSET_NS
        collector = pending.collector
        if collector.closed:
            collector._pending.pop(call_id, None)
            return
        ended, attributes, text = pending.ended, pending.attributes, pending.start_text
        if text is None:
            # Only strings and numbers were captured at the start: everything is written once, now.
            if ended:
                attributes.update(ended)
            text = encode_attributes(attributes)
        elif ended:
            attributes.update(ended)
            text = join_objects(text, encode_attributes(ended))
        finished = Span.build(
            collector.trace_id,
            call_id,
            parent_id=pending.parent_id,
            kind=pending.kind,
            name=pending.name,
            start_ns=pending.start_ns,
            end_ns=end_ns,
            status="ok" if exception is None else "error",
            attributes=attributes,
            error=None if exception is None else _describe(exception),
            attributes_text=text,
        )
        # One step under the (per-trial, so uncontended) lock: close() and abandon() see the call either open or
        # finished, never neither.
        with collector._lock:
            if collector._pending.pop(call_id, None) is not None and not collector.closed:
                collector._spans.append(finished)


def _add_usage(attributes: dict[str, Any], instance: Any, *, model: Any, outputs: Any) -> None:
    """Copy token usage and cost from the LM history entry that belongs to this very call.

    The history list is shared by every thread using the LM, so its last entry
    may be another call's; :func:`dspex_lab._dspy_compat.lm_call_usage` finds this
    call's entry by the identity of its outputs.
    """
    usage = lm_call_usage(instance, outputs, _HISTORY_LOOKBACK)
    if usage is None:
        return
    response_model = usage.pop("response_model", None)
    attributes.update(usage)
    if response_model and response_model != model:
        attributes["response_model"] = mask_text(str(response_model))

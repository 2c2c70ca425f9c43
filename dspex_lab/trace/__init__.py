"""Span trees for trials: capture from DSPy callbacks, redaction, tree reading and OTLP export.

Every trial has one span tree. Orchestration spans (:func:`decision`,
:func:`evaluation`) sit above execution spans (module, adapter format, LM
call, parse, tool), captured by :class:`SpanRecorder` from DSPy's callbacks,
and the :func:`metric` span. A span's parent is the DSPy call that was active
when it started, or else the innermost open dspex span; the trial a span
belongs to is carried by a context variable, so trials running concurrently in
threads (each submitted with ``contextvars.copy_context().run``) never mix.

The recorder is an ordinary DSPy callback (``dspy.utils.BaseCallback``): traced
evaluations register it per trial with ``dspy.context(callbacks=[...])``, next to
any callback of the user's, and DSPy's own dispatch hands it every call.

Typical use::

    recorder = SpanRecorder()
    with dspy.context(callbacks=[recorder]):
        with recorder.trial("trial-0001") as collector:
            prediction = program(question="...")
            with metric("exact_match") as handle:
                handle.set(score=score(prediction))
    print(TraceTree.from_spans(collector.spans).to_text())

Secrets never reach a span: keys naming secrets and API-key-shaped strings are
masked at capture (:func:`redact`, :data:`SECRET_KEYS`, :func:`add_secret_pattern`).
This layer imports only dspy and the standard library (``rich`` optionally, to print).
"""

from dspex_lab.trace.otlp import to_otlp, to_otlp_json
from dspex_lab.trace.recorder import (
    SpanHandle,
    SpanRecorder,
    TraceCollector,
    current_collector,
    decision,
    evaluation,
    metric,
    span,
)
from dspex_lab.trace.redaction import REDACTED, SECRET_KEYS, add_secret_pattern, redact
from dspex_lab.trace.spans import SPAN_KINDS, SPAN_STATUSES, Span
from dspex_lab.trace.tree import TraceNode, TraceTree

__all__ = [
    "REDACTED",
    "SECRET_KEYS",
    "SPAN_KINDS",
    "SPAN_STATUSES",
    "Span",
    "SpanHandle",
    "SpanRecorder",
    "TraceCollector",
    "TraceNode",
    "TraceTree",
    "add_secret_pattern",
    "current_collector",
    "decision",
    "evaluation",
    "metric",
    "redact",
    "span",
    "to_otlp",
    "to_otlp_json",
]

"""Decision traces: each optimization step's decisions as one orchestration trace, timed as they happened.

Every step of a run is stored as a trace ``step-N`` in the run's experiment: a root span
(kind ``decision``, named ``step N``) open from the step's start to its end, and beneath it, in
the order they were made, the step's decisions (``propose c3``, ``accepted c3``: kind
``decision``) and the evaluations they caused (``screen c3``, ``validate c3``, ``compile SIMBA``:
kind ``evaluation``), each timed around the work it stands for: an evaluation from its first trial
to its last, a proposal from when its making began to when it was made, and the step's outcome
from when its last input (the last evaluation) was ready to when it was decided. A span read as
"0 µs" is a decision whose work was not timed (a candidate read back from the journal on resume,
or one the DSPy bridge takes from its compile, which is timed as a whole). ``dspex trace <run>
step-1`` and the trace viewer show them; their attributes hold the numbers behind each decision.

:class:`DecisionTrace` is the one builder of these spans: SIMBA-C and the DSPy bridge record
into it, and the run's session stores the spans it returns when the step closes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dspex_lab.trace import Span
from dspex_lab.trace.spans import now_ns

__all__ = ["DecisionTrace"]


@dataclass
class _Entry:
    kind: str
    name: str
    attributes: dict[str, Any]
    start_ns: int
    end_ns: int


class DecisionTrace:
    """One step's decisions, recorded as they are made; :meth:`close` returns them as spans.

    The root span starts when the trace is made and ends when it is closed, so make it when the
    step begins. Not thread-safe: one step is decided on one thread.

    Args:
        run_id: the optimization run (an attribute of the root span).
        step: the step (the trace is ``step-<step>``).

    Example:
        >>> trace = DecisionTrace("run", 1)
        >>> trace.decide("propose c1", candidate="c1")
        >>> with trace.evaluation("screen c1") as outcome:
        ...     outcome["mean"] = 0.5
        >>> trace.conclude("rejected: nothing beat the incumbent")
        >>> [(span.name, span.kind) for span in trace.close()]
        [('step 1', 'decision'), ('propose c1', 'decision'), ('screen c1', 'evaluation'), ('rejected', 'decision')]
    """

    def __init__(self, run_id: str, step: int) -> None:
        self.run_id = run_id
        self.step = step
        self.trace_id = f"step-{step}"
        self.decision: str | None = None
        self._start_ns = now_ns()
        self._entries: list[_Entry] = []

    def add(
        self,
        kind: str,
        name: str,
        attributes: dict[str, Any],
        *,
        start_ns: int | None = None,
        end_ns: int | None = None,
    ) -> None:
        """Record a span: by default one that ends now and took no time (a decision).

        Args:
            kind: ``decision`` or ``evaluation``.
            name: what was decided or evaluated (``propose c3``, ``validate c3``).
            attributes: the numbers behind it.
            start_ns: when it began (:func:`~dspex_lab.trace.spans.now_ns` then), default ``end_ns``.
            end_ns: when it ended, default now: pass both for an evaluation timed before its
                outcome was known (a validation whose test is corrected across the step).
        """
        end = now_ns() if end_ns is None else end_ns
        self._entries.append(_Entry(kind, name, attributes, end if start_ns is None else min(start_ns, end), end))

    def decide(self, name: str, *, since_ns: int | None = None, **attributes: Any) -> None:
        """Record a decision made now; with ``since_ns``, one whose work (a proposal's LM calls) began then."""
        self.add("decision", name, attributes, start_ns=since_ns)

    @contextlib.contextmanager
    def evaluation(self, name: str) -> Iterator[dict[str, Any]]:
        """Time an evaluation from entering to leaving the block; fill the dict it gives with its outcome.

        The span is recorded even when the block raises (with what the dict holds by then).
        """
        attributes: dict[str, Any] = {}
        started = now_ns()
        try:
            yield attributes
        finally:
            self.add("evaluation", name, attributes, start_ns=started)

    def conclude(self, decision: str, *, name: str | None = None) -> None:
        """Record the step's outcome (``accepted c3: ...``), by default named by the text before its colon.

        The outcome is timed from the end of the step's latest entry (its last evaluation: the
        outcome's last input) to now, so the tests and the choice it took show as its duration.
        """
        self.decision = decision
        since = max((entry.end_ns for entry in self._entries), default=self._start_ns)
        self.decide(name or decision.split(":")[0], since_ns=since, decision=decision)

    def close(self) -> list[Span]:
        """End the step's root span now and return the trace's spans, the root first."""
        # The root encloses every entry, also one timed before the trace was made.
        root = Span(
            self.trace_id,
            f"{self.trace_id}-root",
            parent_id=None,
            kind="decision",
            name=f"step {self.step}",
            start_ns=min([self._start_ns, *(entry.start_ns for entry in self._entries)]),
            end_ns=max([now_ns(), *(entry.end_ns for entry in self._entries)]),
            attributes={"run_id": self.run_id, "step": self.step, "decision": self.decision},
        )
        return [
            root,
            *(
                Span(
                    self.trace_id,
                    f"{self.trace_id}-{position}",
                    parent_id=root.span_id,
                    kind=entry.kind,
                    name=entry.name,
                    start_ns=entry.start_ns,
                    end_ns=entry.end_ns,
                    attributes=entry.attributes,
                )
                for position, entry in enumerate(self._entries)
            ),
        ]

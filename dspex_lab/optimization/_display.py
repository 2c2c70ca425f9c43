"""What an optimization run talks to while it goes: subscribers and run displays, as typed protocols.

The run never imports a display: it calls these protocols, and anything with the right methods
takes part (the notebook's ``RunProgress`` widget, :class:`~dspex_lab.optimization.LiveConvergence`,
a plain function).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from dspex_lab import _hooks

__all__ = ["RunDisplay", "Subscriber", "live_plot"]


@runtime_checkable
class Subscriber(Protocol):
    """Receives a run's events: ``subscriber(event)``.

    Contract: called on the run's thread, in the order events happen (the engine's
    ``RunStarted``/``TrialFinished``/``RunFinished`` of each evaluation for a display, an
    :class:`~dspex_lab.optimization.OptimizationStep` after each step). The run's display (``progress=``)
    also hears :class:`~dspex_lab.optimization.OptimizationStarted` before the first evaluation and
    :class:`~dspex_lab.optimization.OptimizationEnded` after the last, each with where the run stands;
    other subscribers hear the steps only. It must not block for long; one that raises is removed and
    the run goes on.
    """

    def __call__(self, event: Any, /) -> None:
        """Take one event."""


@runtime_checkable
class RunDisplay(Subscriber, Protocol):
    """A subscriber that shows a whole run made of several evaluations (the notebook's ``RunProgress``).

    Contract: :meth:`begin` is called once before the run's first event, :meth:`finish` once after
    its last, also when the run fails or is interrupted; events come in between.
    """

    def begin(self, title: str) -> None:
        """Start showing the run named ``title``."""

    def finish(self, status: str) -> None:
        """End the run, showing how it ended (``finished``, ``stopped``, ``interrupted``, ``failed``)."""


def live_plot() -> Subscriber | None:
    """Return the live convergence plot ``optimize(..., live=True)`` adds to its subscribers, or None.

    In a Jupyter kernel with the notebook extra that is ``dspex_lab.notebook.LiveConvergenceWidget``
    (it displays itself at the run's first step, below the run's progress); elsewhere nothing can draw
    live, and None says so.
    """
    factory = _hooks.live_plot_factory
    plot = factory() if factory is not None else None
    return plot if isinstance(plot, Subscriber) else None

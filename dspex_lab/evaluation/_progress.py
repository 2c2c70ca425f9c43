"""What ``progress=True`` shows: a tqdm bar, or a display another layer installs (the notebook's widget).

This layer cannot import the notebook layer (DESIGN §1), so it reads one plug instead: the package root
fills :data:`dspex_lab._hooks.progress_factory` with a factory that returns the notebook's ``RunProgress`` widget
when the code runs inside a Jupyter kernel with anywidget importable, and None elsewhere. ``evaluate`` and
``optimize`` ask :func:`progress_display` for their display; without a factory, or when it declines,
they get :class:`TqdmProgress` (text in terminals).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

from dspex_lab import _hooks
from dspex_lab.engine import RunFinished, RunStarted, TrialFinished

__all__ = ["ProgressFactory", "TqdmProgress", "installed_display", "progress_display"]

#: Called with the kind of run (``"evaluation"`` or ``"optimization"``); returns an event subscriber to
#: show that run, or None to leave it to the tqdm bar.
ProgressFactory = Callable[[str], Callable[[Any], None] | None]


def installed_display(kind: str) -> Callable[[Any], None] | None:
    """Return the installed factory's display for a run of ``kind``, or None (no factory, or it declined)."""
    factory: ProgressFactory | None = _hooks.progress_factory
    return factory(kind) if factory is not None else None


def progress_display(kind: str) -> Callable[[Any], None]:
    """Return the event subscriber that shows a run for ``progress=True``.

    Args:
        kind: ``"evaluation"`` or ``"optimization"``, handed to the installed factory.

    Returns:
        The installed factory's display if it gives one, else a :class:`TqdmProgress`.
    """
    display = installed_display(kind)
    return display if display is not None else TqdmProgress()


class TqdmProgress:
    """Show a run's progress with ``tqdm.auto`` (a widget in notebooks, text in terminals).

    The live ``mean`` is the mean score of the trials scored so far in this run (failed trials are counted
    in ``errors``, never averaged in); each run the display receives starts it afresh.

    The mean is set on every trial, before the bar counts it: tqdm draws a postfix set with
    ``refresh=False`` only at its next redraw, and a redraw happens inside ``update`` when the bar
    decides to. Set after ``update`` (and, as before, at most once per refresh period), the postfix a
    redraw showed was the one set at an earlier redraw, often from the first trial of a burst: a run
    whose trials finish in bursts showed ``mean=0.000`` at 50/200. Set before it, every line drawn
    shows the mean of exactly the trials it counts.

    Args:
        refresh_seconds: the least time between two redraws of the bar (tqdm's ``mininterval``).
        file: where a text bar is written (default: tqdm's, the standard error).
    """

    def __init__(self, *, refresh_seconds: float = 0.1, file: TextIO | None = None) -> None:
        self._bar: Any = None
        self._refresh_seconds = max(float(refresh_seconds), 0.0)
        self._file = file
        self._scores = 0.0
        self._scored = 0

    def __call__(self, event: Any) -> None:
        """Update the bar from one event."""
        if isinstance(event, RunStarted):
            from tqdm.auto import tqdm

            self._scores = 0.0
            self._scored = 0
            self._bar = tqdm(
                total=event.total,
                initial=event.already_done,
                desc=event.name,
                unit="trial",
                dynamic_ncols=True,
                leave=True,
                file=self._file,
                mininterval=self._refresh_seconds,
                # A fixed one (not tqdm's adaptive count) so a burst of fast trials never holds back the
                # redraws of the slower ones after it.
                miniters=1,
            )
        elif isinstance(event, TrialFinished) and self._bar is not None:
            if event.result.score is not None:
                self._scores += event.result.score
                self._scored += 1
            # Cheap (a dict and a string), so set on every trial; drawn by the update below if it redraws.
            self._bar.set_postfix(mean=self._mean(), errors=event.n_errors, refresh=False)
            self._bar.update(1)
        elif isinstance(event, RunFinished) and self._bar is not None:
            self._bar.set_postfix(mean=self._mean(), errors=event.n_errors, status=event.status, refresh=False)
            self._bar.close()
            self._bar = None

    def _mean(self) -> str:
        """Return the running mean of the scored trials, as the bar shows it."""
        mean = self._scores / self._scored if self._scored else float("nan")
        return f"{mean:.3f}"

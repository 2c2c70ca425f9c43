"""What ``progress=True`` shows: a tqdm bar, or a display another layer installs (the notebook's widget).

This layer cannot import the notebook layer (DESIGN §1), so it reads one plug instead: the package root
fills :data:`dspex_lab._hooks.progress_factory` with a factory that returns the notebook's ``RunProgress`` widget
when the code runs inside a Jupyter kernel with anywidget importable, and None elsewhere. ``evaluate`` and
``optimize`` ask :func:`progress_display` for their display; without a factory, or when it declines,
they get :class:`TqdmProgress` (text in terminals).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
    """

    def __init__(self, *, refresh_seconds: float = 0.2) -> None:
        self._bar: Any = None
        self._refresh_seconds = refresh_seconds
        self._last_postfix = 0.0
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
            )
            # A mean over the first one or two trials says nothing; wait one refresh period.
            self._last_postfix = time.monotonic()
        elif isinstance(event, TrialFinished) and self._bar is not None:
            if event.result.score is not None:
                self._scores += event.result.score
                self._scored += 1
            self._bar.update(1)
            now = time.monotonic()
            if now - self._last_postfix > self._refresh_seconds:
                self._last_postfix = now
                mean = self._scores / self._scored if self._scored else float("nan")
                self._bar.set_postfix(mean=f"{mean:.3f}", errors=event.n_errors, refresh=False)
        elif isinstance(event, RunFinished) and self._bar is not None:
            mean = self._scores / self._scored if self._scored else float("nan")
            self._bar.set_postfix(mean=f"{mean:.3f}", errors=event.n_errors, status=event.status, refresh=False)
            self._bar.close()
            self._bar = None

"""A tqdm progress bar that subscribes to run events (terminal and notebook)."""

from __future__ import annotations

import time
from typing import Any

from dspex_lab.engine import RunFinished, RunStarted, TrialFinished

__all__ = ["TqdmProgress"]


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

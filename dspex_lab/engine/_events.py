"""Events the engine emits while a run goes; displays subscribe, the engine never imports them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dspex_lab.engine._trial import TrialResult

__all__ = ["Event", "EventBus", "RunFinished", "RunStarted", "TrialFinished"]

logger = logging.getLogger("dspex_lab.engine")


@dataclass(frozen=True)
class RunStarted:
    """A run began; ``total`` trials are planned, ``already_done`` were finished earlier (resume)."""

    run_id: str
    name: str
    total: int
    already_done: int = 0


@dataclass(frozen=True)
class TrialFinished:
    """One trial finished (ok or error); ``done`` counts trials finished in this run so far."""

    run_id: str
    result: TrialResult
    done: int
    total: int
    n_errors: int


@dataclass(frozen=True)
class RunFinished:
    """A run ended; ``status`` is finished, interrupted, or stopped with a reason."""

    run_id: str
    status: str
    done: int
    total: int
    n_errors: int
    wall_seconds: float


Event = RunStarted | TrialFinished | RunFinished


class EventBus:
    """Deliver events to subscribers, in order, on the thread that emits them.

    Contract: subscribers are called synchronously from the coordinating thread
    (never from worker threads), so they see events in order and need no locks
    of their own. A subscriber that raises is logged and dropped; it never
    stops a run.
    """

    def __init__(self, subscribers: list[Callable[[Any], None]] | None = None) -> None:
        self._subscribers = list(subscribers or [])
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Callable[[Any], None]) -> None:
        """Add a subscriber."""
        with self._lock:
            self._subscribers.append(subscriber)

    def emit(self, event: Any) -> None:
        """Deliver ``event`` to every subscriber."""
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                logger.exception("event subscriber %r failed; removing it", subscriber)
                with self._lock:
                    if subscriber in self._subscribers:
                        self._subscribers.remove(subscriber)

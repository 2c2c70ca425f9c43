"""Per-trial cancel tokens, and the guard that checks them before every LM call.

A Python thread cannot be killed, so a trial that times out or whose run stops is
cancelled cooperatively: its :class:`CancelToken` is bound in a context variable
while it runs, and every LM call made in that context (on any thread that copied
it) first checks the token. A cancelled trial therefore makes no further LM request;
a request already on the wire carries the trial's remaining time as its timeout, so
it ends by the deadline instead of running on, billed and unrecorded.

The check sits in front of ``dspy.BaseLM.__call__`` and ``acall`` — the public entry
points every adapter and module goes through — installed once by :func:`install_lm_guard`
when the first trial runs (never at import), through
:func:`dspex_lab._dspy_compat.wrap_lm_entry_points` (a patch of a DSPy class: a callback
cannot refuse a call or give it a timeout). If the installed DSPy no longer has those
methods, the guard is not installed, a warning is logged, :func:`guard_installed` says so,
and cancellation falls back to abandoning the trial's thread (a test fails loudly in that case).
"""

from __future__ import annotations

import contextvars
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from dspex_lab._dspy_compat import lm_takes_request_timeout, wrap_lm_entry_points
from dspex_lab.errors import TrialCancelledError

__all__ = ["STUCK_GRACE", "CancelToken", "current_token", "guard_installed", "install_lm_guard"]

# Seconds a trial's thread may still run after the trial was given up (its deadline passed, or its run
# stopped) before it counts as stuck in code that cannot be cancelled: a cancelled LM call returns well
# within this. Process and Dask workers with a stuck thread are replaced.
STUCK_GRACE = 1.0

_TOKEN: contextvars.ContextVar[CancelToken | None] = contextvars.ContextVar("dspex_trial_token", default=None)
_GUARD_MARK = "__dspex_lm_guard__"
_install_lock = threading.Lock()
_installed = False


class CancelToken:
    """Whether one trial may go on: cancelled explicitly, or past its deadline.

    Thread safety: ``cancel`` may be called from any thread (the run's coordinator);
    ``check``, ``remaining`` and ``wait`` from the trial's own threads.

    Args:
        timeout: seconds from now after which the token counts as cancelled (None: no deadline).
    """

    __slots__ = ("_event", "deadline", "reason", "timeout")

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.reason: str | None = None
        self._event = threading.Event()

    def __repr__(self) -> str:
        return f"CancelToken(cancelled={self.cancelled}, reason={self.reason!r})"

    def cancel(self, reason: str) -> None:
        """Cancel the trial; the first reason given is kept."""
        if self.reason is None:
            self.reason = reason
        self._event.set()

    @property
    def cancelled(self) -> bool:
        """Whether the trial must stop (cancelled, or its deadline has passed)."""
        if self._event.is_set():
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.cancel(f"timeout after {self.timeout:g} s")
            return True
        return False

    def remaining(self) -> float | None:
        """Return the seconds left before the deadline (None without one; never negative)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def check(self) -> None:
        """Raise :class:`TrialCancelledError` if the trial must stop."""
        if self.cancelled:
            raise TrialCancelledError(f"trial cancelled before its next LM call: {self.reason}")

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` (less if the deadline comes first); return False if cancelled meanwhile."""
        remaining = self.remaining()
        if remaining is not None:
            seconds = min(seconds, remaining)
        self._event.wait(max(0.0, seconds))
        return not self.cancelled

    def bind(self) -> contextvars.Token[CancelToken | None]:
        """Make this the current trial's token in this context; undo with ``unbind``."""
        return _TOKEN.set(self)

    @staticmethod
    def unbind(handle: contextvars.Token[CancelToken | None]) -> None:
        """Restore the token bound before ``bind``."""
        _TOKEN.reset(handle)


def current_token() -> CancelToken | None:
    """Return the cancel token of the trial running in this context, if any."""
    return _TOKEN.get()


def _request_timeout(lm: Any, kwargs: dict[str, Any], token: CancelToken) -> None:
    # A custom engine (the lab LM) owns its connection and DSPy refuses client settings for it.
    remaining = token.remaining()
    if remaining is None or "timeout" in kwargs or not lm_takes_request_timeout(lm):
        return
    configured = (getattr(lm, "kwargs", None) or {}).get("timeout")
    if isinstance(configured, (int, float)) and not isinstance(configured, bool) and configured < remaining:
        return
    kwargs["timeout"] = max(0.05, remaining)


def _guard_sync(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _TOKEN.get()
        if token is not None:
            token.check()
            _request_timeout(self, kwargs, token)
        return call(self, *args, **kwargs)

    setattr(guarded, _GUARD_MARK, call)
    return guarded


def _guard_async(call: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(call)
    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        token = _TOKEN.get()
        if token is not None:
            token.check()
            _request_timeout(self, kwargs, token)
        return await call(self, *args, **kwargs)

    setattr(guarded, _GUARD_MARK, call)
    return guarded


def install_lm_guard() -> bool:
    """Check the current trial's cancel token before every DSPy LM call; return whether it is installed.

    Idempotent and thread-safe. Outside a trial (no token bound) the guarded methods behave
    exactly as DSPy's own.
    """
    global _installed
    if _installed:
        return True
    with _install_lock:
        if _installed:
            return True
        if not wrap_lm_entry_points(_guard_sync, _guard_async, _GUARD_MARK):
            return False
        _installed = True
        return True


def guard_installed() -> bool:
    """Return whether LM calls check the trial's cancel token (see :func:`install_lm_guard`)."""
    return _installed

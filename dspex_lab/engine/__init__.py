"""Execution: trials, executors, retries, timeouts, cancel and run events.

This layer owns turning (hydrated program, example, repeat) into a
:class:`TrialResult` — a failure being data, never an exception — and running
many trials in parallel. It emits events and never imports a display library.
"""

from dspex_lab.engine._events import Event, EventBus, RunFinished, RunStarted, TrialFinished
from dspex_lab.engine._executor import Executor, RunStatus, ThreadExecutor, make_executor
from dspex_lab.engine._trial import RetryPolicy, TrialResult, TrialRunner, TrialTask, is_transient, to_json_value

__all__ = [
    "Event",
    "EventBus",
    "Executor",
    "RetryPolicy",
    "RunFinished",
    "RunStarted",
    "RunStatus",
    "ThreadExecutor",
    "TrialFinished",
    "TrialResult",
    "TrialRunner",
    "TrialTask",
    "is_transient",
    "make_executor",
    "to_json_value",
]

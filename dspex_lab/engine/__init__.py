"""Execution: the run primitive, trials, executors, retries, timeouts, cancel and run events.

This layer owns turning (hydrated program, example, repeat) into a
:class:`TrialResult` — a failure being data, never an exception — and running
many trials in parallel under one :class:`RunPolicy` with :func:`run_trials`,
which every workload (evaluation, optimization) uses. It emits events to sinks
and never imports a display library.
"""

from dspex_lab.engine._adapter import CachingChatAdapter, default_adapter
from dspex_lab.engine._budget import Budget, BudgetTracker, SpendingCounter
from dspex_lab.engine._cancel import CancelToken, current_token, guard_installed, install_lm_guard
from dspex_lab.engine._contract import REIMPORTED_MAIN_EXIT
from dspex_lab.engine._dask import DaskExecutor
from dspex_lab.engine._events import Event, EventBus, RunFinished, RunStarted, TrialFinished
from dspex_lab.engine._executor import Executor, RunStatus, ThreadExecutor, make_executor
from dspex_lab.engine._process import ProcessExecutor
from dspex_lab.engine._run import LiveStatistics, RunPolicy, RunReport, run_trials
from dspex_lab.engine._sizing import InFlightTuner, Sizing, choose_sizing
from dspex_lab.engine._trial import (
    PredictorTraceHook,
    RetryPolicy,
    SpanSink,
    TrialResult,
    TrialRunner,
    TrialTask,
    is_transient,
    metric_feedback,
    metric_score,
    retry_after,
    to_json_value,
    trial_record,
)

__all__ = [
    "REIMPORTED_MAIN_EXIT",
    "Budget",
    "BudgetTracker",
    "CachingChatAdapter",
    "CancelToken",
    "DaskExecutor",
    "Event",
    "EventBus",
    "Executor",
    "InFlightTuner",
    "LiveStatistics",
    "PredictorTraceHook",
    "ProcessExecutor",
    "RetryPolicy",
    "RunFinished",
    "RunPolicy",
    "RunReport",
    "RunStarted",
    "RunStatus",
    "Sizing",
    "SpanSink",
    "SpendingCounter",
    "ThreadExecutor",
    "TrialFinished",
    "TrialResult",
    "TrialRunner",
    "TrialTask",
    "choose_sizing",
    "current_token",
    "default_adapter",
    "guard_installed",
    "install_lm_guard",
    "is_transient",
    "make_executor",
    "metric_feedback",
    "metric_score",
    "retry_after",
    "run_trials",
    "to_json_value",
    "trial_record",
]

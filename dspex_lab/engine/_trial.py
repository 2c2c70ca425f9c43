"""One trial: run a hydrated program on one example, score it, and capture everything as data."""

from __future__ import annotations

import hashlib
import json
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import dspy
from dspy.utils.exceptions import is_retryable_lm_error
from dspy.utils.usage_tracker import UsageTracker

from dspex_lab.errors import TrialTimeoutError
from dspex_lab.lm import current_rollout, lm_cost
from dspex_lab.trace import SpanRecorder, dispatch
from dspex_lab.trace import metric as metric_span

__all__ = ["RetryPolicy", "TrialResult", "TrialRunner", "TrialTask", "is_transient", "to_json_value"]

Metric = Callable[[dspy.Example, Any], Any]


@dataclass(frozen=True)
class TrialTask:
    """What to run: the example at ``index`` (stable ``example_id``), repeat ``repeat``."""

    index: int
    example_id: str
    example: dspy.Example
    repeat: int = 0


@dataclass(frozen=True)
class TrialResult:
    """Everything recorded about one finished trial; a failure is data, not an exception.

    ``status`` is ``"ok"`` (scored) or ``"error"``; errors carry ``error_type``,
    ``error_message`` and ``traceback`` and have ``score=None`` so they are never
    averaged in as 0. ``error_stage`` says where it failed: ``program``,
    ``metric`` or ``timeout``.
    """

    index: int
    example_id: str
    repeat: int
    status: str
    score: float | None
    prediction: str | None
    error_type: str | None = None
    error_message: str | None = None
    error_stage: str | None = None
    traceback: str | None = None
    latency: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    lm_calls: int = 0
    attempts: int = 1
    started_at: float = 0.0
    finished_at: float = 0.0
    trial_id: str = field(default="")
    spans: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the trial produced a score."""
        return self.status == "ok"

    def to_row(self) -> dict[str, Any]:
        """Return the trial as a flat dict (journal row order)."""
        # A shallow copy: every field is immutable, and asdict's deep copy costs 7x as much.
        return {name: getattr(self, name) for name in _RESULT_FIELDS}


# Spans travel beside the row (they go to their own table), so they are not one of its columns.
_RESULT_FIELDS = tuple(item.name for item in fields(TrialResult) if item.name != "spans")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient errors (rate limits, LM timeouts, trial timeouts), with exponential backoff."""

    retries: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0

    def delay(self, attempt: int, key: str) -> float:
        """Return the wait before retry number ``attempt`` (1-based), with deterministic jitter."""
        jitter = int(hashlib.sha256(f"{key}:{attempt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return min(self.max_backoff, self.backoff * (2 ** (attempt - 1))) * (0.5 + jitter)


def is_transient(error: BaseException) -> bool:
    """Return whether an error is worth retrying (rate limits, timeouts, transport faults)."""
    if isinstance(error, (TrialTimeoutError, TimeoutError)):
        return True
    current: BaseException | None = error
    while current is not None:
        if is_retryable_lm_error(current) if isinstance(current, Exception) else False:
            return True
        name = type(current).__name__
        if "RateLimit" in name or "Timeout" in name:
            return True
        current = current.__cause__ or current.__context__
    return False


def to_json_value(value: Any) -> Any:
    """Return a JSON-ready copy of ``value``: predictions, pydantic models and numpy values included."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_json_value(item) for item in value]
    if hasattr(value, "toDict"):
        return to_json_value(value.toDict())
    if hasattr(value, "model_dump"):
        return to_json_value(value.model_dump())
    if hasattr(value, "item"):
        try:
            return to_json_value(value.item())
        except (TypeError, ValueError):
            pass
    return repr(value)


def _score(value: Any) -> float:
    if isinstance(value, dspy.Prediction) and "score" in value:
        value = value.score
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) or hasattr(value, "__float__"):
        number = float(value)
        if math.isnan(number):
            raise ValueError("the metric returned NaN")
        return number
    raise TypeError(f"the metric must return a number or bool, got {type(value).__name__}: {value!r:.60}")


def _usage(tracker: UsageTracker) -> tuple[int, int, float | None, int]:
    input_tokens = output_tokens = calls = 0
    cost: float | None = 0.0
    for model, entries in tracker.usage_data.items():
        model_in = sum(int(entry.get("prompt_tokens") or 0) for entry in entries)
        model_out = sum(int(entry.get("completion_tokens") or 0) for entry in entries)
        input_tokens += model_in
        output_tokens += model_out
        calls += len(entries)
        model_cost = lm_cost(model, model_in, model_out)
        cost = None if cost is None or model_cost is None else cost + model_cost
    return input_tokens, output_tokens, cost, calls


class TrialRunner:
    """Run trials of one hydrated module; safe to call from many threads at once.

    The module is shared by the worker threads, as ``dspy.Evaluate`` shares it: DSPy
    predictors keep no per-call state on the instance.
    """

    def __init__(
        self,
        module: dspy.Module,
        metric: Metric,
        *,
        lm: dspy.BaseLM | None,
        retry: RetryPolicy,
        recorder: SpanRecorder | None = None,
    ) -> None:
        self.module = module
        self.metric = metric
        self.lm = lm
        self.retry = retry
        self.recorder = recorder
        # The recorder is handed DSPy's calls directly when this DSPy allows it (see dspex_lab.trace.dispatch);
        # registering it as a DSPy callback instead would double a zero-latency trial's cost.
        self._direct = recorder is not None and dispatch.install()

    def __call__(self, task: TrialTask, *, attempt: int = 1) -> TrialResult:
        """Run ``task``; with a recorder, capture its span tree; never raise for a trial's own failure."""
        if self.recorder is None:
            return self._run(task, attempt=attempt)
        attributes = {"example_id": task.example_id, "repeat": task.repeat, "attempt": attempt}
        with self.recorder.trial(f"{task.example_id}/r{task.repeat}", attributes=attributes) as collector:
            result = self._run(task, attempt=attempt)
            collector.root.set(status=result.status, score=result.score, error_type=result.error_type)
            if result.status == "error":
                collector.root.fail(f"{result.error_type}: {result.error_message}")
        # The result was built just above and is not shared yet: attaching the spans in place spares a
        # dataclasses.replace (field introspection and a second validation) on every traced trial.
        object.__setattr__(result, "spans", tuple(collector.spans))
        return result

    def _run(self, task: TrialTask, *, attempt: int) -> TrialResult:
        started = time.time()
        clock = time.perf_counter()
        tracker = UsageTracker()
        overrides: dict[str, Any] = {"usage_tracker": tracker}
        if self.lm is not None:
            overrides["lm"] = self.lm
        if self.recorder is not None:
            if self._direct:
                overrides.update(dispatch.settings(self.recorder))
            else:
                overrides["callbacks"] = [*(dspy.settings.callbacks or []), self.recorder]
        stage = "program"
        while True:
            try:
                with dspy.context(**overrides), current_rollout(task.repeat):
                    prediction = self.module(**task.example.inputs())
                stage = "metric"
                if self.recorder is None:
                    score = _score(self.metric(task.example, prediction))
                else:
                    with metric_span(getattr(self.metric, "__name__", "metric")) as handle:
                        score = _score(self.metric(task.example, prediction))
                        handle.set(score=score)
            except Exception as error:
                if stage == "program" and is_transient(error) and attempt <= self.retry.retries:
                    time.sleep(self.retry.delay(attempt, f"{task.example_id}:{task.repeat}"))
                    attempt += 1
                    continue
                return self.failure(
                    task, error, stage=stage, started=started, clock=clock, usage=_usage(tracker), attempt=attempt
                )
            break
        input_tokens, output_tokens, cost, calls = _usage(tracker)
        return TrialResult(
            index=task.index,
            example_id=task.example_id,
            repeat=task.repeat,
            status="ok",
            score=score,
            prediction=json.dumps(to_json_value(prediction), ensure_ascii=False),
            latency=time.perf_counter() - clock,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            lm_calls=calls,
            attempts=attempt,
            started_at=started,
            finished_at=time.time(),
        )

    @staticmethod
    def failure(
        task: TrialTask,
        error: BaseException,
        *,
        stage: str,
        started: float,
        clock: float,
        usage: tuple[int, int, float | None, int] = (0, 0, 0.0, 0),
        attempt: int,
    ) -> TrialResult:
        """Return the record of a trial that raised ``error`` at ``stage`` (usage: tokens in/out, cost, calls)."""
        input_tokens, output_tokens, cost, calls = usage
        return TrialResult(
            index=task.index,
            example_id=task.example_id,
            repeat=task.repeat,
            status="error",
            score=None,
            prediction=None,
            error_type=type(error).__name__,
            error_message=str(error)[:2000],
            error_stage=stage,
            traceback="".join(traceback.format_exception(error))[-8000:],
            latency=time.perf_counter() - clock,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            lm_calls=calls,
            attempts=attempt,
            started_at=started,
            finished_at=time.time(),
        )

    @staticmethod
    def timed_out(task: TrialTask, *, timeout: float, started: float, attempts: int) -> TrialResult:
        """Return the record of a trial abandoned after ``timeout`` seconds."""
        return TrialResult(
            index=task.index,
            example_id=task.example_id,
            repeat=task.repeat,
            status="error",
            score=None,
            prediction=None,
            error_type=TrialTimeoutError.__name__,
            error_message=f"trial did not finish within {timeout:g} s (attempt {attempts})",
            error_stage="timeout",
            latency=timeout,
            attempts=attempts,
            started_at=started,
            finished_at=time.time(),
        )

"""One trial: run a hydrated program on one example, score it, and capture everything as data.

Retries live here and only here: the runner retries transient failures (rate limits,
provider timeouts, transport faults) with backoff, honouring a provider's ``Retry-After``
up to a cap, checks the trial's cancel token before every attempt and (through the LM
guard, see :mod:`dspex_lab.engine._cancel`) before every LM call, and records every
retried attempt's cause. The run's LMs are given ``num_retries=0`` so DSPy's client does
not retry underneath (see :meth:`TrialRunner.__init__`).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import dspy
from dspy.utils.exceptions import is_retryable_lm_error

from dspex_lab._records import TRIAL_FIELDS
from dspex_lab._records import trial_id as make_trial_id
from dspex_lab.engine._adapter import default_adapter
from dspex_lab.engine._cancel import CancelToken, install_lm_guard
from dspex_lab.errors import InvalidScoreError, TrialCancelledError, TrialTimeoutError
from dspex_lab.providers import Meter, for_repeat, metering, repeats_can_differ
from dspex_lab.trace import SpanRecorder, span
from dspex_lab.trace import metric as metric_span
from dspex_lab.trace.redaction import mask_text, redact

__all__ = [
    "PredictorTraceHook",
    "RetryPolicy",
    "SpanSink",
    "TrialResult",
    "TrialRunner",
    "TrialTask",
    "is_transient",
    "metric_feedback",
    "metric_score",
    "retry_after",
    "to_json_value",
]

Metric = Callable[[dspy.Example, Any], Any]
# Receives a trial's spans (from the worker thread that captured them); must be thread-safe.
SpanSink = Callable[[str, Sequence[Any]], None]
# Receives a trial's task, the module that ran and DSPy's per-predictor trace of its program call.
PredictorTraceHook = Callable[["TrialTask", Any, list[Any]], None]

# Error texts and tracebacks are kept to these lengths (the tail of a traceback is where it failed).
MAX_ERROR_MESSAGE = 2000
MAX_TRACEBACK = 8000
# A metric's feedback text is kept to this length (GEPA-style feedback is a few sentences).
MAX_FEEDBACK = 4000


@dataclass(frozen=True)
class TrialTask:
    """What to run: the example at ``index`` (stable ``example_id``), repeat ``repeat``."""

    index: int
    example_id: str
    example: dspy.Example
    repeat: int = 0

    @property
    def trial_id(self) -> str:
        """The trial's id (see :func:`dspex_lab._records.trial_id`)."""
        return make_trial_id(self.example_id, self.repeat)


@dataclass(frozen=True)
class TrialResult:
    """Everything recorded about one finished trial; a failure is data, not an exception.

    ``status`` is ``"ok"`` (scored) or ``"error"``; errors carry ``error_type``,
    ``error_message`` and ``traceback`` (secrets masked) and have ``score=None`` so they are
    never averaged in as 0. ``error_stage`` says where it failed: ``program``, ``metric``,
    ``timeout`` or ``cancelled``. ``retries`` is a JSON list with one entry per retried
    attempt (its error and the wait before the next). ``cost`` is None when any LM call of
    the trial had no known price; ``unpriced_models`` then names the models. ``feedback`` is what
    the metric said about the prediction beyond its score, when it says anything.
    ``metric_lm_calls`` and ``metric_cost`` are the part of ``lm_calls`` and ``cost`` the metric
    spent (a judge's LM calls); the rest is the program's.

    The fields are the trial record of :data:`dspex_lab._records.TRIAL_FIELDS`.
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
    retries: str | None = None
    unpriced_models: str | None = None
    feedback: str | None = None
    metric_lm_calls: int = 0
    metric_cost: float | None = 0.0

    @property
    def ok(self) -> bool:
        """Whether the trial produced a score."""
        return self.status == "ok"

    @property
    def trial_id(self) -> str:
        """The trial's id, stable across resumes."""
        return make_trial_id(self.example_id, self.repeat)

    def to_row(self) -> dict[str, Any]:
        """Return the trial as a flat dict keyed by the record's field names (journal row order)."""
        # A shallow copy: every field is immutable, and asdict's deep copy costs 7x as much.
        return {name: getattr(self, name) for name in _ROW_FIELDS}


def trial_record(**values: Any) -> TrialResult:
    """Build a trial record: its one constructor, which applies the redaction policy.

    Every text of a trial that a user's code, a program's output or a provider wrote (the error
    message and traceback, the prediction, the retried attempts' errors) is masked here
    (:mod:`dspex_lab.trace.redaction`), whichever path made the trial: the runner, an executor's
    worker, a stopped trial, or a DSPy optimizer's compile. Error texts and the metric's feedback
    are bounded (``MAX_ERROR_MESSAGE``, the last ``MAX_TRACEBACK`` characters of a traceback,
    ``MAX_FEEDBACK``).

    Args:
        values: the fields of :class:`TrialResult`.
    """
    message, trace = values.get("error_message"), values.get("traceback")
    if message is not None:
        values["error_message"] = mask_text(str(message)[:MAX_ERROR_MESSAGE])
    if trace is not None:
        values["traceback"] = mask_text(str(trace)[-MAX_TRACEBACK:])
    if values.get("feedback") is not None:
        values["feedback"] = mask_text(str(values["feedback"])[:MAX_FEEDBACK])
    for name in ("prediction", "retries"):
        if values.get(name) is not None:
            values[name] = _masked_json(values[name])
    return TrialResult(**values)


def _masked_json(text: str) -> str:
    # Masked as data (keys naming secrets, every string), so the text stays valid JSON; most texts hold
    # no secret and pass after one scan.
    if mask_text(text) == text:
        return text
    return json.dumps(redact(json.loads(text)), ensure_ascii=False)


_ROW_FIELDS = tuple(item.name for item in TRIAL_FIELDS if item.name is not None)
_missing = set(_ROW_FIELDS) - {item.name for item in fields(TrialResult)} - {"trial_id"}
if _missing:  # pragma: no cover - a broken edit of the record or of TrialResult
    raise RuntimeError(f"TrialResult lacks the trial record's fields {sorted(_missing)}")


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of transient errors (rate limits, LM timeouts, transport faults), with exponential backoff.

    Args:
        retries: retries after the first attempt (0 disables retrying).
        backoff: the first wait in seconds, doubled each retry, with deterministic jitter.
        max_backoff: the longest computed wait.
        max_retry_after: the longest wait a provider's ``Retry-After`` may ask for; a longer
            request is capped to this (the retry still happens, sooner than asked).
    """

    retries: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0
    max_retry_after: float = 30.0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be a non-negative integer, got {self.retries!r}")
        for name in ("backoff", "max_backoff", "max_retry_after"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value >= 0)
            ):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")

    def delay(self, attempt: int, key: str, error: BaseException | None = None) -> float:
        """Return the wait before retry number ``attempt`` (1-based): the provider's hint if any, else backoff."""
        hint = retry_after(error) if error is not None else None
        if hint is not None:
            return min(hint, self.max_retry_after)
        jitter = int(hashlib.sha256(f"{key}:{attempt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return min(self.max_backoff, self.backoff * (2 ** (attempt - 1))) * (0.5 + jitter)


def retry_after(error: BaseException) -> float | None:
    """Return the seconds a provider asked to wait (``Retry-After``) in ``error`` or its causes, if any."""
    current: BaseException | None = error
    seen = 0
    while current is not None and seen < 8:
        value = getattr(current, "retry_after", None)
        if value is None:
            response = getattr(current, "response", None)
            headers = getattr(response, "headers", None)
            if headers is not None:
                try:
                    value = headers.get("retry-after")
                except Exception:
                    value = None
        seconds = _seconds(value)
        if seconds is not None:
            return seconds
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def _seconds(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


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


def metric_score(value: Any) -> float:
    """Return a metric's value as a score: a finite float (a bool is 0 or 1; a Prediction's ``score`` field).

    Raises:
        InvalidScoreError: the value is not a finite number (the trial records it as a metric error).
    """
    if isinstance(value, dspy.Prediction) and "score" in value:
        value = value.score
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)) or hasattr(value, "__float__"):
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError) as error:
            raise InvalidScoreError(f"the metric returned {value!r:.60}, which is not a number") from error
        if not math.isfinite(number):
            raise InvalidScoreError(f"the metric returned {number}; a score must be a finite number")
        return number
    raise InvalidScoreError(f"the metric must return a number or bool, got {type(value).__name__}: {value!r:.60}")


def metric_feedback(value: Any) -> str | None:
    """Return the feedback text a metric gave with its score (``dspy.Prediction(score=..., feedback=...)``), if any.

    The text is bounded to ``MAX_FEEDBACK`` characters; :func:`trial_record` masks it.
    """
    if not isinstance(value, dspy.Prediction) or "feedback" not in value:
        return None
    feedback = value.feedback
    if feedback is None:
        return None
    text = feedback if isinstance(feedback, str) else json.dumps(to_json_value(feedback), ensure_ascii=False)
    return text[:MAX_FEEDBACK] or None


def _usage(meter: Meter) -> tuple[int, int, float | None, int, tuple[str, ...]]:
    # DSPy's reported cost per call first, then a price table; a call with no known price makes the
    # trial's cost None and names its model (dspex_lab.providers.metering's contract), never a silent 0.
    usage = meter.usage()
    return usage.input_tokens, usage.output_tokens, usage.cost, usage.lm_calls, usage.unpriced_models


def _without_client_retries(lm: Any) -> Any:
    """Return ``lm`` (or a copy) whose client makes one request per call: retrying is the runner's job."""
    if lm is None or not getattr(lm, "num_retries", 0):
        return lm
    try:
        return lm.copy(num_retries=0)
    except Exception:  # an LM that cannot be copied keeps its own retries (documented in docs/engine.md)
        return lm


def _error_text(error: BaseException) -> tuple[str, str]:
    # Bounded before formatting; trial_record masks (and bounds) what is stored.
    return str(error)[:MAX_ERROR_MESSAGE], "".join(traceback.format_exception(error))[-MAX_TRACEBACK:]


@dataclass
class _Attempts:
    """One trial's attempts so far: when it started, its usage, the attempt running, the retries made."""

    started: float
    clock: float
    meter: Meter = field(default_factory=Meter)
    # How many of ``meter``'s calls came before the metric ran: the calls after it are the metric's (a judge's).
    metric_mark: int | None = None
    number: int = 1
    metric_attempts: int = 1  # the metric's tries on the last prediction (a judge retried on a rate limit)
    cause: str | None = None  # why this attempt is a retry (its attempt span's label)
    retried: list[dict[str, Any]] = field(default_factory=list)

    def metric_usage(self) -> tuple[int, float | None]:
        """Return the metric's LM calls and their cost (None when a call had no known price)."""
        if self.metric_mark is None:
            return 0, 0.0
        usage = self.meter.usage(since=self.metric_mark)
        return usage.lm_calls, usage.cost

    def note_retry(self, error: BaseException, wait: float, *, stage: str = "program") -> None:
        """Record that this attempt's ``stage`` failed with ``error`` and is tried again after ``wait`` seconds."""
        message, _ = _error_text(error)
        retry = {"attempt": self.number, "error_type": type(error).__name__, "error_message": message[:500]}
        retry["wait"] = round(wait, 3)
        if stage == "program":
            self.cause = f"{type(error).__name__} (waited {wait:.3g} s)"
        else:
            retry.update(stage=stage, metric_attempt=self.metric_attempts)
        self.retried.append(retry)


class TrialRunner:
    """Run trials of one hydrated module; safe to call from many threads at once.

    The module is shared by the worker threads, as ``dspy.Evaluate`` shares it: DSPy
    predictors keep no per-call state on the instance. Repeat r >= 1 of an example runs
    with its own DSPy ``rollout_id`` on every LM that samples (a copy of the module per
    repeat when its predictors hold their own LMs; see :func:`dspex_lab.providers.for_repeat`),
    so repeats are distinct requests to a provider and never each other's cache hits;
    repeat 0 sends the plain requests ``dspy.Evaluate`` would.

    Args:
        module: the hydrated program.
        metric: ``metric(example, prediction)``.
        lm: the run's LM (used through a copy without client retries).
        retry: the retry policy (the only retry layer; default ``RetryPolicy()``) of trials this
            runner runs when called directly; :func:`~dspex_lab.engine.run_trials` runs them under
            its policy's instead (see :meth:`with_retry`).
        recorder: capture each trial's span tree with it.
        span_sink: receives each traced trial's spans (thread-safe; called from worker threads,
            and from the run's thread for a timed-out trial's partial spans).
        adapter: the DSPy adapter trials use (a worker gets the driver's this way); None uses the
            one configured in DSPy's settings, or when there is none a ChatAdapter that formats
            each signature's system message once (see :mod:`dspex_lab.engine._adapter`).
        predictor_trace: called after each attempt whose program call returned, with the task, the
            module that ran and DSPy's per-predictor trace of that call (``dspy.settings.trace``:
            ``(predictor, inputs, prediction)`` tuples, a fresh list per attempt); from worker
            threads, so it must be thread-safe. An optimizer reads each module's inputs and outputs
            this way (SIMBA-C's trajectories). Runners rebuilt in another process go without it.
    """

    def __init__(
        self,
        module: dspy.Module,
        metric: Metric,
        *,
        lm: dspy.BaseLM | None,
        retry: RetryPolicy | None = None,
        recorder: SpanRecorder | None = None,
        span_sink: SpanSink | None = None,
        adapter: Any = None,
        predictor_trace: PredictorTraceHook | None = None,
    ) -> None:
        self.module = module
        self.adapter = adapter
        self.predictor_trace = predictor_trace
        self.metric = metric
        self.lm = _without_client_retries(lm)
        self.retry = retry if retry is not None else RetryPolicy()
        self.recorder = recorder
        self.span_sink = span_sink
        self.guarded = install_lm_guard()
        self._metric_name = getattr(metric, "__name__", None) or type(metric).__name__
        # Traces of trials in flight, by their token: a trial abandoned at its timeout hands over what it has.
        self._open: dict[int, Any] = {}
        self._open_lock = threading.Lock()
        # (module, LM) per repeat: repeat r runs with its own DSPy rollout_id (dspex_lab.providers.for_repeat).
        self._repeats: dict[int, tuple[dspy.Module, dspy.BaseLM | None]] = {0: (module, self.lm)}
        self._repeats_lock = threading.Lock()

    def with_retry(self, retry: RetryPolicy) -> TrialRunner:
        """Return a runner whose trials retry under ``retry``: this one if they already do, else a copy.

        The copy shares the module, metric, LM, recorder, span sink and adapter; it is how
        :func:`~dspex_lab.engine.run_trials` makes its policy's retry the one its trials use.
        """
        if retry == self.retry:
            return self
        return TrialRunner(
            self.module,
            self.metric,
            lm=self.lm,
            retry=retry,
            recorder=self.recorder,
            span_sink=self.span_sink,
            adapter=self.adapter,
            predictor_trace=self.predictor_trace,
        )

    @property
    def repeats_differ(self) -> bool:
        """Whether repeats can give different completions (some LM of the trial samples; see ``for_repeat``)."""
        return repeats_can_differ(self.module, self.lm)

    def _for_repeat(self, repeat: int) -> tuple[dspy.Module, dspy.BaseLM | None]:
        found = self._repeats.get(repeat)
        if found is None:
            with self._repeats_lock:
                found = self._repeats.get(repeat)
                if found is None:
                    found = self._repeats[repeat] = for_repeat(self.module, self.lm, repeat)
        return found

    def __call__(self, task: TrialTask, *, token: CancelToken | None = None) -> TrialResult:
        """Run ``task``; with a recorder, capture its span tree; never raise for a trial's own failure."""
        token = token if token is not None else CancelToken()
        if self.recorder is None:
            return self._run(task, token)
        attributes = {"example_id": task.example_id, "repeat": task.repeat}
        with self.recorder.trial(task.trial_id, attributes=attributes) as collector:
            with self._open_lock:
                self._open[id(token)] = collector
            try:
                result = self._run(task, token)
                collector.root.set(
                    status=result.status, score=result.score, error_type=result.error_type, attempts=result.attempts
                )
                if result.status == "error":
                    collector.root.fail(f"{result.error_type}: {result.error_message}")
            finally:
                with self._open_lock:
                    abandoned = self._open.pop(id(token), None) is None
        if not abandoned and self.span_sink is not None:
            self.span_sink(task.trial_id, tuple(collector.spans))
        return result

    def _attempt_scope(self, attempt: int, cause: str | None) -> Any:
        if self.recorder is None:
            return _NO_SCOPE
        attributes: dict[str, Any] = {"attempt": attempt}
        if cause is not None:
            attributes["retry_cause"] = cause
        return span(f"attempt {attempt}", kind="attempt", attributes=attributes)

    def _run(self, task: TrialTask, token: CancelToken) -> TrialResult:
        """Run ``task``'s attempts until one scores, a failure is final, or the token stops it."""
        attempts = _Attempts(started=time.time(), clock=time.perf_counter())
        try:
            module, lm = self._for_repeat(task.repeat)
        except Exception as error:  # a module whose LMs cannot be copied for the repeat: this trial fails
            return self.failure(task, error, stage="program", started=attempts.started, clock=attempts.clock, attempt=1)
        overrides = self._overrides(lm)
        bound = token.bind()
        try:
            while True:
                try:
                    token.check()
                    prediction = self._predict(module, task, overrides, attempts)
                    break
                except Exception as error:
                    failed = self._retry_or_fail(task, token, error, "program", attempts)
                    if failed is not None:
                        return failed
            while True:  # the metric's own retries score the same prediction again
                try:
                    score, feedback = self._score_prediction(task, prediction, attempts, overrides)
                    break
                except Exception as error:
                    failed = self._retry_or_fail(task, token, error, "metric", attempts)
                    if failed is not None:
                        return failed
        finally:
            token.unbind(bound)
        return self._scored(task, prediction, (score, feedback), attempts)

    def _overrides(self, lm: dspy.BaseLM | None) -> dict[str, Any]:
        """Return the DSPy settings a trial runs under: its LM, the adapter, the span recorder's hooks."""
        overrides: dict[str, Any] = {}
        if lm is not None:
            overrides["lm"] = lm
        if self.adapter is not None:
            overrides["adapter"] = self.adapter
        elif dspy.settings.adapter is None:
            # What DSPy would use (a fresh ChatAdapter() per call), with each signature's system message kept.
            overrides["adapter"] = default_adapter()
        if self.recorder is not None:
            # DSPy's public callback surface, per trial, after any callback of the user's (docs/trace.md).
            overrides["callbacks"] = [*(dspy.settings.callbacks or []), self.recorder]
        return overrides

    def _predict(self, module: dspy.Module, task: TrialTask, overrides: dict[str, Any], attempts: _Attempts) -> Any:
        """Run the program once (one attempt), metered, in its attempt's span when traced."""
        with self._attempt_scope(attempts.number, attempts.cause) as attempt_span:
            try:
                if self.predictor_trace is None:
                    with metering(attempts.meter, overrides=overrides):
                        return module(**task.example.inputs())
                # DSPy appends each predictor call to the context's trace: a fresh list holds this attempt's only.
                with metering(attempts.meter, overrides={**overrides, "trace": []}):
                    prediction = module(**task.example.inputs())
                    self.predictor_trace(task, module, list(dspy.settings.trace or ()))
                    return prediction
            except Exception as error:
                if attempt_span is not None:
                    attempt_span.fail(f"{type(error).__name__}: {error}")
                raise

    def _score_prediction(
        self, task: TrialTask, prediction: Any, attempts: _Attempts, overrides: dict[str, Any]
    ) -> tuple[float, str | None]:
        """Score ``prediction``; return the score and the metric's feedback text, if it gave one.

        The metric runs under the trial's DSPy settings (its LM, adapter and span hooks), as the
        program did: a metric that calls an LM (a judge) uses the run's LM unless it brings its own,
        its calls are spans under the metric's span, and they are metered into the trial's usage
        and, apart, into the metric's (``metric_lm_calls``, ``metric_cost``).
        """
        attempts.metric_mark = attempts.meter.mark()
        with metering(attempts.meter, overrides=overrides):
            if self.recorder is None:
                value = self.metric(task.example, prediction)
                return metric_score(value), metric_feedback(value)
            with metric_span(self._metric_name) as handle:
                handle.set(expected=_expected(task.example), got=_got(prediction))
                value = self.metric(task.example, prediction)
                score, feedback = metric_score(value), metric_feedback(value)
                handle.set(score=score)
                if feedback is not None:
                    handle.set(feedback=feedback)
                calls, cost = attempts.metric_usage()
                if calls:
                    handle.set(metric_lm_calls=calls, metric_cost=cost)
                return score, feedback

    def _retry_or_fail(
        self, task: TrialTask, token: CancelToken, error: Exception, stage: str, attempts: _Attempts
    ) -> TrialResult | None:
        """Return the record of the trial failing with ``error`` now, or None after waiting to retry it.

        Only a transient failure is retried (a rate limit, a timeout), while retries are left and
        the wait ends before the trial's deadline: the program's by running it again, the metric's
        (a judge's LM) by scoring the same prediction again, each stage with the policy's retries.
        A cancelled token ends the trial at once.
        """
        if isinstance(error, TrialCancelledError) or (token.cancelled and stage == "program"):
            return self._failed(task, error, _cancel_stage(token), attempts)
        made = attempts.number if stage == "program" else attempts.metric_attempts
        if stage in ("program", "metric") and is_transient(error) and made <= self.retry.retries:
            key = task.trial_id if stage == "program" else f"{task.trial_id}:{stage}"
            wait = self.retry.delay(made, key, error)
            remaining = token.remaining()
            if remaining is None or wait < remaining:
                attempts.note_retry(error, wait, stage=stage)
                if token.wait(wait):
                    if stage == "program":
                        attempts.number += 1
                    else:
                        attempts.metric_attempts += 1
                    return None
                cancelled = TrialCancelledError(f"cancelled while waiting to retry: {token.reason}")
                return self._failed(task, cancelled, _cancel_stage(token), attempts)
        return self._failed(task, error, stage, attempts)

    def _failed(self, task: TrialTask, error: BaseException, stage: str, attempts: _Attempts) -> TrialResult:
        """Return the record of this trial failing now: its usage so far and every attempt it made."""
        return self.failure(
            task,
            error,
            stage=stage,
            started=attempts.started,
            clock=attempts.clock,
            usage=_usage(attempts.meter),
            attempt=attempts.number,
            retried=attempts.retried,
            metric_usage=attempts.metric_usage(),
        )

    @staticmethod
    def _scored(task: TrialTask, prediction: Any, scored: tuple[float, str | None], attempts: _Attempts) -> TrialResult:
        """Return the record of the trial that scored ``scored`` (its score and the metric's feedback)."""
        input_tokens, output_tokens, cost, calls, unpriced = _usage(attempts.meter)
        metric_calls, metric_cost = attempts.metric_usage()
        return trial_record(
            index=task.index,
            example_id=task.example_id,
            repeat=task.repeat,
            status="ok",
            score=scored[0],
            prediction=json.dumps(to_json_value(prediction), ensure_ascii=False),
            latency=time.perf_counter() - attempts.clock,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            lm_calls=calls,
            attempts=attempts.number,
            started_at=attempts.started,
            finished_at=time.time(),
            retries=json.dumps(attempts.retried) if attempts.retried else None,
            unpriced_models=",".join(unpriced) or None,
            feedback=scored[1],
            metric_lm_calls=metric_calls,
            metric_cost=metric_cost,
        )

    @staticmethod
    def failure(
        task: TrialTask,
        error: BaseException,
        *,
        stage: str,
        started: float,
        clock: float,
        usage: tuple[int, int, float | None, int, tuple[str, ...]] = (0, 0, 0.0, 0, ()),
        attempt: int,
        retried: Sequence[dict[str, Any]] = (),
        metric_usage: tuple[int, float | None] = (0, 0.0),
    ) -> TrialResult:
        """Return the record of a trial that raised ``error`` at ``stage`` (secrets in its text masked).

        ``metric_usage`` is the metric's part of ``usage`` (LM calls, cost): a judge that failed may
        have spent.
        """
        input_tokens, output_tokens, cost, calls, unpriced = usage
        message, trace = _error_text(error)
        return trial_record(
            index=task.index,
            example_id=task.example_id,
            repeat=task.repeat,
            status="error",
            score=None,
            prediction=None,
            error_type=type(error).__name__,
            error_message=message,
            error_stage=stage,
            traceback=trace,
            latency=time.perf_counter() - clock,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost=cost,
            lm_calls=calls,
            attempts=attempt,
            started_at=started,
            finished_at=time.time(),
            retries=json.dumps(list(retried)) if retried else None,
            unpriced_models=",".join(unpriced) or None,
            metric_lm_calls=metric_usage[0],
            metric_cost=metric_usage[1],
        )

    def abandon(self, task: TrialTask, token: CancelToken, *, started: float, reason: str) -> TrialResult:
        """Record a trial its run gave up on (timeout or stop), handing over the spans captured so far.

        The token is cancelled, so the trial's thread makes no further LM request; whatever it
        returns later is not recorded, and its spans are not sent again.
        """
        token.cancel(reason)
        with self._open_lock:
            collector = self._open.pop(id(token), None)
        if collector is not None and self.span_sink is not None:
            self.span_sink(task.trial_id, _partial_spans(collector, reason))
        return stopped_result(
            task,
            timed_out=reason.startswith("timeout"),
            message=f"trial {reason}; it was stopped before its next LM call",
            started=started,
            finished=time.time(),
        )


def stopped_result(task: TrialTask, *, timed_out: bool, message: str, started: float, finished: float) -> TrialResult:
    """Return the record of a trial its run stopped waiting for (timed out, or cancelled), without its outcome."""
    return trial_record(
        index=task.index,
        example_id=task.example_id,
        repeat=task.repeat,
        status="error",
        score=None,
        prediction=None,
        error_type=TrialTimeoutError.__name__ if timed_out else TrialCancelledError.__name__,
        error_message=message,
        error_stage="timeout" if timed_out else "cancelled",
        latency=finished - started,
        started_at=started,
        finished_at=finished,
    )


def _partial_spans(collector: Any, reason: str) -> tuple[Any, ...]:
    status = "timeout" if reason.startswith("timeout") else "cancelled"
    snapshot = getattr(collector, "snapshot", None)
    if callable(snapshot):
        return tuple(snapshot(status=status, reason=reason))
    return tuple(collector.spans)


def _cancel_stage(token: CancelToken) -> str:
    return "timeout" if (token.reason or "").startswith("timeout") else "cancelled"


def _expected(example: dspy.Example) -> Any:
    return to_json_value(dict(example.labels()))


def _got(prediction: Any) -> Any:
    return to_json_value(prediction)


class _NoScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SCOPE = _NoScope()

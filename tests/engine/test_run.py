"""The run primitive: events, policy, live statistics, retries, cancellation and budgets."""

import json
import math
import threading
import time
import warnings

import dspy
import numpy as np
import pytest
from scipy import stats as scipy_stats

import dspex_lab as dx
from dspex_lab.engine import (
    Budget,
    BudgetTracker,
    CancelToken,
    LiveStatistics,
    RetryPolicy,
    RunFinished,
    RunPolicy,
    RunStarted,
    SpendingCounter,
    ThreadExecutor,
    TrialFinished,
    TrialRunner,
    TrialTask,
    current_token,
    guard_installed,
    install_lm_guard,
    retry_after,
    run_trials,
)
from dspex_lab.errors import DspexLabWarning, ExecutionError, TrialCancelledError


def tasks(n):
    return [TrialTask(index=i, example_id=f"e{i}", example=dspy.Example(x=i).with_inputs("x")) for i in range(n)]


class Scored(dspy.Module):
    def forward(self, x):
        return dspy.Prediction(y=x)


def test_events_arrive_in_order_on_the_calling_thread():
    seen = []
    caller = threading.get_ident()
    runner = TrialRunner(Scored(), lambda example, prediction: prediction.y % 2, lm=None, retry=RetryPolicy(retries=0))
    report = run_trials(
        tasks(20),
        runner,
        executor=ThreadExecutor(4),
        policy=RunPolicy(),
        sinks=[lambda event: seen.append((type(event), threading.get_ident()))],
        run_id="r1",
        name="demo",
    )
    kinds = [kind for kind, _ in seen]
    assert kinds[0] is RunStarted and kinds[-1] is RunFinished
    assert kinds.count(TrialFinished) == 20 == len(report.results)
    assert {thread for _, thread in seen} == {caller}
    assert report.status == "finished" and report.n_errors == 0


def test_live_statistics_match_numpy_and_count_errors_apart():
    scores = np.random.default_rng(3).normal(0.6, 0.2, 200)

    def metric(example, prediction):
        if example.x % 50 == 7:
            raise ValueError("broken metric")
        return float(scores[example.x])

    live = LiveStatistics()
    runner = TrialRunner(Scored(), metric, lm=None, retry=RetryPolicy(retries=0))
    run_trials(tasks(200), runner, executor=ThreadExecutor(4), policy=RunPolicy(), sinks=[live])
    kept = np.array([scores[i] for i in range(200) if i % 50 != 7])
    assert live.n == len(kept) and live.errors == {"ValueError": 4}
    assert live.mean == pytest.approx(kept.mean())
    assert live.stderr == pytest.approx(scipy_stats.sem(kept))
    # The rule of every view (dx.stats.score_interval): Student t for scores that are not all 0/1.
    low, high = live.ci
    expected = scipy_stats.t.interval(0.95, len(kept) - 1, loc=kept.mean(), scale=scipy_stats.sem(kept))
    assert (low, high) == (pytest.approx(expected[0]), pytest.approx(expected[1]))
    assert live.metric_errors == 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"max_errors": -1}, "max_errors"),
        ({"max_errors": 2.5}, "max_errors"),
        ({"budget": {"usd": 1}}, "budget"),
    ],
)
def test_policy_refuses_bad_values(options, message):
    with pytest.raises(ExecutionError, match=message):
        RunPolicy(**options)


def test_retry_policy_validation():
    with pytest.raises(ValueError, match="retries"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="max_retry_after"):
        RetryPolicy(max_retry_after=float("nan"))


class RateLimitedError(Exception):
    """Named like a provider's rate-limit error, with a Retry-After hint."""

    def __init__(self, message, retry_after):
        super().__init__(message)
        self.retry_after = retry_after


RateLimitError = type("RateLimitError", (RateLimitedError,), {})


def test_a_run_retries_under_its_policy_and_a_runner_called_alone_under_its_own():
    class LimitedTwice(dspy.Module):
        def __init__(self):
            super().__init__()
            self.calls = {}

        def forward(self, x):
            self.calls[x] = self.calls.get(x, 0) + 1
            if self.calls[x] <= 2:
                raise RateLimitError("429 slow down", retry_after=0.01)
            return dspy.Prediction(y=x)

    runner = TrialRunner(LimitedTwice(), lambda example, prediction: 1.0, lm=None, retry=RetryPolicy(retries=0))
    policy = RunPolicy(retry=RetryPolicy(retries=2, backoff=0.001))
    report = run_trials(tasks(3), runner, executor=ThreadExecutor(2), policy=policy)
    assert [(result.status, result.attempts) for result in report.results] == [("ok", 3)] * 3
    assert runner.retry == RetryPolicy(retries=0) and runner.with_retry(RetryPolicy(retries=0)) is runner

    alone = runner(TrialTask(index=9, example_id="e9", example=dspy.Example(x=9).with_inputs("x")))
    assert (alone.status, alone.error_type, alone.attempts) == ("error", "RateLimitError", 1)
    fresh = [TrialTask(index=i, example_id=f"f{i}", example=dspy.Example(x=100 + i).with_inputs("x")) for i in range(2)]
    made_with_two = runner.with_retry(RetryPolicy(retries=2))
    with pytest.warns(DspexLabWarning, match="every trial"):
        strict = run_trials(
            fresh, made_with_two, executor=ThreadExecutor(1), policy=RunPolicy(retry=RetryPolicy(retries=0))
        )
    assert [result.attempts for result in strict.results] == [1, 1]


def test_retry_after_is_honoured_with_a_cap_and_every_attempt_is_recorded():
    calls = []

    class Flaky(dspy.Module):
        def forward(self, x):
            calls.append(time.monotonic())
            if len(calls) < 3:
                raise RateLimitError("429 slow down", retry_after=0.2 if len(calls) == 1 else 999)
            return dspy.Prediction(y=x)

    policy = RetryPolicy(retries=3, max_retry_after=0.3)
    runner = TrialRunner(Flaky(), lambda example, prediction: 1.0, lm=None, retry=policy)
    result = runner(tasks(1)[0])
    assert result.ok and result.attempts == 3
    retries = json.loads(result.retries)
    assert [entry["error_type"] for entry in retries] == ["RateLimitError", "RateLimitError"]
    assert [entry["wait"] for entry in retries] == [0.2, 0.3]  # the hint, then the cap instead of 999 s
    assert calls[1] - calls[0] >= 0.19 and calls[2] - calls[1] >= 0.29


def test_retry_after_reads_hints_from_causes_and_headers():
    class Response:
        def __init__(self):
            self.headers = {"retry-after": "1.5"}

    error = RuntimeError("wrapped")
    error.__cause__ = type("HTTPError", (Exception,), {"response": Response()})("429")
    assert retry_after(error) == 1.5
    assert retry_after(ValueError("no hint")) is None


def test_no_retry_when_the_wait_would_pass_the_deadline():
    class AlwaysLimited(dspy.Module):
        def forward(self, x):
            raise RateLimitError("429", retry_after=600)

    retry = RetryPolicy(retries=3, max_retry_after=600)
    runner = TrialRunner(AlwaysLimited(), lambda example, prediction: 1.0, lm=None, retry=retry)
    started = time.monotonic()
    result = runner(tasks(1)[0], token=CancelToken(timeout=300))
    # Waiting out the hint, or sleeping until the 300 s deadline, would pass this hang guard many times over.
    assert time.monotonic() - started < 60
    assert result.status == "error" and result.error_type == "RateLimitError" and result.attempts == 1


def test_the_guard_is_installed_on_dspy_base_lm():
    # If this fails, DSPy moved BaseLM.__call__/acall: cancellation then only abandons threads.
    assert install_lm_guard(), "dspy.BaseLM no longer has __call__ and acall; update dspex_lab.engine._cancel"
    assert guard_installed()
    assert hasattr(dspy.BaseLM.__call__, "__dspex_lm_guard__")
    assert hasattr(dspy.BaseLM.acall, "__dspex_lm_guard__")


def test_a_cancelled_token_stops_the_next_lm_call():
    install_lm_guard()
    lm = dx.lab_lm("lab/small")
    token = CancelToken()
    handle = token.bind()
    try:
        assert current_token() is token
        lm("hello")  # allowed
        token.cancel("run stopped")
        with pytest.raises(TrialCancelledError, match="run stopped"):
            lm("hello again")
    finally:
        token.unbind(handle)
    lm("outside a trial the guard does nothing")


class Counter(dspy.utils.callback.BaseCallback):
    def __init__(self):
        self.starts = []

    def on_lm_start(self, call_id, instance, inputs):
        self.starts.append(time.monotonic())


def test_a_timed_out_trial_makes_no_further_lm_request():
    class Chatty(dspy.Module):
        def __init__(self):
            super().__init__()
            self.predict = dspy.Predict("question -> answer")

        def forward(self, x):
            for turn in range(10):
                self.predict(question=f"turn {turn} of {x}: what is 2 + 2?")
            return dspy.Prediction(y=x)

    counter = Counter()
    lm = dx.lab_lm("lab/small", latency=0.15)
    runner = TrialRunner(Chatty(), lambda example, prediction: 1.0, lm=lm, retry=RetryPolicy(retries=0))
    results = []
    with dspy.context(callbacks=[counter]), pytest.warns(DspexLabWarning, match="every trial"):
        run_trials(
            tasks(2),
            runner,
            executor=ThreadExecutor(2),
            policy=RunPolicy(timeout=0.4),
            sinks=[lambda event: results.append(event.result) if isinstance(event, TrialFinished) else None],
        )
    finished_at = time.monotonic()
    calls_at_return = len(counter.starts)
    time.sleep(1.0)
    assert all(result.error_stage == "timeout" for result in results) and len(results) == 2
    assert calls_at_return <= 2 * 4  # about 0.4 s / 0.15 s calls per trial, far from 10
    assert len(counter.starts) == calls_at_return, "an abandoned trial went on calling the LM"
    assert all(start <= finished_at for start in counter.starts)


def test_error_budget_stops_the_run():
    class Failing(dspy.Module):
        def forward(self, x):
            raise ValueError("always")

    runner = TrialRunner(Failing(), lambda example, prediction: 1.0, lm=None, retry=RetryPolicy(retries=0))
    report = run_trials(tasks(100), runner, executor=ThreadExecutor(2), policy=RunPolicy(max_errors=5))
    assert report.status == "stopped" and "error budget" in report.detail
    assert 6 <= report.n_errors < 100


def test_every_trial_failing_warns_with_counts_and_the_first_message():
    class Failing(dspy.Module):
        def forward(self, x):
            raise KeyError(f"missing field for {x}")

    runner = TrialRunner(Failing(), lambda example, prediction: 1.0, lm=None, retry=RetryPolicy(retries=0))
    with pytest.warns(DspexLabWarning, match=r"every trial of demo failed \(5 KeyError\).*missing field"):
        run_trials(tasks(5), runner, executor=ThreadExecutor(2), policy=RunPolicy(), name="demo")


def test_dollar_budget_on_an_unpriced_lm_is_refused_before_any_call():
    counter = Counter()
    runner = TrialRunner(Scored(), lambda example, prediction: 1.0, lm=dx.lab_lm("lab/small"), retry=RetryPolicy())
    with dspy.context(callbacks=[counter]), pytest.raises(ExecutionError, match="cannot be enforced"):
        run_trials(
            tasks(3),
            runner,
            executor=ThreadExecutor(2),
            policy=RunPolicy(budget=Budget(usd=0.01)),
            is_priced=lambda lm: False,
        )
    assert counter.starts == []


class _OutsideCounter:
    """A counter shared by several runs (an optimization's): stops once ``limit`` LM calls are counted in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.calls = 0
        self.stages: list[str | None] = []
        self.exceeded: str | None = None

    def add(self, result) -> bool:
        self.stages.append(result.error_stage)
        self.calls += result.lm_calls
        if self.calls >= self.limit:
            self.exceeded = f"outside limit {self.limit} reached"
        return self.exceeded is not None

    def to_summary(self) -> dict:
        return {"calls": self.calls}


class _CountingRuns(ThreadExecutor):
    """A thread executor that counts the phases a run hands it (a budget's pilot is a phase of its own)."""

    phases = 0

    def run(self, tasks, runner, **options):
        self.phases += 1
        return super().run(tasks, runner, **options)


def test_a_run_counts_into_an_outside_counter_without_a_pilot_and_stops_by_it():
    assert isinstance(_OutsideCounter(1), SpendingCounter) and isinstance(
        BudgetTracker(Budget(lm_calls=1)), SpendingCounter
    )
    assert not isinstance(Budget(lm_calls=1), SpendingCounter)
    lm = dx.lab_lm("lab/small")
    runner = TrialRunner(dspy.Predict("x -> y"), lambda example, prediction: 1.0, lm=lm, retry=RetryPolicy())
    counter = _OutsideCounter(limit=25)
    executor = _CountingRuns(1)
    first = run_trials(tasks(15), runner, executor=executor, policy=RunPolicy(budget=counter))
    assert first.status == "finished" and counter.calls == 15 and executor.phases == 1  # no pilot phase
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 80% warning: the counter decides what to say
        second = run_trials(tasks(15), runner, executor=executor, policy=RunPolicy(budget=counter))
    # The second run stops at the counter's total, not at its own 15 trials' share.
    assert second.status == "stopped" and second.detail == "outside limit 25 reached"
    assert len(second.results) == 10 and counter.calls == 25 and second.spending == {"calls": 25}
    tracked = _CountingRuns(1)
    run_trials(tasks(15), runner, executor=tracked, policy=RunPolicy(budget=Budget(lm_calls=1000, pilot=5)))
    assert tracked.phases == 2  # the engine's own tracker runs its pilot first


def test_client_retries_are_turned_off_for_the_run():
    lm = dspy.LM("openai/gpt-4o-mini", api_key="sk-test", num_retries=5)
    runner = TrialRunner(Scored(), lambda example, prediction: 1.0, lm=lm, retry=RetryPolicy(retries=2))
    assert runner.lm.num_retries == 0 and lm.num_retries == 5


def test_cancel_token_wait_and_deadline():
    started = time.monotonic()  # before the token, so its whole timeout lies in what is measured
    token = CancelToken(timeout=1.0)
    assert not token.cancelled and 0 < token.remaining() <= 1.0
    assert token.wait(300) is False  # the deadline comes first
    assert 0.95 < time.monotonic() - started < 60.0  # the 1 s deadline, not the 300 s wait; 60 s is a hang guard
    assert token.cancelled and token.reason.startswith("timeout")
    assert math.isclose(token.remaining(), 0.0)

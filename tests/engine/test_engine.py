import contextvars
import threading
import time

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.engine import RetryPolicy, RunStatus, ThreadExecutor, TrialRunner, TrialTask, is_transient
from dspex_lab.errors import ExecutionError, TrialTimeoutError


def tasks(n: int) -> list[TrialTask]:
    return [TrialTask(index=i, example_id=f"e{i}", example=dspy.Example(x=i).with_inputs("x")) for i in range(n)]


class EchoModule(dspy.Module):
    def __init__(
        self, sleep: float = 0.0, fail_on: frozenset[int] = frozenset(), hang_on: frozenset[int] = frozenset()
    ):
        super().__init__()
        self.sleep = sleep
        self.fail_on = fail_on
        self.hang_on = hang_on
        self.calls = 0
        self.lock = threading.Lock()
        self.active = 0
        self.peak = 0
        self.hanging = 0
        self.release = threading.Event()  # hung calls wait for it (60 s at most, a hang guard)

    def forward(self, x):
        with self.lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            if x in self.hang_on:
                self._hang()
            if x in self.fail_on:
                raise ValueError(f"bad input {x}")
            time.sleep(self.sleep)
            return dspy.Prediction(y=x)
        finally:
            with self.lock:
                self.active -= 1

    def _hang(self):
        with self.lock:
            self.hanging += 1
        self.release.wait(60)
        with self.lock:
            self.hanging -= 1


class GatedModule(EchoModule):
    """Holds every call until `width` calls run at once, so peak concurrency shows parallelism.

    A shared 10 s deadline is only a hang guard: a serial executor passes it once and then
    runs the rest one at a time, so its peak stays 1 and the test fails instead of hanging.
    """

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.all_busy = threading.Event()
        self.deadline = time.monotonic() + 10

    def forward(self, x):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.active >= self.width:
                self.all_busy.set()
        try:
            self.all_busy.wait(max(0.0, self.deadline - time.monotonic()))
            return dspy.Prediction(y=x)
        finally:
            with self.lock:
                self.active -= 1


def identity_metric(example, prediction):
    return prediction.y == example.x


def run(executor, module, n, *, timeout=None, retries=0, metric=identity_metric, stop_after=None):
    results = []

    def on_result(result):
        results.append(result)
        return stop_after is not None and len(results) >= stop_after

    runner = TrialRunner(module, metric, lm=None, retry=RetryPolicy(retries=retries, backoff=0.001))
    status = executor.run(tasks(n), runner, on_result=on_result, timeout=timeout)
    return status, results


def test_every_task_finishes_once_and_in_parallel():
    module = GatedModule(width=16)
    status, results = run(ThreadExecutor(16), module, 64)
    assert status == RunStatus.FINISHED
    assert sorted(result.index for result in results) == list(range(64))
    assert all(result.ok and result.score == 1.0 for result in results)
    assert module.peak == 16  # all sixteen threads ran a trial at the same time


def test_program_and_metric_failures_are_data():
    def picky_metric(example, prediction):
        if example.x == 3:
            raise KeyError("metric broke")
        return 1.0

    status, results = run(ThreadExecutor(4), EchoModule(fail_on=frozenset({1, 2})), 6, metric=picky_metric)
    by_index = {result.index: result for result in results}
    assert status == RunStatus.FINISHED
    assert by_index[1].status == "error" and by_index[1].error_type == "ValueError"
    assert by_index[1].error_stage == "program" and "bad input 1" in by_index[1].error_message
    assert "Traceback" in by_index[1].traceback
    assert by_index[3].error_stage == "metric" and by_index[3].error_type == "KeyError"
    assert by_index[1].score is None and by_index[0].score == 1.0


def test_metric_returning_garbage_is_an_error():
    _status, results = run(ThreadExecutor(2), EchoModule(), 2, metric=lambda example, prediction: "yes")
    assert {result.error_type for result in results} == {"InvalidScoreError"}
    assert "must return a number or bool" in results[0].error_message


def test_timeout_abandons_hung_trials_and_keeps_capacity():
    module = EchoModule(hang_on=frozenset({0, 1}))
    try:
        _status, results = run(ThreadExecutor(2), module, 10, timeout=2.0, retries=0)
        assert module.hanging == 2  # the run returned while both hung calls still hang: it did not wait for them
    finally:
        module.release.set()
    by_index = {result.index: result for result in results}
    assert len(results) == 10
    assert by_index[0].error_type == TrialTimeoutError.__name__ and by_index[0].error_stage == "timeout"
    assert all(by_index[i].ok for i in range(2, 10))


def test_a_timeout_covers_the_whole_trial_and_is_not_retried_in_a_new_thread():
    module = EchoModule(hang_on=frozenset({0}))
    before = {thread.ident for thread in threading.enumerate()}
    try:
        _status, results = run(ThreadExecutor(2), module, 3, timeout=0.5, retries=2)
        time.sleep(0.3)  # idle workers exit once the run hands them their stop marker
        failed = [result for result in results if not result.ok]
        assert len(results) == 3 and len(failed) == 1
        assert failed[0].attempts == 1 and failed[0].error_stage == "timeout"
        assert module.calls == 3  # the hung example ran once, not once per retry
        left = [t for t in threading.enumerate() if t.ident not in before and t.name == "dspex-trial"]
        assert len(left) <= 1  # at most the one stuck thread is left
    finally:
        module.release.set()


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_scores_are_typed_errors(value):
    _status, results = run(ThreadExecutor(2), EchoModule(), 2, metric=lambda example, prediction: value)
    assert {result.error_type for result in results} == {"InvalidScoreError"}
    assert all(result.score is None and result.error_stage == "metric" for result in results)


def test_stop_request_ends_the_run():
    status, results = run(ThreadExecutor(2), EchoModule(sleep=0.01), 50, stop_after=5)
    assert status == RunStatus.STOPPED
    assert 5 <= len(results) < 50


def test_context_variables_reach_workers():
    marker: contextvars.ContextVar[str] = contextvars.ContextVar("marker", default="unset")

    class Reader(dspy.Module):
        def forward(self, x):
            return dspy.Prediction(y=marker.get())

    marker.set("from-caller")
    _status, results = run(
        ThreadExecutor(4), Reader(), 8, metric=lambda example, prediction: prediction.y == "from-caller"
    )
    assert all(result.score == 1.0 for result in results)


def test_transient_classification():
    assert is_transient(TrialTimeoutError("late"))
    assert is_transient(dx.lm.LabRateLimitError("slow down")) if hasattr(dx, "lm") else True
    assert not is_transient(ValueError("bad"))


def test_executor_validation():
    with pytest.raises(ExecutionError):
        ThreadExecutor(0)
    with pytest.raises(ExecutionError, match="unknown executor"):
        dx.Context(executor="slurm", journal=False)
    pytest.importorskip("distributed")
    from dspex_lab.engine import DaskExecutor

    started = time.monotonic()
    with pytest.raises(ExecutionError, match="Dask"):  # no scheduler there: one error, after the connect timeout
        DaskExecutor("dask://127.0.0.1:9", connect_timeout=1.0)
    assert time.monotonic() - started < 60.0  # a hang guard only: the error came, the connect was not retried forever

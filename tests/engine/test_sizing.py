"""Executors sized for the work: the sizing rule, the in-flight tuner, and the process pool applying them."""

from __future__ import annotations

import math
import os

import pytest

import dspex_lab as dx
from dspex_lab.engine import InFlightTuner, ProcessExecutor, Sizing, choose_sizing, make_executor
from dspex_lab.engine import _sizing as sizing_module
from dspex_lab.errors import ExecutionError

PROGRAM = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="arith")


@pytest.mark.parametrize(
    ("share", "cores", "trials", "expected"),
    [
        # ceil(2 / 0.025) = 80 per process wanted, 64 / 2 = 32 allowed: the cap (the bench's 20 ms LM).
        (0.025, 2, 64, Sizing(2, 32, 0.025)),
        # ceil(2 / 0.005) = 400 (200 ms LM): still the cap.
        (0.005, 2, 64, Sizing(2, 32, 0.005)),
        # A heavy metric, half of a trial's wall on the CPU: ceil(2 / 0.5) = 4.
        (0.5, 2, 64, Sizing(2, 4, 0.5)),
        # A trial that only computes: 2 in flight per process (the headroom), not 1.
        (1.0, 4, 64, Sizing(4, 2, 1.0)),
        # Above one core (a metric releasing the GIL in C): counted as one core.
        (1.7, 2, 64, Sizing(2, 2, 1.7)),
        # 0.3: 2 / 0.3 = 6.67 -> 7.
        (0.3, 8, 64, Sizing(8, 7, 0.3)),
        # Fewer trials at once than cores: one process each, one trial each.
        (None, 8, 3, Sizing(3, 1, None)),
        # Not measured yet: the researcher's trials at once, split over one process per core (ceil(10 / 4) = 3).
        (None, 4, 10, Sizing(4, 3, None)),
        # Nothing measured on the CPU: any number fits, so the cap.
        (0.0, 2, 16, Sizing(2, 8, 0.0)),
    ],
)
def test_the_sizing_rule_matches_hand_computed_cases(share, cores, trials, expected) -> None:
    assert choose_sizing(share, cores=cores, trials_at_once=trials) == expected


def test_the_sizing_rule_refuses_a_count_that_is_not_positive() -> None:
    with pytest.raises(ExecutionError, match="trials_at_once must be a positive integer, got 0"):
        choose_sizing(0.1, cores=2, trials_at_once=0)
    with pytest.raises(ExecutionError, match="cores must be a positive integer"):
        choose_sizing(0.1, cores=True, trials_at_once=4)


def repairman_utilization(in_flight: int, share: float) -> float:
    """The CPU's busy fraction with ``in_flight`` trials, each ``share`` of its time on the CPU alone.

    The machine-repairman model (a closed queue: one server, exponential service and think times),
    closed form: P(idle) = 1 / sum_{n=0..k} k! / (k-n)! * r^n, r = service / think = s / (1 - s).
    """
    ratio = share / (1 - share)
    total, term = 1.0, 1.0
    for busy in range(1, in_flight + 1):
        term *= (in_flight - busy + 1) * ratio
        total += term
    return 1 - 1 / total


def test_the_headroom_keeps_a_core_busy_where_one_over_the_share_does_not() -> None:
    # The module docstring's claim: 2 / s trials keep a core >= 98% busy for any share, 1 / s as little as 79%.
    shares = [step / 1000 for step in range(1, 1000)]
    with_headroom = min(repairman_utilization(sizing_module.needed_in_flight(share), share) for share in shares)
    bare = min(repairman_utilization(math.ceil(1 / share - 1e-9), share) for share in shares)
    assert 0.98 <= with_headroom < 0.99
    assert 0.78 < bare < 0.80
    # The model itself, against a case computed by hand: k = 2, s = 0.5 (r = 1): P(idle) = 1 / (1 + 2 + 2).
    assert repairman_utilization(2, 0.5) == pytest.approx(0.8)


def test_the_tuner_starts_at_the_cap_and_keeps_it_for_lm_bound_trials() -> None:
    tuner = InFlightTuner(32)
    assert tuner.limit == 32 and tuner.cpu_share is None
    # 32 trials in flight keep the process 0.8 of a core busy: not saturated, s = 0.8 / 32 = 0.025.
    assert tuner.observe(0.8, 32) == 32
    assert tuner.cpu_share == pytest.approx(0.025)


def test_the_tuner_lowers_a_saturated_process_until_it_is_not_then_settles_on_the_rule() -> None:
    tuner = InFlightTuner(32)
    # A trial that is half CPU: 32 in flight saturate the core. Each saturated window steps down by STEP_DOWN.
    limits = []
    for _ in range(20):
        in_flight = tuner.limit
        utilization = min(1.0, 0.5 * in_flight)  # saturated down to 1 in flight (0.5 < SATURATED)
        limits.append(tuner.observe(utilization, in_flight))
        if tuner.cpu_share is not None:
            break
    assert limits[:6] == [25, 20, 16, 12, 9, 7]  # floor(32 * 0.8) = 25, floor(25 * 0.8) = 20, ...
    # Down to 1 in flight (0.5 of a core, not saturated): s = 0.5 measured, and the rule's ceil(2 / 0.5) = 4.
    assert tuner.cpu_share == pytest.approx(0.5) and tuner.limit == 4
    # 4 in flight saturate the core, but the share is known: the limit holds...
    for _ in range(sizing_module.TRUSTED_WINDOWS):
        assert tuner.observe(1.0, 4) == 4
    # ... for TRUSTED_WINDOWS windows, after which it is measured again (the trials may have become heavier).
    assert tuner.observe(1.0, 4) == 3 and tuner.cpu_share is None


def test_the_tuner_raises_the_limit_when_trials_get_lighter() -> None:
    tuner = InFlightTuner(64)
    while tuner.cpu_share is None:  # half-CPU trials: stepped down until 1 in flight leaves the core half idle
        tuner.observe(min(1.0, 0.5 * tuner.limit), tuner.limit)
    assert tuner.limit == 4 and tuner.cpu_share == pytest.approx(0.5)
    # A window with the queue run dry (1 in flight, unsaturated) never lowers the limit.
    assert tuner.observe(0.5, 1) == 4
    tuner.observe(0.4, 4)  # s = 0.1 now (a slower LM): ceil(2 / 0.1) = 20
    assert tuner.limit == 20 and tuner.cpu_share == pytest.approx(0.1)
    tuner.observe(0.01, 20)  # s = 0.0005: the cap
    assert tuner.limit == 64


def test_the_tuner_ignores_idle_windows_and_never_goes_below_one() -> None:
    tuner = InFlightTuner(2)
    assert tuner.observe(0.02, 0.3) == 2 and tuner.windows == 0  # fewer than one trial in flight: no evidence
    assert tuner.observe(float("nan"), 3) == 2 and tuner.windows == 0
    for _ in range(5):
        tuner.observe(1.0, tuner.limit)
    assert tuner.limit == 1


def test_make_executor_sizes_a_tuned_pool_by_the_rule() -> None:
    cores = os.cpu_count() or 1
    executor = make_executor("process", threads=64)
    assert isinstance(executor, ProcessExecutor) and executor.pids == []  # nothing started before a run
    expected = choose_sizing(None, cores=cores, trials_at_once=64)
    assert (executor.workers, executor.threads_per_worker) == (expected.processes, expected.in_flight)
    assert executor.tuner is not None and executor.sizing == Sizing(expected.processes, expected.in_flight)
    fixed = ProcessExecutor(2, threads_per_worker=32)
    assert fixed.tuner is None and fixed.in_flight == 32 and "tune" not in repr(fixed)


def overlap(result: dx.EvaluationResult) -> int:
    """The most trials whose [started_at, finished_at] intervals overlap at one instant."""
    frame = result.trials
    edges = sorted([(start, 1) for start in frame["started_at"]] + [(end, -1) for end in frame["finished_at"]])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_a_tuned_pool_runs_no_more_trials_at_once_than_its_limit_and_measures_the_share(monkeypatch) -> None:
    data = dx.datasets.arithmetic(240, seed=5)
    lm = dx.lab_lm("lab/small", latency=0.05)
    with ProcessExecutor(1, threads_per_worker=8, tune=True) as executor:
        tuner = executor.tuner
        assert tuner is not None
        tuner.limit = 2  # as if a heavy trial had been measured, and held there for this run
        monkeypatch.setattr(tuner, "observe", lambda utilization, in_flight: tuner.limit)
        with dx.Context(lm=lm, journal=False, executor=executor):
            limited = dx.evaluate(PROGRAM, data[:12], metric=dx.metrics.exact_match, progress=False)
        # With 8 threads and no limit all 12 would start at once; the worker's gate admits 2.
        assert overlap(limited) == 2 and set(limited.trials["status"]) == {"ok"}
        monkeypatch.undo()
        tuner.limit = 8
        with dx.Context(lm=lm, journal=False, executor=executor):
            full = dx.evaluate(PROGRAM, data, metric=dx.metrics.exact_match, progress=False)
        assert overlap(full) > 2 and len(full.trials) == 240 and full.trials["trial_id"].is_unique
        # 240 trials of 50 ms, 8 at once: 1.5 s or more, so the workers' measurements made a window. A trial on
        # the lab LM spends a few percent of its wall on the CPU: the process is far from saturated, the share
        # is measured and the limit stays at the cap.
        assert tuner.windows >= 1
        assert tuner.cpu_share is not None and 0 < tuner.cpu_share < 0.5
        assert executor.sizing.in_flight == 8


def test_the_tuner_follows_a_new_cap_only_when_it_was_at_the_old_one() -> None:
    tuner = InFlightTuner(8)
    tuner.resize(16)  # a cluster's workers got more threads: "all of them" stays all of them
    assert (tuner.cap, tuner.limit) == (16, 16)
    tuner.limit = 5
    tuner.resize(32)
    assert (tuner.cap, tuner.limit) == (32, 5)
    tuner.resize(4)
    assert (tuner.cap, tuner.limit) == (4, 4)


class SchedulerAnswers:
    """A stand-in for a distributed.Client that answers ``scheduler_info`` with given worker metrics."""

    def __init__(self, workers: dict[str, dict[str, object]]) -> None:
        self.workers = workers
        self.asked_for: list[int] = []

    def scheduler_info(self, n_workers: int = 5) -> dict[str, object]:
        self.asked_for.append(n_workers)
        return {"workers": {address: {"metrics": metrics} for address, metrics in self.workers.items()}}


def test_the_dask_load_is_the_workers_mean_cpu_and_tasks_executing() -> None:
    from dspex_lab.engine._dask import cluster_load

    client = SchedulerAnswers(
        {
            "tcp://a": {"cpu": 90.0, "task_counts": {"executing": 30, "memory": 4}},
            "tcp://b": {"cpu": 50.0, "task_counts": {"executing": 10}},
        }
    )
    assert cluster_load(client) == pytest.approx((0.7, 20.0))
    assert client.asked_for == [-1]  # every worker, not Dask's default first five
    assert cluster_load(SchedulerAnswers({})) is None


@pytest.fixture(scope="module")
def dask_client():
    pytest.importorskip("distributed")
    from local_dask import local_cluster

    yield from local_cluster(2, 4)


def test_a_tuned_dask_run_keeps_no_more_trials_out_than_the_limit_per_worker(dask_client, monkeypatch) -> None:
    from dspex_lab.engine import DaskExecutor

    executor = DaskExecutor(dask_client)
    assert executor.tuner is None and executor.sizing == Sizing(2, 4)  # before a run: every thread
    data = dx.datasets.arithmetic(16, seed=9)
    lm = dx.lab_lm("lab/small", latency=0.05)
    with dx.Context(lm=lm, journal=False, executor=executor):
        dx.evaluate(PROGRAM, data[:4], metric=dx.metrics.exact_match, progress=False)
    tuner = executor.tuner
    assert tuner is not None and tuner.cap == 4  # the workers' threads
    tuner.limit = 1  # as if a trial that only computes had been measured, and held there
    monkeypatch.setattr(tuner, "observe", lambda utilization, in_flight: tuner.limit)
    with dx.Context(lm=lm, journal=False, executor=executor):
        result = dx.evaluate(PROGRAM, data, metric=dx.metrics.exact_match, progress=False)
    # 1 per worker, 2 workers: at most 2 tasks out at once (8 threads would run 8), each running its trials in turn.
    assert overlap(result) <= 2 and len(result.trials) == 16 and set(result.trials["status"]) == {"ok"}
    assert executor.sizing.in_flight == 1
    fixed = DaskExecutor(dask_client, tune=False)
    with dx.Context(lm=lm, journal=False, executor=fixed):
        dx.evaluate(PROGRAM, data[:4], metric=dx.metrics.exact_match, progress=False)
    assert fixed.tuner is None and fixed.sizing == Sizing(2, 4)


def test_short_runs_add_up_to_a_window() -> None:
    # Runs far shorter than a window each (an optimization's mini-batches): their measurements carry over.
    data = dx.datasets.arithmetic(16, seed=6)
    lm = dx.lab_lm("lab/small", latency=0.05)
    with ProcessExecutor(1, threads_per_worker=4, tune=True) as executor:
        tuner = executor.tuner
        assert tuner is not None
        with dx.Context(lm=lm, journal=False, executor=executor):
            for _ in range(8):  # 16 trials of 50 ms, 4 at once: about 0.2 s a run
                dx.evaluate(PROGRAM, data, metric=dx.metrics.exact_match, progress=False)
        assert tuner.windows >= 1 and tuner.cpu_share is not None

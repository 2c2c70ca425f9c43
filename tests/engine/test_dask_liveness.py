"""The Dask executor's liveness check: a run whose worker froze ends with one clear error, a slow one does not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from local_dask import local_cluster

import dspex_lab as dx
from dspex_lab.engine import DaskExecutor
from dspex_lab.engine import _dask as dask_module
from dspex_lab.engine._dask import stall_reason
from dspex_lab.errors import ExecutionError

distributed = pytest.importorskip("distributed")

PROGRAM = dx.Program("dspy.Predict", signature="question -> answer", name="liveness")


@pytest.fixture
def dask_client() -> Iterator[Any]:
    """A cluster of its own per test: the one a test froze is not trusted by the next."""
    yield from local_cluster(2, 2)


def evaluate(executor: Any, data: Any, *, latency: float, journal: Any = False) -> Any:
    with dx.Context(lm=dx.lab_lm("lab/small", latency=latency), journal=journal, executor=executor):
        return dx.evaluate(PROGRAM, data, metric=dx.metrics.exact_match, progress=False)


def test_a_stall_is_a_frozen_worker_or_tasks_the_scheduler_no_longer_runs_and_never_a_slow_live_worker() -> None:
    assert stall_reason(None, 3, limit=60) == "the scheduler did not answer within 60 s"
    frozen = stall_reason(({"processing": 3}, {"tcp://a:1": 75.0, "tcp://b:2": 0.4}), 3, limit=60)
    assert frozen == "worker tcp://a:1 runs this run's tasks but sent the scheduler no heartbeat for 75 s (frozen)"
    both = stall_reason(({"processing": 3}, {"tcp://a:1": 61.0, "tcp://b:2": 90.0}), 3, limit=60)
    assert (
        both
        == "workers tcp://a:1, tcp://b:2 run this run's tasks but sent the scheduler no heartbeat for 90 s (frozen)"
    )
    lost = stall_reason(({"memory": 19}, {}), 19, limit=60)
    assert lost is not None and "none of its 19 outstanding tasks (19 memory)" in lost
    assert stall_reason(({"processing": 2, "memory": 1}, {"tcp://a:1": 0.9}), 3, limit=60) is None
    assert stall_reason(({"no-worker": 4}, {}), 4, limit=60) is None  # waiting for a worker to join


@dataclass(frozen=True)
class _Future:
    key: str


def _waiting_run(views: list[Any]) -> Any:
    """A Dask run waiting for two chunks since long ago, whose scheduler answers ``views`` in turn."""
    run = object.__new__(dask_module._DaskRun)
    run.executor = SimpleNamespace(_scheduler_view=lambda keys: views.pop(0), stalled_runs=0)
    run.client = SimpleNamespace(scheduler=SimpleNamespace(address="tcp://127.0.0.1:1"))
    run.submitted = {_Future("a"): ([0], 0.0), _Future("b"): ([1], 0.0)}
    run.isolating = {}
    run.answered_at = run.checked_at = time.monotonic() - 10.0
    run.lost_since = None
    return run


def test_results_the_scheduler_holds_are_waited_for_before_they_count_as_lost(monkeypatch) -> None:
    # The CI failure of stop 29: both tasks were in the scheduler's memory, their results on their way
    # to a loaded client, and the first check ended the run.
    monkeypatch.setattr(dask_module, "LIVENESS_SECONDS", 0.4)
    run = _waiting_run([({"memory": 2}, {})] * 4)
    run._check_liveness()  # first seen: on their way, perhaps
    time.sleep(0.12)
    run._check_liveness()  # 0.12 s of the 0.2 s grace
    assert run.executor.stalled_runs == 0
    time.sleep(0.12)
    with pytest.raises(ExecutionError, match=r"none of its 2 outstanding tasks .* never reached this client"):
        run._check_liveness()
    assert run.executor.stalled_runs == 1


def test_a_result_that_came_meanwhile_starts_the_grace_again_and_a_frozen_worker_gets_none(monkeypatch) -> None:
    monkeypatch.setattr(dask_module, "LIVENESS_SECONDS", 0.4)
    run = _waiting_run([({"memory": 2}, {})] * 2)
    run._check_liveness()
    time.sleep(0.5)
    run.answered_at = time.monotonic() - 0.42  # a trial came back after the first sighting (0.5 s ago)
    run._check_liveness()
    assert run.executor.stalled_runs == 0 and run.lost_since is not None
    frozen = _waiting_run([({"processing": 2}, {"tcp://127.0.0.1:2": 3.0})])
    with pytest.raises(ExecutionError, match="no heartbeat"):
        frozen._check_liveness()


def test_a_worker_that_froze_mid_run_ends_the_run_with_one_clear_error(dask_client, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(dask_module, "LIVENESS_SECONDS", 5.0)
    frozen = sorted(dask_client.nthreads())[0]

    # client.run runs a plain function on the worker's event loop: sleeping there, it sends no heartbeat, no result.
    def freeze() -> None:
        time.sleep(1.0)  # once the run has started and sent tasks to both workers
        dask_client.run(time.sleep, 20.0, workers=[frozen])

    freezer = threading.Thread(target=freeze)
    freezer.start()
    executor = DaskExecutor(dask_client)
    data = dx.datasets.arithmetic(64, seed=23)
    started = time.perf_counter()
    with pytest.raises(ExecutionError, match="this run's tasks but sent the scheduler no heartbeat") as raised:
        evaluate(executor, data, latency=0.2, journal=tmp_path / "j.duckdb")
    assert frozen in str(raised.value) and "resume=" in str(raised.value)
    assert time.perf_counter() - started < 25
    assert executor.stalled_runs == 1
    journal = dx.open_journal(tmp_path / "j.duckdb")
    (experiment,) = journal.experiments()["id"]
    recorded = list(journal.trials(experiment, columns=["trial_id"])["trial_id"])
    assert len(recorded) == len(set(recorded)) < 64  # kept for resume=, each once; the frozen worker's are not
    freezer.join(30)  # thawed before the next test


def test_trials_slower_than_the_liveness_limit_on_live_workers_finish(dask_client, monkeypatch) -> None:
    executor = DaskExecutor(dask_client)
    # Workers import DSPy on their first trial, which can keep a fresh worker from heartbeating for seconds.
    evaluate(executor, dx.datasets.arithmetic(8, seed=31), latency=0.0)
    monkeypatch.setattr(dask_module, "LIVENESS_SECONDS", 4.0)
    result = evaluate(executor, dx.datasets.arithmetic(2, seed=29), latency=6.0)
    assert len(result.trials) == 2 and set(result.trials["status"]) == {"ok"}
    assert executor.stalled_runs == 0

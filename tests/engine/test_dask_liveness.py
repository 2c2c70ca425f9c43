"""The Dask executor's liveness check: a run whose worker froze ends with one clear error, a slow one does not."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
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

"""Measure what Dask's per-task cost adds to a run: tasks per run, and CPU per task and per trial.

The Dask executor runs a *chunk* of trials per task (``dspex_lab/engine/_dask.py``), and every
task costs the client, the scheduler (in the driver's process with a ``LocalCluster``) and a
worker some CPU whatever it runs. This benchmark puts numbers on both halves, on a
``LocalCluster`` of 2 workers x 32 threads as in ``bench_executors.py``:

1. **CPU per task**: ``--empty-tasks`` empty chunks (``run_dask_chunk`` with no trials), sent in
   windows of 128 and gathered, as a run does; the driver's CPU (``time.process_time``: client and
   scheduler) and the workers' (``psutil``) per task.
2. **Tasks and CPU per trial of a run**: ``dx.evaluate`` of ``--examples`` examples on the 20 ms
   lab LM (journal on), counting the tasks it sends; the driver's and workers' CPU per trial.

CPU time is the figure to read on a shared machine: wall time mostly measures the wait for a core.

Usage::

    python bench/bench_dask_tasks.py
    python bench/bench_dask_tasks.py --repeats 5 --examples 1280 --empty-tasks 1024
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import prepare_for_measurement

WINDOW = 128


def workers_cpu(client: Any) -> float:
    """Return the CPU seconds (user + system) the cluster's worker processes have used so far."""
    import psutil

    total = 0.0
    for pid in client.run(os.getpid).values():
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def empty_task_cost(client: Any, plan: bytes, tasks: int) -> tuple[float, float]:
    """Return (driver, workers) CPU milliseconds per empty chunk, sent and gathered in windows of 128."""
    from dspex_lab.engine._dask import run_dask_chunk

    workers, driver = workers_cpu(client), time.process_time()
    for _ in range(max(1, tasks // WINDOW)):
        futures = client.map(run_dask_chunk, [plan] * WINDOW, [[]] * WINDOW, [None] * WINDOW, pure=False)
        client.gather(futures)
        for future in futures:
            future.release()
    sent = max(1, tasks // WINDOW) * WINDOW
    return (time.process_time() - driver) / sent * 1e3, (workers_cpu(client) - workers) / sent * 1e3


def run_cost(client: Any, examples: list[Any], journal: Path) -> dict[str, float]:
    """Evaluate ``examples`` on the cluster; return its wall, tasks sent and CPU milliseconds per trial."""
    import dspex_lab as dx
    from dspex_lab.engine import DaskExecutor

    sent: list[int] = []
    real_map = client.map

    def counting_map(function: Any, *iterables: Any, **options: Any) -> Any:
        sent.append(len(iterables[0]))
        return real_map(function, *iterables, **options)

    client.map = counting_map
    try:
        program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="bench")
        context = dx.Context(lm=dx.lab_lm("lab/small", latency=0.02), journal=journal, executor=DaskExecutor(client))
        prepare_for_measurement()
        workers, driver, wall = workers_cpu(client), time.process_time(), time.perf_counter()
        with context:
            dx.evaluate(program, examples, metric=dx.metrics.exact_match, progress=False)
        wall = time.perf_counter() - wall
        driver_ms = (time.process_time() - driver) / len(examples) * 1e3
        workers_ms = (workers_cpu(client) - workers) / len(examples) * 1e3
    finally:
        del client.map  # back to the class's method
    return {"wall": wall, "tasks": float(sum(sent)), "driver_ms": driver_ms, "workers_ms": workers_ms}


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print their medians with the load they were made under."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=1280)
    parser.add_argument("--empty-tasks", type=int, default=1024)
    arguments = parser.parse_args(argv)

    import distributed

    import dspex_lab as dx
    from dspex_lab.engine import RetryPolicy, TrialRunner
    from dspex_lab.engine._remote import encode, plan_for

    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=32, processes=True, host="127.0.0.1", dashboard_address=None, silence_logs=40
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="bench")
        lm = dx.lab_lm("lab/small")
        runner = TrialRunner(program.build(lm=lm), dx.metrics.exact_match, lm=lm, retry=RetryPolicy())
        plan = encode(plan_for(runner, executor="dask"))
        examples = list(dx.datasets.arithmetic(arguments.examples, seed=0))
        loads, empties, runs = [os.getloadavg()[0]], [], []
        with tempfile.TemporaryDirectory() as folder:
            run_cost(client, list(dx.datasets.arithmetic(128, seed=99)), Path(folder) / "warm.duckdb")
            for repeat in range(arguments.repeats):
                empties.append(empty_task_cost(client, plan, arguments.empty_tasks))
                runs.append(run_cost(client, examples, Path(folder) / f"run-{repeat}.duckdb"))
                loads.append(os.getloadavg()[0])
    finally:
        client.close()
        cluster.close()
    print(f"LocalCluster 2 x 32 threads, {arguments.repeats} repeats, medians; load {min(loads):.1f}-{max(loads):.1f}")
    print(
        f"empty chunk: driver (client + scheduler) {statistics.median(e[0] for e in empties):.3f} ms, "
        f"workers {statistics.median(e[1] for e in empties):.3f} ms of CPU per task"
    )
    median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    print(
        f"run of {arguments.examples} trials (20 ms lab LM): {median['tasks']:.0f} tasks, wall {median['wall']:.2f} s, "
        f"driver {median['driver_ms']:.3f} ms and workers {median['workers_ms']:.3f} ms of CPU per trial"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak the Dask executor: run the shape that once hung (issue 21) again and again, and report every hang.

The shape: a cluster of 2 workers with 32 threads each on 127.0.0.1 (a ``LocalCluster``, or with
``--cli-cluster`` a ``dask scheduler`` and two ``dask worker`` subprocesses), the lab LM with a
200 ms latency, 1,280 trials of ``dspy.ChainOfThought`` scored by exact match, ``dx.evaluate``
with ``executor=client`` and a journal in a temporary folder. Each run is timed; a run still
going after ``--hang-factor`` times its expected wall time (1,280 x 200 ms / 64 threads, at
least ``--hang-floor`` seconds) is a hang: the scheduler's task states and the client's are
printed (``client.run_on_scheduler``), then the run is given ``--hang-wait`` more seconds to end
on its own (the executor's liveness check should end it with an error) before it is abandoned
and the cluster started again. After each run the journal is read back: every trial must be
recorded exactly once (a run that stopped with an error must have recorded each trial at most once).

Usage::

    python bench/soak_dask.py --runs 30
    python bench/soak_dask.py --runs 10 --cli-cluster
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import faulthandler
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRIALS = 1280
LATENCY = 0.2
WORKERS = 2
THREADS_PER_WORKER = 32


@dataclass
class RunReport:
    """What one soak run did."""

    number: int
    seconds: float
    outcome: str  # "ok", "error: ...", "hang", "hang, then error: ..."
    recorded: int
    duplicates: int

    @property
    def hung(self) -> bool:
        return self.outcome.startswith("hang")


def scheduler_states(dask_scheduler: Any = None) -> dict[str, Any]:
    """Return the scheduler's task states and where processing tasks run (run on the scheduler)."""
    states = collections.Counter(task.state for task in dask_scheduler.tasks.values())
    processing = collections.Counter(
        str(task.processing_on.address) for task in dask_scheduler.tasks.values() if task.processing_on is not None
    )
    workers = {
        str(address): {"processing": len(worker.processing), "last_seen_ago": round(time.time() - worker.last_seen, 1)}
        for address, worker in dask_scheduler.workers.items()
    }
    return {"states": dict(states), "processing_on": dict(processing), "workers": workers}


def describe_hang(client: Any) -> str:
    """Return the scheduler's and the client's view of the run's tasks, in a few lines."""
    lines = []
    try:
        lines.append(f"  scheduler: {client.run_on_scheduler(scheduler_states)}")
    except Exception as error:  # the description is best effort: the hang is reported either way
        lines.append(f"  scheduler: could not ask ({error!r})")
    futures = list(client.futures.values())
    lines.append(f"  client: {dict(collections.Counter(state.status for state in futures))}")
    with contextlib.suppress(Exception):
        lines.append(f"  worker threads busy: {client.run(_busy_threads)}")
    return "\n".join(lines)


def _within(function: Callable[..., str], *args: Any, seconds: float) -> str:
    """Return ``function(*args)``, or say it did not answer within ``seconds`` (a blocked client says much)."""
    answer: list[str] = []
    thread = threading.Thread(target=lambda: answer.append(function(*args)), daemon=True)
    thread.start()
    thread.join(seconds)
    return answer[0] if answer else f"  the client did not answer within {seconds:g} s"


def _busy_threads(dask_worker: Any = None) -> dict[str, int]:
    return {"executing": len(dask_worker.state.executing), "ready": len(dask_worker.state.ready)}


class LocalShape:
    """A LocalCluster of 2 worker processes x 32 threads on 127.0.0.1."""

    def __init__(self) -> None:
        import distributed

        self.cluster = distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=THREADS_PER_WORKER,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=40,
        )
        self.client = distributed.Client(self.cluster, set_as_default=False)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        with contextlib.suppress(Exception):
            self.cluster.close(timeout=10)


class CliShape:
    """``dask scheduler`` and 2 ``dask worker`` subprocesses (with nannies) x 32 threads on 127.0.0.1."""

    def __init__(self) -> None:
        import distributed

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        address = f"tcp://127.0.0.1:{port}"
        dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        self.processes = [
            subprocess.Popen(
                [*dask, "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"],
                stderr=subprocess.DEVNULL,
            )
        ]
        worker = [sys.executable, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1"]
        for _ in range(WORKERS):
            self.processes.append(
                subprocess.Popen(
                    [*worker, "--nthreads", str(THREADS_PER_WORKER), "--no-dashboard"], stderr=subprocess.DEVNULL
                )
            )
        self.client = distributed.Client(address, timeout="30s", set_as_default=False)
        self.client.wait_for_workers(WORKERS, timeout=60)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def evaluate_once(client: Any, journal: Path, examples: list[Any], latency: float) -> Any:
    """Evaluate the bench program on ``examples`` through ``client``; return the EvaluationResult."""
    import dspex_lab as dx

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="soak")
    context = dx.Context(lm=dx.lab_lm("lab/small", latency=latency), journal=journal, executor=client)
    with context:
        return dx.evaluate(program, examples, metric=dx.metrics.exact_match, progress=False)


def recorded_trials(journal: Path) -> tuple[int, int]:
    """Return (distinct trials recorded, extra copies) across the journal's experiments."""
    import dspex_lab as dx

    store = dx.open_journal(journal)
    counts: collections.Counter[str] = collections.Counter()
    for experiment_id in store.experiments()["id"]:
        counts.update(store.trials(experiment_id, columns=["trial_id"])["trial_id"])
    return len(counts), sum(count - 1 for count in counts.values())


def soak_run(number: int, shape: Any, examples: list[Any], folder: Path, options: argparse.Namespace) -> RunReport:
    """Run one evaluation in a thread, watching it for a hang; return what it did."""
    journal = folder / f"soak-{number}.duckdb"
    outcome: list[str] = []
    worker = threading.Thread(
        target=_capture, args=(outcome, evaluate_once, shape.client, journal, examples, LATENCY), daemon=True
    )
    expected = TRIALS * LATENCY / (WORKERS * THREADS_PER_WORKER)
    limit = max(options.hang_floor, options.hang_factor * expected)
    started = time.perf_counter()
    worker.start()
    worker.join(limit)
    hung = worker.is_alive()
    if hung:
        print(f"run {number}: HANG, still going after {time.perf_counter() - started:.1f} s", flush=True)
        if options.stacks:
            faulthandler.dump_traceback(all_threads=True)
        print(_within(describe_hang, shape.client, seconds=20.0), flush=True)
        worker.join(options.hang_wait)
    seconds = time.perf_counter() - started
    if worker.is_alive():
        return RunReport(number, seconds, "hang (never ended)", *_recorded_or_unknown(journal, alive=True))
    text = outcome[0] if outcome else "error: no outcome"
    return RunReport(number, seconds, f"hang, then {text}" if hung else text, *_recorded_or_unknown(journal))


def _capture(outcome: list[str], function: Callable[..., Any], *args: Any) -> None:
    try:
        function(*args)
        outcome.append("ok")
    except Exception as error:  # the soak records every failure and goes on
        outcome.append(f"error: {type(error).__name__}: {str(error)[:300]}")


def _recorded_or_unknown(journal: Path, *, alive: bool = False) -> tuple[int, int]:
    if alive:
        return -1, -1  # the run still holds its journal open
    try:
        return recorded_trials(journal)
    except Exception as error:  # a journal that cannot be read is reported, not fatal
        print(f"  could not read {journal.name}: {error!r}", flush=True)
        return -1, -1


def main(argv: list[str] | None = None) -> int:
    """Soak the Dask executor; return 1 if any run hung, failed, or recorded a trial other than once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--cli-cluster", action="store_true", help="dask scheduler/worker subprocesses")
    parser.add_argument("--hang-factor", type=float, default=5.0, help="times the expected wall that is a hang")
    parser.add_argument("--hang-floor", type=float, default=30.0, help="the fewest seconds that are a hang")
    parser.add_argument("--stacks", action="store_true", help="print the driver's thread stacks at a hang")
    parser.add_argument("--hang-wait", type=float, default=180.0, help="seconds a hung run gets to end by itself")
    options = parser.parse_args(argv)

    import dspex_lab as dx

    examples = list(dx.datasets.arithmetic(TRIALS, seed=0))
    make_shape = CliShape if options.cli_cluster else LocalShape
    reports: list[RunReport] = []
    shape = make_shape()
    try:
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            evaluate_once(shape.client, folder / "warm.duckdb", examples[:128], 0.0)  # imports, unmeasured
            for number in range(1, options.runs + 1):
                report = soak_run(number, shape, examples, folder, options)
                reports.append(report)
                print(
                    f"run {number}: {report.seconds:.1f} s, {report.outcome}, recorded {report.recorded}/{TRIALS}, "
                    f"extra copies {report.duplicates}",
                    flush=True,
                )
                if report.outcome == "hang (never ended)":
                    shape.close()  # the hung run keeps its thread; the next run gets a new cluster
                    shape = make_shape()
    finally:
        shape.close()
    return summarize(reports)


def summarize(reports: list[RunReport]) -> int:
    """Print the soak's summary; return the exit status."""
    hangs = sum(report.hung for report in reports)
    failed = sum(report.outcome != "ok" for report in reports)
    once = sum(report.recorded == TRIALS and report.duplicates == 0 for report in reports)
    walls = sorted(report.seconds for report in reports if report.outcome == "ok")
    median = f"{walls[len(walls) // 2]:.1f} s" if walls else "-"
    print(
        f"summary: {len(reports)} runs, {hangs} hangs, {failed} not ok, {once} with every trial recorded exactly "
        f"once, median wall of ok runs {median}"
    )
    return 0 if once == len(reports) else 1


if __name__ == "__main__":
    sys.exit(main())

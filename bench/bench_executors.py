"""Benchmark the thread, process and Dask executors on the same program, data and lab LM.

Two scenarios, each run by every executor in one process and one run (the order rotates
per repeat, so slow phases of a shared machine hit each executor), with the journal on
(a fresh temporary file per run):

1. ``cpu``: 20 ms lab LM, 1,280 examples, 64 trials at once, where the CPU is the limit.
   Efficiency is ``max(n * latency / 64, n * c1) / wall``, where ``c1`` is one trial's
   CPU cost: the CPU time (``time.thread_time``, so other processes on a busy machine
   do not inflate it) per trial of the bare hydrated module plus metric, in one thread,
   on a zero-latency lab LM, module built and warmed up outside the measurement,
   measured in the same repeat. ``n * c1`` is the single-core bound. Threads share one
   GIL and cannot pass 1.0; target for the process and Dask executors (2 workers) on 2
   cores: at least 1.6.

   Next to it the engine's own floor is measured the same way: ``c_engine``, the CPU per
   trial of what a worker runs for one trial (``_remote.run_remote_trial``: decode, the
   trial runner, encode) in one thread, and each run's driver CPU per trial (the journal,
   the executor's loop; for Dask also the ``LocalCluster`` scheduler, which runs in the
   driver's process). With ``k`` cores no executor can beat
   ``k * c1 / (c_engine + driver CPU per trial)``: the ceiling printed per executor.
2. ``latency``: 200 ms lab LM, 1,280 examples, 64 trials at once. Efficiency is
   ``(n * latency / 64) / wall``; target: at least 0.95 for every executor. Dask's
   per-trial overhead against threads is printed: ``(wall_dask - wall_threads) / n``.

Next to the executors, the ``ideal`` row: the bare module and metric (no engine, no journal,
no result sent back) split over 2 spawned processes with 32 threads each, every process
handed its half of the examples up front. It is what dspex_lab could reach if the engine cost
nothing, measured in the same repeat, so the executors' efficiencies can be read against it
as well as against the single-core bound.

The process executor is ``ProcessExecutor(2, threads_per_worker=32)``; Dask is a
``LocalCluster`` of 2 worker processes with 32 threads each on 127.0.0.1. Workers are
started and warmed up before any measurement. Every executor must produce the same
per-trial scores; a difference is reported and makes the exit status 1.

Usage::

    python bench/bench_executors.py                # 3 repeats at full size (a few minutes)
    python bench/bench_executors.py --quick        # 1 repeat at 1/8 size, a smoke run
    python bench/bench_executors.py --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, machine_description, median_or_none, prepare_for_measurement, timed, write_json

CONCURRENCY = 64
WORKERS = 2
# Calls made before a CPU measurement starts (first-call imports and caches).
WARM_UP = 20


@dataclass(frozen=True)
class Scenario:
    """One measured configuration: examples, LM latency, and how efficiency is judged."""

    name: str
    examples: int
    latency: float
    target: dict[str, float]


def scenarios(scale: int) -> list[Scenario]:
    """Return the two scenarios at ``1/scale`` of the full size."""
    examples = 1280 // scale
    return [
        Scenario("cpu", examples, 0.02, {"process": 1.6, "dask": 1.6}),
        Scenario("latency", examples, 0.2, {"thread": 0.95, "process": 0.95, "dask": 0.95}),
    ]


def make_executors() -> tuple[dict[str, Any], Callable[[], None]]:
    """Start the three executors with ``CONCURRENCY`` trials at once; return them and a function closing them."""
    import distributed

    from dspex_lab.engine import DaskExecutor, ProcessExecutor, ThreadExecutor

    per_worker = CONCURRENCY // WORKERS
    cluster = distributed.LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=per_worker,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    client = distributed.Client(cluster, set_as_default=False)
    process = ProcessExecutor(WORKERS, threads_per_worker=per_worker)
    ideal = IdealSplit()
    executors = {
        "thread": ThreadExecutor(CONCURRENCY),
        "process": process,
        "dask": DaskExecutor(client),
        "ideal": ideal,
    }

    def close() -> None:
        ideal.close()
        process.close()
        client.close()
        cluster.close()

    return executors, close


def run_one(executor: Any, examples: list[Any], latency: float, folder: Path, label: str) -> tuple[Any, Any]:
    """Evaluate on ``executor``; return the timing and the per-trial scores (sorted by trial id).

    For the :class:`IdealSplit` the timing's ``cpu_seconds`` is its workers' CPU and there are no scores.
    """
    import dspex_lab as dx

    if isinstance(executor, IdealSplit):
        prepare_for_measurement()
        with timed() as timing:
            _, worker_cpu = executor.run(len(examples), latency)
        timing.cpu_seconds = worker_cpu
        return timing, None

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="bench")
    prepare_for_measurement()
    context = dx.Context(
        lm=dx.lab_lm("lab/small", latency=latency), journal=folder / f"{label}.duckdb", executor=executor
    )
    with context, timed() as timing:
        result = dx.evaluate(program, examples, metric=dx.metrics.exact_match, progress=False)
    frame = result.trials.sort_values("trial_id")
    return timing, list(zip(frame["trial_id"], frame["score"], strict=True))


def _ideal_worker(connection: Any, part: int) -> None:
    """One process of the ideal split: run the bare module on its share of the examples when told."""
    from concurrent.futures import ThreadPoolExecutor

    import dspy

    import dspex_lab as dx

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="bench")
    modules: dict[float, tuple[Any, Any]] = {}
    with ThreadPoolExecutor(CONCURRENCY // WORKERS) as pool:
        while True:
            command = connection.recv()
            if command is None:
                return
            count, latency = command
            if latency not in modules:
                lm = dx.lab_lm("lab/small", latency=latency)
                modules[latency] = (lm, program.build(lm=lm))
            lm, module = modules[latency]

            def one(example: Any, lm: Any = lm, module: Any = module) -> float:
                with dspy.context(lm=lm):
                    return float(dx.metrics.exact_match(example, module(**example.inputs())))

            share = list(dx.datasets.arithmetic(count, seed=0))[part::WORKERS]
            connection.send("ready")
            connection.recv()  # go
            start = time.process_time()
            scores = list(pool.map(one, share))
            connection.send((time.process_time() - start, len(scores)))


class IdealSplit:
    """The bare module split over ``WORKERS`` spawned processes: the best an executor could do here."""

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._connections = []
        self._processes = []
        for part in range(WORKERS):
            mine, theirs = context.Pipe()
            process = context.Process(target=_ideal_worker, args=(theirs, part), daemon=True)
            process.start()
            self._connections.append(mine)
            self._processes.append(process)

    def run(self, count: int, latency: float) -> tuple[float, float]:
        """Run ``count`` examples at ``latency``; return the wall seconds and the workers' CPU seconds."""
        for connection in self._connections:
            connection.send((count, latency))
        for connection in self._connections:
            connection.recv()
        start = time.perf_counter()
        for connection in self._connections:
            connection.send("go")
        answers = [connection.recv() for connection in self._connections]
        wall = time.perf_counter() - start
        if sum(done for _, done in answers) != count:
            raise RuntimeError(f"the ideal split ran {sum(done for _, done in answers)} of {count} examples")
        return wall, sum(cpu for cpu, _ in answers)

    def close(self) -> None:
        """Stop the processes."""
        for connection, process in zip(self._connections, self._processes, strict=True):
            with contextlib.suppress(OSError):
                connection.send(None)
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def single_core_c1(examples: list[Any]) -> float:
    """CPU seconds per trial of the bare hydrated module plus metric in one thread on a zero-latency lab LM."""
    import dspy

    import dspex_lab as dx

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="bench")
    lm = dx.lab_lm("lab/small")
    module = program.build(lm=lm)
    with dspy.context(lm=lm):
        for example in examples[:WARM_UP]:
            dx.metrics.exact_match(example, module(**example.inputs()))
        prepare_for_measurement()
        start = time.thread_time()
        for example in examples:
            dx.metrics.exact_match(example, module(**example.inputs()))
    return (time.thread_time() - start) / len(examples)


def engine_floor(examples: list[Any]) -> float:
    """CPU seconds per trial of a worker's side of one trial (decode, trial runner, encode), in one thread."""
    import dspex_lab as dx
    from dspex_lab.engine import RetryPolicy, TrialRunner, TrialTask
    from dspex_lab.engine._remote import encode, plan_for, run_remote_trial, task_payload

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="bench")
    lm = dx.lab_lm("lab/small")
    runner = TrialRunner(program.build(lm=lm), dx.metrics.exact_match, lm=lm, retry=RetryPolicy())
    plan = encode(plan_for(runner, executor="process"))
    payloads = [
        encode(task_payload(TrialTask(index=index, example_id=f"e{index}", example=example)))
        for index, example in enumerate(examples)
    ]
    for payload in payloads[:WARM_UP]:
        encode(run_remote_trial(plan, payload, None))
    prepare_for_measurement()
    start = time.thread_time()
    for payload in payloads:
        encode(run_remote_trial(plan, payload, None))
    return (time.thread_time() - start) / len(payloads)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table; return 1 if executors disagreed on a score or a run failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat at 1/8 size")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    arguments = parser.parse_args(argv)
    repeats, scale = (1, 8) if arguments.quick else (arguments.repeats, 1)

    import dspex_lab as dx

    executors, close = make_executors()
    names = list(executors)
    measurements: list[dict[str, Any]] = []
    disagreements: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            warm = list(dx.datasets.arithmetic(2 * CONCURRENCY, seed=99))
            for name in names:  # worker start-up and first-call imports are paid here, unmeasured
                with recording_failure(measurements, "warm-up", name, 0):
                    run_one(executors[name], warm, 0.0, folder, f"warm-{name}")
            for scenario in scenarios(scale):
                examples = list(dx.datasets.arithmetic(scenario.examples, seed=0))
                for repeat in range(repeats):
                    c1 = single_core_c1(examples[: min(len(examples), 160)])
                    floor = engine_floor(examples[: min(len(examples), 160)])
                    bound = max(scenario.examples * scenario.latency / CONCURRENCY, scenario.examples * c1)
                    order = names[repeat % len(names) :] + names[: repeat % len(names)]
                    scores = {}
                    for name in order:
                        label = f"{scenario.name}-{name}-{repeat}"
                        with recording_failure(measurements, scenario.name, name, repeat):
                            timing, scores[name] = run_one(executors[name], examples, scenario.latency, folder, label)
                        if name not in scores:
                            continue
                        if scenario.name == "latency":
                            bound = scenario.examples * scenario.latency / CONCURRENCY
                        measurements.append(
                            {
                                "scenario": scenario.name,
                                "executor": name,
                                "repeat": repeat,
                                "seconds": timing.seconds,
                                "bound_seconds": bound,
                                "c1_seconds": c1,
                                "engine_floor_seconds": floor,
                                "driver_cpu_seconds": timing.cpu_seconds,
                                "efficiency": bound / timing.seconds,
                                "load_before": timing.load_before,
                                "load_after": timing.load_after,
                            }
                        )
                    for name in ("process", "dask"):
                        if name in scores and "thread" in scores and scores[name] != scores["thread"]:
                            disagreements.append(f"{scenario.name} repeat {repeat}: {name} differs from thread")
    finally:
        close()
    print(report(measurements, scale))
    dask = executors["dask"]
    print(
        f"Dask chunks cancelled by Dask itself: {dask.cancelled_by_dask}; orphaned trials: {dask.orphaned_trials}; "
        f"done-callbacks missed: {dask.missed_callbacks}; result fetches stalled: {dask.stalled_gathers}; "
        f"runs ended by the liveness check: {dask.stalled_runs}"
    )
    failures = [entry for entry in measurements if "error" in entry]
    for entry in failures:
        print(f"FAILED RUN: {entry['scenario']} {entry['executor']} repeat {entry['repeat']}: {entry['error']}")
    for line in disagreements:
        print("DISAGREEMENT:", line)
    if arguments.json:
        write_json(arguments.json, {"machine": machine_description(), "measurements": measurements})
    return 1 if disagreements or failures else 0


@contextlib.contextmanager
def recording_failure(measurements: list[dict[str, Any]], scenario: str, executor: str, repeat: int) -> Iterator[None]:
    """Record a run that raised as a measurement with its error, and go on (the table and JSON still come out)."""
    started = time.perf_counter()
    try:
        yield
    except Exception as error:  # one failed run must not lose the others' measurements
        measurements.append(
            {
                "scenario": scenario,
                "executor": executor,
                "repeat": repeat,
                "seconds": time.perf_counter() - started,
                "error": f"{type(error).__name__}: {error}",
            }
        )


def measured(measurements: list[dict[str, Any]], scenario: str, executor: str) -> list[dict[str, Any]]:
    """Return the measurements of ``executor`` in ``scenario`` (runs that failed are left out)."""
    return [
        entry
        for entry in measurements
        if entry["scenario"] == scenario and entry["executor"] == executor and "error" not in entry
    ]


def report(measurements: list[dict[str, Any]], scale: int) -> str:
    """Return the table of median efficiencies, targets, ceilings, and the per-trial overhead against threads."""
    rows = []
    by_scenario = {scenario.name: scenario for scenario in scenarios(scale)}
    medians: dict[tuple[str, str], float] = {}
    cores = os.cpu_count() or 1
    ideal_efficiency = {
        scenario_name: median_or_none([entry["efficiency"] for entry in measured(measurements, scenario_name, "ideal")])
        for scenario_name in by_scenario
    }
    notes = []
    for (scenario_name, scenario), name in (
        (item, name) for item in by_scenario.items() for name in ("thread", "process", "dask", "ideal")
    ):
        chosen = measured(measurements, scenario_name, name)
        if not chosen:
            continue
        efficiency = median_or_none([entry["efficiency"] for entry in chosen])
        seconds = median_or_none([entry["seconds"] for entry in chosen])
        medians[(scenario_name, name)] = seconds or float("nan")
        target = scenario.target.get(name)
        verdict = "" if target is None else ("meets" if efficiency is not None and efficiency >= target else "misses")
        c1 = median_or_none([entry["c1_seconds"] for entry in chosen]) or float("nan")
        floor = median_or_none([entry["engine_floor_seconds"] for entry in chosen]) or float("nan")
        driver = median_or_none([entry["driver_cpu_seconds"] / scenario.examples for entry in chosen]) or float("nan")
        loads = [entry[key] for entry in chosen for key in ("load_before", "load_after") if entry.get(key) is not None]
        ceiling = "-"
        if name in ("process", "dask") and scenario_name == "cpu":
            ceiling = f"{cores * c1 / (floor + driver):.2f}"
        ideal = ideal_efficiency.get(scenario_name)
        of_ideal = f"{efficiency / ideal:.2f}" if efficiency is not None and ideal and name != "ideal" else "-"
        costs = f"{c1 * 1000:.2f} / {floor * 1000:.2f} / {driver * 1000:.2f} ms"
        if name == "ideal":
            # Its "driver CPU" is its workers' CPU: what the bare module costs per trial run 32 at a time.
            costs = f"{c1 * 1000:.2f} / - / workers {driver * 1000:.2f} ms"
            notes.append(
                f"{scenario_name}: the bare module costs {driver * 1000:.2f} ms of CPU per trial in "
                f"{WORKERS} processes x {CONCURRENCY // WORKERS} threads, {driver / c1:.2f} x c1 "
                "(its cost alone in one thread)"
            )
        rows.append(
            [
                scenario_name,
                name,
                scenario.examples,
                f"{scenario.latency * 1000:.0f} ms",
                f"{seconds:.2f} s" if seconds is not None else "-",
                f"{median_or_none([entry['bound_seconds'] for entry in chosen]):.2f} s",
                costs,
                f"{efficiency:.3f}" if efficiency is not None else "-",
                of_ideal,
                ceiling,
                f">= {target} {verdict}"
                if target is not None
                else "anchor"
                if name == "ideal"
                else "cannot pass 1.0"
                if scenario_name == "cpu"
                else "",
                f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-",
            ]
        )
    table = format_table(
        [
            "scenario",
            "executor",
            "n",
            "latency",
            "wall (median)",
            "bound",
            "c1 / c_engine / driver CPU per trial",
            "efficiency",
            "of ideal",
            f"ceiling ({cores} cores)",
            "target",
            "load",
        ],
        rows,
    )
    table = "\n".join([table, "", *notes])
    latency = by_scenario["latency"]
    if not all((("latency", name) in medians) for name in ("thread", "process", "dask")):
        return table
    overhead = (medians[("latency", "dask")] - medians[("latency", "thread")]) / latency.examples * 1000
    process_overhead = (medians[("latency", "process")] - medians[("latency", "thread")]) / latency.examples * 1000
    return (
        f"{table}\n\nper-trial overhead against threads (200 ms LM, {CONCURRENCY} at once): "
        f"dask {overhead:+.2f} ms, process {process_overhead:+.2f} ms of wall per trial\n"
        f"ceiling: {cores} * c1 / (c_engine + driver CPU per trial), the best efficiency {cores} cores allow "
        "when workers cost at least c_engine per trial\n"
        "of ideal: the efficiency over the ideal split's (the bare module in "
        f"{WORKERS} processes, no engine, no journal) in the same run"
    )


if __name__ == "__main__":
    sys.exit(main())

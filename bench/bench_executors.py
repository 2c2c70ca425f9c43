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
   ``k * c1 / (c_engine + driver CPU per trial)``: the CPU cap printed per executor.
2. ``latency``: 200 ms lab LM, 1,280 examples, 64 trials at once. Efficiency is
   ``(n * latency / 64) / wall``; target: at least 0.95 for every executor. Dask's
   per-trial overhead against threads is printed: ``(wall_dask - wall_threads) / n``.

Next to the executors, the **ceiling**: the bare module and metric, no engine run loop, no
journal, no events, no result sent back, run with the engine's own chat adapter (the
``CachingChatAdapter`` its trials use, which formats each signature's system message once),
split over spawned processes each with a thread pool, every process handed its share of the
examples up front. Several splits are measured (``--ceiling-splits``, processes x threads,
by default 2x16, 4x16 and 2x32), each in every repeat and in the same rotation as the
executors; per scenario the ceiling is the split with the fastest median wall. Each
executor's ``of ceiling`` is the ceiling's median wall over its own, judged against
:data:`CEILING_TARGETS`. Plain DSPy (a system message rebuilt per call) and one fixed split
of 32 threads per process (which loses to GIL contention on the CPU-bound scenario) made the
earlier "ideal split" something the engine could beat, not a ceiling.

The process and Dask executors are sized by the project's own rule
(:func:`dspex_lab.engine.choose_sizing`, see docs/executors.md "Sizing"): the process executor
is what ``executor="process"`` makes for 64 trials at once (one worker per core, each tuning its
trials in flight to the measured CPU share of a trial, up to its share of the 64); Dask is a
``LocalCluster`` on 127.0.0.1 with the rule's workers and threads. The sizing each executor
had after every run is recorded, and the last one printed. Workers are started and warmed up
before any measurement. Every executor must produce the same
per-trial scores; a difference is reported and makes the exit status 1.

Usage::

    python bench/bench_executors.py                # 3 repeats at full size (a few minutes)
    python bench/bench_executors.py --quick        # 1 repeat at 1/8 size, a smoke run
    python bench/bench_executors.py --json results.json
    python bench/bench_executors.py --ceiling-splits 2x16,4x16,2x32,4x8
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
# Calls made before a CPU measurement starts (first-call imports and caches).
WARM_UP = 20
DEFAULT_CEILING_SPLITS = "2x16,4x16,2x32"
# The share of the ceiling (its median wall over the executor's) each executor must reach, per scenario.
CEILING_TARGETS = {
    "cpu": {"process": 0.9, "dask": 0.8},
    "latency": {"thread": 0.95, "process": 0.95},
}
EXECUTORS = ("thread", "process", "dask")


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


def parse_splits(text: str) -> list[tuple[int, int]]:
    """Return the ``(processes, threads)`` pairs of a ``2x16,4x16`` list; raise ValueError naming a bad entry."""
    splits = []
    for entry in text.split(","):
        processes, _, threads = entry.strip().partition("x")
        if not (processes.isdigit() and threads.isdigit() and int(processes) > 0 and int(threads) > 0):
            raise ValueError(f"--ceiling-splits: {entry.strip()!r} is not PROCESSESxTHREADS (e.g. 2x16)")
        splits.append((int(processes), int(threads)))
    return list(dict.fromkeys(splits))


def make_executors(splits: list[tuple[int, int]]) -> tuple[dict[str, Any], Callable[[], None]]:
    """Start the three executors and one :class:`BareSplit` per split; return them and a function closing them."""
    import distributed

    from dspex_lab.engine import DaskExecutor, ThreadExecutor, choose_sizing, make_executor

    # The trials' CPU share is not known before they run: the rule gives one worker per core and the cap.
    sizing = choose_sizing(None, cores=os.cpu_count() or 1, trials_at_once=CONCURRENCY)
    cluster = distributed.LocalCluster(
        n_workers=sizing.processes,
        threads_per_worker=sizing.in_flight,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    client = distributed.Client(cluster, set_as_default=False)
    process = make_executor("process", threads=CONCURRENCY)
    bare = [BareSplit(processes, threads) for processes, threads in splits]
    executors: dict[str, Any] = {
        "thread": ThreadExecutor(CONCURRENCY),
        "process": process,
        "dask": DaskExecutor(client),
    }
    executors.update((split.name, split) for split in bare)

    def close() -> None:
        for split in bare:
            split.close()
        process.close()
        client.close()
        cluster.close()

    return executors, close


def run_one(executor: Any, examples: list[Any], latency: float, folder: Path, label: str) -> tuple[Any, Any]:
    """Evaluate on ``executor``; return the timing and the per-trial scores (sorted by trial id).

    For a :class:`BareSplit` the timing's ``cpu_seconds`` is its workers' CPU and there are no scores.
    """
    import dspex_lab as dx

    if isinstance(executor, BareSplit):
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


def _bare_worker(connection: Any, part: int, processes: int, threads: int) -> None:
    """One process of a bare split: run the bare module on its share of the examples when told.

    The module runs with the adapter the engine's trials use when none is configured (the shared
    ``CachingChatAdapter``), so the system message is formatted once per signature, as in a trial.
    """
    from concurrent.futures import ThreadPoolExecutor

    import dspy

    import dspex_lab as dx
    from dspex_lab.engine import default_adapter  # what TrialRunner installs when none is configured

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="bench")
    adapter = default_adapter()
    modules: dict[float, tuple[Any, Any]] = {}
    with ThreadPoolExecutor(threads) as pool:
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
                with dspy.context(lm=lm, adapter=adapter):
                    return float(dx.metrics.exact_match(example, module(**example.inputs())))

            share = list(dx.datasets.arithmetic(count, seed=0))[part::processes]
            connection.send("ready")
            connection.recv()  # go
            start = time.process_time()
            scores = list(pool.map(one, share))
            connection.send((time.process_time() - start, len(scores)))


class BareSplit:
    """The bare module over ``processes`` spawned processes of ``threads`` threads: one candidate ceiling."""

    def __init__(self, processes: int, threads: int) -> None:
        import multiprocessing

        self.processes, self.threads = processes, threads
        self.name = f"ceiling {processes}x{threads}"
        context = multiprocessing.get_context("spawn")
        self._connections = []
        self._processes = []
        for part in range(processes):
            mine, theirs = context.Pipe()
            process = context.Process(target=_bare_worker, args=(theirs, part, processes, threads), daemon=True)
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
            raise RuntimeError(f"{self.name} ran {sum(done for _, done in answers)} of {count} examples")
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
    """Run the benchmark and print its tables; return 1 if executors disagreed on a score or a run failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat at 1/8 size")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    parser.add_argument(
        "--ceiling-splits",
        default=DEFAULT_CEILING_SPLITS,
        help=f"bare-module splits, PROCESSESxTHREADS, comma-separated; the fastest is the ceiling "
        f"(default {DEFAULT_CEILING_SPLITS})",
    )
    arguments = parser.parse_args(argv)
    try:
        splits = parse_splits(arguments.ceiling_splits)
    except ValueError as error:
        parser.error(str(error))
    repeats, scale = (1, 8) if arguments.quick else (arguments.repeats, 1)

    import dspex_lab as dx

    executors, close = make_executors(splits)
    measurements: list[dict[str, Any]] = []
    disagreements: list[str] = []
    try:
        with tempfile.TemporaryDirectory() as temporary:
            folder = Path(temporary)
            warm = list(dx.datasets.arithmetic(2 * CONCURRENCY, seed=99))
            for name, executor in executors.items():  # worker start-up and first calls are paid here, unmeasured
                with recording_failure(measurements, "warm-up", name, 0):
                    run_one(executor, warm, 0.0, folder, f"warm-{name}")
            for scenario in scenarios(scale):
                for repeat in range(repeats):
                    disagreements += measure_repeat(executors, scenario, repeat, folder, measurements)
    finally:
        close()
    ceilings = ceiling_summary(measurements, scale)
    print(report(measurements, scale))
    print()
    print(ceiling_table(ceilings))
    print(sizing_report(measurements))
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
        write_json(
            arguments.json, {"machine": machine_description(), "measurements": measurements, "ceilings": ceilings}
        )
    return 1 if disagreements or failures else 0


def measure_repeat(
    executors: dict[str, Any], scenario: Scenario, repeat: int, folder: Path, measurements: list[dict[str, Any]]
) -> list[str]:
    """Run every executor and bare split once on ``scenario``, appending to ``measurements``; return disagreements.

    The order rotates with ``repeat``, so a slow phase of a shared machine does not always hit the same one.
    """
    import dspex_lab as dx

    examples = list(dx.datasets.arithmetic(scenario.examples, seed=0))
    names = list(executors)
    c1 = single_core_c1(examples[: min(len(examples), 160)])
    floor = engine_floor(examples[: min(len(examples), 160)])
    bound = max(scenario.examples * scenario.latency / CONCURRENCY, scenario.examples * c1)
    if scenario.name == "latency":
        bound = scenario.examples * scenario.latency / CONCURRENCY
    order = names[repeat % len(names) :] + names[: repeat % len(names)]
    scores = {}
    for name in order:
        label = f"{scenario.name}-{name.replace(' ', '-')}-{repeat}"
        with recording_failure(measurements, scenario.name, name, repeat):
            timing, scores[name] = run_one(executors[name], examples, scenario.latency, folder, label)
        if name not in scores:
            continue
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
                "sizing": sizing_of(executors[name]),
            }
        )
    return [
        f"{scenario.name} repeat {repeat}: {name} differs from thread"
        for name in ("process", "dask")
        if name in scores and "thread" in scores and scores[name] != scores["thread"]
    ]


def sizing_of(executor: Any) -> str | None:
    """Return the sizing an executor runs with now (processes x trials in flight, CPU share), if it has one."""
    sizing = getattr(executor, "sizing", None)  # the process and Dask executors; threads and bare splits have none
    return None if sizing is None else str(sizing)


def sizing_report(measurements: list[dict[str, Any]]) -> str:
    """Return, per scenario and executor, the sizing it had after its last run (how the rule sized it)."""
    last: dict[tuple[str, str], str] = {}
    for entry in measurements:
        if entry.get("sizing"):
            last[(entry["scenario"], entry["executor"])] = entry["sizing"]
    lines = [f"{scenario} {executor}: {sizing}" for (scenario, executor), sizing in last.items()]
    return "Sizing after the last run (the rule's choice, tuned to the measured CPU share):\n" + "\n".join(lines)


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


def split_names(measurements: list[dict[str, Any]]) -> list[str]:
    """Return the bare splits' names in the order they were first measured."""
    return list(dict.fromkeys(entry["executor"] for entry in measurements if entry["executor"].startswith("ceiling")))


def ceiling_summary(measurements: list[dict[str, Any]], scale: int) -> list[dict[str, Any]]:
    """Return, per scenario, the ceiling (the bare split with the fastest median wall) and each executor against it.

    An executor's ``of_ceiling`` is the ceiling's median wall over the executor's median wall; its
    ``verdict`` is PASS or FAIL against :data:`CEILING_TARGETS` (None where the scenario sets no target).
    """
    summary = []
    for scenario in scenarios(scale):
        walls = {
            name: median_or_none([entry["seconds"] for entry in measured(measurements, scenario.name, name)])
            for name in [*EXECUTORS, *split_names(measurements)]
        }
        splits = {name: wall for name, wall in walls.items() if name.startswith("ceiling") and wall is not None}
        best = min(splits, key=splits.__getitem__) if splits else None
        loads = [
            entry[key]
            for entry in measurements
            if entry["scenario"] == scenario.name
            for key in ("load_before", "load_after")
            if entry.get(key) is not None
        ]
        rows = []
        for name in EXECUTORS:
            wall, target = walls[name], CEILING_TARGETS.get(scenario.name, {}).get(name)
            share = splits[best] / wall if best is not None and wall else None
            verdict = None if target is None or share is None else ("PASS" if share >= target else "FAIL")
            rows.append({"executor": name, "seconds": wall, "of_ceiling": share, "target": target, "verdict": verdict})
        summary.append(
            {
                "scenario": scenario.name,
                "splits": splits,
                "ceiling_split": best,
                "ceiling_seconds": splits.get(best) if best is not None else None,
                "executors": rows,
                "load_range": [min(loads), max(loads)] if loads else None,
            }
        )
    return summary


def ceiling_table(summary: list[dict[str, Any]]) -> str:
    """Return the table of each executor's median wall against the ceiling, with its target and verdict."""
    rows = []
    for scenario in summary:
        best, loads = scenario["ceiling_split"], scenario["load_range"]
        load = f"{loads[0]:.1f}-{loads[1]:.1f}" if loads else "-"
        splits = ", ".join(f"{name.split()[1]} {wall:.2f} s" for name, wall in scenario["splits"].items())
        ceiling = f"{best.split()[1]} {scenario['ceiling_seconds']:.2f} s" if best else "- (every split failed)"
        rows.append([scenario["scenario"], "ceiling", ceiling, "1.00" if best else "-", f"splits: {splits}", load])
        for row in scenario["executors"]:
            wall = f"{row['seconds']:.2f} s" if row["seconds"] is not None else "- (failed)"
            share = f"{row['of_ceiling']:.2f}" if row["of_ceiling"] is not None else "-"
            target = f">= {row['target']} {row['verdict'] or '-'}" if row["target"] is not None else ""
            rows.append([scenario["scenario"], row["executor"], wall, share, target, load])
    table = format_table(["scenario", "executor", "wall (median)", "of ceiling", "target / splits", "load"], rows)
    return (
        "Against the ceiling: the bare module (the engine's caching chat adapter, no run loop, journal or events) "
        "over the fastest of the splits (processes x threads), measured in the same run\n"
        f"{table}\n"
        "Targets hold for a quiet machine: a load range well above the benchmark's own ~2 means the run was shared."
    )


def report(measurements: list[dict[str, Any]], scale: int) -> str:
    """Return the table of median efficiencies, targets, CPU caps, and the per-trial overhead against threads."""
    by_scenario = {scenario.name: scenario for scenario in scenarios(scale)}
    cores = os.cpu_count() or 1
    rows, notes, medians = [], [], {}
    for scenario in by_scenario.values():
        for name in [*EXECUTORS, *split_names(measurements)]:
            chosen = measured(measurements, scenario.name, name)
            if chosen:
                row, note = efficiency_row(scenario, name, chosen, cores)
                rows.append(row)
                notes += [note] if note else []
                medians[(scenario.name, name)] = median_or_none([entry["seconds"] for entry in chosen])
    headers = ["scenario", "executor", "n", "latency", "wall (median)", "bound"]
    headers += ["c1 / c_engine / driver CPU per trial", "efficiency", f"CPU cap ({cores} cores)", "target", "load"]
    table = "\n".join([format_table(headers, rows), "", *notes])
    latency = by_scenario["latency"]
    if not all(medians.get(("latency", name)) is not None for name in EXECUTORS):
        return table
    overhead = (medians[("latency", "dask")] - medians[("latency", "thread")]) / latency.examples * 1000
    process_overhead = (medians[("latency", "process")] - medians[("latency", "thread")]) / latency.examples * 1000
    return (
        f"{table}\n\nper-trial overhead against threads (200 ms LM, {CONCURRENCY} at once): "
        f"dask {overhead:+.2f} ms, process {process_overhead:+.2f} ms of wall per trial\n"
        f"CPU cap: {cores} * c1 / (c_engine + driver CPU per trial), the best efficiency {cores} cores allow "
        "when workers cost at least c_engine per trial"
    )


def efficiency_row(scenario: Scenario, name: str, chosen: list[dict[str, Any]], cores: int) -> tuple[list[Any], str]:
    """Return one executor's (or bare split's) row of the efficiency table and, for a bare split, its CPU note."""
    efficiency = median_or_none([entry["efficiency"] for entry in chosen])
    seconds = median_or_none([entry["seconds"] for entry in chosen])
    target = scenario.target.get(name)
    verdict = "" if target is None else ("meets" if efficiency is not None and efficiency >= target else "misses")
    c1 = median_or_none([entry["c1_seconds"] for entry in chosen]) or float("nan")
    floor = median_or_none([entry["engine_floor_seconds"] for entry in chosen]) or float("nan")
    driver = median_or_none([entry["driver_cpu_seconds"] / scenario.examples for entry in chosen]) or float("nan")
    loads = [entry[key] for entry in chosen for key in ("load_before", "load_after") if entry.get(key) is not None]
    cap = f"{cores * c1 / (floor + driver):.2f}" if name in ("process", "dask") and scenario.name == "cpu" else "-"
    costs = f"{c1 * 1000:.2f} / {floor * 1000:.2f} / {driver * 1000:.2f} ms"
    note = ""
    if name.startswith("ceiling"):
        # Its "driver CPU" is its workers' CPU: what the bare module costs per trial in that split.
        costs = f"{c1 * 1000:.2f} / - / workers {driver * 1000:.2f} ms"
        note = (
            f"{scenario.name}: the bare module costs {driver * 1000:.2f} ms of CPU per trial in {name.split()[1]} "
            f"(processes x threads), {driver / c1:.2f} x c1 (plain DSPy alone in one thread)"
        )
    if target is not None:
        judged = f">= {target} {verdict}"
    else:
        judged = "candidate ceiling" if note else "cannot pass 1.0" if scenario.name == "cpu" else ""
    row = [
        scenario.name,
        name,
        scenario.examples,
        f"{scenario.latency * 1000:.0f} ms",
        f"{seconds:.2f} s" if seconds is not None else "-",
        f"{median_or_none([entry['bound_seconds'] for entry in chosen]):.2f} s",
        costs,
        f"{efficiency:.3f}" if efficiency is not None else "-",
        cap,
        judged,
        f"{min(loads):.1f}-{max(loads):.1f}" if loads else "-",
    ]
    return row, note


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark what tracing costs an evaluation, next to openinference's DSPy instrumentation in the same run.

Two scenarios (issue 21, item 5), ChainOfThought on the lab LM, 8 threads:

* ``latency``: 50 ms per LM call, 640 examples; target traced / untraced ``dx.evaluate`` wall ≤ 1.05;
* ``zero``: no latency, 2,000 examples; target: dspex's ratio below openinference's.

Four sides run in every repeat, in rotating order so that drift on a shared machine affects all alike:
``dx.evaluate(trace=False)`` and ``dx.evaluate(trace=True)`` (journal on: the traced side stores its spans),
plain ``dspy.Evaluate``, and ``dspy.Evaluate`` with openinference's ``DSPyInstrumentor`` exporting every
span to an in-memory OpenTelemetry exporter. Each side runs in a fresh interpreter (a warm-up on 32 examples,
then the measured run): openinference's ``uninstrument()`` leaves ``Module.__call__`` and ``LM.__call__``
without DSPy's own callback wrappers (measured with openinference-instrumentation-dspy 0.1.48 on DSPy 3.4.1:
a recorder then sees only the adapter calls), so no side may share a process with it. Reported: medians of
wall time, dspex's ratio traced / untraced and openinference's instrumented / plain, and the spans per example
each side recorded (so that neither wins by recording less without it showing).

Needs the ``bench`` extra (``openinference-instrumentation-dspy``, ``opentelemetry-sdk``); without it the
openinference sides are skipped and say so.

Run: python bench/bench_trace.py [--repeats 3] [--scenario latency zero] [--threads 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from _common import format_table, machine_description, median_or_none, prepare_for_measurement, timed, write_json

import dspex_lab as dx

SIDES = ("untraced", "traced", "dspy", "openinference")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """One measured setting: the lab LM's latency per call and the number of examples."""

    name: str
    latency: float
    examples: int


SCENARIOS = {
    "latency": Scenario("latency", latency=0.05, examples=640),
    "zero": Scenario("zero", latency=0.0, examples=2000),
}


class OpenInference:
    """openinference's DSPy instrumentation with an in-memory OpenTelemetry exporter, switched on per run."""

    def __init__(self) -> None:
        from openinference.instrumentation.dspy import DSPyInstrumentor
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.instrumentor = DSPyInstrumentor()

    def __enter__(self) -> OpenInference:
        self.exporter.clear()
        self.instrumentor.instrument(tracer_provider=self.provider)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.instrumentor.uninstrument()

    def take_span_count(self) -> int:
        """Return how many spans the last run exported, and drop them."""
        count = len(self.exporter.get_finished_spans())
        self.exporter.clear()
        return count


def openinference_missing() -> str | None:
    """Return why the openinference sides cannot run (the ``bench`` extra is not installed), or None."""
    try:
        OpenInference()
    except ImportError as error:
        return f"{error} (pip install -e '.[bench]')"
    return None


def run_side(
    side: str,
    scenario: Scenario,
    dataset: dx.Dataset,
    *,
    threads: int,
    folder: Path,
    instrumentation: OpenInference | None,
) -> tuple[float, float, float]:
    """Run one side once; return (wall seconds, mean score, spans recorded per example)."""
    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
    lm = dx.lab_lm("lab/small", latency=scenario.latency)
    examples = len(dataset)
    prepare_for_measurement()
    if side in ("dspy", "openinference"):
        evaluator = dspy.Evaluate(
            devset=list(dataset), metric=dx.metrics.exact_match, num_threads=threads, display_progress=False
        )
        module = program.build(lm=lm)
        if side == "dspy":
            with timed() as timing, dspy.context(lm=lm):
                outcome = evaluator(module)
            return timing.seconds, float(outcome.score) / 100, 0.0
        assert instrumentation is not None
        with instrumentation, timed() as timing, dspy.context(lm=lm):
            outcome = evaluator(module)
        return timing.seconds, float(outcome.score) / 100, instrumentation.take_span_count() / examples
    journal = folder / f"{side}-{len(os.listdir(folder))}.duckdb"
    with timed() as timing, dx.Context(lm=lm, journal=journal, threads=threads):
        result = dx.evaluate(program, dataset, metric=dx.metrics.exact_match, progress=False, trace=side == "traced")
    spans = len(dx.open_journal(journal).spans(result.experiment_id)) if side == "traced" else 0
    return timing.seconds, result.mean, spans / examples


def run_child(side: str, scenario: Scenario, *, threads: int) -> tuple[float, float, float, float]:
    """Run one side in a fresh interpreter (warm-up, then the measured run); return its measurement."""
    command = [sys.executable, __file__, "--child", side, scenario.name, str(scenario.examples), str(threads)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"side {side} of scenario {scenario.name} failed:\n{completed.stderr[-4000:]}")
    seconds, mean, per_example, cpu = json.loads(completed.stdout.strip().splitlines()[-1])
    return seconds, mean, per_example, cpu


def child(side: str, name: str, examples: int, threads: int) -> None:
    """Measure one side in this interpreter; print ``[seconds, mean, spans per example, CPU seconds]`` as JSON.

    CPU seconds are the process's (every thread's) during the measured run: on a machine shared with other
    work they show what a side costs when wall time mostly shows how long it waited for a core.
    """
    scenario = dataclasses.replace(SCENARIOS[name], examples=examples)
    instrumentation = OpenInference() if side == "openinference" else None
    dataset = dx.Dataset(dx.datasets.arithmetic(scenario.examples, seed=0), name=f"trace-bench-{scenario.name}")
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        # Warm-up: imports, caches, the instrumentation's first wrap.
        run_side(side, scenario, dataset[:32], threads=threads, folder=folder, instrumentation=instrumentation)
        cpu = time.process_time()
        measured = run_side(side, scenario, dataset, threads=threads, folder=folder, instrumentation=instrumentation)
        cpu = time.process_time() - cpu
    print(json.dumps([*measured, cpu]))


def measure(scenario: Scenario, *, repeats: int, threads: int, sides: tuple[str, ...]) -> dict[str, Any]:
    """Run the sides of one scenario ``repeats`` times, interleaved; return times, scores and spans per example."""
    times: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}
    scores: dict[str, set[float]] = {side: set() for side in sides}
    spans: dict[str, float] = {}
    for repeat in range(repeats):
        shift = repeat % len(sides)
        for side in sides[shift:] + sides[:shift]:
            seconds, mean, per_example, cpu_seconds = run_child(side, scenario, threads=threads)
            times[side].append(seconds)
            cpu[side].append(cpu_seconds)
            # dspy.Evaluate reports its score as a percentage rounded to two decimals.
            scores[side].add(round(mean, 3))
            spans[side] = per_example
            print(
                f"{scenario.name} repeat {repeat} {side:13s} {seconds:6.2f} s  cpu {cpu_seconds:6.2f} s  "
                f"mean={mean:.4f}  spans/example={per_example:.1f}",
                flush=True,
            )
    return {
        "times": times,
        "medians": {side: median_or_none(values) for side, values in times.items()},
        "cpu": cpu,
        "cpu_medians": {side: median_or_none(values) for side, values in cpu.items()},
        "scores": {k: sorted(v) for k, v in scores.items()},
        "spans": spans,
    }


def report(scenario: Scenario, measured: dict[str, Any]) -> list[list[str]]:
    """Return the table rows of one scenario: each side's medians, and the two tracing ratios (wall and CPU)."""
    wall, cpu, spans = measured["medians"], measured["cpu_medians"], measured["spans"]
    pairs = [("dx.evaluate", "untraced", "traced"), ("dspy.Evaluate", "dspy", "openinference")]
    rows = []
    for label, plain, traced in pairs:
        if traced not in wall:
            continue
        rows.append([scenario.name, f"{label}", f"{wall[plain]:.2f} s", f"{cpu[plain]:.2f} s", "", "", ""])
        rows.append(
            [
                scenario.name,
                f"{label} + {'dspex trace' if traced == 'traced' else 'openinference'}",
                f"{wall[traced]:.2f} s",
                f"{cpu[traced]:.2f} s",
                f"{wall[traced] / wall[plain]:.3f}",
                f"{cpu[traced] / cpu[plain]:.3f}",
                f"{spans[traced]:.1f}",
            ]
        )
    return rows


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), default=["latency", "zero"])
    parser.add_argument("--examples", type=int, default=None, help="override every scenario's example count")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs=4, metavar=("SIDE", "SCENARIO", "EXAMPLES", "THREADS"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        side, name, examples, threads = arguments.child
        child(side, name, int(examples), int(threads))
        return 0

    missing = openinference_missing()
    if missing is not None:
        print(f"openinference sides skipped: {missing}", flush=True)
    sides = SIDES if missing is None else tuple(side for side in SIDES if side != "openinference")
    results: dict[str, Any] = {}
    rows: list[list[str]] = []
    for name in arguments.scenario:
        scenario = SCENARIOS[name]
        if arguments.examples is not None:
            scenario = dataclasses.replace(scenario, examples=arguments.examples)
        measured = measure(scenario, repeats=arguments.repeats, threads=arguments.threads, sides=sides)
        results[name] = measured
        rows += report(scenario, measured)
    print()
    headers = ["scenario", "side", "median wall", "median CPU", "wall ratio", "CPU ratio", "spans per example"]
    print(format_table(headers, rows))
    if "latency" in results:
        medians = results["latency"]["medians"]
        ratio = medians["traced"] / medians["untraced"]
        print(f"\nlatency: dspex traced / untraced {ratio:.3f} (target <= 1.05: {'PASS' if ratio <= 1.05 else 'FAIL'})")
    if "zero" in results and "openinference" in results["zero"]["medians"]:
        medians = results["zero"]["medians"]
        ours, theirs = medians["traced"] / medians["untraced"], medians["openinference"] / medians["dspy"]
        verdict = "PASS" if ours < theirs else "FAIL"
        print(f"zero latency: dspex {ours:.3f} vs openinference {theirs:.3f} (target: dspex lower: {verdict})")
    consistent = all(
        len(set().union(*(set(values) for values in measured["scores"].values()))) == 1 for measured in results.values()
    )
    print(f"scores identical across sides and repeats: {consistent}")
    if arguments.json:
        write_json(arguments.json, {"machine": machine_description(), "results": results})
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())

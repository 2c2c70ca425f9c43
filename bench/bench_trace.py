"""Benchmark the cost of tracing an evaluation, with ``dspy.Evaluate`` (no tracing) as the anchor.

Scenario (issue 4): zero-latency lab LM, ChainOfThought, 2,000 examples, 8 threads, journal on.
Three sides run back to back in every repeat, in rotating order: ``dx.evaluate(trace=False)``,
``dx.evaluate(trace=True)`` and ``dspy.Evaluate``. Reported: medians of wall time, the tracing
overhead ``traced / untraced - 1`` (target ≤ 10%), and both against the anchor.

Run: python bench/bench_trace.py [--repeats 3] [--examples 2000] [--threads 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from _common import format_table, machine_description, median_or_none, prepare_for_measurement, timed, write_json

import dspex_lab as dx

SIDES = ("untraced", "traced", "dspy")


def run_side(side: str, program: dx.Program, dataset: dx.Dataset, *, threads: int, folder: Path) -> tuple[float, float]:
    """Run one side once; return (wall seconds, mean score)."""
    lm = dx.lab_lm("lab/small")
    prepare_for_measurement()
    if side == "dspy":
        evaluator = dspy.Evaluate(
            devset=list(dataset), metric=dx.metrics.exact_match, num_threads=threads, display_progress=False
        )
        with timed() as timing, dspy.context(lm=lm):
            outcome = evaluator(program.build(lm=lm))
        return timing.seconds, float(outcome.score) / 100
    journal = folder / f"{side}-{len(list(folder.iterdir()))}.duckdb"
    with timed() as timing, dx.Context(lm=lm, journal=journal, threads=threads):
        result = dx.evaluate(program, dataset, metric=dx.metrics.exact_match, progress=False, trace=side == "traced")
    return timing.seconds, result.mean


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", default=None)
    arguments = parser.parse_args()

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
    dataset = dx.Dataset(dx.datasets.arithmetic(arguments.examples, seed=0), name="trace-bench")
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    scores: dict[str, set[float]] = {side: set() for side in SIDES}
    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        run_side("traced", program, dataset[:64], threads=arguments.threads, folder=folder)  # warm-up
        for repeat in range(arguments.repeats):
            order = SIDES[repeat % 3 :] + SIDES[: repeat % 3]
            for side in order:
                seconds, mean = run_side(side, program, dataset, threads=arguments.threads, folder=folder)
                times[side].append(seconds)
                scores[side].add(round(mean, 6))
                print(f"repeat {repeat} {side:9s} {seconds:6.2f} s  mean={mean:.4f}", flush=True)
    medians = {side: median_or_none(times[side]) for side in SIDES}
    overhead = medians["traced"] / medians["untraced"] - 1
    rows = [
        ["untraced dx.evaluate", f"{medians['untraced']:.2f} s", f"{medians['untraced'] / medians['dspy']:.3f}", ""],
        [
            "traced dx.evaluate",
            f"{medians['traced']:.2f} s",
            f"{medians['traced'] / medians['dspy']:.3f}",
            f"overhead {overhead:+.1%} (target <= +10%: {'PASS' if overhead <= 0.10 else 'FAIL'})",
        ],
        ["dspy.Evaluate (anchor)", f"{medians['dspy']:.2f} s", "1.000", ""],
    ]
    print()
    print(format_table(["side", "median wall", "vs dspy.Evaluate", "tracing"], rows))
    consistent = len(set().union(*scores.values())) == 1
    print(f"\nscores identical across sides and repeats: {consistent}")
    if arguments.json:
        write_json(
            arguments.json,
            {
                "machine": machine_description(),
                "times": times,
                "medians": medians,
                "overhead": overhead,
                "scores": {k: sorted(v) for k, v in scores.items()},
            },
        )
    return 0 if consistent else 1


if __name__ == "__main__":
    sys.exit(main())

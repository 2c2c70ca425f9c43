"""Benchmark what ``dx.autolog()`` costs a plain ``dspy.Evaluate``, against the same call without it.

Two scenarios, ChainOfThought on the lab LM, ``num_threads=8`` (the tracing scenarios of
``bench_trace.py``, smaller so that a run takes a minute or two):

* ``latency``: 50 ms per LM call, 320 examples; the tracing target is a wall ratio ≤ 1.05;
* ``zero``: no latency, 1,000 examples: the worst case, where DSPy's own per-call Python is all
  there is, so the callbacks, the span capture and the journal writes show in full.

In one process, each repeat runs both sides in rotating order (so drift on a shared machine
affects both alike): the bare ``dspy.Evaluate`` call, and the same call with ``dx.autolog(trace=True)``
registered, writing experiment, trials and spans to a DuckDB journal in a temporary folder (the
journal is flushed before the clock stops: ``on_evaluate_end`` finishes the experiment). Reported:
medians of wall time and the ratio autologged / bare, and the scores of both (they must agree).

Run: python bench/bench_autolog.py [--repeats 5] [--scenario latency zero] [--threads 8] [--json PATH]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from _common import format_table, machine_description, median_or_none, prepare_for_measurement, timed, write_json

import dspex_lab as dx

SCENARIOS = {"latency": (0.05, 320), "zero": (0.0, 1000)}
TARGET = 1.05


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


def run_side(devset: list[Any], threads: int, journal: Path | None) -> tuple[float, float]:
    """Return (wall seconds, score) of one ``dspy.Evaluate`` call, autologged into ``journal`` when given."""
    program = dspy.ChainOfThought("question -> answer")
    if journal is not None:
        dx.autolog(journal)
    prepare_for_measurement()
    try:
        with timed() as timing:
            result = dspy.Evaluate(devset=devset, metric=exact, num_threads=threads)(program)
    finally:
        dx.autolog(disable=True)
    return timing.seconds, float(result.score)


def measure(name: str, repeats: int, threads: int, folder: Path) -> dict[str, Any]:
    latency, examples = SCENARIOS[name]
    dspy.configure(lm=dx.lab_lm("lab/small", latency=latency))
    devset = list(dx.datasets.arithmetic(examples))
    run_side(devset[:32], threads, folder / f"{name}-warmup.duckdb")  # imports and first-call costs
    walls: dict[str, list[float]] = {"bare": [], "autolog": []}
    scores: dict[str, set[float]] = {"bare": set(), "autolog": set()}
    for repeat in range(repeats):
        order = ("bare", "autolog") if repeat % 2 == 0 else ("autolog", "bare")
        for side in order:
            journal = folder / f"{name}-{repeat}.duckdb" if side == "autolog" else None
            seconds, score = run_side(devset, threads, journal)
            walls[side].append(seconds)
            scores[side].add(score)
    bare, logged = median_or_none(walls["bare"]), median_or_none(walls["autolog"])
    ratio = logged / bare if bare and logged else None
    return {
        "scenario": name,
        "latency": latency,
        "examples": examples,
        "bare": bare,
        "autolog": logged,
        "ratio": ratio,
        "walls": walls,
        "scores": {side: sorted(values) for side, values in scores.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), default=["latency", "zero"])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        results = [measure(name, arguments.repeats, arguments.threads, Path(folder)) for name in arguments.scenario]
    rows = [
        [
            item["scenario"],
            f"{item['examples']} x {item['latency'] * 1000:.0f} ms",
            f"{item['bare']:.2f} s",
            f"{item['autolog']:.2f} s",
            f"{item['ratio']:.3f}",
            "same" if item["scores"]["bare"] == item["scores"]["autolog"] else "DIFFERENT",
        ]
        for item in results
    ]
    print(format_table(["scenario", "examples", "bare", "autolog", "ratio", "scores"], rows))
    print(f"machine: {machine_description()}")
    if arguments.json:
        write_json(arguments.json, {"machine": machine_description(), "results": results})
    latency = next((item for item in results if item["scenario"] == "latency"), None)
    return 0 if latency is None or (latency["ratio"] is not None and latency["ratio"] <= TARGET) else 1


if __name__ == "__main__":
    raise SystemExit(main())

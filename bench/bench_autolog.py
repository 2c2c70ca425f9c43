"""Benchmark what ``dx.autolog()`` costs a plain ``dspy.Evaluate``, against the same call without it.

Two scenarios, ChainOfThought on the lab LM, ``num_threads=8``:

* ``latency``: 50 ms per LM call, 640 examples: the latency scenario of ``bench_trace.py``, on which
  the tracing target (a wall ratio ≤ 1.05) is set, and so the scenario autolog's target is checked
  on; ``--examples 320`` runs the shorter one of the first measurements, where the fixed cost of a
  run (opening its experiment, finishing it) weighs twice as much;
* ``zero``: no latency, 1,000 examples: the worst case, where DSPy's own per-call Python is all
  there is, so the callbacks, the span capture and the journal writes show in full.

In one process, each repeat runs four sides in rotating order (so drift on a shared machine
affects all alike): the bare ``dspy.Evaluate`` call; the same call with an empty
``dspy.utils.BaseCallback`` registered (``callback``: DSPy's own dispatch, which any callback-based
logger pays, MLflow's and openinference's included); the same call with ``dx.autolog(trace=False)``
(``trials``: experiment and trials journaled, spans captured for tokens but not stored); and with
``dx.autolog(trace=True)`` (``autolog``), writing experiment, trials and spans to a DuckDB journal in
a temporary folder (the journal is flushed before the clock stops: ``on_evaluate_end`` finishes the
experiment). Reported: medians of wall time, the ratios autolog / bare and autolog / callback, and
whether the scores of all sides agree.

Run: python bench/bench_autolog.py [--repeats 5] [--scenario latency zero] [--examples N] [--threads 8] [--json PATH]
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
from dspy.utils import BaseCallback

import dspex_lab as dx

SCENARIOS = {"latency": (0.05, 640), "zero": (0.0, 1000)}
TARGET = 1.05


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


SIDES = ("bare", "callback", "trials", "autolog")


def run_side(side: str, devset: list[Any], *, threads: int, journal: Path) -> tuple[float, float]:
    """Return (wall seconds, score) of one ``dspy.Evaluate`` call on one side (autolog writes to ``journal``)."""
    program = dspy.ChainOfThought("question -> answer")
    if side in ("trials", "autolog"):
        dx.autolog(journal, trace=side == "autolog")
    callbacks = [BaseCallback()] if side == "callback" else []
    prepare_for_measurement()
    try:
        with timed() as timing, dspy.context(callbacks=[*(dspy.settings.callbacks or []), *callbacks]):
            result = dspy.Evaluate(devset=devset, metric=exact, num_threads=threads)(program)
    finally:
        dx.autolog(disable=True)
    return timing.seconds, float(result.score)


def measure(name: str, repeats: int, threads: int, folder: Path, examples: int | None = None) -> dict[str, Any]:
    latency, default_examples = SCENARIOS[name]
    examples = examples or default_examples
    dspy.configure(lm=dx.lab_lm("lab/small", latency=latency))
    devset = list(dx.datasets.arithmetic(examples))
    run_side("autolog", devset[:32], threads=threads, journal=folder / f"{name}-warmup.duckdb")  # first-call costs
    walls: dict[str, list[float]] = {side: [] for side in SIDES}
    scores: dict[str, set[float]] = {side: set() for side in SIDES}
    for repeat in range(repeats):
        order = SIDES[repeat % len(SIDES) :] + SIDES[: repeat % len(SIDES)]
        for side in order:
            seconds, score = run_side(side, devset, threads=threads, journal=folder / f"{name}-{repeat}.duckdb")
            walls[side].append(seconds)
            scores[side].add(score)
    medians = {side: median_or_none(walls[side]) for side in SIDES}
    bare, callback, logged = medians["bare"], medians["callback"], medians["autolog"]
    return {
        "scenario": name,
        "latency": latency,
        "examples": examples,
        **medians,
        "ratio": logged / bare if bare and logged else None,
        "ratio_to_callback": logged / callback if callback and logged else None,
        "walls": walls,
        "scores": {side: sorted(values) for side, values in scores.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), default=["latency", "zero"])
    parser.add_argument("--examples", type=int, help="examples per run instead of the scenario's (640 / 1,000)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", type=Path)
    arguments = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as folder:
        results = [
            measure(name, arguments.repeats, arguments.threads, Path(folder), arguments.examples)
            for name in arguments.scenario
        ]
    rows = [
        [
            item["scenario"],
            f"{item['examples']} x {item['latency'] * 1000:.0f} ms",
            f"{item['bare']:.2f} s",
            f"{item['callback']:.2f} s",
            f"{item['trials']:.2f} s",
            f"{item['autolog']:.2f} s",
            f"{item['ratio']:.3f}",
            f"{item['ratio_to_callback']:.3f}",
            "same" if len({tuple(values) for values in item["scores"].values()}) == 1 else "DIFFERENT",
        ]
        for item in results
    ]
    headers = ["scenario", "examples", "bare", "callback", "trials", "autolog", "autolog/bare", "autolog/callback"]
    headers.append("scores")
    print(format_table(headers, rows))
    print(f"machine: {machine_description()}")
    if arguments.json:
        write_json(arguments.json, {"machine": machine_description(), "results": results})
    latency = next((item for item in results if item["scenario"] == "latency"), None)
    return 0 if latency is None or (latency["ratio"] is not None and latency["ratio"] <= TARGET) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark Optuna's TPE against its random sampler on the lab's pipeline task, at one LM-call budget.

Everything runs on the offline lab LM (``lab/small``, zero latency). For each seed, each sampler
searches the typed variables of ``dx.tasks.pipeline_program()`` (the plan -> solve -> verify
program: its ``rigor`` and each module's ``model``, 24 configurations) with
``dx.optimize(optimizer=dx.OptunaSearch(sampler))`` on the same train and validation splits of
``dx.datasets.arithmetic`` (seeded as in ``bench_optimize.py``), under ``Budget(lm_calls=...)``,
with ``confirm_fraction=0``: the bench's own test split is the held-out test, so the whole budget
goes to the search. The chosen program is then scored on the test split, as is the program as given
(``baseline``). The table gives each row's test mean over seeds with an interval across seeds
(:func:`dspex_lab.stats.score_interval`), and its ratio to the random sampler's mean (the anchor).

Run::

    .venv/bin/python bench/bench_optuna.py --seeds 3 --budget 2000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, write_json

import dspex_lab as dx
from dspex_lab.stats import score_interval

#: The samplers compared, by label: the random sampler is the anchor.
SAMPLERS: dict[str, dict[str, Any]] = {
    "random": {"sampler": "random"},
    "tpe": {"sampler": "tpe"},
    "tpe (4 startup trials)": {"sampler": "tpe", "startup_trials": 4},
}


def split(seed: int, train: int, val: int, test: int) -> tuple[list[Any], list[Any], list[Any]]:
    """Return the seed's train, validation and test splits (the same examples for every sampler)."""
    examples = list(dx.datasets.arithmetic(train + val + test, seed=1000 + seed))
    return examples[:train], examples[train : train + val], examples[train + val :]


def test_mean(program: dx.Program, test: list[Any]) -> float:
    """Return ``program``'s mean on the test split (a failed trial has no score: it counts as wrong here)."""
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        scores = dx.evaluate(program, test, metric=dx.metrics.exact_match, progress=False).example_scores
    return statistics.fmean(float(scores.get(example_id, 0.0)) for example_id in dx.Dataset(test).example_ids)


def run_one(label: str, seed: int, data: tuple[list[Any], list[Any], list[Any]], budget: int) -> dict[str, Any]:
    """Run one sampler on one seed; return its status, spending, choice and test mean."""
    train, val, test = data
    started = time.perf_counter()
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(
            dx.tasks.pipeline_program(), train, val, metric=dx.metrics.exact_match,
            optimizer=dx.OptunaSearch(**SAMPLERS[label]), budget=dx.Budget(lm_calls=budget), seed=seed,
            confirm_fraction=0, progress=False,
        )  # fmt: skip
    trials = result.steps[result.steps["step"] > 0]
    return {
        "sampler": label,
        "seed": seed,
        "status": result.status,
        "lm_calls": int(result.spending["lm_calls"]),
        "study_steps": len(trials) - 1,
        "best": result.best_id,
        "best_values": {key: value for key, value in result.best.values.items() if not key.startswith("demos")},
        "val_best": result.best_result.mean,
        "test_mean": test_mean(result.best, test),
        "seconds": round(time.perf_counter() - started, 1),
    }


def table(runs: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Return the per-sampler table (test mean, interval across seeds, ratio to random) and its JSON."""
    anchor = statistics.fmean(run["test_mean"] for run in runs if run["sampler"] == "random")
    rows, summary = [], {}
    for label in ("baseline", *SAMPLERS):
        means = [run["test_mean"] for run in runs if run["sampler"] == label]
        interval = score_interval(means)
        mean = statistics.fmean(means)
        calls = statistics.fmean(run["lm_calls"] for run in runs if run["sampler"] == label)
        summary[label] = {
            "test_means": means,
            "mean": mean,
            "ci": [interval.low, interval.high],
            "ratio": mean / anchor,
        }
        rows.append(
            [
                label,
                f"{mean:.3f} [{interval.low:.3f}, {interval.high:.3f}]",
                ", ".join(f"{value:.3f}" for value in means),
                f"{mean / anchor:.3f}",
                f"{calls:.0f}",
            ]
        )
    headers = ["sampler", "test mean [95% CI over seeds]", "per seed", "ratio to random", "LM calls"]
    return format_table(headers, rows), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--train", type=int, default=20)
    parser.add_argument("--val", type=int, default=80)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--json", type=Path, default=None, help="also write the runs and the table here")
    arguments = parser.parse_args()
    runs = []
    for seed in range(arguments.seeds):
        data = split(seed, arguments.train, arguments.val, arguments.test)
        baseline = test_mean(dx.tasks.pipeline_program(), data[2])
        runs.append({"sampler": "baseline", "seed": seed, "test_mean": baseline, "lm_calls": 0})
        print(f"seed {seed} baseline (no search): test {baseline:.3f}", flush=True)
        for label in SAMPLERS:
            run = run_one(label, seed, data, arguments.budget)
            runs.append(run)
            print(
                f"seed {seed} {label}: {run['status']}, {run['study_steps']} study trials, {run['lm_calls']} LM calls, "
                f"best {run['best']} {run['best_values']} val {run['val_best']:.3f} test {run['test_mean']:.3f} "
                f"({run['seconds']} s)",
                flush=True,
            )
    text, summary = table(runs)
    print(f"\nBudget(lm_calls={arguments.budget}), valset {arguments.val}, test {arguments.test}\n{text}")
    if arguments.json is not None:
        write_json(arguments.json, {"arguments": vars(arguments), "runs": runs, "table": summary}, default=str)


if __name__ == "__main__":
    main()

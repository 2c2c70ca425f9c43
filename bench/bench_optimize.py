"""Benchmark SIMBA-C against DSPy's SIMBA, MIPROv2 (light) and BootstrapFewShot, measured in one run.

Everything runs on the offline lab LM (``lab/small``, zero latency) and the lab world
documented in ``docs/lab_world.md``. Three tables:

1. ``quality``: for each seed, every optimizer optimizes the same program
   (``dspy.ChainOfThought("question -> answer")``) on the same trainset, with the
   same validation set where the optimizer uses one, all of it: the bench passes
   ``confirm_fraction=0`` because its own test split is the held-out test, so no
   optimizer searches a smaller valset and no budget is held back for a confirmation.
   DSPy's SIMBA runs first, with DSPy's own defaults (``bsize=32, num_candidates=6,
   max_steps=8, max_demos=4``). Its compile's LM calls become SIMBA-C's whole budget
   for that seed (baseline and validation evaluations included), so SIMBA-C never gets
   more calls than the SIMBA run it is compared with. MIPROv2 (``auto="light"``) and
   BootstrapFewShot run with their defaults, and their LM calls are reported. Every
   optimizer's final program is then scored on a held-out test split that no
   optimizer saw. The paired test of SIMBA-C against each optimizer pools the test
   examples of all seeds (exact McNemar on 0/1 scores). Targets: SIMBA-C's test score
   is above DSPy SIMBA's with p < 0.05, or equal at no more than 0.5x its LM calls.
2. ``null``: on ``dx.datasets.null_arithmetic``, where no configuration can help (every
   configuration's expected score is 0.5), each optimizer runs once per seed (``--null-seeds``,
   20 by default) with ``dx.optimize``'s defaults: a confirmation split carved from the valset,
   on which the best is tested against the baseline (one-sided, alpha = 0.05). The table
   prints the share of runs whose headline claims a significant gain, with its 95%
   Clopper-Pearson interval; target: at most alpha. Beside it, for information: how many
   runs changed the program, how often the old headline (a paired test of the best against
   the baseline on the validation data that chose it) would have claimed a gain, and SIMBA-C's
   share of steps with an acceptance.
3. ``overhead``: SIMBA-C with one worker thread on the zero-latency LM. Every trial the
   run journaled is then re-run in the same process through the engine exactly as the
   optimizer ran it (the same evaluator, programs, examples, repeats and temperatures,
   one evaluation per journaled experiment, journal on) but without the optimizer. The
   optimizer's orchestration is the run's process CPU time minus that replay's minus the
   rule-writing LM calls, per trial, as a fraction of a trial's cost through the engine.
   Target: at most 0.10. The engine's own cost over a bare loop (module and metric, no
   engine, no journal) is printed beside it: it is what every evaluation pays.

Usage::

    .venv/bin/python bench/bench_optimize.py                 # 5 seeds, all tables (about 10-15 minutes)
    .venv/bin/python bench/bench_optimize.py --quick         # 1 seed, small sets (about 2 minutes)
    .venv/bin/python bench/bench_optimize.py --tables quality --seeds 3 --json results.json
    .venv/bin/python bench/bench_optimize.py --tables null --null-seeds 20 --optimizers simba-c,simba
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# DSPy's optimizers draw progress bars inside their compile; a benchmark prints tables only.
os.environ.setdefault("TQDM_DISABLE", "1")

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import format_table, machine_description, write_json

import dspex_lab as dx
from dspex_lab.optimization._dspy import DspyOptimizer
from dspex_lab.stats import paired_test

OPTIMIZERS = ("simba-c", "simba", "mipro", "bootstrap")
# DSPy's own defaults (dspy 3.4.1), where dx's bridge defaults are smaller to keep lab runs short.
DSPY_DEFAULTS: dict[str, dict[str, Any]] = {
    "simba": {"bsize": 32, "num_candidates": 6, "max_steps": 8, "max_demos": 4},
}


@dataclass
class Sizes:
    train: int
    val: int
    test: int


@dataclass
class Outcome:
    """One optimizer run on one seed, scored on the test split."""

    optimizer: str
    seed: int
    status: str
    lm_calls: int
    search_calls: int
    wall_seconds: float
    val_baseline: float
    val_best: float
    test_scores: list[float] = field(repr=False)
    baseline_test_scores: list[float] = field(repr=False)
    steps: int = 0
    accepted_steps: int = 0
    changed: bool = False
    claims: bool = False
    selection_claims: bool = False

    @property
    def test_mean(self) -> float:
        return float(np.mean(self.test_scores))

    @property
    def baseline_test_mean(self) -> float:
        return float(np.mean(self.baseline_test_scores))


def program() -> dx.Program:
    return dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


def split(dataset: str, sizes: Sizes, seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    make = dx.datasets.null_arithmetic if dataset == "null" else dx.datasets.arithmetic
    examples = list(make(sizes.train + sizes.val + sizes.test, seed=1000 + seed))
    return (
        examples[: sizes.train],
        examples[sizes.train : sizes.train + sizes.val],
        examples[sizes.train + sizes.val :],
    )


def test_scores(best: dx.Program, test: list[Any]) -> list[float]:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.evaluate(best, test, metric=dx.metrics.exact_match, progress=False)
    scores = result.example_scores
    # A failed trial has no score: it counts as wrong here, and the count is printed separately.
    return [float(scores.get(example_id, 0.0)) for example_id in dx.Dataset(test).example_ids]


def search_calls(result: dx.OptimizationResult) -> int:
    """LM calls of the optimizer's search: everything for SIMBA-C, the compile for DSPy's (not our measurements)."""
    if result.optimizer == "simba-c":
        return int(result.spending["lm_calls"])
    journal = result.journal
    measured = journal.sql(
        "select coalesce(sum(lm_calls), 0) as calls from trials where starts_with(experiment_id, ?) "
        "and ends_with(experiment_id, '/val')",
        [result.run_id + "/"],
    )["calls"].iloc[0]
    return int(result.spending["lm_calls"]) - int(measured)


def run_one(
    name: str,
    seed: int,
    data: tuple[list[Any], list[Any], list[Any]],
    folder: Path,
    budget: int | None,
    confirm_fraction: float | None = None,
) -> tuple[Outcome, dx.OptimizationResult]:
    """Run one optimizer on one seed; ``confirm_fraction`` goes to ``dx.optimize`` (None: its default)."""
    train, val, test = data
    optimizer: Any = dx.SimbaC() if name == "simba-c" else DspyOptimizer(name, **DSPY_DEFAULTS.get(name, {}))
    started = time.perf_counter()
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=folder / f"{name}-{seed}.duckdb", threads=2):
        result = dx.optimize(
            program(),
            train,
            val,
            metric=dx.metrics.exact_match,
            optimizer=optimizer,
            budget=dx.Budget(lm_calls=budget) if budget else None,
            seed=seed,
            confirm_fraction=confirm_fraction,
            progress=False,
        )
    wall = time.perf_counter() - started
    steps = result.steps[result.steps["step"] > 0]
    outcome = Outcome(
        optimizer=name,
        seed=seed,
        status=result.status,
        lm_calls=int(result.spending["lm_calls"]),
        search_calls=search_calls(result),
        wall_seconds=wall,
        val_baseline=result.baseline.mean,
        val_best=result.best_result.mean,
        test_scores=test_scores(result.best, test) if test else [],
        baseline_test_scores=[],
        steps=len(steps),
        accepted_steps=int(steps["accepted_id"].notna().sum()),
        changed=result.best_id != "c0",
        claims=result.confirmation is not None and result.confirmation.significant,
        selection_claims=selection_claims(result),
    )
    return outcome, result


def selection_claims(result: dx.OptimizationResult, alpha: float = 0.05) -> bool:
    """Whether the old headline claimed a gain: the best against the baseline on the data that chose it."""
    if result.best_id == "c0":
        return False
    before, after = result.baseline.example_scores, result.best_result.example_scores
    shared = before.index.intersection(after.index)
    test = paired_test(before.loc[shared].to_numpy(), after.loc[shared].to_numpy())
    return bool(test.p_value < alpha and test.mean_difference > 0)


def quality(dataset: str, seeds: range, sizes: Sizes, names: tuple[str, ...], folder: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for seed in seeds:
        data = split(dataset, sizes, seed)
        baseline_test = test_scores(program(), data[2])
        budget = None
        order = ["simba", *[name for name in names if name != "simba"]] if "simba" in names else list(names)
        for name in order:
            limit = budget if name == "simba-c" else None
            # The bench's own test split is the held-out test here: no confirmation split, so every
            # optimizer searches the whole valset and SIMBA-C's budget holds nothing back for one.
            outcome, _ = run_one(name, seed, data, folder, limit, confirm_fraction=0)
            outcome.baseline_test_scores = baseline_test
            if name == "simba":
                budget = max(outcome.search_calls, 1)
            outcomes.append(outcome)
            print(
                f"  {dataset} seed {seed} {name:9s} {outcome.status:9s} test {outcome.test_mean:.3f} "
                f"(baseline {outcome.baseline_test_mean:.3f}) search calls {outcome.search_calls:,} "
                f"all calls {outcome.lm_calls:,} {outcome.wall_seconds:.1f} s",
                flush=True,
            )
    return outcomes


def quality_table(outcomes: list[Outcome], names: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    rows = []
    summary: dict[str, Any] = {}
    ours = [outcome for outcome in outcomes if outcome.optimizer == "simba-c"]
    for name in names:
        mine = [outcome for outcome in outcomes if outcome.optimizer == name]
        if not mine:
            continue
        pooled = np.concatenate([outcome.test_scores for outcome in mine])
        baseline = np.concatenate([outcome.baseline_test_scores for outcome in mine])
        calls = float(np.median([outcome.search_calls for outcome in mine]))
        row: dict[str, Any] = {
            "optimizer": name,
            "test mean": f"{pooled.mean():.3f}",
            "baseline": f"{baseline.mean():.3f}",
            "gain": f"{pooled.mean() - baseline.mean():+.3f}",
            "search LM calls (median)": f"{calls:,.0f}",
            "stopped by budget": sum(outcome.status == "stopped" for outcome in mine),
        }
        if name != "simba-c" and ours:
            our_scores = np.concatenate([outcome.test_scores for outcome in ours])
            test = paired_test(pooled, our_scores)
            our_calls = float(np.median([outcome.search_calls for outcome in ours]))
            row["SIMBA-C minus it"] = f"{test.mean_difference:+.3f} [{test.ci[0]:+.3f}, {test.ci[1]:+.3f}]"
            row["p"] = f"{test.p_value:.3g} ({test.test})"
            row["calls ratio"] = f"{our_calls / calls:.2f}" if calls else "-"
            summary[name] = {
                "difference": test.mean_difference,
                "p_value": test.p_value,
                "calls_ratio": our_calls / calls if calls else None,
            }
        else:
            row["SIMBA-C minus it"], row["p"], row["calls ratio"] = "", "", ""
        summary.setdefault(name, {}).update({"test_mean": float(pooled.mean()), "search_calls": calls})
        rows.append(row)
    headers = list(rows[0]) if rows else []
    return format_table(headers, [[row[key] for key in headers] for row in rows]), summary


def null_runs(seeds: range, sizes: Sizes, names: tuple[str, ...], folder: Path) -> list[Outcome]:
    """Each optimizer once per seed on the null task, with dx.optimize's defaults (a confirmation split)."""
    outcomes: list[Outcome] = []
    for seed in seeds:
        data = split("null", sizes, seed)
        for name in names:
            outcome, result = run_one(name, seed, data, folder, None)
            outcome.baseline_test_scores = outcome.test_scores if not outcome.changed else []
            outcomes.append(outcome)
            print(f"  null seed {seed} {name:9s} {outcome.wall_seconds:.1f} s: {result.headline}", flush=True)
    return outcomes


def null_table(outcomes: list[Outcome], alpha: float = 0.05) -> tuple[str, dict[str, Any]]:
    from scipy.stats import binomtest

    rows, summary = [], {}
    for name in sorted({outcome.optimizer for outcome in outcomes}):
        mine = [outcome for outcome in outcomes if outcome.optimizer == name]
        runs = len(mine)
        claims = sum(outcome.claims for outcome in mine)
        low, high = binomtest(claims, runs).proportion_ci(0.95, method="exact")
        changed = sum(outcome.changed for outcome in mine)
        old = sum(outcome.selection_claims for outcome in mine)
        steps = sum(outcome.steps for outcome in mine)
        accepted = sum(outcome.accepted_steps for outcome in mine)
        rate = claims / runs
        rows.append(
            [
                name,
                runs,
                f"{claims}/{runs} = {rate:.3f} [{low:.3f}, {high:.3f}]",
                f"<= {alpha}: " + ("PASS" if rate <= alpha else "FAIL"),
                f"{changed}/{runs}",
                f"{old}/{runs}",
                f"{accepted}/{steps}" if name == "simba-c" else "-",
            ]
        )
        summary[name] = {
            "runs": runs, "headline_claims": claims, "rate": rate, "ci": [low, high], "changed_runs": changed,
            "selection_data_claims": old, "accepted_steps": accepted, "steps": steps,
        }  # fmt: skip
    headers = [
        "optimizer", "runs", "headline claims a gain [95% CI]", "target", "program changed",
        "old headline (selection data) claims", "SIMBA-C steps accepted",
    ]  # fmt: skip
    return format_table(headers, rows), summary


def bare_replay_seconds(result: dx.OptimizationResult, examples: dict[str, Any]) -> tuple[float, int]:
    """Re-run every trial of the run bare (module and metric, one thread, no engine): its CPU seconds, and n."""
    import dspy

    journal = result.journal
    rows = journal.sql(
        "select t.experiment_id, t.example_id, e.program_spec from trials t join experiments e "
        "on e.id = t.experiment_id where starts_with(t.experiment_id, ?) order by t.experiment_id",
        [result.run_id + "/"],
    )
    lm = dx.lab_lm("lab/small")
    modules: dict[str, Any] = {}
    cpu = time.process_time()
    with dspy.context(lm=lm):
        for experiment_id, example_id, spec in rows.itertuples(index=False):
            module = modules.get(experiment_id)
            if module is None:
                module = modules[experiment_id] = dx.Program.from_dict(json.loads(spec)).build(lm=lm)
            example = examples[example_id]
            dx.metrics.exact_match(example, module(**example.inputs()))
    return time.process_time() - cpu, len(rows)


def engine_replay_seconds(result: dx.OptimizationResult, examples: dict[str, Any], folder: Path) -> float:
    """Re-run every trial of the run through the engine exactly as SIMBA-C ran them, without SIMBA-C: CPU seconds.

    The same evaluator (``CandidateEvaluator``: run_trials, one thread, metering, a journal
    writer), the same programs, examples, repeats and LM temperatures, one evaluation per
    journaled experiment; what is left of the optimizer's CPU is its own orchestration.
    """
    from dspex_lab.engine import RunPolicy, ThreadExecutor
    from dspex_lab.journal import ExperimentRecord, open_journal
    from dspex_lab.optimization._evaluator import CandidateEvaluator
    from dspex_lab.optimization._spending import Spending
    from dspex_lab.session import Experiment

    rows = result.journal.sql(
        "select t.experiment_id, t.example_id, t.example_index, t.repeat, e.program_spec from trials t "
        "join experiments e on e.id = t.experiment_id where e.parent_id = ? "
        "order by t.experiment_id, t.example_index",
        [result.run_id],
    )
    lm = dx.lab_lm("lab/small")
    hot = lm.copy(temperature=dx.SimbaC().exploration_temperature)
    journal = open_journal(folder / "replay.duckdb")
    groups = list(rows.groupby(["experiment_id", "repeat"], sort=False))
    with journal.hold(), Experiment.start(journal, ExperimentRecord(kind="optimization", name="replay")) as run:
        evaluator = CandidateEvaluator(
            run, metric=dx.metrics.exact_match, lm=lm, executor=ThreadExecutor(1), policy=RunPolicy(),
            spending=Spending(),
        )  # fmt: skip
        cpu = time.process_time()
        for (experiment_id, repeat), group in groups:
            spec = json.loads(group["program_spec"].iloc[0])
            pairs = zip(group["example_id"], group["example_index"], strict=True)
            items = [(key, int(index), examples[key]) for key, index in pairs]
            record = ExperimentRecord(
                id=f"{run.id}/{experiment_id}", kind="evaluation", name=experiment_id, parent_id=run.id,
                role="exploration" if "/explore" in experiment_id else "candidate-screen",
            )  # fmt: skip
            evaluator.evaluate(
                dx.Program.from_dict(spec), items, record=record, lm=hot if "/explore" in experiment_id else lm,
                repeat=int(repeat),
            )  # fmt: skip
        run.close()
        return time.process_time() - cpu


def overhead(sizes: Sizes, seed: int, folder: Path) -> tuple[str, dict[str, Any]]:
    train, val, _ = split("arithmetic", sizes, seed)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=folder / "overhead.duckdb", threads=1):
        cpu = time.process_time()
        result = dx.optimize(
            program(), train, val, metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=4, patience=4), seed=seed, progress=False,
        )  # fmt: skip
        cpu = time.process_time() - cpu
    examples = dict(zip(dx.Dataset(train + val).example_ids, train + val, strict=True))
    bare, n = bare_replay_seconds(result, examples)
    engine = engine_replay_seconds(result, examples, folder)
    proposals = float(result.spending.get("proposal_seconds") or 0.0)
    # Not clamped: a negative figure is the noise of two CPU measurements, and says so.
    orchestration = (cpu - engine - proposals) / n
    ratio = orchestration / (engine / n)
    engine_share = (engine - bare) / bare
    table = format_table(
        ["trials", "optimize CPU", "engine replay CPU", "bare replay CPU", "rule calls", "optimizer / trial",
         "trial (engine)", "ratio", "target", "engine over bare (info)"],
        [[
            n, f"{cpu:.2f} s", f"{engine:.2f} s", f"{bare:.2f} s", f"{proposals:.2f} s",
            f"{orchestration * 1e3:.3f} ms", f"{engine / n * 1e3:.3f} ms", f"{ratio:.3f}",
            "<= 0.10: " + ("PASS" if ratio <= 0.10 else "FAIL"), f"{engine_share:.3f}",
        ]],
    )  # fmt: skip
    summary = {"trials": n, "cpu": cpu, "engine_cpu": engine, "bare_cpu": bare, "proposal_seconds": proposals}
    return table, {**summary, "ratio": ratio, "engine_over_bare": engine_share}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--null-seeds", type=int, default=20, help="runs per optimizer on the null task")
    parser.add_argument("--quick", action="store_true", help="1 seed, small sets")
    parser.add_argument("--tables", default="quality,null,overhead")
    parser.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    parser.add_argument("--json", default=None)
    arguments = parser.parse_args()
    logging.getLogger("dspy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sizes = Sizes(train=60, val=100, test=150) if arguments.quick else Sizes(train=100, val=200, test=300)
    seeds = range(1 if arguments.quick else arguments.seeds)
    names = tuple(arguments.optimizers.split(","))
    tables = set(arguments.tables.split(","))
    print("machine:", machine_description())
    print(f"sizes: {asdict(sizes)}; seeds: {list(seeds)}; optimizers: {names}")
    report: dict[str, Any] = {"machine": machine_description(), "sizes": asdict(sizes)}
    with tempfile.TemporaryDirectory(prefix="dspex-bench-optimize-") as folder:
        path = Path(folder)
        if "quality" in tables:
            print("\nquality (arithmetic):")
            outcomes = quality("arithmetic", seeds, sizes, names, path)
            table, report["quality"] = quality_table(outcomes, names)
            print(table)
        if "null" in tables:
            print("\nnull task (no configuration can help):")
            null_names = tuple(name for name in ("simba-c", "simba", "bootstrap") if name in names)
            null_seeds = range(3 if arguments.quick else arguments.null_seeds)
            null_sizes = Sizes(train=sizes.train, val=sizes.val, test=0)
            outcomes = null_runs(null_seeds, null_sizes, null_names, path)
            table, report["null"] = null_table(outcomes)
            print(table)
        if "overhead" in tables:
            print("\noverhead (SIMBA-C, one thread, zero-latency lab LM):")
            table, report["overhead"] = overhead(sizes, 0, path)
            print(table)
    if arguments.json:
        write_json(arguments.json, report)
    print(json.dumps({key: value for key, value in report.items() if key != "machine"}, default=float)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())

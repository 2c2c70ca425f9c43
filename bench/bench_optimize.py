"""Benchmark SIMBA-C against DSPy's SIMBA, MIPROv2, GEPA and BootstrapFewShot, measured in one run.

Everything runs on the offline lab LM (``lab/small``, zero latency) and the lab world
documented in ``docs/lab_world.md``. Five tables (``--tables``; the first three by default):

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
4. ``curve``: quality against cost. SIMBA-C, DSPy SIMBA, MIPROv2, GEPA and BootstrapFewShot
   each run at every budget of ``--budgets`` (500, 2,000 and 8,000 search LM calls by default)
   on every seed, on each task of ``--task`` (``single``: the ChainOfThought program above;
   ``pipeline``: ``dx.tasks.pipeline_program()``, a plan -> solve -> verify program; both on
   ``dx.datasets.arithmetic``). Every optimizer of a seed gets the same train and val splits
   and ``confirm_fraction=0`` (as the quality table), and its final program is scored on the
   seed's held-out test split. *Search LM calls* (one definition for all): every LM call an
   optimizer makes to choose its program, its proposals and its own evaluations and validations
   included: all of SIMBA-C's run (baseline and validation on the valset included, since it
   selects on them) and all of a DSPy optimizer's compile (its own validation on its split of
   the trainset included). Not counted: the final test scoring, and the bridge's measurement of
   a DSPy optimizer's baseline and final choice on the valset, which DSPy never sees (run with
   ``validate_top=0``, so exactly two valset evaluations). Each run is hard-capped with
   ``dx.Budget(lm_calls=...)``: the budget for SIMBA-C, the budget plus those two measurements
   for a DSPy optimizer, so a DSPy run that finishes spent at most the budget on its search and
   one that would spend more is stopped (and keeps the baseline). DSPy's settings are scaled to
   the budget (see ``dspy_settings``); SIMBA-C adapts its own schedule to the budget. The table
   prints the calls each run used, the paired test of SIMBA-C against each optimizer at each
   budget (exact McNemar on the test examples of all seeds pooled), and the target: SIMBA-C's
   test score is at least every other's at every budget (higher with p < 0.05, or equal within
   the CI: not lower with p < 0.05).
5. ``ablation``: on ``--task`` (``pipeline`` for the issue's table) at 2,000 calls
   (``--ablation-budget``; ``--variants`` runs some of the variants only), SIMBA-C
   against itself without one part at a time (``share=False``, ``cross_bootstrap=False``,
   ``learned_moves=False``, ``upstream_rules=False``) and with ``mutate`` drawing its moves from a
   sampler instead of the effect ledger (``move_sampler="tpe"``, and ``"random"`` as its control):
   each variant's test mean with its CI and its paired difference to the full SIMBA-C with the
   difference's CI.

Runs of the curve and ablation are independent and deterministic (the lab LM draws from its
inputs, never from shared state), so ``--processes N`` spreads them over N processes with
identical results; every run's line is printed as it ends, the tables in a fixed order.

Usage::

    .venv/bin/python bench/bench_optimize.py                 # 5 seeds, all tables (about 10-15 minutes)
    .venv/bin/python bench/bench_optimize.py --quick         # 1 seed, small sets (about 2 minutes)
    .venv/bin/python bench/bench_optimize.py --tables quality --seeds 3 --json results.json
    .venv/bin/python bench/bench_optimize.py --tables null --null-seeds 20 --optimizers simba-c,simba
    .venv/bin/python bench/bench_optimize.py --tables curve --task single --budgets 500,2000,8000 --seeds 5
    .venv/bin/python bench/bench_optimize.py --tables curve,ablation --task single,pipeline --seeds 5 --processes 2
    .venv/bin/python bench/bench_optimize.py --tables ablation --task pipeline --ablation-budget 8000 \
        --variants "move_sampler='tpe',move_sampler='random'" --seeds 5 --processes 2
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import redirect_stdout
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


# -- the quality-vs-cost curve and the ablation ------------------------------------------------------

CURVE_OPTIMIZERS = ("simba-c", "simba", "mipro", "gepa", "bootstrap")
BUDGETS = (500, 2000, 8000)
ABLATION_BUDGET = 2000
# SIMBA-C without one of its composition parts at a time (issue 23's flags; all True is the full SIMBA-C),
# and with its mutations drawn from a sampler (issue 24): TPE, and uniform random jumps as TPE's control.
ABLATIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("full", {}),
    ("share=False", {"share": False}),
    ("cross_bootstrap=False", {"cross_bootstrap": False}),
    ("learned_moves=False", {"learned_moves": False}),
    ("upstream_rules=False", {"upstream_rules": False}),
    ("move_sampler='tpe'", {"move_sampler": "tpe"}),
    ("move_sampler='random'", {"move_sampler": "random"}),
)
# What the scaled DSPy settings aim to spend of the budget: the rest is the margin for what the
# settings do not fix exactly (SIMBA's final evaluation, MIPROv2's bootstrap, GEPA's reflections).
FILL = 0.9


def pipeline_program() -> dx.Program:
    """Return the plan -> solve -> verify program of the lab world (``dx.tasks.pipeline_program``)."""
    make = getattr(dx.tasks, "pipeline_program", None)
    if make is None:
        raise RuntimeError("this dspex_lab has no dx.tasks.pipeline_program (the lab world's pipeline task)")
    return make()  # type: ignore[no-any-return]


TASKS = {"single": program, "pipeline": pipeline_program}


@dataclass(frozen=True)
class CurveJob:
    """One optimizer run of the curve or the ablation: which task, budget, optimizer (and flags) and seed."""

    task: str
    budget: int
    optimizer: str
    seed: int
    flags: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        return self.optimizer + "".join(f" {key}={value}" for key, value in self.flags)


@dataclass(frozen=True)
class SeedData:
    """A seed's splits and what the unchanged program costs and scores on them (shared by every run of the seed)."""

    train: list[Any]
    val: list[Any]
    test: list[Any]
    val_calls: int
    baseline_test: list[float]

    @property
    def calls_per_example(self) -> float:
        return max(1.0, self.val_calls / max(1, len(self.val)))


@dataclass
class CurveRun:
    """One finished (or failed) run of a :class:`CurveJob`, scored on the seed's test split."""

    job: CurveJob
    status: str
    detail: str
    settings: dict[str, Any]
    cap: int
    lm_calls: int
    search_calls: int
    wall_seconds: float
    test_scores: list[float] = field(repr=False)

    @property
    def test_mean(self) -> float:
        return float(np.mean(self.test_scores)) if self.test_scores else float("nan")


def seed_data(task: str, sizes: Sizes, seed: int) -> SeedData:
    """Draw a seed's splits and measure the unchanged program on them: its valset calls and its test scores."""
    train, val, test = split("arithmetic", sizes, seed)
    baseline = TASKS[task]()
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        measured = dx.evaluate(baseline, val, metric=dx.metrics.exact_match, progress=False)
    return SeedData(train, val, test, measured.lm_calls, test_scores(baseline, test))


def dspy_settings(name: str, runs: float) -> dict[str, Any]:
    """Scale a DSPy optimizer's settings to ``runs`` program runs (the budget over the program's calls per example).

    The coefficients are the lab's measured cost of each setting on the single task (train 100;
    MIPROv2 and GEPA select on 30 of it): SIMBA about 250 runs per step at ``bsize=16,
    num_candidates=4`` and 470 at DSPy's ``32, 6``, plus about 100 and 200 for its final
    evaluation; MIPROv2 about 37 per trial (a 30-example mini-batch, a full evaluation every 10)
    plus 100 for its bootstrap and proposals; GEPA about 1.1 LM calls per metric call. Where the
    budget cannot pay for six such MIPROv2 trials (the pipeline's three calls per example at 500
    calls), its mini-batches shrink to 10 examples (about 12 runs a trial, 90 fixed) instead of
    running three 30-example trials past the cap. GEPA may finish one evaluation of its 30-example
    split past ``max_metric_calls``, which small budgets must leave room for.
    BootstrapFewShot spends a few dozen calls whatever its settings; more rounds and demos are
    what a larger budget can buy it.
    """
    target = FILL * runs
    if name == "simba":
        if target < 1200:
            return {"bsize": 16, "num_candidates": 4, "max_steps": max(1, int((target - 100) // 250))}
        return {"bsize": 32, "num_candidates": 6, "max_steps": max(1, int((target - 200) // 470))}
    if name == "mipro":
        trials = int((target - 100) // 37)
        if trials < 6:
            return {
                "auto": None,
                "num_candidates": 6,
                "num_trials": max(3, int((target - 90) // 12)),
                "minibatch_size": 10,
            }
        return {"auto": None, "num_candidates": min(24, max(6, trials // 4)), "num_trials": trials}
    if name == "gepa":
        return {"max_metric_calls": max(10, int(min(0.85 * runs, 0.95 * runs - 40)))}
    if name == "bootstrap":
        if runs < 1000:
            return {"max_bootstrapped_demos": 4, "max_labeled_demos": 4, "max_rounds": 1}
        if runs < 4000:
            return {"max_bootstrapped_demos": 8, "max_labeled_demos": 8, "max_rounds": 2}
        return {"max_bootstrapped_demos": 16, "max_labeled_demos": 16, "max_rounds": 4}
    raise ValueError(f"no budget scaling for optimizer {name!r}; choose from {', '.join(CURVE_OPTIMIZERS)}")


def curve_optimizer(job: CurveJob, data: SeedData) -> tuple[Any, dict[str, Any], int]:
    """Return the job's optimizer, the settings it was given, and its hard cap on the run's LM calls."""
    if job.optimizer == "simba-c":
        flags = dict(job.flags)
        return dx.SimbaC(**flags), flags, job.budget
    settings = dspy_settings(job.optimizer, job.budget / data.calls_per_example)
    # validate_top=0: the bridge measures only the baseline and DSPy's final choice on the valset.
    return DspyOptimizer(job.optimizer, validate_top=0, **settings), settings, job.budget + 2 * data.val_calls


def run_curve_job(job: CurveJob, data: SeedData, folder: str) -> CurveRun:
    """Run one job; a failure (bad settings, a task this dspex_lab lacks, a DSPy error) is a row, never a crash."""
    logging.getLogger("dspy").setLevel(logging.ERROR)
    # DSPy also warns on the root logger (a per-predictor LM it cannot deep-copy, once per candidate).
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    settings: dict[str, Any] = {}
    cap = job.budget
    try:
        optimizer, settings, cap = curve_optimizer(job, data)
        name = f"{job.task}-{job.budget}-{job.label.replace(' ', '-')}-{job.seed}.duckdb"
        # DSPy's bootstrap prints a line per demo set; the bench prints its own line per run.
        with (
            dx.Context(lm=dx.lab_lm("lab/small"), journal=Path(folder) / name, threads=2),
            redirect_stdout(io.StringIO()),
        ):
            result = dx.optimize(
                TASKS[job.task](), data.train, data.val, metric=dx.metrics.exact_match, optimizer=optimizer,
                budget=dx.Budget(lm_calls=cap), seed=job.seed, confirm_fraction=0, progress=False,
            )  # fmt: skip
        scores = test_scores(result.best, data.test)
        status, detail = result.status, result.status_detail or ""
        calls, search = int(result.spending["lm_calls"]), search_calls(result)
    except Exception as error:
        status, detail, scores, calls, search = "failed", f"{type(error).__name__}: {error}", [], 0, 0
    wall = time.perf_counter() - started
    return CurveRun(job, status, detail.splitlines()[0] if detail else "", settings, cap, calls, search, wall, scores)


def run_jobs(
    jobs: list[CurveJob], data: dict[tuple[str, int], SeedData], folder: Path, processes: int
) -> list[CurveRun]:
    """Run the jobs, in ``processes`` processes when more than one; return their runs in the jobs' order."""

    def announce(run: CurveRun) -> None:
        job = run.job
        print(
            f"  {job.task} budget {job.budget:,} seed {job.seed} {job.label:28s} {run.status:8s} "
            f"test {run.test_mean:.3f} search calls {run.search_calls:,} (cap {run.cap:,}, all {run.lm_calls:,}) "
            f"{run.wall_seconds:.1f} s" + (f": {run.detail}" if run.status == "failed" else ""),
            flush=True,
        )

    if processes <= 1:
        runs = []
        for job in jobs:
            runs.append(run_curve_job(job, data[job.task, job.seed], str(folder)))
            announce(runs[-1])
        return runs
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child would inherit DSPy's and the journal's threads and locks mid-use.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        futures = [pool.submit(run_curve_job, job, data[job.task, job.seed], str(folder)) for job in jobs]
        runs = []
        for future in futures:
            runs.append(future.result())
            announce(runs[-1])
        return runs


def pooled(runs: list[CurveRun], seeds: list[int]) -> np.ndarray:
    """The test scores of ``runs`` on the given seeds, concatenated in seed order."""
    by_seed = {run.job.seed: run.test_scores for run in runs}
    return np.concatenate([np.asarray(by_seed[seed], dtype=float) for seed in seeds]) if seeds else np.array([])


def scored_seeds(*groups: list[CurveRun]) -> list[int]:
    """The seeds on which every group has a test score (a failed run has none)."""
    sets = [{run.job.seed for run in group if run.test_scores} for group in groups]
    return sorted(set.intersection(*sets)) if sets else []


def versus(ours: list[CurveRun], theirs: list[CurveRun], alpha: float = 0.05) -> dict[str, Any]:
    """SIMBA-C (``ours``) against another optimizer on the seeds both scored: paired test and verdict."""
    seeds = scored_seeds(ours, theirs)
    if not seeds:
        return {"seeds": 0, "verdict": "no paired data"}
    test = paired_test(pooled(theirs, seeds), pooled(ours, seeds))
    if test.p_value < alpha and test.mean_difference > 0:
        verdict = "higher"
    elif test.p_value < alpha and test.mean_difference < 0:
        verdict = "LOWER"
    else:
        verdict = "equal within CI"
    return {
        "seeds": len(seeds), "difference": test.mean_difference, "ci": [test.ci[0], test.ci[1]],
        "p_value": test.p_value, "test": test.test, "verdict": verdict,
    }  # fmt: skip


def interval_text(scores: np.ndarray) -> str:
    if not len(scores):
        return "-"
    interval = dx.stats.score_interval(scores)
    return f"{scores.mean():.3f} [{interval.low:.3f}, {interval.high:.3f}]"


def calls_text(runs: list[CurveRun]) -> str:
    calls = [run.search_calls for run in runs if run.status != "failed"]
    if not calls:
        return "-"
    return f"{np.median(calls):,.0f} ({min(calls):,}-{max(calls):,})"


def settings_text(runs: list[CurveRun]) -> str:
    settings = next((run.settings for run in runs if run.settings), {})
    return ", ".join(f"{key}={value}" for key, value in settings.items()) or "defaults"


def result_text(runs: list[CurveRun]) -> str:
    """A group's pooled test mean with its CI, or how many of its runs failed (their errors follow the table)."""
    failed = sum(run.status == "failed" for run in runs)
    if failed:
        return f"FAILED in {failed}/{len(runs)} seeds (below)"
    return interval_text(pooled(runs, scored_seeds(runs)))


def failure_notes(runs: list[CurveRun]) -> str:
    """One line per distinct error of the failed runs, naming where it happened."""
    notes: dict[tuple[str, str], list[int]] = {}
    for run in runs:
        if run.status == "failed":
            notes.setdefault((f"budget {run.job.budget:,} {run.job.label}", run.detail), []).append(run.job.seed)
    return "\n".join(f"  {where} (seeds {seeds}): {detail}" for (where, detail), seeds in notes.items())


def curve_rows(at: list[CurveRun], names: tuple[str, ...]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One budget's rows (an optimizer each, SIMBA-C against it) and their summary, with the budget's verdict."""
    ours = [run for run in at if run.job.optimizer == "simba-c" and run.test_scores]
    rows, summary, verdicts = [], {}, []
    for name in names:
        mine = [run for run in at if run.job.optimizer == name]
        if not mine:
            continue
        scores = pooled(mine, scored_seeds(mine))
        row: dict[str, Any] = {
            "optimizer": name, "settings": settings_text(mine), "test mean [95% CI]": result_text(mine),
            "search calls median (range)": calls_text(mine),
            "stopped by cap": sum(run.status == "stopped" for run in mine),
        }  # fmt: skip
        entry: dict[str, Any] = {
            "test_mean": float(scores.mean()) if len(scores) else None,
            "search_calls": [run.search_calls for run in mine], "settings": mine[0].settings,
            "statuses": [run.status for run in mine],
        }  # fmt: skip
        if name != "simba-c" and ours:
            compared = entry["simba_c_vs"] = versus(ours, mine)
            verdicts.append(compared["verdict"])
            if compared["seeds"]:
                low, high = compared["ci"]
                row["SIMBA-C minus it [95% CI]"] = f"{compared['difference']:+.3f} [{low:+.3f}, {high:+.3f}]"
                row["p"] = f"{compared['p_value']:.3g}"
            row["SIMBA-C is"] = compared["verdict"]
        summary[name] = entry
        rows.append(row)
    met = bool(ours) and all(verdict in ("higher", "equal within CI", "no paired data") for verdict in verdicts)
    summary["target_met"] = met
    why = "SIMBA-C >= every other (higher with p < 0.05, or equal within the CI)" if ours else "SIMBA-C has no result"
    rows.append({"optimizer": "TARGET", "test mean [95% CI]": f"{'MET' if met else 'NOT MET'}: {why}"})
    return rows, summary


def curve_table(runs: list[CurveRun], budgets: tuple[int, ...], names: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The curve for one task: a row per budget and optimizer, SIMBA-C against each, a verdict per budget."""
    rows, summary = [], {}
    for budget in budgets:
        budget_rows, summary[str(budget)] = curve_rows([run for run in runs if run.job.budget == budget], names)
        rows += [{"budget": f"{budget:,}", **row} for row in budget_rows]
    headers = [
        "budget", "optimizer", "settings", "test mean [95% CI]", "search calls median (range)", "stopped by cap",
        "SIMBA-C minus it [95% CI]", "p", "SIMBA-C is",
    ]  # fmt: skip
    table = format_table(headers, [[row.get(key, "") for key in headers] for row in rows])
    notes = failure_notes(runs)
    return table + (f"\nfailed runs:\n{notes}" if notes else ""), summary


def ablations(variants: str | None) -> tuple[tuple[str, dict[str, Any]], ...]:
    """The ablation's variants: the full SIMBA-C and those of ``--variants`` (comma-separated labels; None: all)."""
    if variants is None:
        return ABLATIONS
    wanted = set(variants.split(","))
    unknown = wanted - {label for label, _ in ABLATIONS}
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {[label for label, _ in ABLATIONS[1:]]}")
    return tuple((label, flags) for label, flags in ABLATIONS if not flags or label in wanted)


def ablation_table(
    runs: list[CurveRun], variants: tuple[tuple[str, dict[str, Any]], ...] = ABLATIONS
) -> tuple[str, dict[str, Any]]:
    """SIMBA-C without each composition part, or with a move sampler, against the full SIMBA-C: paired differences."""
    full = [run for run in runs if not run.job.flags]
    rows, summary = [], {}
    for label, flags in variants:
        mine = [run for run in runs if dict(run.job.flags) == flags]
        scores = pooled(mine, scored_seeds(mine))
        entry: dict[str, Any] = {"test_mean": float(scores.mean()) if len(scores) else None}
        difference, p_text = "", ""
        seeds = scored_seeds(full, mine)
        if flags and seeds:
            test = paired_test(pooled(full, seeds), pooled(mine, seeds))
            difference = f"{test.mean_difference:+.3f} [{test.ci[0]:+.3f}, {test.ci[1]:+.3f}]"
            p_text = f"{test.p_value:.3g} ({test.test})"
            entry.update(difference=test.mean_difference, ci=[test.ci[0], test.ci[1]], p_value=test.p_value)
        name = f"SimbaC({label})" if flags else "SimbaC() (full)"
        rows.append([name, result_text(mine), calls_text(mine), difference, p_text, len(seeds) if flags else ""])
        summary[label] = entry
    headers = ["variant", "test mean [95% CI]", "search calls median (range)", "minus full [95% CI]", "p", "seeds"]
    notes = failure_notes(runs)
    return format_table(headers, rows) + (f"\nfailed runs:\n{notes}" if notes else ""), summary


def curve_and_ablation(
    tables: set[str], task: str, options: argparse.Namespace, sizes: Sizes, folder: Path
) -> dict[str, Any]:
    """Run the curve and/or the ablation on one task, print their tables and return their summaries."""
    seeds = list(range(1 if options.quick else options.seeds))
    budgets = tuple(int(value) for value in options.budgets.split(","))
    names = tuple(name for name in options.optimizers.split(",") if name in CURVE_OPTIMIZERS)
    jobs = []
    if "curve" in tables:
        jobs += [CurveJob(task, budget, name, seed) for budget in budgets for seed in seeds for name in names]
    if "ablation" in tables:
        for _, flags in ablations(options.variants):
            job_flags = tuple(sorted(flags.items()))
            jobs += [CurveJob(task, options.ablation_budget, "simba-c", seed, job_flags) for seed in seeds]
    # The full SIMBA-C at the ablation's budget is one run, whichever table asked for it.
    jobs = list(dict.fromkeys(jobs))
    started = time.perf_counter()
    try:
        data = {(task, seed): seed_data(task, sizes, seed) for seed in seeds}
    except Exception as error:
        print(f"\n{task} task unavailable: {type(error).__name__}: {error}")
        return {"error": f"{type(error).__name__}: {error}"}
    print(
        f"\n{task} task: {len(jobs)} runs, {options.processes} process(es); calls per example (baseline): "
        + ", ".join(f"seed {seed} {data[task, seed].calls_per_example:.2f}" for seed in seeds),
        flush=True,
    )
    runs = run_jobs(jobs, data, folder, options.processes)
    wall = time.perf_counter() - started
    baseline = np.concatenate([data[task, seed].baseline_test for seed in seeds])
    report: dict[str, Any] = {"seconds": wall, "baseline_test_mean": float(baseline.mean()),
                              "runs": [curve_run_json(run) for run in runs]}  # fmt: skip
    if "curve" in tables:
        table, report["curve"] = curve_table([run for run in runs if not run.job.flags], budgets, names)
        print(f"\ncurve ({task} task; unchanged program's test mean {baseline.mean():.3f}):\n{table}")
    if "ablation" in tables:
        budget = options.ablation_budget
        chosen = [run for run in runs if run.job.optimizer == "simba-c" and run.job.budget == budget]
        table, report["ablation"] = ablation_table(chosen, ablations(options.variants))
        print(f"\nablation ({task} task, {budget:,} calls):\n{table}")
    print(f"\n{task} task: {len(runs)} runs in {wall / 60:.1f} minutes; load average now {os.getloadavg()[0]:.2f}")
    return report


def curve_run_json(run: CurveRun) -> dict[str, Any]:
    job = run.job
    return {
        "task": job.task, "budget": job.budget, "optimizer": job.label, "seed": job.seed, "status": run.status,
        "detail": run.detail, "settings": run.settings, "cap": run.cap, "lm_calls": run.lm_calls,
        "search_calls": run.search_calls, "seconds": run.wall_seconds, "test_mean": run.test_mean,
        "test_correct": int(sum(run.test_scores)), "test_n": len(run.test_scores),
    }  # fmt: skip


def commit() -> str | None:
    """The repository's HEAD commit, recorded with the measurement (None outside a git checkout)."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return found.stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--null-seeds", type=int, default=20, help="runs per optimizer on the null task")
    parser.add_argument("--quick", action="store_true", help="1 seed, small sets")
    parser.add_argument("--tables", default="quality,null,overhead", help="any of quality,null,overhead,curve,ablation")
    parser.add_argument(
        "--optimizers",
        default=None,
        help=f"default: {','.join(OPTIMIZERS)} ({','.join(CURVE_OPTIMIZERS)} for the curve)",
    )
    parser.add_argument("--task", default="single", help=f"the curve's and ablation's tasks, of {','.join(TASKS)}")
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)), help="the curve's search LM call budgets")
    parser.add_argument("--processes", type=int, default=1, help="processes for the curve's and ablation's runs")
    parser.add_argument("--ablation-budget", type=int, default=ABLATION_BUDGET, help="the ablation's LM-call budget")
    parser.add_argument(
        "--variants", default=None, help="the ablation's variants beside the full SIMBA-C, by label (default: all)"
    )
    parser.add_argument("--json", default=None)
    arguments = parser.parse_args()
    curve_names = arguments.optimizers or ",".join(CURVE_OPTIMIZERS)
    arguments.optimizers = arguments.optimizers or ",".join(OPTIMIZERS)
    logging.getLogger("dspy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    sizes = Sizes(train=60, val=100, test=150) if arguments.quick else Sizes(train=100, val=200, test=300)
    seeds = range(1 if arguments.quick else arguments.seeds)
    names = tuple(arguments.optimizers.split(","))
    tables = set(arguments.tables.split(","))
    tasks = arguments.task.split(",")
    if set(tasks) - set(TASKS):
        parser.error(f"--task {arguments.task}: choose from {', '.join(TASKS)}")
    print("machine:", machine_description())
    shown = names if tables & {"quality", "null", "overhead"} else tuple(curve_names.split(","))
    print(f"sizes: {asdict(sizes)}; seeds: {list(seeds)}; optimizers: {shown}")
    report: dict[str, Any] = {"machine": machine_description(), "sizes": asdict(sizes), "commit": commit()}
    print("commit:", report["commit"])
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
        if tables & {"curve", "ablation"}:
            options = argparse.Namespace(**{**vars(arguments), "optimizers": curve_names})
            for task in tasks:
                report[task] = curve_and_ablation(tables, task, options, sizes, path)
    if arguments.json:
        write_json(arguments.json, report)
    summary = {key: value for key, value in report.items() if key not in ("machine", "single", "pipeline")}
    print(json.dumps(summary, default=float)[:2000])
    return 0


if __name__ == "__main__":
    sys.exit(main())

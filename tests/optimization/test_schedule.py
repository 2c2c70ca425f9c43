"""SIMBA-C's schedule: sizes from the budget, explicit values win, a journaled schedule, no extra false acceptances."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import dspy
import numpy as np
import pytest
from scipy.stats import binomtest

import dspex_lab as dx
import dspex_lab.optimization._optimize as optimize_module
import dspex_lab.optimization._simba_c as simba_c
from dspex_lab.errors import OptimizerError
from dspex_lab.optimization._acceptance import judge
from dspex_lab.optimization._evaluator import Scores, evaluation_id
from dspex_lab.optimization._schedule import (
    DEFAULTS,
    LARGE_LEVEL,
    SCHEDULED,
    look_alpha,
    look_ends,
    plan_schedule,
    validation_subset,
)
from dspex_lab.optimization._simba_c import SimbaC, SimbaCRun
from dspex_lab.optimization._space import Candidate


def sizes(budget: int | None, *, train: int = 100, val: int = 200, confirm: int = 0, **explicit) -> dict:
    optimizer = SimbaC(**explicit).scheduled(
        budget=dx.Budget(lm_calls=budget) if budget is not None else None,
        train_size=train,
        val_size=val,
        confirm_size=confirm,
    )
    return {name: getattr(optimizer, name) for name in SCHEDULED}


def test_without_an_lm_call_budget_the_run_is_as_before_and_a_large_one_keeps_dspy_simbas_sizes() -> None:
    assert sizes(None) == dict(DEFAULTS) and not DEFAULTS["bootstrap"]
    dollars_only = SimbaC().scheduled(budget=dx.Budget(usd=1.0), train_size=100, val_size=200)
    assert {name: getattr(dollars_only, name) for name in SCHEDULED} == dict(DEFAULTS)
    # A large LM-call budget: DSPy SIMBA's sizes and one look, after a bootstrap step.
    for budget in (int(LARGE_LEVEL * 200), 8_000):
        assert sizes(budget) == {**DEFAULTS, "bootstrap": True}


def test_small_budgets_get_smaller_steps_sequential_validation_and_a_bootstrap_step() -> None:
    small, middle = sizes(500), sizes(2_000)
    assert small == {
        "bsize": 12, "num_candidates": 3, "num_sources": 2, "full_evals": 1, "validation_looks": 2, "bootstrap": True,
    }  # fmt: skip
    assert middle["validation_looks"] == 2 and middle["bootstrap"] and middle["full_evals"] == 2
    # The sizes grow with the budget, and reach DSPy SIMBA's at LARGE_LEVEL validation sets.
    budgets = [300, 500, 1_000, 2_000, 3_000, 3_999, 4_000]
    for name in ("bsize", "num_candidates", "num_sources", "full_evals"):
        values = [sizes(budget)[name] for budget in budgets]
        assert values == sorted(values) and values[-1] == DEFAULTS[name]
    assert all(sizes(budget)["bootstrap"] for budget in budgets)
    # At 500 calls the baseline's first look, the bootstrap step and a regular step (trajectories, screening
    # with a merge, one candidate to the first look) fit in the budget; DSPy SIMBA's sizes did not fit one step.
    bootstrap = small["num_sources"] * small["bsize"] + 100
    step = (small["num_sources"] + small["num_candidates"] + 1) * small["bsize"] + small["full_evals"] * 100
    assert 100 + bootstrap + step <= 500
    assert 200 + (DEFAULTS["num_sources"] + DEFAULTS["num_candidates"]) * DEFAULTS["bsize"] + 200 > 500
    # The confirmation's trials are held back before the budget is sized: 500 calls with 60 to confirm
    # leave 350 for the search.
    plan = SimbaC().scheduled(budget=dx.Budget(lm_calls=500), train_size=100, val_size=140, confirm_size=60)
    assert plan.schedule.level == pytest.approx(350 / 140)
    # A derived mini-batch is never larger than the trainset.
    assert sizes(None, train=10)["bsize"] == 10


def test_explicit_values_win_over_the_schedule_and_survive_a_replan() -> None:
    chosen = SimbaC(bsize=20, validation_looks=1, bootstrap=False).scheduled(
        budget=dx.Budget(lm_calls=500), train_size=100, val_size=200
    )
    assert (chosen.bsize, chosen.validation_looks, chosen.bootstrap) == (20, 1, False)
    assert (chosen.num_candidates, chosen.num_sources, chosen.full_evals) == (3, 2, 1)
    assert chosen.schedule.explicit == ("bsize", "validation_looks", "bootstrap")
    # Planned again with a measured 3 calls per trial: the explicit ones stay, the derived ones shrink.
    replanned = chosen.scheduled(budget=dx.Budget(lm_calls=6_000), train_size=100, val_size=200, calls_per_trial=3)
    assert (replanned.bsize, replanned.validation_looks, replanned.bootstrap) == (20, 1, False)
    assert replanned.schedule.level == pytest.approx(10.0)
    assert replanned.num_candidates == sizes(2_000)["num_candidates"]
    assert plan_schedule({"bsize": None}, lm_calls=500, train_size=100, val_size=200).explicit == ()
    with pytest.raises(OptimizerError, match=r"SimbaC\(validation_looks=0\): must be a positive integer"):
        SimbaC(validation_looks=0)
    with pytest.raises(OptimizerError, match=r"SimbaC\(bootstrap='yes'\)"):
        SimbaC(bootstrap="yes")


def test_looks_split_the_valset_and_alpha_adds_up() -> None:
    assert look_ends(200, 2) == (100, 200)
    assert look_ends(201, 2) == (101, 201)
    assert look_ends(39, 2) == (39,)  # a look needs at least 20 more examples
    for ends in ((100, 200), (67, 134, 200), (200,)):
        spent = [look_alpha(0.05, ends, look) for look in range(len(ends))]
        assert sum(spent) == pytest.approx(0.05)
    assert look_alpha(0.05, (200,), 0) == 0.05  # one look: the single test at alpha, as before


class NullSteps:
    """Drive ``SimbaCRun._validate_in_looks`` on simulated steps where no candidate is better (no LM, no journal).

    Its ``_validate`` judges simulated scores up to the run's current look, as the run's does on the
    validation set: a candidate stopped for futility keeps its scores up to where it stopped.
    """

    def __init__(self, *, looks: int, alpha: float, candidates: int, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.ids = [f"e{index}" for index in range(200)]
        self.candidates = [Candidate(f"c{index + 1}", None, "c0", 1, "demo", "") for index in range(candidates)]
        self.run = SimbaCRun.__new__(SimbaCRun)
        self.run.optimizer = SimbaC(alpha=alpha, validation_looks=looks)
        self.run.look_ends = look_ends(len(self.ids), looks)
        self.run.look, self.run.decision_alpha = 0, alpha
        self.run._validate = self._validate

    def _scores(self, name: str) -> Scores:
        return Scores(name, dict(zip(self.ids, self.rng.normal(size=len(self.ids)).tolist(), strict=True)))

    def _until(self, scores: Scores, end: int) -> Scores:
        return Scores(scores.experiment_id, {key: scores.by_example[key] for key in self.ids[:end]})

    def _validate(self, step: object) -> list:
        run = self.run
        end = run.look_ends[run.look]
        evaluated = [
            (candidate, self._until(self.scores[candidate.id], run.stopped_at.get(candidate.id, end)))
            for candidate in self.candidates
        ]
        incumbent = self._until(self.scores["c0"], end)
        return judge(incumbent, evaluated, ids=self.ids[:end], method="t", alpha=run.decision_alpha)

    def accepts(self) -> bool:
        """Simulate one step; return whether it accepted a candidate."""
        self.scores = {name: self._scores(name) for name in ["c0", *(item.id for item in self.candidates)]}
        self.run.stopped_at = {}
        return any(verdict.significant for verdict in self.run._validate_in_looks(SimpleNamespace()))


def false_acceptances(steps: int, **options) -> int:
    simulation = NullSteps(**options)
    return sum(simulation.accepts() for _ in range(steps))


def test_sequential_validation_does_not_inflate_the_type_i_error(monkeypatch) -> None:
    steps, alpha = 1_000, 0.05
    accepted = false_acceptances(steps, looks=2, alpha=alpha, candidates=2, seed=0)
    # Not above alpha: an exact one-sided binomial test of "the rate exceeds alpha" does not reject.
    assert binomtest(accepted, steps, alpha, alternative="greater").pvalue > 0.05
    assert accepted / steps <= alpha + 0.005
    # The control: testing every look at the full alpha (no spending) inflates it well past alpha.
    monkeypatch.setattr(simba_c, "look_alpha", lambda alpha, ends, look: alpha)
    naive = false_acceptances(steps, looks=2, alpha=alpha, candidates=2, seed=0)
    assert binomtest(naive, steps, alpha, alternative="greater").pvalue < 0.01


def test_a_futile_candidate_is_not_evaluated_further_and_one_look_is_the_single_test() -> None:
    simulation = NullSteps(looks=2, alpha=0.05, candidates=1, seed=3)
    outcomes = []
    for _ in range(40):
        simulation.accepts()
        outcomes.append(dict(simulation.run.stopped_at))
    stopped = [item for item in outcomes if item]
    assert stopped and all(item == {"c1": 100} for item in stopped)
    single = NullSteps(looks=1, alpha=0.05, candidates=1, seed=3)
    single.accepts()
    assert single.run.stopped_at == {} and single.run.decision_alpha == 0.05


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(120, seed=23))


def test_a_budgeted_run_records_its_schedule_and_a_resume_reproduces_it(tmp_path: Path, data) -> None:
    calls = []

    def counting_metric(example, prediction, trace=None):
        calls.append(1)
        return dx.metrics.exact_match(example, prediction)

    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="qa")
    options = dict(metric=counting_metric, optimizer=dx.SimbaC(max_steps=3), budget=dx.Budget(lm_calls=260))
    options.update(seed=5, confirm_fraction=0, progress=False)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2) as active:
        first = dx.optimize(program, data[:40], data[40:120], **options)
        schedule = first.config["optimizer_config"]["schedule"]
        assert schedule["lm_calls"] == 260 and schedule["bootstrap"] and schedule["validation_looks"] == 2
        assert schedule["explicit"] == []
        steps = first.steps
        assert "schedule: bsize=12" in steps.iloc[0]["detail"]
        assert first.candidates.set_index("candidate_id").loc["c1", "strategy"] == "bootstrap"
        # The bootstrap candidate was tested at a look of the sequential validation, at that look's alpha.
        verdict = active.journal.step_rows(first.run_id)[1]["evaluations"][0]
        assert verdict["candidate"] == "c1" and verdict["looks"] == 2 and verdict["look_alpha"] == 0.025
        assert verdict["n"] == 40 * verdict["look"]
        active.journal.finish_experiment(first.run_id, status="interrupted")
        calls.clear()
        again = dx.optimize(program, data[:40], data[40:120], **options, resume=first.run_id)
    assert calls == []
    assert again.config["optimizer_config"] == first.config["optimizer_config"]
    assert again.steps.equals(first.steps) and again.best == first.best


def test_on_the_null_task_a_small_budget_accepts_almost_nothing() -> None:
    accepted = steps = claims = 0
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        for seed in range(4):
            examples = list(dx.datasets.null_arithmetic(200, seed=300 + seed))
            result = dx.optimize(
                dx.Program("dspy.ChainOfThought", signature="question -> answer", name="qa"),
                examples[:60], examples[60:200], metric=dx.metrics.exact_match,
                budget=dx.Budget(lm_calls=500), seed=seed, progress=False,
            )  # fmt: skip
            assert result.config["optimizer_config"]["validation_looks"] == 2
            steps += int((result.steps["step"] > 0).sum())
            accepted += int(result.steps["accepted_id"].notna().sum())
            claims += int(result.confirmation is not None and result.confirmation.significant)
    assert steps >= 8
    assert accepted / steps <= 0.1 and claims == 0


def test_a_pipeline_is_planned_at_one_call_per_predictor_and_again_at_what_its_baseline_measured(monkeypatch) -> None:
    data = list(dx.datasets.arithmetic(120, seed=29))
    options = dict(metric=dx.metrics.exact_match, optimizer=dx.SimbaC(max_steps=1), budget=dx.Budget(lm_calls=1_500))
    options.update(seed=0, confirm_fraction=0, progress=False)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(dx.tasks.pipeline_program(), data[:40], data[40:120], **options)
        # Planned as if a trial cost one call (the plan before this change): the baseline measures three.
        monkeypatch.setattr(optimize_module, "planned_calls_per_trial", lambda program: 1.0)
        replanned = dx.optimize(dx.tasks.pipeline_program(), data[:40], data[40:120], **options)
    planned = result.config["optimizer_config"]["schedule"]
    # Three predictors, three calls a trial, from the start: the plan is the one the baseline confirms.
    assert planned["calls_per_trial"] == 3.0 and planned["level"] == pytest.approx(500 / 80)
    assert planned["bsize"] == 16 and "at 3 calls per trial" in result.steps.iloc[0]["detail"]
    assert planned["validation_size"] == planned["valset_size"] == 80
    first = replanned.config["optimizer_config"]["schedule"]
    assert first["calls_per_trial"] == 1.0 and first["bsize"] == 30
    detail = replanned.steps.iloc[0]["detail"]
    assert "bsize=16" in detail and "at 3 calls per trial" in detail


def test_a_budget_short_of_the_whole_valset_validates_on_a_seeded_subset() -> None:
    # The pipeline at 500 calls (3 a trial): 166 trials, 2.5 valsets of 66 examples.
    plan = plan_schedule({}, lm_calls=500, train_size=100, val_size=200, calls_per_trial=3.0)
    assert (plan.validation_size, plan.valset_size, plan.subset) == (66, 200, True)
    assert plan.level == pytest.approx(500 / 3 / 66) and plan.validation_looks == 1
    assert plan.to_dict()["validation_size"] == 66 and "66 of the 200 validation examples" in plan.describe()
    # One call a trial (the single task at 500 calls) affords the whole valset: nothing changes there.
    whole = plan_schedule({}, lm_calls=500, train_size=100, val_size=200)
    assert (whole.validation_size, whole.subset, whole.validation_looks) == (200, False, 2)
    # Explicit values still win; a replan keeps the subset the baseline was judged on.
    looks = plan_schedule({"validation_looks": 2}, lm_calls=500, train_size=100, val_size=200, calls_per_trial=3.0)
    assert looks.validation_looks == 2 and looks.explicit == ("validation_looks",)
    kept = plan_schedule({}, lm_calls=500, train_size=100, val_size=200, calls_per_trial=2.0, validation_size=66)
    assert kept.validation_size == 66 and kept.level == pytest.approx(250 / 66)
    # The subset is seeded, in valset order, the whole valset when the size allows.
    chosen = validation_subset(200, 66, seed=4)
    assert chosen == sorted(set(chosen)) and len(chosen) == 66 and chosen == validation_subset(200, 66, seed=4)
    assert chosen != validation_subset(200, 66, seed=5) and validation_subset(30, 66, seed=4) == list(range(30))


def test_a_pipeline_run_judges_every_candidate_on_the_same_subset_and_the_step_check_counts_lm_calls(
    tmp_path: Path,
) -> None:
    data = list(dx.datasets.arithmetic(120, seed=31))
    options = dict(metric=dx.metrics.exact_match, seed=2, confirm_fraction=0, progress=False)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2) as active:
        result = dx.optimize(
            dx.tasks.pipeline_program(), data[:40], data[40:120], budget=dx.Budget(lm_calls=450), **options
        )
        schedule = result.config["optimizer_config"]["schedule"]
        assert (schedule["validation_size"], schedule["valset_size"]) == (60, 80)
        assert "judged on a seeded subset of 60 of the 80" in result.steps.iloc[0]["detail"]
        rows = active.journal.step_rows(result.run_id)
        verdicts = [verdict for row in rows for verdict in row["evaluations"]]
        assert verdicts and all(verdict["n"] == 60 for verdict in verdicts)
        judged = [row["detail"] for row in rows if row["evaluations"]]
        assert all("(judged on 60 of 80 validation examples, a seeded subset)" in detail for detail in judged)
        bootstrap = result.candidates.set_index("candidate_id").loc["c1"]
        assert bootstrap["strategy"] == "bootstrap"
        # Each module's demos from its own step of the incumbent's trajectories: as many in every module.
        counts = {len(bootstrap["values"][f"demos_{module}"]) for module in ("plan", "solve", "verify")}
        assert len(counts) == 1 and counts.pop() >= 1
        # The baseline's validation trials are the seeded subset's examples.
        ids = dx.Dataset(data[40:120]).example_ids
        subset = {ids[position] for position in validation_subset(80, 60, seed=2)}
        for candidate in ("c0", "c1"):
            trials = active.journal.trials(evaluation_id(result.run_id, candidate, "val"))
            assert set(trials["example_id"]) == subset
        # 200 calls: 40 examples twice and a mini-batch of 12, at 3 calls each, do not fit.
        with pytest.raises(OptimizerError, match=r"need at least 276 LM calls \(92 trials at 3 calls each"):
            dx.optimize(dx.tasks.pipeline_program(), data[:40], data[40:120], budget=dx.Budget(lm_calls=200), **options)

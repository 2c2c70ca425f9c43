"""Objectives with guardrails: one-sided bounds checked against scipy, acceptance by gain and guardrails, the front."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import dspy
import numpy as np
import pandas as pd
import pytest
from oracle import oracle_program
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

import dspex_lab as dx
from dspex_lab.errors import OptimizerError
from dspex_lab.journal import open_journal
from dspex_lab.optimization import OptimizationResult
from dspex_lab.optimization._acceptance import decision_reason, judge
from dspex_lab.optimization._dspy import DspyOptimizer
from dspex_lab.optimization._evaluator import Scores
from dspex_lab.optimization._objective import (
    check_guardrails,
    clopper_pearson_bound,
    mean_bound,
    quantile_upper_bound,
)
from dspex_lab.optimization._pareto import PARETO_COLUMNS, front_mask, pareto_points
from dspex_lab.optimization._space import Candidate

# -- the bounds, against scipy ----------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_the_mean_bound_is_scipys_one_sided_t_interval(alpha: float) -> None:
    values = np.random.default_rng(4).gamma(2.0, 0.001, size=37)
    upper = stats.ttest_1samp(values, 0.0, alternative="less").confidence_interval(1 - alpha).high
    lower = stats.ttest_1samp(values, 0.0, alternative="greater").confidence_interval(1 - alpha).low
    assert mean_bound(values, alpha=alpha) == pytest.approx(upper)
    assert mean_bound(values, alpha=alpha, upper=False) == pytest.approx(lower)
    assert math.isnan(mean_bound([0.1], alpha=alpha))


@pytest.mark.parametrize("n", [59, 60, 100, 251])
@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_the_p95_bound_is_the_order_statistic_of_scipys_quantile_test(n: int, alpha: float) -> None:
    values = np.random.default_rng(n).lognormal(-1.0, 0.5, size=n)
    expected = stats.quantile_test(values, q=1.0, p=0.95, alternative="less").confidence_interval(1 - alpha).high
    bound = quantile_upper_bound(values, quantile=0.95, alpha=alpha)
    assert bound == pytest.approx(float(expected))
    assert bound in values  # an order statistic: one of the values, whatever their distribution


def test_with_fewer_than_59_latencies_no_p95_bound_exists_at_95_percent() -> None:
    # The largest of n values is below the 95th percentile with probability 0.95**n: above 0.05 until n = 59.
    assert math.isinf(quantile_upper_bound(np.arange(58.0), quantile=0.95, alpha=0.05))
    assert quantile_upper_bound(np.arange(59.0), quantile=0.95, alpha=0.05) == 58.0
    assert math.isnan(stats.quantile_test(np.arange(58.0), q=1, p=0.95, alternative="less").confidence_interval().high)


def test_the_p95_bound_covers_at_the_promised_rate() -> None:
    rng = np.random.default_rng(11)
    true_p95 = stats.expon.ppf(0.95)
    covered = [
        quantile_upper_bound(rng.exponential(size=80), quantile=0.95, alpha=0.05) >= true_p95 for _ in range(2000)
    ]
    # Conservative by construction (an order statistic's coverage is at least 1 - alpha); 2000 draws: +-1.5%.
    assert np.mean(covered) >= 0.935


@pytest.mark.parametrize(("errors", "n"), [(0, 60), (3, 60), (17, 40), (40, 40)])
def test_the_error_rate_bound_is_clopper_pearsons(errors: int, n: int) -> None:
    upper = stats.binomtest(errors, n, alternative="less").proportion_ci(0.95, method="exact").high
    lower = stats.binomtest(errors, n, alternative="greater").proportion_ci(0.95, method="exact").low
    assert clopper_pearson_bound(errors, n, alpha=0.05) == pytest.approx(upper)
    assert clopper_pearson_bound(errors, n, alpha=0.05, upper=False) == pytest.approx(lower)
    # One-sided at 95% is the upper end of statsmodels' two-sided 90% "beta" interval.
    assert clopper_pearson_bound(errors, n, alpha=0.05) == pytest.approx(
        proportion_confint(errors, n, alpha=0.10, method="beta")[1]
    )


# -- checks and the acceptance rule on constructed scores ------------------------------------------

IDS = [f"e{index}" for index in range(80)]


def scores(name: str, right: int, *, cost: float | None = 1e-4, latency: float = 0.2, errors: int = 0) -> Scores:
    """``right`` of the first examples scored 1, the rest 0, the last ``errors`` failed; costs and latencies set."""
    scored = IDS[: len(IDS) - errors]
    return Scores(
        name,
        {key: 1.0 if index < right else 0.0 for index, key in enumerate(scored)},
        errors={key: "RuntimeError" for key in IDS[len(scored) :]},
        predictions={key: json.dumps({"answer": "7" * (1 + index % 3)}) for index, key in enumerate(scored)},
        costs=dict.fromkeys(IDS, cost),
        latencies={key: latency * (1 + index / 100) for index, key in enumerate(IDS)},
    )


def candidate(name: str) -> Candidate:
    return Candidate(name, dx.Program("dspy.Predict", signature="question -> answer"), "c0", 1, "mutate", "")


EXAMPLES = {key: dspy.Example(question=f"q{key}", answer="7").with_inputs("question") for key in IDS}


def short(example: dspy.Example, prediction: Any) -> bool:
    return len(str(prediction.answer)) <= 2


def test_each_check_reports_its_estimate_bound_and_sentence() -> None:
    objective = dx.Objective(
        guardrails=[
            dx.Guardrail("cost", at_most=2e-4),
            dx.Guardrail("latency_p95", at_most=0.25),
            dx.Guardrail("error_rate", at_most=0.1),
            dx.Guardrail("metric", metric=short, at_least=0.5),
        ]
    )
    cost, latency, errors, metric = check_guardrails(
        objective, scores("c1", 40, errors=2), examples=EXAMPLES, alpha=0.05
    )
    assert cost.holds and cost.estimate == pytest.approx(1e-4) and cost.confidence_bound == pytest.approx(1e-4)
    latencies = list(scores("c1", 40).latencies.values())
    assert latency.confidence_bound == quantile_upper_bound(latencies, quantile=0.95, alpha=0.05)
    assert not latency.holds and latency.method == "order statistic"
    assert latency.text().startswith("latency p95 0.") and "> 0.25 s bound" in latency.text()
    assert errors.estimate == pytest.approx(2 / 80) and errors.holds
    assert errors.confidence_bound == pytest.approx(clopper_pearson_bound(2, 80, alpha=0.05))
    # The second metric, from the stored predictions of the 78 scored examples: answers of 1 or 2 characters.
    lengths = [1 + index % 3 for index in range(78)]
    passing = sum(length <= 2 for length in lengths)
    assert (
        metric.name.startswith("metric:")
        and metric.name.endswith(".short")
        and metric.n == 78
        and metric.method == "clopper-pearson"
    )
    assert metric.estimate == pytest.approx(passing / 78)
    assert metric.confidence_bound == pytest.approx(clopper_pearson_bound(passing, 78, alpha=0.05, upper=False))
    assert metric.holds and metric.text().startswith("short 0.") and ">= 0.5 bound" in metric.text()
    assert json.loads(json.dumps(metric.to_json()))["text"] == metric.text()


def test_an_unpriced_model_or_a_failing_metric_leaves_its_guardrail_unshown() -> None:
    def broken(example: dspy.Example, prediction: Any) -> float:
        raise KeyError("no field")

    objective = dx.Objective(
        guardrails=[dx.Guardrail("cost", at_most=1.0), dx.Guardrail("metric", metric=broken, at_most=1.0)]
    )
    cost, metric = check_guardrails(objective, scores("c1", 40, cost=None), examples=EXAMPLES, alpha=0.05)
    assert not cost.holds and cost.estimate is None and "unpriced" in (cost.note or "")
    assert "unpriced" in cost.text() and "is not shown" in cost.text()
    assert not metric.holds and "KeyError" in (metric.note or "")


def test_a_significant_gain_that_breaks_a_guardrail_is_rejected_and_the_reason_says_which() -> None:
    objective = dx.Objective(guardrails=[dx.Guardrail("cost", at_most=2e-4)])
    incumbent = scores("c0", 20)
    cheap, dear = scores("c1", 50, cost=1.5e-4), scores("c2", 60, cost=5e-4)
    verdicts = judge(
        incumbent,
        [(candidate("c1"), cheap), (candidate("c2"), dear)],
        ids=IDS,
        method="auto",
        alpha=0.05,
        objective=objective,
        examples=EXAMPLES,
    )
    plain = judge(incumbent, [(candidate("c1"), cheap), (candidate("c2"), dear)], ids=IDS, method="auto", alpha=0.05)
    assert [verdict.significant for verdict in plain] == [True, True]
    first, second = verdicts
    assert first.significant and not second.significant
    assert second.outcome["gain_significant"] and not second.outcome["feasible"]
    assert second.outcome["p_adjusted"] == plain[1].outcome["p_adjusted"]  # the gain's test is unchanged
    assert second.outcome["rule"] == "gain and guardrails" and second.outcome["incumbent_feasible"]
    (check,) = second.outcome["guardrails"]
    assert check["name"] == "cost" and check["holds"] is False and check["estimate"] == pytest.approx(5e-4)
    json.dumps(second.outcome)  # JSON as journaled
    accepted = decision_reason(verdicts, first, alpha=0.05, incumbent_id="c0")
    assert accepted.startswith("accepted c1: exact McNemar p=") and "guardrails hold: cost per example" in accepted
    rejected = decision_reason([second], None, alpha=0.05, incumbent_id="c0")
    assert rejected.startswith("rejected: c2's gain was significant but cost per example $0.0005")
    assert "> $0.0002 bound" in rejected


def test_while_the_incumbent_breaks_a_guardrail_a_feasible_candidate_is_accepted_without_a_gain() -> None:
    objective = dx.Objective(guardrails=[dx.Guardrail("cost", at_most=2e-4)])
    incumbent = scores("c0", 60, cost=5e-4)
    worse_but_cheap, worse_and_dear = scores("c1", 40, cost=1e-4), scores("c2", 70, cost=4e-4)
    verdicts = judge(
        incumbent,
        [(candidate("c1"), worse_but_cheap), (candidate("c2"), worse_and_dear)],
        ids=IDS,
        method="auto",
        alpha=0.05,
        objective=objective,
        examples=EXAMPLES,
    )
    assert [verdict.significant for verdict in verdicts] == [True, False]
    assert verdicts[0].outcome["rule"] == "feasibility first" and not verdicts[0].outcome["incumbent_feasible"]
    assert verdicts[0].difference == pytest.approx(-0.25)
    reason = decision_reason(verdicts, verdicts[0], alpha=0.05, incumbent_id="c0")
    assert reason.startswith("accepted c1: the incumbent c0 breaks a guardrail (cost per example $0.0005")
    assert "c1 meets every one" in reason and "difference -0.250" in reason
    nothing = decision_reason(verdicts[1:], None, alpha=0.05, incumbent_id="c0")
    assert nothing.startswith("rejected: the incumbent c0 breaks a guardrail and no candidate meets every one (c2:")


# -- the objective's spec -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: dx.Guardrail("costs", at_most=1.0), r"unknown quantity; choose one of cost, latency_p95"),
        (lambda: dx.Guardrail("cost"), "exactly one of at_most=, at_least="),
        (lambda: dx.Guardrail("cost", at_most=1.0, at_least=0.0), "exactly one of at_most=, at_least="),
        (lambda: dx.Guardrail("cost", at_least=0.01), "is an upper bound: use at_most="),
        (lambda: dx.Guardrail("cost", at_most=-0.01), r"at_most=-0.01\): must be above 0"),
        (lambda: dx.Guardrail("latency_p95", at_most="1s"), "the bound must be a finite number"),
        (lambda: dx.Guardrail("latency_p95", at_most=True), "the bound must be a finite number"),
        (lambda: dx.Guardrail("error_rate", at_most=5), r"must be a fraction in \(0, 1\)"),
        (lambda: dx.Guardrail("metric", at_least=0.5), "needs metric="),
        (lambda: dx.Guardrail("cost", at_most=1.0, metric=short), "takes no metric="),
        (lambda: dx.Objective(), "at least one dx.Guardrail"),
        (lambda: dx.Objective(guardrails=["cost"]), "'cost' is not a dx.Guardrail"),
        (
            lambda: dx.Objective(guardrails=[dx.Guardrail("cost", at_most=1.0), dx.Guardrail("cost", at_most=2.0)]),
            "two guardrails on cost",
        ),
        (lambda: dx.Objective(guardrails=[dx.Guardrail("cost", at_most=1.0)], alpha=1.5), "between 0 and 1"),
    ],
)
def test_a_bad_objective_is_one_clear_line(make: Any, message: str) -> None:
    with pytest.raises(OptimizerError, match=message) as raised:
        make()
    assert "\n" not in str(raised.value)


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(260, seed=3))


def model_program(model: str = "lab/small") -> dx.Program:
    """A one-predictor program whose model is a variable: lab/large is far better and about 16x the price."""
    return dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="qa",
        variables={"model": dx.Choice(model, choices=["lab/small", "lab/large"])},
    )


def test_dx_optimize_refuses_a_bad_objective_and_sets_too_small_for_a_p95_bound(data: list[dspy.Example]) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False):
        with pytest.raises(OptimizerError, match=r"objective must be a dx\.Objective") as raised:
            dx.optimize(model_program(), data[:40], data[40:140], metric=dx.metrics.exact_match, objective={"cost": 1})
        assert "\n" not in str(raised.value)
        latency = dx.Objective(guardrails=[dx.Guardrail("latency_p95", at_most=1.0)])
        with pytest.raises(OptimizerError, match="the confirmation set has 30 examples: a latency_p95 guardrail"):
            dx.optimize(model_program(), data[:40], data[40:140], metric=dx.metrics.exact_match, objective=latency)
        with pytest.raises(OptimizerError, match=r"selection part of the valset has 50 examples.*at least 59"):
            dx.optimize(
                model_program(),
                data[:40],
                data[40:90],
                metric=dx.metrics.exact_match,
                objective=latency,
                confirm_fraction=0,
            )


# -- SIMBA-C with an objective --------------------------------------------------------------------

FAST = {"bsize": 16, "num_candidates": 3, "num_sources": 2, "max_steps": 2, "full_evals": 2, "strategies": ("mutate",)}


def optimize_models(
    data: list[dspy.Example], objective: dx.Objective, journal: Path | bool, *, model: str = "lab/small", **extra: Any
) -> OptimizationResult:
    with dx.Context(lm=dx.lab_lm("lab/small", latency=extra.pop("latency", 0.0)), journal=journal, threads=2):
        return dx.optimize(
            model_program(model),
            data[:40],
            data[40:260],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST),
            objective=objective,
            seed=0,
            progress=False,
            **extra,
        )


def test_a_cost_guardrail_rejects_the_large_model_whose_gain_is_significant(
    data: list[dspy.Example], journal_path: Path
) -> None:
    objective = dx.Objective(guardrails=[dx.Guardrail("cost", at_most=2e-4)])
    result = optimize_models(data, objective, journal_path)
    assert result.config["objective"] == {"guardrails": [{"quantity": "cost", "name": "cost", "at_most": 2e-4}],
                                          "alpha": None}  # fmt: skip
    assert result.best_id == "c0" and result.confirmation.status == "unchanged"
    step = next(row for row in result.journal.step_rows(result.run_id) if row["step"] == 1)
    (verdict,) = step["evaluations"]
    large = result.candidates.set_index("candidate_id").loc[verdict["candidate"], "values"]
    assert large["model"] == "lab/large"
    assert verdict["gain_significant"] and not verdict["significant"] and not verdict["feasible"]
    assert verdict["guardrails"][0]["confidence_bound"] > 2e-4
    assert step["detail"].startswith(f"rejected: {verdict['candidate']}'s gain was significant but cost per example $")
    assert step["detail"].endswith("> $0.0002 bound")
    assert result.steps.iloc[0]["detail"].startswith("baseline; it meets every guardrail (cost per example $")
    # The validate span carries the same checks, as JSON.
    validate = next(
        span
        for span in result.journal.spans(result.run_id, "step-1")
        if span.name == f"validate {verdict['candidate']}"
    )
    assert validate.json_attributes["guardrails"] == verdict["guardrails"]
    # Without the objective, the same run accepts the large model.
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        plain = dx.optimize(
            model_program(), data[:40], data[40:260], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST), seed=0, progress=False,
        )  # fmt: skip
    assert plain.best.values["model"] == "lab/large" and "objective" not in plain.config
    # The front: the cheap baseline and the large model, both on it (neither dominates the other).
    points = result.pareto()
    assert list(points.columns) == list(PARETO_COLUMNS)
    assert points["candidate_id"].tolist() == ["c0", verdict["candidate"]] and points["on_front"].all()
    assert (
        points.iloc[1]["quality"] > points.iloc[0]["quality"] and points.iloc[1]["cost"] > 10 * points.iloc[0]["cost"]
    )


def test_a_baseline_that_breaks_a_guardrail_is_replaced_by_the_first_feasible_candidate(
    data: list[dspy.Example], journal_path: Path
) -> None:
    objective = dx.Objective(guardrails=[dx.Guardrail("cost", at_most=2e-4), dx.Guardrail("error_rate", at_most=0.1)])
    result = optimize_models(data, objective, journal_path, model="lab/large")
    baseline_detail = result.steps.iloc[0]["detail"]
    assert baseline_detail.startswith("baseline; it breaks a guardrail (cost per example $0.000")
    assert "feasibility first" in baseline_detail
    assert result.best.values["model"] == "lab/small"
    step = result.steps.set_index("step").loc[1]
    assert step["accepted_id"] == result.best_id
    assert step["detail"].startswith(f"accepted {result.best_id}: the incumbent c0 breaks a guardrail")
    # Held out: the small model is worse (no gain is claimed) but meets every guardrail, which the baseline does not.
    confirmation = result.confirmation
    assert confirmation.status == "not significant"
    assert set(confirmation.guardrails) == {"c0", result.best_id}
    assert all(check["holds"] for check in confirmation.guardrails[result.best_id])
    assert not confirmation.guardrails["c0"][0]["holds"]
    assert "no gain is claimed. On the same held-out data" in result.headline
    assert (
        "meets every guardrail" in result.headline
        and "which the baseline does not (cost per example" in result.headline
    )
    assert result.to_summary()["confirmation"]["guardrails"] == {
        key: list(value) for key, value in confirmation.guardrails.items()
    }
    # Read back from the journal (another process, another day): the same checks, headline and front.
    loaded = OptimizationResult.from_journal(open_journal(journal_path), result.run_id)
    assert loaded.headline == result.headline
    assert dict(loaded.confirmation.guardrails) == dict(confirmation.guardrails)
    pd.testing.assert_frame_equal(loaded.pareto(), result.pareto())
    html = loaded._repr_html_()
    assert "Pareto front (validation mean vs cost per example, 2 of 2 candidates evaluated" in html


def test_latency_guardrails_on_a_program_that_takes_10_ms_per_answer(data: list[dspy.Example]) -> None:
    # Every answer sleeps 10 ms: a 5 ms p95 bound holds for no candidate; a 2 s one holds for all.
    def run(objective: dx.Objective) -> OptimizationResult:
        with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
            return dx.optimize(
                oracle_program(delay=0.01), data[:40], data[40:260], metric=dx.metrics.exact_match,
                optimizer=dx.SimbaC(**{**FAST, "max_steps": 3}), objective=objective, seed=1, progress=False,
                confirm_fraction=0,
            )  # fmt: skip

    stuck = run(dx.Objective(guardrails=[dx.Guardrail("latency_p95", at_most=0.005)]))
    assert stuck.best_id == "c0"
    assert stuck.steps.iloc[0]["detail"].startswith("baseline; it breaks a guardrail (latency p95 0.0")
    rejected = [detail for detail in stuck.steps["detail"][1:] if "no candidate meets every one" in detail]
    assert rejected and "> 0.005 s bound" in rejected[0]
    free = run(dx.Objective(guardrails=[dx.Guardrail("latency_p95", at_most=2.0)]))
    assert free.best_id != "c0"
    accepted = next(detail for detail in free.steps["detail"] if detail.startswith("accepted"))
    assert "guardrails hold: latency p95 0.0" in accepted and "<= 2 s bound" in accepted
    points = free.pareto()
    assert (points["latency_p95"] >= 0.01).all() and (points["cost"] == 0).all()  # no LM call: free


def test_held_out_guardrails_decide_whether_a_significant_gain_is_confirmed(data: list[dspy.Example]) -> None:
    # The second metric holds on the valset's answers but is set so the held-out check can be compared to its own.
    def numeric(example: dspy.Example, prediction: Any) -> bool:
        return str(prediction.answer).lstrip("-").isdigit()

    objective = dx.Objective(
        guardrails=[dx.Guardrail("cost", at_most=1e-3), dx.Guardrail("metric", metric=numeric, at_least=0.5)]
    )
    result = optimize_models(data, objective, False)
    assert result.best.values["model"] == "lab/large"
    confirmation = result.confirmation
    assert confirmation.status == "confirmed" and confirmation.significant
    best_checks = confirmation.guardrails[result.best_id]
    assert [check["name"].rsplit(".", 1)[-1] for check in best_checks] == ["cost", "numeric"]
    assert all(check["holds"] for check in best_checks)
    # The same trials against a bound they cannot meet: the gain stays significant, but it is not confirmed.
    strict = {
        key: [{**check, "holds": False} if check["name"] == "cost" else check for check in checks]
        for key, checks in confirmation.guardrails.items()
    }
    from dspex_lab.optimization._result import build_result

    rebuilt = build_result(
        run_id=result.run_id, name=result.name, config=result.config, status=result.status,
        status_detail=result.status_detail, step_rows=result.journal.step_rows(result.run_id),
        candidate_rows=result.journal.candidate_rows(result.run_id), trials=result.journal.trials,
        spending=result.spending, journal=result.journal,
        confirmation={"status": "evaluated", "guardrails": strict},
    )  # fmt: skip
    assert rebuilt.confirmation.status == "infeasible" and not rebuilt.confirmation.significant
    assert "beats the baseline" in rebuilt.headline
    assert "But on the same held-out data" in rebuilt.headline and "no gain within the objective" in rebuilt.headline


# -- DSPy's optimizers through the bridge ---------------------------------------------------------


def test_dspys_final_choice_is_kept_only_when_it_meets_every_guardrail(data: list[dspy.Example]) -> None:
    program = dx.Program("dspy.Predict", signature="question -> answer", name="arith")

    def run(bound: float) -> OptimizationResult:
        objective = dx.Objective(guardrails=[dx.Guardrail("cost", at_most=bound)])
        with dx.Context(lm=dx.lab_lm("lab/small"), journal=False):
            return dx.optimize(
                program, data[:40], data[40:140], metric=dx.metrics.exact_match,
                optimizer=DspyOptimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=2),
                objective=objective, progress=False,
            )  # fmt: skip

    generous = run(1e-3)
    points = generous.pareto().set_index("candidate_id")
    final = generous.steps.iloc[-1]
    chosen = [key for key in points.index if key != "c0"][-1]
    # Demos make every prompt longer: DSPy's choice costs more per example than the baseline.
    assert points.loc[chosen, "cost"] > points.loc["c0", "cost"]
    assert final["incumbent_id"] == chosen
    # A bound between the two: the baseline meets it, DSPy's choice does not, so the baseline is kept.
    bound = (points.loc[chosen, "cost"] + points.loc["c0", "cost"]) / 2
    strict = run(float(bound))
    last = strict.steps.iloc[-1]
    assert strict.best_id == "c0" and last["incumbent_id"] == "c0"
    assert last["detail"].startswith(f"kept c0: {chosen}, DSPy's final choice, does not meet every guardrail (cost")
    verdict = strict.journal.step_rows(strict.run_id)[-1]["evaluations"][0]
    assert verdict["feasible"] is False and verdict["guardrails"][0]["name"] == "cost"


# -- the Pareto front -----------------------------------------------------------------------------


def test_the_front_is_the_set_of_non_dominated_points() -> None:
    rng = np.random.default_rng(5)
    quality, cost = rng.integers(0, 6, size=40) / 5, rng.integers(1, 6, size=40) / 1000
    cost[[3, 17]] = np.nan
    mask = front_mask(quality, cost)
    for index in range(40):
        dominated = any(
            quality[other] >= quality[index]
            and cost[other] <= cost[index]
            and (quality[other] > quality[index] or cost[other] < cost[index])
            for other in range(40)
            if not np.isnan(cost[other])
        )
        assert mask[index] == (not np.isnan(cost[index]) and not dominated)


def constructed() -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Five validated candidates and one screened only, each with 20 trials of known scores and costs."""
    shapes = {  # candidate -> (right of 20, cost per example, accepted)
        "c0": (10, 1e-4, False),
        "c1": (14, 2e-4, True),
        "c2": (12, 3e-4, False),  # dominated by c1
        "c3": (14, 2e-4, False),  # ties c1: neither dominates
        "c4": (18, None, False),  # an unpriced model: listed, never on the front
        "c5": (8, 5e-5, False),
    }
    trials = {}
    for key, (right, cost, _) in shapes.items():
        costs = [None if cost is None else cost * (1 + (index % 4 - 1.5) / 10) for index in range(20)]
        trials[f"run/{key}/val"] = pd.DataFrame(
            {
                "example_id": [f"e{index}" for index in range(20)],
                "status": ["ok"] * 20,
                "score": [1.0 if index < right else 0.0 for index in range(20)],
                "cost": costs,
                "latency": [0.1 + index / 100 for index in range(20)],
            }
        )
    rows = [
        {"candidate_id": key, "step": int(key[1:]), "strategy": "mutate", "val_mean": right / 20, "accepted": accepted}
        for key, (right, _, accepted) in shapes.items()
    ]
    rows.append({"candidate_id": "c6", "step": 6, "strategy": "demo", "val_mean": math.nan, "accepted": False})
    return pd.DataFrame(rows), trials


def test_pareto_points_on_a_constructed_set() -> None:
    candidates, trials = constructed()
    points = pareto_points(candidates, trials.__getitem__, run_id="run", best_id="c1").set_index("candidate_id")
    assert sorted(points.index) == ["c0", "c1", "c2", "c3", "c4", "c5"]  # c6 was never validated
    assert points["on_front"].to_dict() == {
        "c5": True, "c0": True, "c1": True, "c3": True, "c2": False, "c4": False,
    }  # fmt: skip
    assert points.index.tolist()[:2] == ["c5", "c0"]  # cheapest first, the unknown cost last
    assert points.index[-1] == "c4" and math.isnan(points.loc["c4", "cost"])
    assert points.loc["c1", "best"] and points.loc["c1", "accepted"] and not points.loc["c3", "best"]
    costs = trials["run/c2/val"]["cost"].to_numpy(dtype=float)
    low, high = stats.t.interval(0.95, 19, loc=costs.mean(), scale=stats.sem(costs))
    assert (points.loc["c2", "cost_ci_low"], points.loc["c2", "cost_ci_high"]) == pytest.approx((low, high))
    wilson = proportion_confint(14, 20, alpha=0.05, method="wilson")
    assert (points.loc["c1", "quality_ci_low"], points.loc["c1", "quality_ci_high"]) == pytest.approx(wilson)
    assert points.loc["c0", "latency_p95"] == pytest.approx(np.quantile(trials["run/c0/val"]["latency"], 0.95))


def test_the_pareto_plot_draws_the_front_and_every_point_offline() -> None:
    hv = pytest.importorskip("holoviews")
    from bokeh.models import GlyphRenderer

    from dspex_lab.optimization._plot import pareto_plot

    candidates, trials = constructed()
    points = pareto_points(candidates, trials.__getitem__, run_id="run", best_id="c1")
    figure = hv.render(pareto_plot(points), backend="bokeh")
    legend = {item.label["value"]: item.renderers for legend in figure.legend for item in legend.items}
    assert len(legend["on the front"][0].data_source.data["candidate_id"]) == 4
    assert len(legend["dominated"][0].data_source.data["candidate_id"]) == 1  # c4, of unknown cost, is not drawn
    assert list(legend["best"][0].data_source.data["candidate_id"]) == ["c1"]
    assert figure.select({"type": GlyphRenderer})
    assert figure.background_fill_alpha == 0.0  # the theme hook: readable on light and dark pages
    with pytest.raises(OptimizerError, match="has no column 'on_front'"):
        pareto_plot(points.drop(columns=["on_front"]))

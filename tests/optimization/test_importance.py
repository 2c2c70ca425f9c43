"""result.importance(): which variables mattered, with intervals, from the journaled candidates' per-example scores."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import OptimizerError
from dspex_lab.journal import open_journal
from dspex_lab.optimization._dspy import DspyOptimizer
from dspex_lab.optimization._importance import (
    IMPORTANCE_COLUMNS,
    ScoredConfigurations,
    estimate_importance,
    importance_html,
    importance_or_reason,
    importance_text,
    read_scored_configurations,
    run_importance,
)

VARIABLES: dict[str, dict[str, Any]] = {
    "temperature": {"type": "float", "value": 0.3, "low": 0.0, "high": 1.0},
    "module": {"type": "module_type", "value": "dspy.Predict", "choices": ["dspy.Predict", "dspy.ChainOfThought"]},
    "careful": {"type": "bool", "value": False},
    "instructions": {"type": "text", "value": "Answer.", "target": "instructions"},
    "demos": {"type": "demos", "value": [], "target": "demos"},
}
BASELINE = {"temperature": 0.3, "module": "dspy.Predict", "careful": False, "instructions": "Answer.", "demos": []}
# The true effects of the synthetic world: ChainOfThought +0.15, temperature -0.10 per unit, a rule +0.05,
# a demo 0; careful (a bool) does nothing.
EFFECTS = {"module": 0.15, "temperature": -0.10, "rule": 0.05, "demo": 0.0, "careful": 0.0}


def synthetic(seed: int, *, configurations: int = 30, examples: int = 80, noise: float = 0.3) -> ScoredConfigurations:
    """Random candidates, each scored on half the examples (the baseline on all), with known effects."""
    rng = np.random.default_rng(seed)
    rows_of_values = [BASELINE]
    for _ in range(configurations - 1):
        rules = int(rng.integers(0, 3))
        rows_of_values.append(
            {
                "temperature": float(rng.uniform(0, 1)),
                "module": str(rng.choice(["dspy.Predict", "dspy.ChainOfThought"])),
                "careful": bool(rng.integers(2)),
                "instructions": "Answer." + "".join(f"\n- rule {k}" for k in range(rules)),
                "demos": [{"question": "q", "answer": "a"}] * int(rng.integers(0, 4)),
            }
        )
    difficulty = rng.normal(0.5, 0.25, examples)  # most of a score's variance: which example it is
    rows = []
    for position, values in enumerate(rows_of_values):
        scored_on = rng.choice(examples, size=examples // 2, replace=False) if position else range(examples)
        effect = (
            EFFECTS["module"] * (values["module"] == "dspy.ChainOfThought")
            + EFFECTS["temperature"] * values["temperature"]
            + EFFECTS["rule"] * values["instructions"].count("\n- ")
        )
        for example in scored_on:
            rows.append((position, f"e{example}", float(difficulty[example] + effect + rng.normal(0, noise))))
    scores = pd.DataFrame(rows, columns=["configuration", "example_id", "score"])
    return ScoredConfigurations(VARIABLES, rows_of_values, scores)


def by_contrast(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    return {f"{row['variable']}|{row['contrast'].split(' (')[0]}": row for row in frame.to_dict("records")}


def true_effect(row: dict[str, Any], values: list[dict[str, Any]]) -> float:
    if row["variable"] == "temperature":
        tried = [item["temperature"] for item in values]
        return EFFECTS["temperature"] * (max(tried) - min(tried))
    return {"module": EFFECTS["module"], "instructions": EFFECTS["rule"], "demos": 0.0, "careful": 0.0}[row["variable"]]


def test_the_effects_are_least_squares_with_one_fixed_effect_per_example_as_statsmodels_fits_them() -> None:
    scored = synthetic(3)
    frame = estimate_importance(scored, n_bootstrap=4000, seed=1)
    # The same model in statsmodels: scores on the features and one dummy per example, clustered by example.
    values = scored.configurations
    design = pd.DataFrame(
        {
            "temperature": [item["temperature"] for item in values],
            "cot": [float(item["module"] == "dspy.ChainOfThought") for item in values],
            "careful": [float(item["careful"]) for item in values],
            "rules": [float(item["instructions"].count("\n- ")) for item in values],
            "demos": [float(len(item["demos"])) for item in values],
        }
    )
    data = scored.scores.join(design, on="configuration")
    fit = smf.ols("score ~ temperature + cot + careful + rules + demos + C(example_id)", data).fit(
        cov_type="cluster", cov_kwds={"groups": pd.factorize(data["example_id"])[0]}
    )
    tried = design["temperature"].max() - design["temperature"].min()
    expected = {
        "temperature": (fit.params["temperature"] * tried, fit.bse["temperature"] * tried),
        "module": (fit.params["cot"], fit.bse["cot"]),
        "careful": (fit.params["careful"], fit.bse["careful"]),
        "instructions": (fit.params["rules"], fit.bse["rules"]),
        "demos": (fit.params["demos"], fit.bse["demos"]),
    }
    for row in frame.to_dict("records"):
        effect, standard_error = expected[row["variable"]]
        assert row["effect"] == pytest.approx(effect, abs=1e-9)
        # The bootstrap interval is about the cluster-robust one (1.96 standard errors either side).
        assert (row["ci_high"] - row["ci_low"]) / (2 * 1.96 * standard_error) == pytest.approx(1, abs=0.2)
    assert list(frame.columns) == list(IMPORTANCE_COLUMNS)
    assert frame["share"].sum() == pytest.approx(1)


def test_a_real_effect_is_found_and_a_null_one_is_not_across_seeds() -> None:
    seeds = range(30)
    found, null_covered, covered = 0, 0, {name: 0 for name in ("module", "temperature", "instructions", "demos")}
    for seed in seeds:
        scored = synthetic(seed)
        rows = by_contrast(estimate_importance(scored, n_bootstrap=1000, seed=seed))
        module = rows["module|dspy.ChainOfThought vs dspy.Predict"]
        found += module["ci_low"] > 0
        careful = rows["careful|True vs False"]
        null_covered += careful["ci_low"] <= 0 <= careful["ci_high"]
        for row in rows.values():
            if row["variable"] in covered:
                covered[row["variable"]] += (
                    row["ci_low"] <= true_effect(row, list(scored.configurations)) <= row["ci_high"]
                )
    assert found == len(seeds)  # +0.15 on 40 paired examples a candidate is never missed
    # 95% intervals: over 30 seeds, coverage below 80% would be far outside chance (binomial p < 0.001).
    assert null_covered >= 0.8 * len(seeds)
    assert all(count >= 0.8 * len(seeds) for count in covered.values()), covered


def test_a_variable_never_changed_or_never_changed_alone_is_not_estimable_never_zero() -> None:
    scored = synthetic(0)
    values = [dict(item, careful=False) for item in scored.configurations]  # careful never changes
    # demos always change with the rules: one demo per rule, so the two cannot be told apart
    values = [dict(item, demos=[{"q": 1}] * item["instructions"].count("\n- ")) for item in values]
    frame = estimate_importance(ScoredConfigurations(VARIABLES, values, scored.scores), n_bootstrap=200)
    rows = {row["variable"]: row for row in frame.to_dict("records")}

    assert not rows["careful"]["estimable"] and math.isnan(rows["careful"]["effect"])
    # A choice never moved from its value has its row too.
    only_baseline = [dict(item, module="dspy.Predict") for item in values]
    unmoved = estimate_importance(ScoredConfigurations(VARIABLES, only_baseline, scored.scores), n_bootstrap=200)
    module = unmoved[unmoved["variable"] == "module"].iloc[0]
    assert module["contrast"] == "another value vs dspy.Predict" and module["note"] == "not estimable: never changed"
    assert rows["careful"]["note"] == "not estimable: never changed"
    for name in ("demos", "instructions"):
        assert not rows[name]["estimable"] and math.isnan(rows[name]["effect"]) and math.isnan(rows[name]["ci_low"])
        assert "apart from other variables" in rows[name]["note"]
    # The others are still estimated, holding the inseparable pair fixed as one.
    assert rows["module"]["estimable"] and rows["module"]["ci_low"] > 0
    text = importance_text(frame)
    assert "not estimable: never changed" in text and "+0.000" not in text.split("careful")[1].splitlines()[0]


def test_too_few_paired_examples_are_not_estimable() -> None:
    scored = synthetic(1, examples=8)
    kept = scored.scores[scored.scores["example_id"].isin(["e0", "e1", "e2", "e3"])]
    frame = estimate_importance(ScoredConfigurations(VARIABLES, scored.configurations, kept), n_bootstrap=200)

    assert not frame["estimable"].any() and frame["effect"].isna().all()
    assert frame["note"].str.contains("4 examples were scored for two configurations or more").sum() == len(frame)


def test_a_run_with_no_scores_yet_is_not_estimable_and_a_number_without_a_value_is_changed_or_not() -> None:
    variables = {"temperature": VARIABLES["temperature"], "max_tokens": {"type": "int", "value": None}}
    values = [{"temperature": 0.3, "max_tokens": None}, {"temperature": 0.5, "max_tokens": 300}]
    empty = pd.DataFrame(columns=["configuration", "example_id", "score"])
    rows = by_contrast(estimate_importance(ScoredConfigurations(variables, values, empty), n_bootstrap=100))

    assert set(rows) == {"max_tokens|changed vs the baseline's", "temperature|0.3 → 0.5"}
    assert all(not row["estimable"] and math.isnan(row["effect"]) for row in rows.values())
    assert all(row["note"].startswith("not estimable: 0 examples") for row in rows.values())


def test_a_resample_that_cannot_separate_a_variable_makes_it_not_estimable() -> None:
    # One candidate changed `careful`, scored on two examples only: most resamples lose one or both of them.
    scored = synthetic(2)
    values = [dict(item, careful=False) for item in scored.configurations]
    values[1] = dict(values[1], careful=True)
    scores = scored.scores[(scored.scores["configuration"] != 1) | scored.scores["example_id"].isin(["e0", "e1"])]
    scores = pd.concat([scores, pd.DataFrame({"configuration": [1, 1], "example_id": ["e0", "e1"], "score": [1.0, 1]})])
    scores = scores.drop_duplicates(["configuration", "example_id"])
    rows = by_contrast(estimate_importance(ScoredConfigurations(VARIABLES, values, scores), n_bootstrap=500))

    assert not rows["careful|True vs False"]["estimable"]
    assert "in only" in rows["careful|True vs False"]["note"]


def test_the_ranking_agrees_with_optunas_get_param_importances_on_a_clear_case() -> None:
    optuna = pytest.importorskip("optuna")
    rng = np.random.default_rng(5)
    names = ("strong", "medium", "null")
    variables = {name: {"type": "float", "value": 0.5, "low": 0.0, "high": 1.0} for name in names}
    values = [{name: 0.5 for name in names}] + [{name: float(rng.uniform(0, 1)) for name in names} for _ in range(40)]
    difficulty = rng.normal(0.5, 0.2, 60)
    rows = [
        (
            position,
            f"e{example}",
            difficulty[example] + 0.3 * item["strong"] + 0.1 * item["medium"] + rng.normal(0, 0.1),
        )
        for position, item in enumerate(values)
        for example in range(60)
    ]
    scores = pd.DataFrame(rows, columns=["configuration", "example_id", "score"])
    frame = estimate_importance(ScoredConfigurations(variables, values, scores), n_bootstrap=500)
    ours = list(frame.sort_values("share", ascending=False)["variable"])

    study = optuna.create_study(direction="maximize")
    distributions = {name: optuna.distributions.FloatDistribution(0, 1) for name in names}
    means = scores.groupby("configuration")["score"].mean()
    for position, item in enumerate(values):
        study.add_trial(optuna.trial.create_trial(params=item, distributions=distributions, value=means[position]))
    # Optuna's default evaluator (fANOVA) needs scikit-learn, which is not installed; PED-ANOVA needs nothing
    # more, and it reads "lower is better" (its docstring says to negate a maximised objective).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), target=lambda trial: -trial.value
        )
    assert ours == list(theirs) == ["strong", "medium", "null"]
    shares = dict(zip(frame["variable"], frame["share"], strict=True))
    assert shares["strong"] > 0.8 and shares["null"] < 0.02


def test_its_arguments_are_checked() -> None:
    scored = synthetic(0, configurations=4)
    with pytest.raises(OptimizerError, match="confidence must be between 0 and 1"):
        estimate_importance(scored, confidence=95)
    with pytest.raises(OptimizerError, match="n_bootstrap must be an integer of at least 100"):
        estimate_importance(scored, n_bootstrap=10)


# -- real runs on the lab LM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def simba_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A SIMBA-C run over module type and temperature (mutations only), journaled to a file."""
    path = tmp_path_factory.mktemp("importance") / "journal.duckdb"
    data = list(dx.datasets.arithmetic(140, seed=17))
    program = dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="module-and-temperature",
        variables={
            "module": dx.ModuleType("dspy.Predict", choices=("dspy.Predict", "dspy.ChainOfThought")),
            "temperature": dx.Float(0.8, low=0.0, high=1.0),
        },
    )
    optimizer = dx.SimbaC(max_steps=3, bsize=16, num_candidates=3, num_sources=2, patience=3, strategies=("mutate",))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2), warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.errors.UnderpoweredWarning)
        result = dx.optimize(
            program, data[:60], data[60:], metric=dx.metrics.exact_match, optimizer=optimizer, progress=False, seed=0
        )
    return {"path": path, "result": result}


def test_a_simba_c_run_finds_that_chain_of_thought_beats_predict(simba_run: dict[str, Any]) -> None:
    result = simba_run["result"]
    frame = result.importance()
    rows = by_contrast(frame)

    # docs/lab_world.md, 2.1: Predict's slip rates are 1.8x ChainOfThought's, and more at high temperatures.
    module = rows["module|dspy.ChainOfThought vs dspy.Predict"]
    assert module["estimable"] and module["ci_low"] > 0.1 and module["candidates"] > 0
    assert frame.iloc[0]["variable"] == "module"
    temperature = next(row for key, row in rows.items() if key.startswith("temperature|"))
    assert temperature["estimable"] and temperature["ci_low"] < temperature["effect"] < temperature["ci_high"]
    # Mutations only: the lifted demos and instructions never changed.
    assert rows["demos|per demo"]["note"] == "not estimable: never changed"
    # Every candidate's screening and validation scores are in the fit, none twice.
    scored = read_scored_configurations(result.journal, result.run_id)
    screened_or_validated = result.candidates["screen_mean"].notna() | result.candidates["val_mean"].notna()
    assert len(scored.configurations) == screened_or_validated.sum()
    assert not scored.scores.duplicated(["configuration", "example_id"]).any()


def test_a_loaded_run_gives_the_same_importances_as_the_live_one(simba_run: dict[str, Any]) -> None:
    live = simba_run["result"].importance(seed=3)
    # dx.load reads evaluations; an optimization run is read back with OptimizationResult.from_journal.
    loaded = dx.OptimizationResult.from_journal(open_journal(simba_run["path"]), simba_run["result"].run_id)
    loaded = loaded.importance(seed=3)
    pd.testing.assert_frame_equal(live, loaded)
    # Another seed moves the intervals' ends a little, never the effects.
    other = simba_run["result"].importance(seed=4)
    pd.testing.assert_series_equal(other["effect"], live["effect"])


def test_the_html_summary_shows_the_importances(simba_run: dict[str, Any]) -> None:
    summary = simba_run["result"]._repr_html_()
    assert "Which variables mattered" in summary and "class='dspex-importance'" in summary
    assert "dspy.ChainOfThought vs dspy.Predict" in summary and "not estimable: never changed" in summary
    assert summary.index("Which variables mattered") > summary.index("<th>step</th>")


def test_dspex_trace_prints_the_importances_after_the_steps(simba_run: dict[str, Any], capsys) -> None:
    run_id = simba_run["result"].run_id
    assert main(["trace", run_id, "--journal", str(simba_run["path"])]) == 0
    output = capsys.readouterr().out
    assert output.index("step-3") < output.index("Which variables mattered")
    line = next(line for line in output.splitlines() if line.startswith("module "))
    effect = by_contrast(simba_run["result"].importance())["module|dspy.ChainOfThought vs dspy.Predict"]["effect"]
    assert "dspy.ChainOfThought vs dspy.Predict" in line and f"{effect:+.3f}" in line


def test_a_three_module_pipeline_has_a_row_per_predictors_variable_and_for_the_shared_one() -> None:
    data = list(dx.datasets.arithmetic(120, seed=3))
    optimizer = dx.SimbaC(max_steps=3, bsize=12, num_candidates=4, num_sources=2, patience=3)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2), warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.errors.UnderpoweredWarning)
        result = dx.optimize(
            dx.tasks.pipeline_program(), data[:50], data[50:], metric=dx.metrics.exact_match,
            optimizer=optimizer, progress=False, seed=1,
        )  # fmt: skip
    frame = result.importance()
    program = result.best
    # One variable per predictor for its demos and instructions (lifted), the models, and the shared rigor
    # (one variable bound to every predictor through a semantic binding): each has a row, none is 0 for want
    # of evidence.
    assert set(frame["variable"]) == set(program.variables)
    for predictor in ("plan", "solve", "verify"):
        assert f"demos_{predictor}" in set(frame["variable"])
    rigor = frame[frame["variable"] == "rigor"]
    assert rigor["kind"].eq("choice").all()
    assert len(rigor) >= 1 and rigor["contrast"].str.endswith(" vs standard").all()
    estimable = frame[frame["estimable"]]
    assert not estimable.empty
    assert ((estimable["ci_low"] <= estimable["effect"]) & (estimable["effect"] <= estimable["ci_high"])).all()
    assert frame.loc[~frame["estimable"], "effect"].isna().all()


def test_a_dspy_optimizers_run_has_importances_from_its_candidates_and_compile(tmp_path: Path) -> None:
    examples = dx.datasets.arithmetic(80)
    optimizer = DspyOptimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=2)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "journal.duckdb"):
        result = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="arith"),
            examples[:40],
            examples[40:],
            metric=dx.metrics.exact_match,
            optimizer=optimizer,
            progress=False,
        )
    journal = result.journal
    compiled = [child for child in journal.child_timeline(result.run_id) if child["role"] == "compile"]
    scored = read_scored_configurations(journal, result.run_id)
    compile_trials = sum(int(child["n_trials"]) for child in compiled)
    validation_trials = sum(len(journal.trials(f"{result.run_id}/{c}/val")) for c in result.candidates["candidate_id"])
    assert compiled and len(scored.scores) == compile_trials + validation_trials  # one trial per example here
    rows = by_contrast(result.importance())
    assert rows["demos|per demo"]["candidates"] > 0 and set(rows) == {"demos|per demo", "instructions|per rule added"}
    assert not rows["instructions|per rule added"]["estimable"]


def test_an_experiment_that_is_not_an_optimization_says_so_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "journal.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path):
        evaluation = dx.evaluate(
            dx.Program("dspy.Predict", signature="question -> answer", name="qa"),
            dx.datasets.arithmetic(4),
            metric=dx.metrics.exact_match,
            progress=False,
        )
    journal = open_journal(path)
    frame, reason = importance_or_reason(lambda: run_importance(journal, evaluation.experiment_id))
    assert frame is None
    assert reason == (
        f"Which variables mattered: not estimable (run {evaluation.experiment_id} has no baseline candidate in the "
        "journal: nothing to estimate from)"
    )
    assert "no variables" in importance_html(pd.DataFrame(columns=list(IMPORTANCE_COLUMNS)))
    frame = estimate_importance(synthetic(0, configurations=6), n_bootstrap=200)
    assert importance_html(frame).count("<tr>") == len(frame) + 1

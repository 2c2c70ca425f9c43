"""Optuna's samplers over typed variables through dx.optimize: every study trial journaled, pruned, resumable."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.errors import MissingDependencyError, OptimizerError
from dspex_lab.optimization import OPTUNA_IMPORTANCE_COLUMNS, OptimizationResult, OptunaSearch, optimize
from dspex_lab.optimization._evaluator import CandidateEvaluator
from dspex_lab.optimization._optuna import typed_space
from dspex_lab.optimization._spending import Spending
from tests.optimization.oracle import oracle_program

pytest.importorskip("optuna")


@pytest.fixture
def data() -> tuple[list[dspy.Example], list[dspy.Example]]:
    examples = dx.datasets.arithmetic(90, seed=3)
    return examples[:10], examples[10:]


def run_oracle(
    data: Any, optimizer: OptunaSearch, *, journal: Path | bool = False, seed: int = 0, **extra: Any
) -> OptimizationResult:
    train, val = data
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal, threads=1):
        return optimize(
            oracle_program(), train, val, metric=dx.metrics.exact_match, optimizer=optimizer, seed=seed,
            **{"progress": False, **extra},
        )  # fmt: skip


def trial_entries(result: OptimizationResult) -> list[dict[str, Any]]:
    """The study trials as journaled in the step rows (each with its step's evaluation)."""
    entries = []
    for row in result.journal.step_rows(result.run_id):
        for item in row.get("evaluations") or []:
            if "optuna" in item:
                entries.append({**item["optuna"], "n": item["n"], "mean": item["mean"], "step": row["step"]})
    return entries


def test_tpe_journals_every_trial_as_a_candidate_evaluation_and_chooses_honestly(data: Any) -> None:
    result = run_oracle(data, OptunaSearch(n_trials=10))

    assert result.status == "finished" and result.optimizer == "optuna"
    entries = trial_entries(result)
    # The baseline is the study's trial 0; each later trial is one step, journaled with its number and state.
    assert [entry["number"] for entry in entries] == list(range(1, 10))
    assert [entry["step"] for entry in entries] == list(range(1, 10))
    assert {entry["state"] for entry in entries} <= {"complete", "pruned"}
    candidates = result.candidates.set_index("candidate_id")
    assert set(candidates["strategy"]) == {"baseline", "optuna"}
    for entry in entries:
        assert candidates.loc[entry["candidate"], "values"]["skill"] == pytest.approx(entry["params"]["skill"])
    # Each candidate's validation is an evaluation nested in the run, its trials in the journal.
    roles = {child.role for child in result.journal.children(result.run_id)}
    assert {"baseline", "candidate-validation", "confirmation"} <= roles
    # The best is the highest fully validated mean, tested against the baseline; the headline is held out.
    complete = [entry for entry in entries if entry["state"] == "complete"]
    best = max(complete, key=lambda entry: entry["mean"])
    assert result.best_id == best["candidate"] and result.best.values["skill"] > 0.3
    final = result.steps.iloc[-1]
    assert final["incumbent_id"] == result.best_id and final["detail"].startswith("accepted")
    assert result.confirmation is not None and result.confirmation.status == "confirmed"
    assert "accepted" in result.why(result.best_id)


def test_a_pruned_trial_keeps_its_partial_scores_and_is_never_a_zero(data: Any) -> None:
    result = run_oracle(data, OptunaSearch("random", n_trials=14))

    entries = trial_entries(result)
    pruned = [entry for entry in entries if entry["state"] == "pruned"]
    assert pruned, "the median pruner stopped no trial"
    val_size = len(data[1]) - round(len(data[1]) * 0.3)
    for entry in pruned:
        # Stopped at the first block: its intermediate value there is the mean of the examples it scored.
        ((block, value),) = entry["intermediate"].items()
        assert int(block) == entry["n"] < val_size
        assert value == pytest.approx(entry["mean"]) and entry["values"] == [pytest.approx(value)]
        scores = result.journal.trial_rows(f"{result.run_id}/{entry['candidate']}/val")
        assert len(scores) == int(block)
    # A pruned candidate is measured, never chosen.
    assert result.best_id not in {entry["candidate"] for entry in pruned} - {
        entry["candidate"] for entry in entries if entry["state"] == "complete"
    }


def test_a_resumed_study_is_rebuilt_from_the_journal_and_ends_as_an_uninterrupted_one(
    data: Any, tmp_path: Path
) -> None:
    whole = run_oracle(data, OptunaSearch(n_trials=9), journal=tmp_path / "whole.duckdb")

    def interrupt(event: Any) -> None:
        if event.step == 4:
            raise KeyboardInterrupt

    path = tmp_path / "resumed.duckdb"
    with pytest.raises(KeyboardInterrupt, match="resume=") as interrupted:
        run_oracle(data, OptunaSearch(n_trials=9), journal=path, subscribers=[interrupt])
    run_id = interrupted.value.experiment_id
    resumed = run_oracle(data, OptunaSearch(n_trials=9), journal=path, resume=run_id)

    def shape(result: OptimizationResult) -> list[tuple[Any, ...]]:
        return [
            (entry["number"], entry["candidate"], entry["state"], entry["params"]) for entry in trial_entries(result)
        ]

    assert shape(resumed) == shape(whole)
    assert resumed.best_id == whole.best_id
    assert resumed.steps["detail"].tolist() == whole.steps["detail"].tolist()
    assert resumed.spending["trials"] == whole.spending["trials"]


def test_a_trial_interrupted_between_blocks_is_asked_again_and_reuses_its_journaled_block(
    data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = run_oracle(data, OptunaSearch(n_trials=7), journal=tmp_path / "whole.duckdb")
    entries = trial_entries(whole)
    # A later trial whose candidate is new there (not the baseline, not a repeat).
    entry = next(
        item for position, item in enumerate(entries)
        if position >= 2 and item["candidate"] not in {"c0", *(earlier["candidate"] for earlier in entries[:position])}
    )  # fmt: skip
    evaluate = CandidateEvaluator.evaluate

    def interrupted(self: CandidateEvaluator, program: Any, examples: Any, **options: Any) -> Any:
        scores = evaluate(self, program, examples, **options)
        if scores.experiment_id.endswith(f"/{entry['candidate']}/val"):
            raise KeyboardInterrupt  # after its first block is journaled, before the pruner hears of it
        return scores

    path = tmp_path / "resumed.duckdb"
    monkeypatch.setattr(CandidateEvaluator, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt, match="resume=") as stopped:
        run_oracle(data, OptunaSearch(n_trials=7), journal=path)
    monkeypatch.setattr(CandidateEvaluator, "evaluate", evaluate)
    run_id = stopped.value.experiment_id
    resumed = run_oracle(data, OptunaSearch(n_trials=7), journal=path, resume=run_id)

    def shape(result: OptimizationResult) -> list[tuple[Any, ...]]:
        return [
            (entry["number"], entry["candidate"], entry["state"], entry["params"]) for entry in trial_entries(result)
        ]

    assert shape(resumed) == shape(whole)
    assert resumed.candidates["candidate_id"].tolist() == whole.candidates["candidate_id"].tolist()
    assert resumed.spending["trials"] == whole.spending["trials"]


def test_the_same_seed_gives_the_same_study_and_another_seed_another(data: Any) -> None:
    first, again = (run_oracle(data, OptunaSearch(n_trials=6), seed=4) for _ in range(2))
    other = run_oracle(data, OptunaSearch(n_trials=6), seed=5)

    params = [[entry["params"] for entry in trial_entries(result)] for result in (first, again, other)]
    assert params[0] == params[1] != params[2]


def test_a_budget_stops_the_study_cleanly_and_the_choice_still_stands() -> None:
    examples = dx.datasets.arithmetic(70, seed=2)
    train, val = examples[:10], examples[10:]
    budget = dx.Budget(lm_calls=500)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = optimize(
            dx.tasks.pipeline_program(), train, val, metric=dx.metrics.exact_match,
            optimizer=OptunaSearch(n_trials=50), budget=budget, progress=False,
        )  # fmt: skip

    assert result.status == "stopped" and "budget" in result.status_detail
    assert result.spending["lm_calls"] <= 500
    assert result.steps.iloc[-2]["status"] == "stopped"
    # The study's choice is recorded after the stop, and the budget held back for the confirmation paid for it.
    assert result.steps.iloc[-1]["status"] == "finished"
    assert result.confirmation is not None and result.confirmation.status in (
        "confirmed",
        "not significant",
        "unchanged",
    )


def test_the_printed_progress_counts_the_final_choice_among_the_planned_steps(data: Any, capsys: Any) -> None:
    heard: list[Any] = []
    run_oracle(data, OptunaSearch("random", n_trials=5), progress=True, subscribers=[heard.append])

    lines = [line for line in capsys.readouterr().err.splitlines() if " step " in line]
    steps = [line.split(": ", 1)[0].rsplit(" step ", 1)[1] for line in lines]
    # Step 0 the baseline, steps 1-4 the study's other four trials, step 5 the final choice: 5 steps planned.
    assert steps == [f"{step} of 5" for step in range(6)]
    assert {event.standing.planned_steps for event in heard} == {5}


def test_a_study_ended_by_its_budget_alone_shows_no_planned_total(capsys: Any) -> None:
    examples = dx.datasets.arithmetic(50, seed=2)
    heard: list[Any] = []
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        optimize(
            dx.tasks.pipeline_program(), examples[:10], examples[10:], metric=dx.metrics.exact_match,
            optimizer=OptunaSearch(), budget=dx.Budget(lm_calls=300), progress=True, subscribers=[heard.append],
        )  # fmt: skip

    lines = [line for line in capsys.readouterr().err.splitlines() if " step " in line]
    assert len(lines) >= 2 and not any(" of " in line.split(": ", 1)[0] for line in lines)
    assert {event.standing.planned_steps for event in heard} == {None}
    assert OptunaSearch().planned_steps(None) == 30
    assert OptunaSearch(n_trials=7).planned_steps(dx.Budget(lm_calls=9)) == 7


def test_without_a_budget_the_run_reports_its_spending_as_every_optimizer_does() -> None:
    examples = dx.datasets.arithmetic(30, seed=3)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        optuna = optimize(
            dx.tasks.pipeline_program(), examples[:10], examples[10:], metric=dx.metrics.exact_match,
            optimizer=OptunaSearch(n_trials=3), seed=0, progress=False,
        )  # fmt: skip

    # The run's one counter, as SIMBA-C and the DSPy bridge report it (calls, tokens, cost, trials).
    assert optuna.spending is not None and set(optuna.spending) == set(Spending().to_summary())
    # Every LM call of an Optuna run is one of its evaluations' trials: the totals are those trials summed.
    rows = optuna.journal.children_trial_rows(optuna.run_id)
    assert optuna.spending["lm_calls"] == sum(row["lm_calls"] for row in rows) > 0
    assert optuna.spending["tokens"] == sum(row["input_tokens"] + row["output_tokens"] for row in rows)
    assert optuna.spending["cost"] == pytest.approx(math.fsum(row["cost"] for row in rows))
    assert optuna.spending["trials"] == len(rows)


def test_nsga2_trades_the_metric_against_cost_per_example() -> None:
    examples = dx.datasets.arithmetic(50, seed=5)
    train, val = examples[:10], examples[10:]
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = optimize(
            dx.tasks.pipeline_program(), train, val, metric=dx.metrics.exact_match,
            optimizer=OptunaSearch("nsga2", n_trials=6), progress=False,
        )  # fmt: skip

    entries = trial_entries(result)
    assert entries and all(entry["state"] == "complete" for entry in entries)  # a multi-objective study is not pruned
    for entry in entries:
        mean, cost = entry["values"]
        assert mean == pytest.approx(entry["mean"]) and cost > 0
    # The sampler's own state, journaled so a resumed study is rebuilt with it.
    assert all("NSGAIISampler:generation" in entry["system_attrs"] for entry in entries)
    assert result.status == "finished" and result.steps.iloc[-1]["step"] == len(entries) + 1


def test_cmaes_searches_numbers_only_and_names_its_package(data: Any) -> None:
    examples = dx.datasets.arithmetic(30, seed=1)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False), pytest.raises(OptimizerError, match="numeric variables"):
        optimize(
            dx.tasks.pipeline_program(), examples[:10], examples[10:], metric=dx.metrics.exact_match,
            optimizer=OptunaSearch("cmaes"), confirm_fraction=0, progress=False,
        )  # fmt: skip
    if importlib.util.find_spec("cmaes") is None:
        with pytest.raises(MissingDependencyError, match="cmaes"):
            run_oracle(data, OptunaSearch("cmaes", n_trials=4))
    else:
        assert run_oracle(data, OptunaSearch("cmaes", n_trials=4)).status == "finished"


def test_a_program_without_typed_variables_is_refused_before_any_call(data: Any) -> None:
    train, val = data
    program = dx.Program("dspy.Predict", signature="question -> answer", name="plain")
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False), pytest.raises(OptimizerError, match="no typed variable"):
        optimize(program, train, val, metric=dx.metrics.exact_match, optimizer="optuna", progress=False)
    unbounded = dx.Program(
        "dspy.Predict", signature="question -> answer", variables={"t": dx.Float(0.5, target="temperature")}
    )
    with pytest.raises(OptimizerError, match="no low= and high="):
        typed_space(unbounded)


def test_without_optuna_the_error_names_the_extra(data: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else find_spec(name, *a))
    with pytest.raises(MissingDependencyError, match=r"dspex_lab\[optimize\]"):
        run_oracle(data, OptunaSearch(n_trials=3))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"sampler": "grid"}, "choose one of tpe, random, cmaes, nsga2"),
        ({"n_trials": 1}, "n_trials=1"),
        ({"looks": 0}, "looks=0"),
        ({"alpha": 1.5}, "alpha=1.5"),
        ({"test": "z"}, "test='z'"),
    ],
)
def test_bad_options_are_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(OptimizerError, match=message):
        OptunaSearch(**arguments)


def test_optuna_importance_reads_beside_the_runs_own(data: Any) -> None:
    result = run_oracle(data, OptunaSearch("random", n_trials=8, pruner=False))

    frame = result.importance(method="optuna")
    assert list(frame.columns) == list(OPTUNA_IMPORTANCE_COLUMNS)
    assert frame["variable"].tolist() == ["skill"] and math.isclose(frame["importance"].sum(), 1.0)
    # One study trial per distinct fully validated configuration (the baseline and seven others).
    assert frame["configurations"].iloc[0] == result.candidates["val_mean"].notna().sum()
    own = result.importance(n_bootstrap=200)
    assert "skill" in own["variable"].tolist()
    with pytest.raises(OptimizerError, match="method='fanova'"):
        result.importance(method="fanova")


def test_with_an_objective_the_best_meets_every_guardrail_estimate() -> None:
    examples = dx.datasets.arithmetic(60, seed=7)
    bound = 0.0005  # the all-small pipeline's cost per example is below it, a large model's above
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = optimize(
            dx.tasks.pipeline_program(), examples[:10], examples[10:], metric=dx.metrics.exact_match,
            optimizer=OptunaSearch("random", n_trials=8), objective=dx.Objective([dx.Guardrail("cost", at_most=bound)]),
            progress=False,
        )  # fmt: skip

    assert result.best_result.trials["cost"].mean() <= bound
    assert all(value == "lab/small" for key, value in result.best.values.items() if key.startswith("model"))
    # A configuration scoring higher was passed over for its cost.
    complete = [entry for entry in trial_entries(result) if entry["state"] == "complete"]
    assert max(entry["mean"] for entry in complete) > result.best_result.mean

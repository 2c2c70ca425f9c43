"""DSPy's optimizers through dx.optimize: every evaluation journaled, LM calls metered, the budget obeyed."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Any

import dspy
import pandas as pd
import pytest

import dspex_lab as dx
from dspex_lab.errors import MissingDependencyError, OptimizerError
from dspex_lab.lm import LabEngine
from dspex_lab.optimization import STEP_COLUMNS, OptimizationResult, optimize
from dspex_lab.optimization._dspy import DSPY_NAMES, DspyOptimizer, read_configuration
from dspex_lab.optimization._plot import convergence_data

# Tiny hyperparameters: each run is a few seconds on the zero-latency lab LM.
TINY: dict[str, dict[str, Any]] = {
    "simba": {"max_steps": 2, "bsize": 8, "num_candidates": 3, "num_threads": 2},
    "mipro": {"num_candidates": 2, "num_trials": 3, "num_threads": 2},
    "gepa": {"max_metric_calls": 40, "num_threads": 2},
    "bootstrap": {"max_bootstrapped_demos": 2, "max_labeled_demos": 2},
}
# Where each optimizer exposes its intermediate programs (DSPy's public result attributes we read).
INTERMEDIATES = {"simba": "candidate_programs", "mipro": "candidate_programs", "gepa": "detailed_results"}


@pytest.fixture
def data() -> tuple[list[dspy.Example], list[dspy.Example]]:
    examples = dx.datasets.arithmetic(80)
    return examples[:40], examples[40:]


@pytest.fixture
def program() -> dx.Program:
    return dx.Program("dspy.Predict", signature="question -> answer", name="arith")


@pytest.fixture
def lab_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the completions the lab engine itself serves (every rollout copy included)."""
    seen = [0]
    lock = threading.Lock()
    complete = LabEngine.complete

    def counting(self: LabEngine, request: Any) -> Any:
        with lock:
            seen[0] += 1
        return complete(self, request)

    monkeypatch.setattr(LabEngine, "complete", counting)
    return seen


def run(name: str, program: dx.Program, data: Any, journal: Path, **extra: Any) -> tuple[OptimizationResult, Any]:
    optimizer = DspyOptimizer(name, **{**TINY[name], **extra.pop("options", {})})
    train, val = data
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal):
        result = optimize(
            program, train, val, metric=dx.metrics.exact_match, optimizer=optimizer, progress=False, **extra
        )
    return result, optimizer


@pytest.mark.parametrize("name", list(DSPY_NAMES))
def test_each_optimizer_runs_end_to_end_through_the_journal(
    name: str, program: dx.Program, data: Any, journal_path: Path, lab_calls: list[int]
) -> None:
    result, optimizer = run(name, program, data, journal_path)
    compiled = optimizer.last_compiled
    assert isinstance(compiled, dspy.Module)

    assert result.optimizer == name
    assert result.status == "finished", result.status_detail
    assert result.config["optimizer_config"]["dspy"] == DSPY_NAMES[name]
    assert isinstance(result.best, dx.Program)
    # The best is DSPy's own final choice: its instructions and demos are the compiled module's.
    lm = dx.lab_lm("lab/small")
    assert read_configuration(result.best.build(lm=lm)) == read_configuration(compiled)

    steps, candidates = result.steps, result.candidates
    assert list(steps.columns) == list(STEP_COLUMNS)
    assert steps["step"].tolist() == list(range(len(steps)))
    assert steps.iloc[0]["detail"] == "baseline"
    assert (steps["status"] == "finished").all()
    assert steps.iloc[-1]["incumbent_id"] == result.best_id
    assert set(candidates["strategy"]) <= {"baseline", "dspy"}
    assert candidates.iloc[0]["candidate_id"] == "c0"
    evaluated = candidates[candidates["strategy"] == "dspy"]
    assert evaluated["val_mean"].notna().all() and evaluated["p_value"].notna().all()
    assert steps["lm_calls"].is_monotonic_increasing
    # Accepted means DSPy's choice beat the baseline significantly after Holm, nothing else.
    accepted = candidates[candidates["accepted"]]["candidate_id"].tolist()
    assert accepted in ([], [result.best_id])
    if accepted:
        assert result.comparison is not None and result.comparison.p_value < 0.05 * len(evaluated)

    # Every LM call the lab engine served is in the run's spending, and nothing else is.
    assert result.spending["lm_calls"] > 0
    assert result.spending["lm_calls"] == lab_calls[0]

    # The compile's metric calls are journaled trials, one experiment per configuration DSPy scored.
    journal = result.journal
    compile_trials = journal.sql(
        "SELECT experiment_id, example_id, score FROM trials WHERE starts_with(experiment_id, ?)",
        [f"{result.run_id}/compile/"],
    )
    assert len(compile_trials) > 0
    assert compile_trials["score"].notna().all()
    # Each compile experiment records what DSPy ran, and the program spec holding exactly that.
    first_compile = journal.experiment(f"{result.run_id}/compile/e1")
    ran = first_compile["config"]["dspy_configuration"]
    assert first_compile["config"]["program_spec_is_configuration"] is True
    rebuilt_first = read_configuration(dx.Program.from_dict(first_compile["program_spec"]).build(lm=lm))
    assert json.loads(json.dumps(rebuilt_first)) == ran

    # Each compile trial carries its own program run's LM calls; DSPy's other calls are the rest.
    compile_calls = journal.sql(
        "SELECT sum(lm_calls) AS n, min(lm_calls) AS least FROM trials WHERE starts_with(experiment_id, ?)",
        [f"{result.run_id}/compile/"],
    )
    val_calls = journal.sql(
        "SELECT sum(lm_calls) AS n FROM trials WHERE starts_with(experiment_id, ?) "
        "AND (ends_with(experiment_id, '/val') OR ends_with(experiment_id, '/confirm'))",
        [f"{result.run_id}/"],
    )
    compile_span = next(row for row in journal.span_rows(result.run_id, "step-1") if row["name"].startswith("compile "))
    outside = json.loads(compile_span["attributes"])["lm_calls_outside_trials"]
    assert int(compile_calls["least"].iloc[0]) >= 0
    assert int(compile_calls["n"].iloc[0]) > 0
    assert int(compile_calls["n"].iloc[0]) + int(val_calls["n"].iloc[0]) + outside == result.spending["lm_calls"]
    all_trials = journal.sql(
        "SELECT count(*) AS n FROM trials WHERE starts_with(experiment_id, ?)", [f"{result.run_id}/"]
    )
    assert int(all_trials["n"].iloc[0]) == result.spending["trials"]
    # DSPy never sees the validation set the result is judged on (MIPROv2 and GEPA select on a split of the trainset).
    train_ids = {example.id for example in data[0]}
    assert set(compile_trials["example_id"]) <= train_ids

    # The convergence panels read a DSPy run as they read SIMBA-C's: best so far per step, with
    # DSPy's own score next to the held-out one.
    panels = convergence_data(result.steps, result.candidates)
    assert panels.best["incumbent_id"].iloc[-1] == result.best_id
    assert panels.best["best_mean"].iloc[-1] == pytest.approx(result.best_result.mean)

    # The result rebuilt from the journal alone equals the one returned.
    rebuilt = OptimizationResult.from_journal(journal, result.run_id)
    assert rebuilt.to_summary() == result.to_summary()
    assert rebuilt.best.fingerprint == result.best.fingerprint
    pd.testing.assert_frame_equal(rebuilt.steps, result.steps)
    pd.testing.assert_frame_equal(rebuilt.candidates, result.candidates)

    # Every decision is an orchestration span of the run: compile, propose, validate.
    names = [row["name"] for row in journal.span_rows(result.run_id, "step-1")]
    assert names[0] == "step 1"
    assert f"compile {DSPY_NAMES[name]}" in names
    if result.best_id != "c0":
        first = evaluated.iloc[0]["candidate_id"]
        assert f"propose {first}" in names and f"validate {first}" in names

    # Where DSPy exposes its intermediate programs, we read them from its public result attributes;
    # this fails loudly if DSPy stops exposing them.
    if name in INTERMEDIATES:
        exposed = getattr(compiled, INTERMEDIATES[name])
        programs = [item["program"] for item in exposed] if name != "gepa" else list(exposed.candidates)
        assert programs and all(isinstance(item, dspy.Module) for item in programs)


def test_a_budget_of_lm_calls_stops_the_compile(
    program: dx.Program, data: Any, journal_path: Path, lab_calls: list[int]
) -> None:
    result, _ = run("simba", program, data, journal_path, budget=dx.Budget(lm_calls=70))

    assert result.status == "stopped"
    assert "lm_calls=70" in result.status_detail
    assert result.steps.iloc[-1]["status"] == "stopped"
    assert result.best_id == "c0"
    # The baseline's 28 calls (12 of the 40 validation examples are the confirmation set), then the
    # compile until the budget less what is held back for the confirmation (2 x 12 x 1.25 = 30 calls).
    assert 28 < result.spending["lm_calls"] <= 70 - 30
    assert result.spending["lm_calls"] == lab_calls[0]
    rebuilt = OptimizationResult.from_journal(result.journal, result.run_id)
    assert rebuilt.to_summary() == result.to_summary()


def test_a_budget_of_tokens_stops_the_compile(program: dx.Program, data: Any, journal_path: Path) -> None:
    result, _ = run("gepa", program, data, journal_path, budget=dx.Budget(tokens=15_000))

    assert result.status == "stopped"
    assert "tokens=15000" in result.status_detail
    # Checked before each call: only the calls already in flight (two threads, a reflection prompt
    # is a few thousand tokens) go past it. Part of it is held back for the confirmation: the
    # baseline's tokens per validation trial, for both programs on the 12 confirmation examples, x 1.25.
    baseline = result.journal.trials(f"{result.run_id}/c0/val")
    per_trial = (baseline["input_tokens"] + baseline["output_tokens"]).sum() / len(baseline)
    reserved = math.ceil(per_trial * 2 * 12 * 1.25)
    assert 15_000 <= result.spending["tokens"] + reserved < 20_000


def test_a_budget_too_small_for_the_baseline_is_refused(program: dx.Program, data: Any, journal_path: Path) -> None:
    with pytest.raises(OptimizerError, match=r"Budget\(lm_calls=10\) is too small for the baseline"):
        run("bootstrap", program, data, journal_path, budget=dx.Budget(lm_calls=10))


def test_an_unknown_optimizer_name_lists_the_names(program: dx.Program, data: Any, journal_path: Path) -> None:
    train, val = data
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path), pytest.raises(OptimizerError) as caught:
        optimize(program, train, val, metric=dx.metrics.exact_match, optimizer="simbah")
    message = str(caught.value)
    assert "'simbah'" in message
    for name in ("simba-c", *DSPY_NAMES):
        assert name in message
    with pytest.raises(OptimizerError, match="choose one of simba, mipro, gepa, bootstrap"):
        DspyOptimizer("miprov2")


def test_options_are_checked_and_recorded() -> None:
    with pytest.raises(OptimizerError, match=r"does not take batch_size; it takes .*bsize"):
        DspyOptimizer("simba", batch_size=16)
    with pytest.raises(OptimizerError, match="exactly one of auto, max_metric_calls, max_full_evals"):
        DspyOptimizer("gepa", max_metric_calls=10, max_full_evals=2)
    with pytest.raises(OptimizerError, match="validation_fraction"):
        DspyOptimizer("mipro", validation_fraction=1.5)
    assert DspyOptimizer("mipro").config()["auto"] == "light"
    assert DspyOptimizer("mipro", num_candidates=2, num_trials=3).config()["auto"] is None
    with pytest.raises(OptimizerError, match="needs num_candidates and num_trials"):
        DspyOptimizer("mipro", auto=None)
    with pytest.raises(OptimizerError, match="pass auto=None"):
        DspyOptimizer("mipro", auto="light", num_trials=3)
    assert DspyOptimizer("gepa", max_metric_calls=10).config().get("auto") is None
    simba = DspyOptimizer("simba", max_steps=4, bsize=16)
    assert simba.bsize == 16
    assert simba.config() == {
        "optimizer": "simba",
        "dspy": "SIMBA",
        "alpha": 0.05,
        "bsize": 16,
        "max_demos": 4,
        "max_steps": 4,
        "num_candidates": 6,  # DSPy SIMBA's own default
        "num_threads": 4,
        "test": "auto",
        "validate_top": 2,
    }


def test_mipro_without_optuna_names_the_extra(
    program: dx.Program, data: Any, journal_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "optuna" else find_spec(name, *a))
    with pytest.raises(MissingDependencyError, match=r"dspex_lab\[optimize\]"):
        run("mipro", program, data, journal_path)


def test_a_resumed_run_recompiles_but_reuses_finished_validations(
    program: dx.Program, data: Any, journal_path: Path, lab_calls: list[int]
) -> None:
    def interrupt(event: Any) -> None:
        if event.step == 1:
            raise KeyboardInterrupt

    train, val = data
    optimizer = DspyOptimizer("bootstrap", **TINY["bootstrap"])
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path):
        with pytest.raises(KeyboardInterrupt, match="resume="):
            optimize(
                program,
                train,
                val,
                metric=dx.metrics.exact_match,
                optimizer=optimizer,
                progress=False,
                subscribers=[interrupt],
            )
        journal = dx.current_context().journal
        run_id = journal.sql("SELECT id FROM experiments WHERE kind = 'optimization'")["id"].iloc[0]
        assert journal.experiment(run_id)["status"] == "interrupted"
        before = lab_calls[0]
        result = optimize(
            program, train, val, metric=dx.metrics.exact_match, optimizer=optimizer, progress=False, resume=run_id
        )
    assert result.status == "finished"
    assert result.candidates["candidate_id"].tolist() == ["c0", "c1"]
    # Only the compile ran again (DSPy keeps no state); neither validation set evaluation was repeated.
    compile_calls = journal.span_rows(run_id, "step-1")
    assert 0 < lab_calls[0] - before < len(val)
    assert any(row["name"] == "compile BootstrapFewShot" for row in compile_calls)
    experiments = set(journal.sql("SELECT id FROM experiments")["id"])
    assert {f"{run_id}/compile/e1", f"{run_id}/compile2/e1"} <= experiments


def test_a_compile_that_changes_nothing_keeps_the_baseline(program: dx.Program, data: Any, journal_path: Path) -> None:
    result, optimizer = run(
        "bootstrap", program, data, journal_path, options={"max_bootstrapped_demos": 0, "max_labeled_demos": 0}
    )

    assert read_configuration(optimizer.last_compiled) == read_configuration(program.build(lm=dx.lab_lm()))
    assert result.status == "finished"
    assert result.best_id == "c0" and result.comparison is None
    assert result.candidates["candidate_id"].tolist() == ["c0"]
    assert result.steps["detail"].tolist() == [
        "baseline",
        "DSPy BootstrapFewShot's final choice is the baseline configuration",
    ]


def test_compiles_are_quiet_and_the_progress_switch_is_still_the_one_dspy_reads(capsys) -> None:
    import inspect
    import logging

    from dspy.utils.parallelizer import ParallelExecutor

    from dspex_lab.optimization._dspy import quiet_compile

    # quiet_compile() turns DSPy's bars off through this attribute: fail loudly if DSPy stops reading it.
    assert "self.disable_progress_bar" in inspect.getsource(ParallelExecutor)
    before = ParallelExecutor.__init__
    with quiet_compile():
        assert ParallelExecutor().disable_progress_bar is True
        assert logging.getLogger("dspy").getEffectiveLevel() >= logging.ERROR
        executor = ParallelExecutor(num_threads=2)
        executor.execute(lambda item: item * 2, [1, 2, 3])
    assert ParallelExecutor.__init__ is before
    assert ParallelExecutor().disable_progress_bar is False
    captured = capsys.readouterr()
    assert "Processed" not in captured.out + captured.err


def test_dspy_simba_runs_on_a_program_whose_predictors_hold_alike_lms(tmp_path):
    """The pipeline's variables give each stage an LM of its own; dspy.SIMBA asks the module for one LM."""
    data = dx.datasets.arithmetic(60, seed=3)
    with dx.Context(lm=dx.lab_lm(), journal=tmp_path / "j.duckdb"):
        result = dx.optimize(
            dx.tasks.pipeline_program(),
            data[:30],
            data[30:],
            metric=dx.metrics.exact_match,
            optimizer=DspyOptimizer("simba", bsize=8, num_candidates=2, max_steps=1),
            progress=False,
            confirm_fraction=0,
        )
    assert result.status == "finished", result.status_detail


def test_dspy_simba_on_a_pipeline_counts_each_call_once_against_the_budget(tmp_path):
    """The stages' LMs are copies of the budget-gated run LM: SIMBA's one LM must not be gated a second time."""
    data = dx.datasets.arithmetic(60, seed=3)
    with dx.Context(lm=dx.lab_lm(), journal=tmp_path / "j.duckdb"):
        result = dx.optimize(
            dx.tasks.pipeline_program(), data[:30], data[30:], metric=dx.metrics.exact_match,
            optimizer=DspyOptimizer("simba", bsize=8, num_candidates=2, max_steps=1), progress=False,
            confirm_fraction=0, budget=dx.Budget(lm_calls=560),
        )  # fmt: skip
    # Its compile makes about 300 calls after a 90-call baseline: counted twice they would pass 560.
    assert result.status == "finished", result.status_detail
    assert result.spending["lm_calls"] < 560

"""RunProgress during an optimization: one display for the whole run, ending on the numbers of its result."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest

import dspex_lab as dx
from dspex_lab.engine import RunStarted, TrialFinished, TrialResult
from dspex_lab.optimization import DspyOptimizer, OptimizationStanding, OptimizationStarted, OptimizationStep

pytest.importorskip("anywidget")

PROGRAM = dx.Program(
    "dspy.Predict",
    signature="question -> answer",
    name="opt",
    variables={"temperature": dx.Float(0.0, low=0.0, high=1.0)},
)


def trial_calls(result: dx.OptimizationResult) -> int:
    """Return the LM calls the run's trials carry (what a display summing its trial events would show)."""
    journal = result.journal
    return sum(int(journal.trials(child.id)["lm_calls"].fillna(0).sum()) for child in journal.children(result.run_id))


def watched(widget: dx.RunProgress) -> list[Any]:
    """Record every value the widget's ``step`` trait takes, as the front end would see it change."""
    steps: list[Any] = []
    widget.observe(lambda change: steps.append(change["new"]), names="step")
    return steps


def check_final_numbers(widget: dx.RunProgress, result: dx.OptimizationResult) -> None:
    summary = result.to_summary()
    assert (widget.lm_calls, widget.tokens) == (summary["lm_calls"], summary["tokens"])
    assert widget.cost == summary["cost"]
    best = result.best_result
    assert widget.best["best_id"] == result.best_id
    assert (widget.best["best_mean"], widget.best["best_ci_low"], widget.best["best_ci_high"]) == (
        best.mean,
        *best.ci,
    )
    assert widget.best["ci_method"] == best.ci_method and widget.best["n"] == best.n == summary["selection"]["n"]
    assert [widget.best["best_ci_low"], widget.best["best_ci_high"]] == summary["selection"]["best_ci"]


def test_an_optimizations_progress_ends_on_its_results_numbers_and_steps_through_k_of_n(journal_path) -> None:
    data = list(dx.datasets.arithmetic(72, seed=17))
    widget = dx.RunProgress()
    steps = watched(widget)
    optimizer = dx.SimbaC(max_steps=3, bsize=8, num_candidates=3, num_sources=2, patience=3)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=2):
        result = dx.optimize(
            PROGRAM, data[:32], data[32:], metric=dx.metrics.exact_match, optimizer=optimizer, progress=widget
        )
    assert widget.status == result.status == "finished" and widget.kind == "optimization"
    check_final_numbers(widget, result)
    # The rule proposals' calls are in the run's totals; a display summing its trial events missed them.
    assert widget.lm_calls > trial_calls(result)
    # Step k of N: every step shown in order, N the optimizer's max_steps.
    finished = [int(step) for step in result.steps["step"]]
    assert [step for step in steps if step is not None] == finished == list(range(len(finished)))
    assert widget.planned_steps == 3 and widget.step == finished[-1]
    candidates = result.candidates  # which candidates were screened, and which validated
    assert widget.screened == int(candidates["screen_mean"].notna().sum()) > 0
    assert widget.validated == int((candidates["val_mean"].notna() & candidates["parent_id"].notna()).sum())
    # The clock runs over the whole run, not per evaluation; it was never reset to zero by a new evaluation.
    assert widget.elapsed > 0 and widget.eta is None and widget.runs > 3


def test_dspys_compile_calls_are_in_the_progress_totals(journal_path) -> None:
    data = list(dx.datasets.arithmetic(80))
    widget = dx.RunProgress()
    steps = watched(widget)
    optimizer = DspyOptimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=2)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path):
        result = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="arith"),
            data[:40],
            data[40:],
            metric=dx.metrics.exact_match,
            optimizer=optimizer,
            progress=widget,
        )
    check_final_numbers(widget, result)
    assert widget.planned_steps == 1 and [step for step in steps if step is not None] == [0, 1]


def standing(**values: Any) -> OptimizationStanding:
    defaults: dict[str, Any] = dict(
        step=None, planned_steps=4, screened=0, validated=0, lm_calls=0, tokens=0, cost=0.0, trials=0, budget={}
    )
    return OptimizationStanding(**{**defaults, **values})


def spent_trial(index: int, *, lm_calls: int, tokens: int, cost: float) -> TrialResult:
    return TrialResult(
        index=index,
        example_id=f"e{index}",
        repeat=0,
        status="ok",
        score=1.0,
        prediction=None,
        lm_calls=lm_calls,
        input_tokens=tokens,
        output_tokens=0,
        cost=cost,
    )


def test_totals_are_the_last_standing_plus_the_trials_finished_since() -> None:
    widget = dx.RunProgress()
    widget.begin("run")
    widget(OptimizationStarted("r", "run", standing()))
    widget(RunStarted(run_id="r/c0/val", name="run c0 val", total=2))
    widget(TrialFinished(run_id="r/c0/val", result=spent_trial(0, lm_calls=1, tokens=10, cost=0.5), done=1, total=2,
                         n_errors=0))  # fmt: skip
    # The step's standing counts that trial and 5 calls no trial carries (a rule proposal).
    widget(OptimizationStep("r", 0, pd.DataFrame(), pd.DataFrame(), standing(step=0, lm_calls=6, tokens=60, cost=1.0)))
    assert (widget.lm_calls, widget.tokens, widget.cost) == (6, 60, 1.0)
    widget(TrialFinished(run_id="r/c0/val", result=spent_trial(1, lm_calls=2, tokens=20, cost=0.25), done=2, total=2,
                         n_errors=0))  # fmt: skip
    assert (widget.lm_calls, widget.tokens, widget.cost) == (8, 80, 1.25)
    assert widget.evaluation == "run c0 val" and (widget.done, widget.total) == (2, 2)


def test_time_left_is_the_sooner_of_the_steps_pace_and_the_budget(monkeypatch) -> None:
    from dspex_lab.notebook import _widgets_progress

    now = [100.0]
    monkeypatch.setattr(_widgets_progress.time, "monotonic", lambda: now[0])
    widget = dx.RunProgress()
    widget.begin("run")
    budget = {"lm_calls": 1000.0}
    widget(OptimizationStarted("r", "run", standing(budget=budget)))
    now[0] = 110.0  # the baseline took 10 s
    widget(OptimizationStep("r", 0, pd.DataFrame(), pd.DataFrame(), standing(step=0, lm_calls=50, budget=budget)))
    now[0] = 130.0  # step 1 took 20 s: 3 steps left at that pace is 60 s; 850 calls left at 150 / 30 s is 170 s
    widget(OptimizationStep("r", 1, pd.DataFrame(), pd.DataFrame(), standing(step=1, lm_calls=150, budget=budget)))
    assert widget.eta == pytest.approx(60.0) and widget.eta_basis == "3 more steps at this pace"
    assert widget.elapsed == pytest.approx(30.0)
    now[0] = 140.0  # spending fast now: 950 of 1000 calls in 40 s leaves 50 calls, about 2.1 s
    widget(OptimizationStep("r", 2, pd.DataFrame(), pd.DataFrame(), standing(step=2, lm_calls=950, budget=budget)))
    assert widget.eta == pytest.approx(50 * 40 / 950) and "lm_calls=1000" in widget.eta_basis
    widget.finish("finished")
    assert widget.eta is None and widget.elapsed == pytest.approx(40.0)


def test_an_unpriced_optimization_shows_no_dollar_figure() -> None:
    widget = dx.RunProgress()
    widget.begin("run")
    widget(OptimizationStep("r", 0, pd.DataFrame(), pd.DataFrame(), standing(step=0, lm_calls=3, cost=None)))
    assert widget.cost is None and widget.unpriced_models and not math.isnan(widget.lm_calls)

"""The run's one spending counter: every count and every "is the budget spent?" goes through Spending."""

from __future__ import annotations

import pytest

import dspex_lab as dx
from dspex_lab.engine import (
    RetryPolicy,
    RunPolicy,
    SpendingCounter,
    ThreadExecutor,
    TrialRunner,
    TrialTask,
    run_trials,
    trial_record,
)
from dspex_lab.optimization._dspy import _BudgetExhaustedError, _CompileGate
from dspex_lab.optimization._spending import BudgetSpent, Spending
from dspex_lab.providers import Usage


class _FixedMeter:
    """A meter whose usage the test sets."""

    def __init__(self) -> None:
        self.measured = Usage()

    def usage(self) -> Usage:
        return self.measured


def test_pending_calls_count_as_spent() -> None:
    spending = Spending(budget=dx.Budget(lm_calls=100))
    spending.lm_calls = 60
    assert spending.exhausted(Usage(lm_calls=39)) is None
    assert spending.exhausted(Usage(lm_calls=40)) == "budget lm_calls=100 spent (100 used)"
    spending.reserve(lm_calls=10, tokens=0, cost=0.0)
    assert spending.exhausted(Usage(lm_calls=30)) == "budget lm_calls=100 spent (90 used, 10 kept for the confirmation)"
    # Pending calls are only asked about, never counted.
    assert spending.lm_calls == 60


def test_usage_outside_evaluations_is_counted_once_with_its_trials() -> None:
    spending = Spending()
    spending.add_usage(Usage(10, 5, 3, 0.25), trials=2, proposal_seconds=1.5)
    spending.add_usage(Usage(1, 1, 1, None))
    assert spending.to_summary() == {
        "lm_calls": 4,
        "tokens": 17,
        "cost": None,  # one unpriced call: the dollars are not known
        "trials": 2,
        "proposal_seconds": 1.5,
    }
    spending.add_untracked(lm_calls=2, tokens=3, cost=None)
    assert (spending.lm_calls, spending.tokens, spending.cost) == (6, 20, 0.25)


def test_nothing_left_raises_budget_spent_between_evaluations() -> None:
    spending = Spending(budget=dx.Budget(tokens=50))
    spending.tokens = 50
    with pytest.raises(BudgetSpent, match=r"budget tokens=50 spent \(50 used\)"):
        spending.ensure_left()


def trial(*, lm_calls: int = 1, cost: float | None = 0.001, stage: str | None = None):
    ok = stage is None
    return trial_record(
        index=0, example_id="e0", repeat=0, status="ok" if ok else "error", score=1.0 if ok else None,
        prediction="{}" if ok else None, error_stage=stage, lm_calls=lm_calls, input_tokens=10 * lm_calls,
        output_tokens=2 * lm_calls, cost=cost, unpriced_models=None if cost is not None else "lab/unpriced",
    )  # fmt: skip


def test_the_spending_is_the_engines_counter_and_stops_at_the_runs_totals() -> None:
    spending = Spending(budget=dx.Budget(lm_calls=5))
    assert isinstance(spending, SpendingCounter)
    spending.lm_calls = 3  # spent before this evaluation (earlier evaluations, rule proposals)
    assert spending.add(trial()) is False and spending.exceeded is None
    assert spending.add(trial(stage="cancelled")) is False  # not recorded, so not counted: a resume runs it
    assert spending.add(trial()) is True
    assert spending.exceeded == "budget lm_calls=5 spent (5 used)"
    assert (spending.lm_calls, spending.tokens, spending.trials) == (5, 24, 2)


def test_a_dollar_limit_stops_at_the_first_unpriced_trial() -> None:
    spending = Spending(budget=dx.Budget(usd=1.0))
    assert spending.add(trial()) is False
    assert spending.add(trial(cost=None)) is True
    assert spending.exceeded == "budget: usd cannot be enforced, calls to lab/unpriced have no known price"
    assert spending.to_summary()["cost"] is None  # the dollars are not known
    unlimited = Spending(budget=dx.Budget(lm_calls=100))
    assert unlimited.add(trial(cost=None)) is False and unlimited.exceeded is None


def test_an_evaluation_counts_into_the_runs_spending_directly() -> None:
    # The engine's run counts each trial in the run's counter: no pilot, no tracker of its own.
    spending = Spending(budget=dx.Budget(lm_calls=27))
    spending.lm_calls = 20
    lm = dx.lab_lm("lab/small")
    program = dx.Program("dspy.Predict", signature="question -> answer", name="qa")
    runner = TrialRunner(program.build(lm=lm), dx.metrics.exact_match, lm=lm, retry=RetryPolicy())
    examples = dx.datasets.arithmetic(40, seed=3)
    tasks = [TrialTask(index=i, example_id=f"e{i}", example=example) for i, example in enumerate(examples)]
    report = run_trials(tasks, runner, executor=ThreadExecutor(1), policy=RunPolicy(budget=spending))
    assert report.status == "stopped" and report.detail == "budget lm_calls=27 spent (27 used)"
    assert len(report.results) == spending.trials == 7 and spending.lm_calls == 27
    assert report.spending == spending.to_summary()


def test_the_compile_gate_asks_the_spending_and_stays_shut() -> None:
    spending = Spending(budget=dx.Budget(lm_calls=5))
    spending.lm_calls = 3
    gate = _CompileGate(spending, _FixedMeter())  # type: ignore[arg-type]
    gate.before_call()
    gate.before_call()
    with pytest.raises(_BudgetExhaustedError, match=r"budget lm_calls=5 spent \(5 used\)"):
        gate.before_call()
    spending.lm_calls = 0  # the gate does not open again once the budget was spent
    with pytest.raises(_BudgetExhaustedError):
        gate.before_call()
    assert gate.calls == 2


def test_the_compile_gate_counts_the_compiles_metered_tokens() -> None:
    spending = Spending(budget=dx.Budget(tokens=1_000))
    spending.tokens = 400
    meter = _FixedMeter()
    gate = _CompileGate(spending, meter)  # type: ignore[arg-type]
    meter.measured = Usage(input_tokens=500, output_tokens=99, lm_calls=3)
    gate.before_call()
    meter.measured = Usage(input_tokens=500, output_tokens=100, lm_calls=4)
    with pytest.raises(_BudgetExhaustedError, match=r"budget tokens=1000 spent \(1000 used\)"):
        gate.before_call()

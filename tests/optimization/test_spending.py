"""The run's one spending counter: every count and every "is the budget spent?" goes through Spending."""

from __future__ import annotations

import pytest

import dspex_lab as dx
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
        spending.remaining()


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

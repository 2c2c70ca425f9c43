"""The run's one spending counter: what an optimization has spent, what its budget leaves, when it must stop.

Every LM call an optimization run pays for is counted here, once: the trials of its
evaluations (as each finishes), the calls SIMBA-C makes outside trials (rule proposals),
everything DSPy's own compile spent, and, for a resumed run, what the interrupted run
spent. Every "is the budget spent?" is answered here too, with one message:

- between evaluations, :meth:`Spending.ensure_left` (raising :class:`BudgetSpent`);
- inside an evaluation, after every trial: the spending is the engine's
  :class:`~dspex_lab.engine.SpendingCounter` (``RunPolicy(budget=spending)``), so
  :func:`~dspex_lab.engine.run_trials` counts each finished trial here (:meth:`Spending.add`) and
  stops the evaluation once the run's budget is spent;
- during DSPy's compile, before every LM call, :meth:`Spending.exhausted` with the compile's
  calls so far as ``pending`` (see ``_dspy.py``'s compile gate, which counts nothing itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspex_lab.engine import Budget, TrialResult
from dspex_lab.providers import Usage

__all__ = ["BudgetSpent", "Spending"]

# Dollars are counted in whole picodollars: an integer sum is the same in any order, so a run's cost
# does not depend on which trial finished first, and a total read back from a journaled step row
# (a float) gives back the exact integer (below about $2,000, where a float still resolves 1e-12).
_PICODOLLARS = 10**12


class BudgetSpent(Exception):  # noqa: N818 - a control-flow signal inside the optimizer, never raised to users
    """The run's budget is spent: the optimizer stops cleanly with what it has."""


@dataclass
class Spending:
    """What a run has spent so far, and what its budget leaves; the engine's counter for every evaluation.

    A resumed run counts a trial served from the journal when it first uses it, as the
    uninterrupted run counted it when it finished, so the totals at every point of a
    resumed run are the uninterrupted run's.

    Thread safety: one thread counts (the run's; the engine calls :meth:`add` on it); :meth:`exhausted`
    may be read from others while nothing is being counted (DSPy's compile threads, whose calls are
    counted when the compile ends).
    """

    budget: Budget | None = None
    lm_calls: int = 0
    tokens: int = 0
    cost_picodollars: int = 0
    unpriced: bool = False
    trials: int = 0
    # Wall seconds of LM calls an optimizer makes outside trials (SIMBA-C's rule proposals).
    proposal_seconds: float = 0.0
    # Part of the budget held back for the confirmation evaluations that follow the search (see
    # ``dx.optimize``): the search stops when what it spent plus this reaches a limit.
    reserved_lm_calls: int = 0
    reserved_tokens: int = 0
    reserved_picodollars: int = 0
    # Why the run cannot go on under a dollar limit: a trial made calls to a model with no known price.
    unmeasurable: str | None = None

    @property
    def cost(self) -> float:
        """Dollars spent (priced calls only; see ``unpriced``)."""
        return self.cost_picodollars / _PICODOLLARS

    @cost.setter
    def cost(self, dollars: float) -> None:
        self.cost_picodollars = round(float(dollars) * _PICODOLLARS)

    def add_row(self, row: dict[str, Any], *, trial: bool = True) -> None:
        """Count one journaled trial's row (``trial=False``: LM calls made outside trials)."""
        self._count(
            lm_calls=int(row.get("lm_calls") or 0),
            tokens=int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0),
            cost=None if row.get("cost") is None else float(row["cost"]),
            trial=trial,
        )

    def _count(self, *, lm_calls: int, tokens: int, cost: float | None, trial: bool) -> None:
        self.trials += 1 if trial else 0
        self.lm_calls += lm_calls
        self.tokens += tokens
        if cost is None:
            self.unpriced = self.unpriced or bool(lm_calls)
        else:
            self.cost_picodollars += round(cost * _PICODOLLARS)

    # -- the engine's counter (dspex_lab.engine.SpendingCounter) ---------------------------------

    def add(self, result: TrialResult) -> bool:
        """Count a trial one of the run's evaluations finished; return True when the run's budget is spent.

        A trial cancelled because the evaluation stopped is not counted: it is not recorded, so a
        resumed run runs it again and counts it then. A priced budget (``usd``) cannot be kept once a
        trial called a model without a known price: the evaluation stops, and says so.
        """
        if result.error_stage == "cancelled":
            return False
        self._count(
            lm_calls=result.lm_calls,
            tokens=result.input_tokens + result.output_tokens,
            cost=result.cost,
            trial=True,
        )
        usd_limited = self.budget is not None and self.budget.usd is not None
        if result.cost is None and result.lm_calls and usd_limited and self.unmeasurable is None:
            models = result.unpriced_models or "an unpriced model"
            self.unmeasurable = f"budget: usd cannot be enforced, calls to {models} have no known price"
        return self.exceeded is not None

    @property
    def exceeded(self) -> str | None:
        """Why the evaluation running now must stop: the run's budget is spent, or its dollars cannot be measured."""
        return self.unmeasurable or self.exhausted()

    def add_usage(self, usage: Usage, *, trials: int = 0, proposal_seconds: float = 0.0) -> None:
        """Count what a meter measured outside the evaluations (a rule proposal, DSPy's whole compile).

        Args:
            usage: the calls, tokens and dollars measured.
            trials: the trials among them (DSPy's compile scores trials of its own).
            proposal_seconds: wall seconds the calls took, when they were an optimizer's proposals.
        """
        self.proposal_seconds += proposal_seconds
        self._count(
            lm_calls=usage.lm_calls, tokens=usage.input_tokens + usage.output_tokens, cost=usage.cost, trial=False
        )
        self.trials += trials

    def add_untracked(self, *, lm_calls: int, tokens: int, cost: float | None) -> None:
        """Count calls an interrupted run made that no journaled trial carries (a resumed run catching up).

        A cost of None leaves the dollars as they are: the interrupted run's were not known.
        """
        self.lm_calls += lm_calls
        self.tokens += tokens
        if cost is not None:
            self.cost_picodollars += round(float(cost) * _PICODOLLARS)

    def restore(self, totals: dict[str, Any]) -> None:
        """Set the LM calls, tokens and dollars to a journaled step row's totals (a resumed run catching up)."""
        self.lm_calls = int(totals.get("lm_calls") or 0)
        self.tokens = int(totals.get("tokens") or 0)
        if totals.get("cost") is None:
            self.unpriced = self.unpriced or bool(self.lm_calls)
        else:
            self.cost = float(totals["cost"])

    def reserve(self, *, lm_calls: int, tokens: int, cost: float) -> None:
        """Hold back part of the budget for the confirmation evaluations that follow the search."""
        self.reserved_lm_calls = max(int(lm_calls), 0)
        self.reserved_tokens = max(int(tokens), 0)
        self.reserved_picodollars = max(round(float(cost) * _PICODOLLARS), 0)

    def release(self) -> None:
        """Give the held-back part of the budget to the confirmation evaluations."""
        self.reserved_lm_calls = self.reserved_tokens = self.reserved_picodollars = 0

    def _held(self, pending: Usage | None) -> tuple[tuple[str, float, float], ...]:
        # (limit name, used, held back for the confirmation)
        pending = pending or Usage()
        return (
            ("usd", self.cost + (pending.cost or 0.0), self.reserved_picodollars / _PICODOLLARS),
            ("lm_calls", self.lm_calls + pending.lm_calls, self.reserved_lm_calls),
            ("tokens", self.tokens + pending.input_tokens + pending.output_tokens, self.reserved_tokens),
        )

    def exhausted(self, pending: Usage | None = None) -> str | None:
        """Say which limit of the budget is spent, or return None while every limit has some left.

        The message names the run's totals, not one evaluation's share, so a run that stops at the
        budget says the same whether it ran straight through or was resumed on the way.

        Args:
            pending: calls made and not counted yet (DSPy's compile so far), counted as spent.
        """
        if self.budget is None:
            return None
        for name, used, held in self._held(pending):
            limit = getattr(self.budget, name)
            if limit is not None and used + held >= limit:
                kept = f", {held:g} kept for the confirmation" if held else ""
                return f"budget {name}={limit:g} spent ({used:g} used{kept})"
        return None

    def ensure_left(self) -> None:
        """Raise :class:`BudgetSpent` when the budget is spent (before an evaluation starts)."""
        spent = self.exhausted()
        if spent is not None:
            raise BudgetSpent(spent)

    def to_summary(self) -> dict[str, Any]:
        """Return the totals as JSON values."""
        return {
            "lm_calls": self.lm_calls,
            "tokens": self.tokens,
            "cost": None if self.unpriced else self.cost,
            "trials": self.trials,
            "proposal_seconds": round(self.proposal_seconds, 6),
        }

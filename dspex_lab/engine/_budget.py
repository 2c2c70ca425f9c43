"""Cost budgets: a projection before a run, live spending during it, a clean stop at the limit.

A run counts its spending in a :class:`SpendingCounter`. Given a :class:`Budget`, the engine
builds its own, a :class:`BudgetTracker` (with a pilot that projects the run's cost first, a
warning at 80% of a limit, a stop at 100%). A workload whose runs share one budget (an
optimization's evaluations) passes its own counter instead, so every run counts into it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from dspex_lab.engine._trial import TrialResult
from dspex_lab.errors import DspexLabWarning, ExecutionError

__all__ = ["Budget", "BudgetTracker", "SpendingCounter"]

WARNING_FRACTION = 0.8


@dataclass(frozen=True)
class Budget:
    """Limits on what a run may spend; any of them may be left out.

    Args:
        usd: dollars, priced from each model's token prices (the lab LM has prices).
        lm_calls: LM calls.
        tokens: input plus output tokens.
        pilot: trials run first to project the whole run's spending before the rest starts.

    Examples:
        >>> Budget(usd=0.50, lm_calls=2_000).limits()
        {'usd': 0.5, 'lm_calls': 2000}
    """

    usd: float | None = None
    lm_calls: int | None = None
    tokens: int | None = None
    pilot: int = 10

    def __post_init__(self) -> None:
        for name, value in self.limits().items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ExecutionError(f"Budget({name}={value!r}): a limit must be a positive number")
        if not isinstance(self.pilot, int) or self.pilot < 1:
            raise ExecutionError(f"Budget(pilot={self.pilot!r}): the pilot must be at least one trial")
        if not self.limits():
            raise ExecutionError("Budget() needs at least one limit: usd=, lm_calls= or tokens=")

    def limits(self) -> dict[str, float]:
        """Return the limits that are set."""
        return {name: getattr(self, name) for name in ("usd", "lm_calls", "tokens") if getattr(self, name) is not None}


@runtime_checkable
class SpendingCounter(Protocol):
    """Where a run counts its spending, trial by trial, and learns when it must stop.

    Pass one as ``RunPolicy(budget=counter)`` to count several runs against one budget (each of an
    optimization's evaluations counts into the optimization's). The engine builds its own,
    :class:`BudgetTracker`, from a :class:`Budget`; only that one has a pilot.

    Contract: :func:`~dspex_lab.engine.run_trials` calls :meth:`add` on its own thread (never
    concurrently), once per trial in the order they finish, a trial cancelled because the run
    stopped included (``result.error_stage == "cancelled"``: the counter decides whether such a
    trial counts). Once :meth:`add` returns True the run stops; :attr:`exceeded` then says why (the
    run's stop detail). :meth:`to_summary` is the run report's ``spending``.
    """

    @property
    def exceeded(self) -> str | None:
        """Why the run must stop (a limit reached), or None while it may go on."""
        ...

    def add(self, result: TrialResult) -> bool:
        """Count one finished trial; return True when the run must stop."""
        ...

    def to_summary(self) -> dict[str, Any]:
        """Return what was counted, as JSON values."""
        ...


@dataclass
class BudgetTracker:
    """Count spending trial by trial; say when to warn and when to stop (the engine's :class:`SpendingCounter`).

    A trial whose cost is unknown (an unpriced model) cannot be counted in dollars: with a
    dollar limit the tracker stops the run at the first such trial (``exceeded`` says why)
    rather than let spending run unmeasured; without one it only counts them (``unpriced``).

    A metric that calls an LM (a judge) spends from the same limits: a trial's ``lm_calls``, tokens
    and cost include its metric's. ``metric_lm_calls`` and ``metric_usd`` say how much of ``spent``
    the metric took (``metric_usd`` counts the priced metric calls).
    """

    budget: Budget
    spent: dict[str, float] = field(default_factory=lambda: {"usd": 0.0, "lm_calls": 0.0, "tokens": 0.0})
    metric_lm_calls: int = 0
    metric_usd: float = 0.0
    trials: int = 0
    unpriced: int = 0
    warned: set[str] = field(default_factory=set)
    exceeded: str | None = None
    projection: dict[str, Any] | None = None

    def add(self, result: TrialResult) -> bool:
        """Count one finished trial; return True when a limit is reached (the run must stop)."""
        self.trials += 1
        if result.cost is None:
            self.unpriced += 1
            if self.budget.usd is not None and self.exceeded is None and result.lm_calls:
                models = result.unpriced_models or "an unpriced model"
                self.exceeded = f"budget: usd cannot be enforced, calls to {models} have no known price"
        else:
            self.spent["usd"] += result.cost
        self.spent["lm_calls"] += result.lm_calls
        self.spent["tokens"] += result.input_tokens + result.output_tokens
        self.metric_lm_calls += result.metric_lm_calls
        self.metric_usd += result.metric_cost or 0.0
        for name, limit in self.budget.limits().items():
            used = self.spent[name]
            if used >= limit and self.exceeded is None:
                self.exceeded = f"budget: {name} {used:.6g} reached the limit {limit:g}"
            elif used >= WARNING_FRACTION * limit and name not in self.warned:
                self.warned.add(name)
                warnings.warn(
                    f"run has used {used / limit:.0%} of its {name} budget ({used:.6g} of {limit:g})",
                    DspexLabWarning,
                    stacklevel=2,
                )
        return self.exceeded is not None

    def project(self, planned_trials: int) -> dict[str, Any]:
        """Project the whole run's spending from the trials counted so far (the pilot)."""
        scale = planned_trials / self.trials if self.trials else math.nan
        projected = {name: value * scale for name, value in self.spent.items()}
        over = {name: projected[name] for name, limit in self.budget.limits().items() if projected[name] > limit}
        self.projection = {
            "pilot_trials": self.trials,
            "planned_trials": planned_trials,
            "projected": projected,
            "limits": self.budget.limits(),
            "exceeds": sorted(over),
        }
        if over:
            warnings.warn(
                "projected spending exceeds the budget ("
                + ", ".join(f"{name} ≈ {value:.4g} > {self.budget.limits()[name]:g}" for name, value in over.items())
                + "); the run will stop cleanly when a limit is reached",
                DspexLabWarning,
                stacklevel=2,
            )
        return self.projection

    def to_summary(self) -> dict[str, Any]:
        """Return JSON-ready spending (the metric's part apart), limits and projection."""
        return {
            "spent": dict(self.spent),
            "metric": {"lm_calls": self.metric_lm_calls, "usd": self.metric_usd},
            "limits": self.budget.limits(),
            "unpriced_trials": self.unpriced,
            "projection": self.projection,
            "stopped": self.exceeded,
        }

"""Optimization: SIMBA-C and DSPy's optimizers, every candidate evaluation journaled.

``dx.optimize(program, trainset, valset, metric=..., optimizer=dx.SimbaC(...))`` runs
an optimizer on a program (see :func:`~dspex_lab.optimization._optimize.optimize`): every
trial goes through the engine (:func:`~dspex_lab.engine.run_trials`) into the
journal, every decision is a step row and an orchestration span, and the
:class:`OptimizationResult` can be rebuilt from the journal alone.
"""

from typing import Any

from dspex_lab.journal import JournalStore
from dspex_lab.optimization._display import RunDisplay, Subscriber
from dspex_lab.optimization._dspy import DspyOptimizer
from dspex_lab.optimization._importance import (
    IMPORTANCE_COLUMNS,
    ScoredConfigurations,
    estimate_importance,
    importance_html,
    importance_text,
    read_scored_configurations,
    run_importance,
)
from dspex_lab.optimization._objective import GUARDRAIL_SYNTAX, Guardrail, GuardrailCheck, Objective, parse_objective
from dspex_lab.optimization._optimize import DSPY_OPTIMIZERS, OptimizationStep, optimize
from dspex_lab.optimization._optuna import OPTUNA_IMPORTANCE_COLUMNS, SAMPLERS, OptunaSearch, optuna_importance
from dspex_lab.optimization._pareto import PARETO_COLUMNS, pareto_text, run_pareto
from dspex_lab.optimization._plot import (
    ConvergenceData,
    LiveConvergence,
    convergence_data,
    convergence_plot,
    follow_theme,
    pareto_plot,
)
from dspex_lab.optimization._result import CANDIDATE_COLUMNS, STEP_COLUMNS, OptimizationResult
from dspex_lab.optimization._session import OptimizationEnded, OptimizationStanding, OptimizationStarted
from dspex_lab.optimization._simba_c import ProposeRule, SimbaC

__all__ = [
    "CANDIDATE_COLUMNS",
    "DSPY_OPTIMIZERS",
    "GUARDRAIL_SYNTAX",
    "IMPORTANCE_COLUMNS",
    "OPTUNA_IMPORTANCE_COLUMNS",
    "PARETO_COLUMNS",
    "SAMPLERS",
    "STEP_COLUMNS",
    "ConvergenceData",
    "DspyOptimizer",
    "Guardrail",
    "GuardrailCheck",
    "LiveConvergence",
    "Objective",
    "OptimizationEnded",
    "OptimizationResult",
    "OptimizationStanding",
    "OptimizationStarted",
    "OptimizationStep",
    "OptunaSearch",
    "ProposeRule",
    "RunDisplay",
    "ScoredConfigurations",
    "SimbaC",
    "Subscriber",
    "convergence_data",
    "convergence_plot",
    "estimate_importance",
    "follow_theme",
    "importance_html",
    "importance_text",
    "optimize",
    "optuna_importance",
    "pareto_plot",
    "pareto_text",
    "parse_objective",
    "plot_run",
    "read_scored_configurations",
    "run_importance",
    "run_pareto",
]


def plot_run(journal: JournalStore, run_id: str) -> Any:
    """Return the convergence plot of a journaled optimization run (any optimizer), from the journal alone."""
    result = OptimizationResult.from_journal(journal, run_id)
    return convergence_plot(result.steps, result.candidates, title=f"{result.name} ({result.optimizer})")

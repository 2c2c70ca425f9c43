"""Optimization: SIMBA-C and DSPy's optimizers, every candidate evaluation journaled.

``dx.optimize(program, trainset, valset, metric=..., optimizer=dx.SimbaC(...))`` runs
an optimizer on a program (see :func:`~dspex_lab.optimize._optimize.optimize`): every
trial goes through the engine (:func:`~dspex_lab.engine.run_trials`) into the
journal, every decision is a step row and an orchestration span, and the
:class:`OptimizationResult` can be rebuilt from the journal alone.
"""

from dspex_lab.optimize._optimize import DSPY_OPTIMIZERS, OptimizationStep, optimize
from dspex_lab.optimize._result import CANDIDATE_COLUMNS, STEP_COLUMNS, OptimizationResult
from dspex_lab.optimize._simba_c import ProposeRule, SimbaC

__all__ = [
    "CANDIDATE_COLUMNS",
    "DSPY_OPTIMIZERS",
    "STEP_COLUMNS",
    "OptimizationResult",
    "OptimizationStep",
    "ProposeRule",
    "SimbaC",
    "optimize",
]

"""What one optimization run is given: checked once by ``dx.optimize``, read by every part of the run."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dspy

from dspex_lab.data import Dataset
from dspex_lab.engine import Budget, Executor, RunPolicy
from dspex_lab.journal import JournalStore
from dspex_lab.optimization._display import Subscriber
from dspex_lab.program import Program

if TYPE_CHECKING:
    from dspex_lab.optimization._dspy import DspyOptimizer
    from dspex_lab.optimization._objective import Objective
    from dspex_lab.optimization._simba_c import SimbaC

__all__ = ["Metric", "OptimizationSetup"]

Metric = Callable[[dspy.Example, Any], Any]


@dataclass(frozen=True)
class OptimizationSetup:
    """Everything one optimization run is given, checked and resolved by ``dx.optimize`` before it starts.

    Built once and never changed: the run (:func:`~dspex_lab.optimization._optimize.optimize`'s
    ``_run``), its session (:class:`~dspex_lab.optimization._session.RunSession`), SIMBA-C and the
    DSPy bridge all read their settings from it.

    Attributes:
        program: the program as the user gave it.
        trainset: examples for mini-batches, trajectories, demos and DSPy's compile.
        valset: the examples candidates are accepted on (the selection part of the user's valset).
        confirm_set: the examples the best is tested on once the search is over (None: no confirmation).
        metric: ``metric(example, prediction)``.
        optimizer: the resolved optimizer (:class:`SimbaC` or :class:`DspyOptimizer`).
        seed: the run's seed.
        budget: the run's spending limits (None: none).
        name: the run's name.
        resume: the id of the run this one continues, or None for a new run.
        config: the run's settings as recorded (redacted): optimizer, seed, sets, metric, LM.
        policy: timeout, retries and error budget of every evaluation (its budget is set per evaluation).
        trace: capture every trial's span tree.
        lm: the run's LM.
        executor: where trials run.
        journal: where the run is recorded (the context's: a file, or an in-memory journal for this process only).
        display: given every evaluation's events and every step (None: none); a :class:`RunDisplay`
            also hears when the run begins and ends.
        print_steps: print one line per step (``progress=True`` with no display installed).
        subscribers: called with every finished step.
        objective: guardrails every accepted candidate meets with confidence (None: the metric alone).
    """

    program: Program
    trainset: Dataset
    valset: Dataset
    confirm_set: Dataset | None
    metric: Metric
    optimizer: SimbaC | DspyOptimizer
    seed: int
    budget: Budget | None
    name: str
    resume: str | None
    config: Mapping[str, Any]
    policy: RunPolicy
    trace: bool
    lm: dspy.BaseLM
    executor: Executor
    journal: JournalStore
    display: Subscriber | None
    print_steps: bool
    subscribers: Sequence[Subscriber] = ()
    objective: Objective | None = None

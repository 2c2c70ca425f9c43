"""Optuna's samplers over a program's typed variables, every trial of the study a journaled candidate evaluation.

``dx.optimize(..., optimizer="optuna")`` (or ``dx.OptunaSearch(sampler=...)``) searches the
program's typed variables (``Float``, ``Int``, ``Choice``, ``Bool``; instructions, demos and free
text are not searched) with an Optuna study, and records it the way SIMBA-C is recorded:

1. **Baseline.** The program as given is candidate ``c0``, evaluated on the validation set
   (step 0), and the study's first trial.
2. **Trials.** Each trial the sampler asks for is a step. Its parameters become a candidate
   (strategy ``optuna``), evaluated on the validation set through the run's evaluator (engine,
   journal, budget), in the blocks of :func:`~dspex_lab.optimization._schedule.look_ends`
   (``looks``). Between blocks the trial reports its mean so far and Optuna's
   ``MedianPruner`` may stop it: a pruned trial keeps its partial scores (journaled, and
   reported to the study as its last intermediate value), never averaged as a zero. A
   configuration the sampler proposes again is not evaluated again: the study is told its
   known values, and the step says so. The run ends after ``n_trials`` study trials, when the
   budget is spent (status ``stopped``), when every configuration of a finite space is
   evaluated, or after :data:`MAX_REPEATS` proposals in a row of configurations already seen.
3. **The choice.** The best candidate is the one with the highest validation mean among the
   fully evaluated ones (with an objective, among those whose estimates meet every guardrail).
   As in the DSPy bridge it is tested against the baseline with the run's paired test
   (one-sided, :func:`~dspex_lab.optimization._acceptance.judge`), kept when it meets the
   guardrails and *accepted* only when the test is significant; either way the run's claim is
   the held-out confirmation ``dx.optimize`` runs after the search, on data no trial saw.

Samplers: ``tpe`` (default), ``random``, ``cmaes`` (every searched variable numeric; needs the
``cmaes`` package) and ``nsga2`` (multi-objective: the metric against each guardrail's quantity
of ``objective=``, or against the cost per example without one; Optuna does not prune
multi-objective studies, so its trials are never pruned). Each trial's sampler is seeded from the
run's seed and the trial's number, so a trial's proposal depends on the study's history alone.

**Resume.** The study lives in Optuna's in-memory storage. Every study trial's number, state,
parameters, values, intermediate values and sampler attributes are journaled in its step's row;
a resumed run rebuilds the study from those rows (``study.add_trial(optuna.trial.create_trial(...))``),
and the interrupted trial is asked again, gets the same parameters and reuses the trials its
evaluation journaled.

**Importance.** :func:`optuna_importance` rebuilds a study from any run's fully validated
candidates and returns ``optuna.importance.get_param_importances`` with Optuna's default evaluator
(PED-ANOVA in Optuna 5, which needs no scikit-learn; fANOVA and mean decrease impurity need it and
can be passed as ``evaluator=``), one row per typed variable: ``result.importance(method="optuna")``,
read beside the run's own estimate with intervals (``result.importance()``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dspy
import numpy as np
import pandas as pd

from dspex_lab.engine import Budget
from dspex_lab.errors import MissingDependencyError, OptimizerError, ProgramSpecError, VariableError
from dspex_lab.optimization._acceptance import judge, mean_and_interval
from dspex_lab.optimization._decisions import DecisionTrace
from dspex_lab.optimization._evaluator import Scores
from dspex_lab.optimization._objective import Objective, baseline_detail, check_guardrails, meets_estimates
from dspex_lab.optimization._schedule import look_ends
from dspex_lab.optimization._session import RunSession, StepRecord
from dspex_lab.optimization._space import Candidate, Slots, mutable_variables
from dspex_lab.optimization._spending import BudgetSpent
from dspex_lab.program import Bool, Choice, Float, Int, Program
from dspex_lab.trace.spans import now_ns

if TYPE_CHECKING:
    from dspex_lab.optimization._result import OptimizationResult

__all__ = [
    "MAX_REPEATS",
    "OPTUNA_IMPORTANCE_COLUMNS",
    "SAMPLERS",
    "OptunaSearch",
    "optuna_importance",
    "run_optuna",
    "typed_space",
]

#: The samplers ``OptunaSearch(sampler=...)`` takes.
SAMPLERS = ("tpe", "random", "cmaes", "nsga2")
#: Proposals in a row of configurations already evaluated after which the search ends.
MAX_REPEATS = 20
#: Study trials when neither ``n_trials`` nor a budget bounds the search.
DEFAULT_TRIALS = 30
_NO_SLOTS = Slots({}, {}, {})
# The random stream of each trial's sampler, apart from the run's other streams drawn from the seed.
_SAMPLER_STREAM = 9_103


class OptunaSearch:
    """An Optuna study over the program's typed variables, run by ``dx.optimize`` with every trial journaled.

    See the module docstring for what is searched, recorded and chosen.

    Args:
        sampler: ``"tpe"``, ``"random"``, ``"cmaes"`` (numeric variables only) or ``"nsga2"``
            (multi-objective: the metric against cost per example, or against ``objective=``'s guardrails).
        n_trials: study trials at most (the baseline is the first); None: until the budget is
            spent, or :data:`DEFAULT_TRIALS` without a budget.
        pruner: stop a trial whose mean at a block is below the median of earlier trials there
            (Optuna's ``MedianPruner``); not for ``nsga2``.
        looks: the validation blocks a trial is reported at (merged to blocks of at least 20 examples).
        startup_trials: random trials before TPE models the space (None: Optuna's default, 10).
        alpha: the level of the final choice's paired test against the baseline.
        test: that test: ``auto``, ``t``, ``wilcoxon`` or ``mcnemar``.

    Raises:
        OptimizerError: an unknown sampler or an option out of range.

    Example:
        >>> OptunaSearch("random", n_trials=8).config()["sampler"]
        'random'
    """

    name = "optuna"
    bsize = None

    def __init__(
        self,
        sampler: str = "tpe",
        *,
        n_trials: int | None = None,
        pruner: bool = True,
        looks: int = 2,
        startup_trials: int | None = None,
        alpha: float = 0.05,
        test: str = "auto",
    ) -> None:
        if sampler not in SAMPLERS:
            raise OptimizerError(f"OptunaSearch(sampler={sampler!r}): choose one of {', '.join(SAMPLERS)}")
        for option, value, least in (
            ("n_trials", n_trials, 2),
            ("looks", looks, 1),
            ("startup_trials", startup_trials, 1),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise OptimizerError(f"OptunaSearch({option}={value!r}): must be an integer >= {least}")
        if not isinstance(pruner, bool):
            raise OptimizerError(f"OptunaSearch(pruner={pruner!r}): must be True or False")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            raise OptimizerError(f"OptunaSearch(alpha={alpha!r}): must be between 0 and 1")
        if test not in ("auto", "t", "wilcoxon", "mcnemar"):
            raise OptimizerError(f"OptunaSearch(test={test!r}): one of 'auto', 't', 'wilcoxon', 'mcnemar'")
        self.sampler = sampler
        self.options: dict[str, Any] = {
            "sampler": sampler,
            "n_trials": n_trials,
            "pruner": pruner and sampler != "nsga2",
            "looks": looks,
            "startup_trials": startup_trials,
            "alpha": float(alpha),
            "test": test,
        }

    def planned_steps(self, budget: Budget | None) -> int | None:
        """Return the run's last step at most, the total its progress shows (None: not known in advance).

        Step 0 is the baseline (the study's first trial), steps 1 to ``n_trials - 1`` the study's
        other trials, and one step more the final choice: ``n_trials`` steps after the baseline.
        Without ``n_trials`` a budget alone ends the study, so no count of steps is honest; without
        either the study runs :data:`DEFAULT_TRIALS` trials. The search may end sooner (a finite
        space fully evaluated, repeated proposals, the budget).
        """
        n_trials = self.options["n_trials"]
        if n_trials is None and budget is not None:
            return None
        return int(n_trials or DEFAULT_TRIALS)

    def config(self) -> dict[str, Any]:
        """Return the optimizer and its options as JSON (recorded with the run, checked on resume)."""
        return {"optimizer": self.name, **dict(sorted(self.options.items()))}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in sorted(self.options.items()) if key != "sampler")
        return f"OptunaSearch({self.sampler!r}, {options})"


def _optuna() -> Any:
    """Return the ``optuna`` module, or say which extra installs it."""
    if importlib.util.find_spec("optuna") is None:
        raise MissingDependencyError("optuna", "optimize")
    import optuna

    return optuna


@contextlib.contextmanager
def _quiet_optuna(optuna: Any) -> Iterator[None]:
    """Silence Optuna's per-trial log lines for the run (the steps say it), restoring the user's verbosity."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def typed_space(program: Program) -> dict[str, Any]:
    """Return the Optuna distribution of each typed variable searched (``Float``, ``Int``, ``Choice``, ``Bool``).

    Raises:
        OptimizerError: the program has no such variable, or a number variable has no bounds.
    """
    optuna = _optuna()
    distributions = optuna.distributions
    space: dict[str, Any] = {}
    for name in mutable_variables(program, _NO_SLOTS):
        variable = program.variables[name]
        bounds = (variable.low, variable.high) if isinstance(variable, (Float, Int)) else (0, 0)
        if any(bound is None or not math.isfinite(bound) for bound in bounds):
            raise OptimizerError(
                f"variable {name!r} has no low= and high=: an unbounded {type(variable).__name__} cannot be searched; "
                "give it bounds"
            )
        if isinstance(variable, Float):
            space[name] = distributions.FloatDistribution(
                float(variable.low), float(variable.high), log=bool(variable.log), step=variable.step
            )
        elif isinstance(variable, Int):
            space[name] = distributions.IntDistribution(int(variable.low), int(variable.high))
        elif isinstance(variable, Bool):
            space[name] = distributions.CategoricalDistribution((False, True))
        elif isinstance(variable, Choice):
            if not all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in variable.choices):
                raise OptimizerError(
                    f"variable {name!r}: Optuna searches choices that are strings, numbers, booleans or None; "
                    f"{variable.choices!r} holds others"
                )
            space[name] = distributions.CategoricalDistribution(tuple(variable.choices))
    if not space:
        raise OptimizerError(
            f"program {program.name!r} has no typed variable (Float, Int, Choice, Bool) for Optuna to search; "
            "add one, or use optimizer='simba-c' to tune instructions and demos"
        )
    return space


def _space_size(space: Mapping[str, Any]) -> float:
    """Return how many configurations ``space`` holds (infinite with a continuous variable)."""
    size = 1.0
    for distribution in space.values():
        if hasattr(distribution, "choices"):
            size *= len(distribution.choices)
        elif type(distribution).__name__ == "IntDistribution":
            size *= (distribution.high - distribution.low) // distribution.step + 1
        else:
            return math.inf
    return size


def _sampler(optimizer: OptunaSearch, optuna: Any, seed: int) -> Any:
    """Return the sampler ``optimizer`` names, seeded with ``seed``."""
    samplers = optuna.samplers
    name = optimizer.sampler
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed)
    startup = optimizer.options["startup_trials"]
    return samplers.TPESampler(seed=seed, **({"n_startup_trials": startup} if startup is not None else {}))


def _check_sampler(optimizer: OptunaSearch, space: Mapping[str, Any]) -> None:
    """Refuse a sampler that cannot search ``space`` before any LM call is spent."""
    if optimizer.sampler != "cmaes":
        return
    categorical = sorted(name for name, distribution in space.items() if hasattr(distribution, "choices"))
    if categorical:
        raise OptimizerError(
            f"OptunaSearch('cmaes') searches numeric variables only; {', '.join(categorical)} "
            "is a Choice or Bool: use sampler='tpe' (or 'random')"
        )
    if importlib.util.find_spec("cmaes") is None:
        raise MissingDependencyError("cmaes", "optimize")


def _mean_cost(scores: Scores) -> float | None:
    """Return the mean dollars per example of an evaluation (None when a call had no known price)."""
    costs = list(scores.costs.values())
    if not costs or any(cost is None for cost in costs):
        return None
    return math.fsum(float(cost) for cost in costs) / len(costs)  # type: ignore[arg-type]


@dataclass
class _Trial:
    """One study trial as journaled in its step's row (see :meth:`to_json`)."""

    number: int
    candidate_id: str
    state: str
    params: dict[str, Any]
    values: list[float] | None
    intermediate: dict[int, float]
    system_attrs: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Return the trial's journal entry (JSON: keys of the intermediate values are strings)."""
        return {
            "number": self.number,
            "candidate": self.candidate_id,
            "state": self.state,
            "params": self.params,
            "values": self.values,
            "intermediate": {str(key): value for key, value in self.intermediate.items()},
            "system_attrs": self.system_attrs,
        }

    @classmethod
    def from_json(cls, entry: Mapping[str, Any]) -> _Trial:
        """Return the trial a step row journaled."""
        return cls(
            int(entry["number"]),
            str(entry["candidate"]),
            str(entry["state"]),
            dict(entry.get("params") or {}),
            list(entry["values"]) if entry.get("values") is not None else None,
            {int(key): float(value) for key, value in (entry.get("intermediate") or {}).items()},
            dict(entry.get("system_attrs") or {}),
        )


def run_optuna(session: RunSession, optimizer: OptunaSearch) -> tuple[str, str]:
    """Run the study for ``dx.optimize`` and return the run's status and why it ended.

    Raises:
        MissingDependencyError: optuna (the ``optimize`` extra), or for CMA-ES the ``cmaes`` package, is missing.
        OptimizerError: nothing to search, a sampler that cannot search the space, or a baseline scored on
            no example.
    """
    optuna = _optuna()
    space = typed_space(session.setup.program)
    _check_sampler(optimizer, space)
    with _quiet_optuna(optuna):
        return _OptunaRun(optimizer, session, space, optuna).run()


class _OptunaRun:
    """One study: the baseline, the trials (rebuilt from the journal on resume, then asked), the choice."""

    def __init__(self, optimizer: OptunaSearch, session: RunSession, space: dict[str, Any], optuna: Any) -> None:
        self.optimizer = optimizer
        self.session = session
        self.space = space
        self.optuna = optuna
        setup = session.setup
        self.evaluator = session.evaluator
        self.objective: Objective | None = setup.objective
        self.alpha = float(optimizer.options["alpha"])
        self.baseline = Candidate("c0", setup.program, None, 0, "baseline", "the program as given")
        self.val_examples = session.val_examples
        self.val_by_id: dict[str, dspy.Example] = {key: example for key, _, example in self.val_examples}
        pruning = bool(optimizer.options["pruner"])
        self.ends = (
            look_ends(len(self.val_examples), optimizer.options["looks"]) if pruning else (len(self.val_examples),)
        )
        self.candidates: dict[str, Candidate] = {"c0": self.baseline}
        self.by_fingerprint = {
            str(row["fingerprint"]): str(row["candidate_id"]) for row in session.candidate_rows.values()
        }
        self.complete: dict[str, Scores] = {}  # candidate id -> its validation scores on the whole valset
        self.tried: set[str] = set()  # candidates some study trial has already asked for
        self.repeats = 0
        pruner = optuna.pruners.MedianPruner() if pruning else optuna.pruners.NopPruner()
        self.study = optuna.create_study(
            directions=self._directions(), pruner=pruner, sampler=_sampler(optimizer, optuna, self._trial_seed(0))
        )

    def _directions(self) -> list[str]:
        """Return the study's directions: the metric's, then (NSGA-II) each guardrail's, or the cost's without one."""
        if self.optimizer.sampler != "nsga2":
            return ["maximize"]
        if self.objective is None:
            return ["maximize", "minimize"]
        return [
            "maximize",
            *("minimize" if item.side == "at_most" else "maximize" for item in self.objective.guardrails),
        ]

    def _trial_seed(self, number: int) -> int:
        """Return trial ``number``'s sampler seed: from the run's seed and the number only (a resume asks the same)."""
        sequence = np.random.SeedSequence([self.session.setup.seed, _SAMPLER_STREAM, number])
        return int(sequence.generate_state(1)[0])

    # -- the run ---------------------------------------------------------------------------------

    def run(self) -> tuple[str, str]:
        """Validate the baseline, rebuild a resumed study, search, choose; return the run's status and why."""
        try:
            self._baseline()
        except BudgetSpent as spent:
            return "stopped", f"budget: {spent} before the baseline's validation ended"
        step = self._rebuild()
        stopped, reason = self._search(step)
        return self._choose(stopped, reason)

    def _baseline(self) -> None:
        """Evaluate (or, resumed, read back) the baseline: step 0 and the study's first trial."""
        session = self.session
        if "c0" not in session.candidate_rows:
            session.record_candidates([self.baseline])
        scores = self.evaluator.evaluate(
            self.baseline.program, self.val_examples, record=session.record(self.baseline, "val")
        )
        if scores.stopped:
            raise BudgetSpent(scores.stopped)
        if not scores.by_example:
            raise OptimizerError(
                "the baseline scored on no validation example (every trial failed: "
                + ", ".join(sorted(set(scores.errors.values())))
                + "); fix the program or metric before optimizing"
            )
        if self.optimizer.sampler == "nsga2" and self.objective is None and _mean_cost(scores) is None:
            raise OptimizerError(
                "OptunaSearch('nsga2') trades the metric against cost per example, but the baseline's LM calls have "
                "no known price; pass objective=dx.Objective(guardrails=[...]) for other quantities, or sampler='tpe'"
            )
        self.complete["c0"] = scores
        self.by_fingerprint[self.baseline.program.fingerprint] = "c0"
        self.tried.add("c0")
        with contextlib.suppress(ValueError):  # a baseline outside the space (off a Float's step) is no study trial
            params = {name: self.baseline.program.values[name] for name in self.space}
            self.study.add_trial(
                self.optuna.trial.create_trial(
                    params=params, distributions=self.space, values=self._values(scores), state=self._state("complete")
                )
            )
        journaled = session.journaled_step(0)
        if journaled is not None and journaled.get("status") == "finished":
            session.record_step(_step_record(journaled))
            return
        detail = baseline_detail(self.objective, scores, examples=self.val_by_id, alpha=self.alpha)
        session.finish_step(StepRecord(0, "finished", "c0", detail=detail), scores)

    def _state(self, name: str) -> Any:
        return getattr(self.optuna.trial.TrialState, name.upper())

    def _values(self, scores: Scores) -> list[float] | None:
        """Return the study's objective values of an evaluation (None: nothing to tell, the trial failed)."""
        if not scores.by_example:
            return None
        values = [scores.mean]
        if self.optimizer.sampler != "nsga2":
            return values
        if self.objective is None:
            cost = _mean_cost(scores)
            return None if cost is None else [*values, cost]
        checks = check_guardrails(self.objective, scores, examples=self.val_by_id, alpha=self.alpha)
        if any(check.estimate is None for check in checks):
            return None
        return [*values, *(float(check.estimate) for check in checks)]  # type: ignore[arg-type]

    def _rebuild(self) -> int:
        """Add the journaled trials of a resumed run to the study; return the next step."""
        step = 1
        while True:
            row = self.session.journaled_step(step)
            entry = _trial_entry(row)
            if row is None or entry is None or row.get("status") != "finished":
                return step
            trial = _Trial.from_json(entry)
            self.study.add_trial(
                self.optuna.trial.create_trial(
                    params=trial.params,
                    distributions={name: self.space[name] for name in trial.params},
                    values=trial.values,
                    state=self._state(trial.state),
                    intermediate_values=trial.intermediate,
                    system_attrs=trial.system_attrs,
                )
            )
            if trial.candidate_id:
                self._adopt(trial)
            self.session.record_step(_step_record(row))
            step += 1

    def _adopt(self, trial: _Trial, *, tried: bool = True) -> None:
        """Take back a journaled candidate and, when it was fully evaluated, its scores (from the journal).

        ``tried``: a journaled study trial asked for it (False: only the interrupted trial did, which is asked again).
        """
        row = self.session.candidate_rows[trial.candidate_id]
        candidate = Candidate(
            trial.candidate_id, Program.from_dict(row["program_spec"]), "c0", int(row["step"]), "optuna",
            row.get("rationale") or "",
        )  # fmt: skip
        self.candidates[candidate.id] = candidate
        if tried:
            self.tried.add(candidate.id)
        if trial.state == "complete" and candidate.id not in self.complete:
            scores = self.evaluator.evaluate(
                candidate.program, self.val_examples, record=self.session.record(candidate, "val")
            )
            if scores.by_example and not scores.stopped:
                self.complete[candidate.id] = scores

    def _search(self, step: int) -> tuple[str | None, str]:
        """Ask and evaluate trials until the study ends; return why the budget stopped it (or None) and why it ended."""
        budget = self.evaluator.spending.budget
        n_trials = self.optimizer.options["n_trials"] or (None if budget is not None else DEFAULT_TRIALS)
        size = _space_size(self.space)
        while n_trials is None or len(self.study.trials) < n_trials:
            if len(self.complete) >= size:
                return None, f"every one of the space's {int(size)} configurations is evaluated"
            if self.repeats >= MAX_REPEATS:
                return None, f"the sampler proposed configurations already tried {MAX_REPEATS} times in a row"
            stopped = self._trial(step)
            if stopped is not None:
                return stopped, stopped
            step += 1
        return None, f"{n_trials} study trials"

    def _trial(self, step: int) -> str | None:
        """Ask the study for one trial, evaluate it (or tell a repeat its known values) and record its step."""
        number = len(self.study.trials)
        self.study.sampler = _sampler(self.optimizer, self.optuna, self._trial_seed(number))
        trial = self.study.ask(self.space)
        proposed_ns = now_ns()
        try:
            program = self.session.setup.program.with_values(**trial.params)
        except (VariableError, ProgramSpecError) as error:
            self.study.tell(trial, state=self._state("fail"))
            self._record(step, trial, None, None, f"trial {number}: {trial.params} breaks the program's rules: {error}")
            return None
        candidate = self._candidate(program, trial.params, step, number)
        if candidate.id in self.tried:
            self.repeats += 1
        else:
            self.repeats = 0
        self.tried.add(candidate.id)
        if candidate.id in self.complete:
            self.study.tell(trial, self._values(self.complete[candidate.id]))
            detail = f"trial {number}: {candidate.id} again; not evaluated again, the study is told its values"
            self._record(step, trial, candidate, self.complete[candidate.id], detail, proposed_ns=proposed_ns)
            return None
        try:
            scores, state = self._evaluate(trial, candidate)
        except BudgetSpent as spent:
            scores, state = None, f"budget: {spent}"
        if state not in ("complete", "pruned"):
            self.study.tell(trial, state=self._state("fail"))
            detail = f"{state} while validating {candidate.id} (trial {number})"
            self._record(step, trial, candidate, scores, detail, status="stopped", proposed_ns=proposed_ns)
            return detail
        values = self._values(scores) if state == "complete" else None  # type: ignore[arg-type]
        if state == "pruned":
            self.study.tell(trial, state=self._state("pruned"))
        elif values is None:
            self.study.tell(trial, state=self._state("fail"))
        else:
            self.study.tell(trial, values)
            self.complete[candidate.id] = scores  # type: ignore[assignment]
        self._record(
            step,
            trial,
            candidate,
            scores,
            self._detail(number, candidate, scores, state, values),
            proposed_ns=proposed_ns,
        )
        return None

    def _candidate(self, program: Program, params: Mapping[str, Any], step: int, number: int) -> Candidate:
        """Return the candidate of a configuration: the one already made for it, or a new one (journaled)."""
        known = self.by_fingerprint.get(program.fingerprint)
        if known is not None and known in self.candidates:
            return self.candidates[known]
        if known is not None:  # made by the interrupted run this one resumes
            self._adopt(_Trial(number, known, "running", dict(params), None, {}, {}), tried=False)
            return self.candidates[known]
        shown = ", ".join(f"{name}={value!r}" for name, value in params.items())
        candidate = Candidate(
            f"c{len(self.session.candidate_rows)}", program, "c0", step, "optuna",
            f"Optuna {self.optimizer.sampler} trial {number}: {shown}",
        )  # fmt: skip
        self.session.record_candidates([candidate])
        self.candidates[candidate.id] = candidate
        self.by_fingerprint[program.fingerprint] = candidate.id
        return candidate

    def _evaluate(self, trial: Any, candidate: Candidate) -> tuple[Scores, str]:
        """Validate ``candidate`` block by block, reporting to the pruner between blocks; return scores and state."""
        last = len(self.ends) - 1
        scores: Scores | None = None
        for position, end in enumerate(self.ends):
            scores = self.evaluator.evaluate(
                candidate.program, self.val_examples[:end], record=self.session.record(candidate, "val")
            )
            if scores.stopped:
                return scores, f"budget: {scores.stopped}"
            if position < last and scores.by_example:
                # The mean of the scored examples: a failed trial is no score, never a zero.
                trial.report(scores.mean, end)
                if trial.should_prune():
                    return scores, "pruned"
        return scores, "complete"  # type: ignore[return-value]

    def _detail(self, number: int, candidate: Candidate, scores: Scores, state: str, values: list[float] | None) -> str:
        examples = f"{scores.n} of {len(self.val_examples)} examples"
        if state == "pruned":
            return f"trial {number}: {candidate.id} pruned at {examples}, mean so far {scores.mean:.3f}"
        if values is None:
            return f"trial {number}: {candidate.id} failed: no objective value ({examples} scored)"
        shown = ", ".join(f"{value:.4g}" for value in values)
        return f"trial {number}: {candidate.id} scored {scores.mean:.3f} on {examples} (objective values {shown})"

    # -- the record ------------------------------------------------------------------------------

    def _record(
        self,
        step: int,
        trial: Any,
        candidate: Candidate | None,
        scores: Scores | None,
        detail: str,
        *,
        status: str = "finished",
        proposed_ns: int | None = None,
    ) -> None:
        """Journal one study trial as a step: its candidate's evaluation and the trial as Optuna holds it."""
        frozen = self.study.trials[trial.number]
        entry = _Trial(
            frozen.number,
            candidate.id if candidate is not None else "",
            frozen.state.name.lower(),
            dict(frozen.params),
            list(frozen.values) if frozen.values is not None else None,
            dict(frozen.intermediate_values),
            dict(frozen.system_attrs),
        ).to_json()
        mean, low, high = mean_and_interval(scores.by_example) if scores is not None else (None, None, None)
        outcome = {
            "candidate": candidate.id if candidate is not None else None,
            "experiment_id": scores.experiment_id if scores is not None else None,
            "mean": mean,
            "ci_low": low,
            "ci_high": high,
            "n": scores.n if scores is not None else 0,
            "errors": len(scores.errors) if scores is not None else 0,
            "state": entry["state"],
        }
        trace = DecisionTrace(self.session.run_id, step)
        if candidate is not None:
            start = proposed_ns if proposed_ns is not None else now_ns()
            attributes = {"candidate": candidate.id, "trial": frozen.number, "params": json.dumps(entry["params"])}
            trace.add("decision", f"propose {candidate.id}", attributes, start_ns=start, end_ns=start)
            trace.add("evaluation", f"validate {candidate.id}", dict(outcome), start_ns=start)
        trace.conclude(detail, name=f"trial {frozen.number} {entry['state']}")
        self.session.record_trace(trace)
        incumbent = self._best()
        record = StepRecord(step, status, incumbent, evaluations=[{**outcome, "optuna": entry}], detail=detail)
        self.session.finish_step(record, self.complete[incumbent])

    def _best(self) -> str:
        """Return the fully evaluated candidate with the highest validation mean (with an objective: meeting it).

        Ties go to the earlier candidate, so the baseline stays best unless something scored higher.
        """
        feasible = [
            (candidate_id, scores)
            for candidate_id, scores in self.complete.items()
            if self.objective is None or meets_estimates(self.objective, scores, examples=self.val_by_id)
        ]
        if not feasible:
            return "c0"
        return max(feasible, key=lambda item: (item[1].mean, -int(item[0].lstrip("c"))))[0]

    def _choose(self, stopped: str | None, reason: str) -> tuple[str, str]:
        """Record the final step: the best on the valset, tested against the baseline as the DSPy bridge tests."""
        session = self.session
        step = max(session.step_rows) + 1
        status = "stopped" if stopped is not None else "finished"
        states = [trial.state.name.lower() for trial in self.study.trials]
        summary = (
            f"Optuna {self.optimizer.sampler}: {len(states)} study trials ({states.count('complete')} complete, "
            f"{states.count('pruned')} pruned), {len(self.complete)} configurations fully evaluated; {reason}"
        )
        best_id = self._best()
        trace = DecisionTrace(session.run_id, step)
        if best_id == "c0":
            detail = "kept c0: no fully evaluated configuration scored above the baseline on the valset"
            if self.objective is not None and not meets_estimates(
                self.objective, self.complete["c0"], examples=self.val_by_id
            ):
                detail = "kept c0: no fully evaluated configuration, the baseline included, meets every guardrail"
            trace.conclude(detail, name="kept c0")
            session.record_trace(trace)
            session.finish_step(StepRecord(step, "finished", "c0", detail=detail), self.complete["c0"])
            return status, f"{summary}; the baseline stays best"
        options = self.optimizer.options
        (verdict,) = judge(
            self.complete["c0"],
            [(self.candidates[best_id], self.complete[best_id])],
            ids=list(self.val_by_id),
            method=options["test"],
            alpha=self.alpha,
            objective=self.objective,
            examples=self.val_by_id,
        )
        outcome = verdict.outcome
        kept = bool(outcome.get("feasible", True))
        p_text = f"p={outcome['p_value']:.3g}" if outcome["p_value"] is not None else "no paired test"
        if not kept:
            detail = f"kept c0: {best_id}, the best on the valset, does not meet every guardrail with confidence"
        elif verdict.significant:
            detail = f"accepted {best_id}, the best on the valset: {p_text} < alpha={self.alpha} against c0"
        else:
            detail = f"kept {best_id}, the best on the valset, not significant against c0: {p_text}"
        trace.add("evaluation", f"test {best_id}", dict(outcome))
        trace.conclude(detail)
        session.record_trace(trace)
        incumbent = best_id if kept else "c0"
        record = StepRecord(
            step,
            "finished",
            incumbent,
            accepted_id=best_id if verdict.significant else None,
            evaluations=[outcome],
            detail=detail,
        )
        session.finish_step(record, self.complete[incumbent])
        verdict_text = "accepted" if verdict.significant else "not accepted"
        return status, f"{summary}; its best {best_id} was {verdict_text} on the valset"


def _trial_entry(row: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Return the study trial a journaled step row holds, or None (the baseline's step, the final choice's)."""
    for item in (row or {}).get("evaluations") or []:
        if isinstance(item, Mapping) and isinstance(item.get("optuna"), Mapping):
            return item["optuna"]
    return None


def _step_record(row: Mapping[str, Any]) -> StepRecord:
    """Return a journaled step row as a :class:`StepRecord` (a resumed run records it again, unchanged)."""
    fields = StepRecord.__dataclass_fields__
    return StepRecord(**{name: row[name] for name in fields if name in row and row[name] is not None})


#: The columns of ``result.importance(method="optuna")``.
OPTUNA_IMPORTANCE_COLUMNS = ("variable", "importance", "evaluator", "configurations")


def optuna_importance(result: OptimizationResult, *, evaluator: Any = None) -> pd.DataFrame:
    """Return Optuna's importance of each typed variable in a run: ``get_param_importances`` on a rebuilt study.

    The study holds one trial per candidate fully evaluated on the validation set (its typed
    variables' values, its validation mean); pruned or partly validated candidates are left out, as
    Optuna leaves out trials that are not complete. Works for a run of any optimizer: a SIMBA-C
    candidate also changes instructions and demos, which this study does not see (the run's own
    ``result.importance()`` does, with intervals).

    Args:
        result: an optimization run's result.
        evaluator: an Optuna importance evaluator (default: Optuna's, PED-ANOVA in Optuna 5, deterministic);
            e.g. ``optuna.importance.FanovaImportanceEvaluator(seed=0)`` where scikit-learn is installed.

    Returns:
        One row per typed variable (:data:`OPTUNA_IMPORTANCE_COLUMNS`), most important first; the
        importances sum to 1.

    Raises:
        OptimizerError: the program has no typed variable, or fewer than two configurations were fully validated.
    """
    optuna = _optuna()
    space = typed_space(result.best)
    sizes: dict[str, int] = {}
    for row in result.journal.step_rows(result.run_id):
        for item in row.get("evaluations") or []:
            if isinstance(item, Mapping) and item.get("candidate"):
                seen = int(item.get("n") or 0) + int(item.get("errors") or 0)
                sizes[str(item["candidate"])] = max(sizes.get(str(item["candidate"]), 0), seen)
    full = max(sizes.values(), default=0)
    with _quiet_optuna(optuna):
        study = optuna.create_study(direction="maximize")
        for row in result.candidates.to_dict("records"):
            values, mean = row.get("values") or {}, row.get("val_mean")
            # The baseline's validation is its step 0's, never a step's evaluation entry.
            whole = pd.isna(row.get("parent_id")) or sizes.get(str(row["candidate_id"]), 0) >= full
            if mean is None or not math.isfinite(float(mean)) or not whole or not set(space) <= set(values):
                continue
            with contextlib.suppress(ValueError):  # a value outside the space (off a Float's step)
                trial = optuna.trial.create_trial(
                    params={name: values[name] for name in space}, distributions=space, value=float(mean)
                )
                study.add_trial(trial)
        if len(study.trials) < 2:
            raise OptimizerError(
                f"run {result.run_id} fully validated {len(study.trials)} configuration(s) of its typed variables; "
                "Optuna's importance needs at least two"
            )
        importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
    shown = type(evaluator).__name__ if evaluator is not None else "optuna's default"
    rows = [
        {
            "variable": name,
            "importance": float(value),
            "evaluator": shown,
            "configurations": len(study.trials),
        }
        for name, value in importances.items()
    ]
    return pd.DataFrame(rows, columns=list(OPTUNA_IMPORTANCE_COLUMNS))

"""SIMBA-C: SIMBA over the whole configuration space, accepting only what a paired test supports.

DSPy's SIMBA (``dspy.SIMBA``) improves a program by stochastic introspective
mini-batch ascent: each step it samples trajectories of a few programs on a
mini-batch, finds the examples where they disagree most, and proposes new programs
by appending a demo from a good trajectory or a rule written by an LM that
contrasts a good and a bad one. It keeps the mini-batch winner without a test.

SIMBA-C keeps that loop and changes what a candidate is and how one wins:

* a candidate is a full configuration (a :class:`~dspex_lab.Program`): instructions
  and demos per predictor *and* the program's typed variables, which a third
  strategy mutates by type (small steps for floats, jumps for choices such as the
  model, re-instantiation for the module type), guided by the gains each move has
  shown so far (:class:`~dspex_lab.optimization._space.EffectLedger`);
* screening on the mini-batch only shortlists: up to ``full_evals`` candidates that
  beat the incumbent on the mini-batch (a *merge* of all of them first, then each
  strategy's best) are evaluated on the validation set, and one is accepted only when
  a one-sided paired test against the incumbent is significant at ``alpha`` after a
  Holm correction across the step's evaluated candidates;
* the run stops at ``max_steps``, at the budget, or after ``patience`` steps without
  an accepted candidate.

Hyperparameters next to DSPy's SIMBA (3.4.1 defaults):

==========================  ===============  =====================================================
SIMBA-C                     DSPy SIMBA       meaning
==========================  ===============  =====================================================
``bsize`` (32)              ``bsize=32``     mini-batch size
``num_candidates`` (6)      ``num_candidates=6``  new candidates proposed per step
``max_steps=8``             ``max_steps=8``  steps
``max_demos=4``             ``max_demos=4``  demos per predictor (the oldest dropped past it)
``num_sources`` (4)         (all candidates) programs whose trajectories are sampled per step
``temperature_for_sampling  same name, 0.2   softmax temperature over programs' scores
=0.2``
``exploration_temperature   (SIMBA varies    LM temperature of the sampled trajectories (when the
=0.7``                      temperature)     program has no temperature variable of its own)
``max_rules=4``             (unbounded)      rules kept per predictor's instructions
``full_evals`` (2)          (none)           candidates per step evaluated on the validation set
``validation_looks`` (1)    (none)           looks of the sequential validation (see ``_schedule``)
``bootstrap`` (False)       (none)           a first step bootstrapping demos and rules from the
                                             incumbent's own trajectories
``alpha=0.05``, Holm        (none)           acceptance test and correction
``patience=3``              (none)           steps without an accepted candidate before stopping
``move_sampler=None``       (none)           ``mutate`` jumps to an Optuna sampler's suggestion
                                             (``"tpe"``, ``"random"``) instead of one ledger move
==========================  ===============  =====================================================

The values in parentheses are left ``None`` by default: ``dx.optimize`` sizes them to the run's
``Budget(lm_calls=...)`` (``_schedule``: a bootstrap step under any such budget, smaller steps and
sequential validation under a small one); without an LM-call budget they are the values shown.
Values the user sets are kept as given.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy
import numpy as np

from dspex_lab.engine import Budget
from dspex_lab.errors import OptimizerError, ProgramSpecError, VariableError
from dspex_lab.optimization._acceptance import Judged, decision_reason, finite, judge
from dspex_lab.optimization._composition import Composition, TrajectoryStep, render
from dspex_lab.optimization._decisions import DecisionTrace
from dspex_lab.optimization._evaluator import Example, Scores
from dspex_lab.optimization._move_sampler import MOVE_SAMPLERS, MoveSampler, Observation
from dspex_lab.optimization._objective import baseline_detail, check_guardrails, meets_estimates
from dspex_lab.optimization._schedule import (
    PLANNED_CALLS_PER_TRIAL,
    SCHEDULED,
    Schedule,
    look_alpha,
    look_ends,
    plan_schedule,
    validation_subset,
)
from dspex_lab.optimization._session import RunSession, StepRecord
from dspex_lab.optimization._space import (
    Candidate,
    EffectLedger,
    Slots,
    append_demo,
    append_rule,
    clean_rule,
    lift,
    moves_between,
    mutable_variables,
    rules_of,
)
from dspex_lab.optimization._spending import BudgetSpent
from dspex_lab.program import Program
from dspex_lab.trace.spans import now_ns

__all__ = ["ProposeRule", "SimbaC", "SimbaCRun", "planned_calls_per_trial", "run_simba_c"]

STRATEGIES = ("demo", "rule", "mutate", "merge")

# What a step's random draws are for. Each decision draws from its own generator, derived from
# (seed, step, purpose, index), never from one generator carried through the step or the run: a
# resumed run that reads a step's proposals back from the journal (and so draws nothing for them)
# cannot shift the draws of any other decision.
MINIBATCH, SOURCE, PROPOSAL = 0, 1, 2

# One source's run on one example: its score, its final prediction (JSON), the source, and its
# per-module trajectory when one was captured (a program of several predictors; see _composition).
Run = tuple[float, str, "Candidate", "list[TrajectoryStep] | None"]


class ProposeRule(dspy.Signature):
    """Contrast a better and a worse trajectory of one program on the same input.

    Find what went wrong in the worse one and write advice for each module: one concrete rule
    it should follow next time (name the kind of step that failed and how to do it right).
    """

    module_names: list[str] = dspy.InputField(desc="the modules of the program")
    better_program_trajectory: str = dspy.InputField(desc="the better run: each module's inputs and outputs")
    better_reward_value: float = dspy.InputField(desc="the better run's score")
    worse_program_trajectory: str = dspy.InputField(desc="the worse run: each module's inputs and outputs")
    worse_reward_value: float = dspy.InputField(desc="the worse run's score")
    discussion: str = dspy.OutputField(desc="what the worse run did wrong, and why the better one did not")
    module_advice: dict[str, str] = dspy.OutputField(desc="module name -> one rule for that module")


@dataclass(frozen=True)
class SimbaC:
    """SIMBA-C's hyperparameters (see the module docstring for DSPy SIMBA's counterparts).

    Args:
        bsize: mini-batch size (the trainset must have at least this many examples).
        num_candidates: candidates proposed per step.
        max_steps: steps at most.
        max_demos: demos per predictor.
        max_rules: rules kept per predictor's instructions.
        num_sources: programs whose trajectories are sampled per step (the incumbent first).
        temperature_for_sampling: softmax temperature over programs' scores when drawing sources.
        exploration_temperature: LM temperature of the sources after the first (programs that set
            their own temperature keep it).
        full_evals: the best screened candidates per step evaluated on the validation set.
        alpha: significance level of the acceptance test.
        patience: steps without an accepted candidate before stopping.
        strategies: the proposal strategies used (a subset of ``demo``, ``rule``, ``mutate``).
        test: the paired test (``auto``: McNemar for 0/1 scores, t-test or Wilcoxon otherwise).
        max_error_rate: a candidate failing on more than this fraction of the validation set is rejected.
        rule_lm: the LM that writes rules (default: the run's LM).
        validation_looks: looks of the sequential validation: the valset in that many blocks, each
            look at its share of ``alpha`` with a futility stop (1: one test on the whole valset).
        bootstrap: make the first step one candidate with demos from the incumbent's own best
            trajectories and rules from its sources' contrasts, validated without screening.
        share: mutate a variable bound to several targets or through a semantic binding (one move
            for all it configures); without, such a variable keeps its value.
        cross_bootstrap: try a good trajectory's per-module demos in every module that can take
            them, one candidate per placement, so the screening and the merge keep the placements
            that help the whole pipeline (programs of several predictors).
        learned_moves: propose two mutations together when each screened positive or their
            measured interaction is positive, valued from the per-example gains measured so far.
        upstream_rules: append a module's advice to the modules upstream of it too (those whose
            outputs it reads): a slip seen in one stage often starts in the stage that feeds it.
        move_sampler: how ``mutate`` picks its move. None: one variable, drawn by the measured
            effects of moves (``EffectLedger``); ``"tpe"``: a jump to the configuration of the
            mutable typed variables that Optuna's TPE suggests from the run's measured ones,
            several variables at once when it differs in several; ``"random"``: a jump to a
            uniformly drawn configuration (the control). Needs optuna and bounded numbers.
    """

    bsize: int | None = None
    num_candidates: int | None = None
    max_steps: int = 8
    max_demos: int = 4
    max_rules: int = 4
    num_sources: int | None = None
    temperature_for_sampling: float = 0.2
    exploration_temperature: float = 0.7
    full_evals: int | None = None
    alpha: float = 0.05
    patience: int = 3
    strategies: tuple[str, ...] = STRATEGIES
    test: str = "auto"
    max_error_rate: float = 0.1
    rule_lm: Any = None
    validation_looks: int | None = None
    bootstrap: bool | None = None
    # How the values above were resolved for one run (``scheduled``); None until then.
    schedule: Schedule | None = field(default=None, init=False, compare=False, repr=False)
    share: bool = True
    cross_bootstrap: bool = True
    learned_moves: bool = True
    upstream_rules: bool = True
    move_sampler: str | None = None

    name = "simba-c"

    def __post_init__(self) -> None:
        for name in ("bsize", "num_candidates", "max_steps", "max_demos", "max_rules", "num_sources", "full_evals"):
            value = getattr(self, name)
            if value is None and name in SCHEDULED:
                continue  # sized to the run's budget by ``scheduled``
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise OptimizerError(f"SimbaC({name}={value!r}): must be a positive integer")
        looks = self.validation_looks
        if looks is not None and (isinstance(looks, bool) or not isinstance(looks, int) or looks < 1):
            raise OptimizerError(f"SimbaC(validation_looks={looks!r}): must be a positive integer")
        if self.bootstrap is not None and not isinstance(self.bootstrap, bool):
            raise OptimizerError(f"SimbaC(bootstrap={self.bootstrap!r}): must be True, False or None")
        for name in ("share", "cross_bootstrap", "learned_moves", "upstream_rules"):
            if not isinstance(getattr(self, name), bool):
                raise OptimizerError(f"SimbaC({name}={getattr(self, name)!r}): must be True or False")
        if self.move_sampler is not None and self.move_sampler not in MOVE_SAMPLERS:
            raise OptimizerError(
                f"SimbaC(move_sampler={self.move_sampler!r}): one of {', '.join(map(repr, MOVE_SAMPLERS))} or None"
            )
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 1:
            raise OptimizerError(f"SimbaC(patience={self.patience!r}): must be a positive integer")
        if not 0 < self.alpha < 1:
            raise OptimizerError(f"SimbaC(alpha={self.alpha!r}): must be between 0 and 1")
        if not 0 <= self.max_error_rate < 1:
            raise OptimizerError(f"SimbaC(max_error_rate={self.max_error_rate!r}): must be in [0, 1)")
        for name in ("temperature_for_sampling", "exploration_temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise OptimizerError(f"SimbaC({name}={value!r}): must be a finite number >= 0")
        unknown = sorted(set(self.strategies) - set(STRATEGIES))
        if unknown or not set(self.strategies) - {"merge"}:
            raise OptimizerError(
                f"SimbaC(strategies={self.strategies!r}): choose from {STRATEGIES}, at least one besides 'merge'"
            )
        if self.test not in ("auto", "t", "wilcoxon", "mcnemar"):
            raise OptimizerError(f"SimbaC(test={self.test!r}): one of 'auto', 't', 'wilcoxon', 'mcnemar'")

    def config(self) -> dict[str, Any]:
        """Return the hyperparameters as JSON (recorded with the run, checked on resume), with their schedule.

        ``move_sampler`` is recorded when set: the config of a run without it stays what it was, so a
        run journaled before the option existed can still be resumed.
        """
        return {
            "optimizer": self.name,
            **{
                name: (list(value) if isinstance(value, tuple) else value)
                for name, value in self.__dict__.items()
                if name not in ("rule_lm", "schedule") and not (name == "move_sampler" and value is None)
            },
            "rule_lm": getattr(self.rule_lm, "model", None),
            "schedule": self.schedule.to_dict() if self.schedule is not None else None,
        }

    def scheduled(
        self,
        *,
        budget: Budget | None,
        train_size: int,
        val_size: int,
        confirm_size: int = 0,
        calls_per_trial: float = PLANNED_CALLS_PER_TRIAL,
        validation_size: int | None = None,
    ) -> SimbaC:
        """Return these hyperparameters for one run: the ones left unset sized to its budget (see ``_schedule``).

        Values the user set are kept as given; resolving a resolved one again (with a measured
        ``calls_per_trial``, and the ``validation_size`` the baseline was judged on) keeps the same
        explicit values.
        """
        if self.schedule is not None:
            explicit = {name: getattr(self, name) for name in self.schedule.explicit}
        else:
            explicit = {name: getattr(self, name) for name in SCHEDULED}
        plan = plan_schedule(
            explicit,
            lm_calls=budget.lm_calls if budget is not None else None,
            train_size=train_size,
            val_size=val_size,
            confirm_size=confirm_size,
            calls_per_trial=calls_per_trial,
            validation_size=validation_size,
        )
        resolved = dataclasses.replace(self, **plan.values())
        object.__setattr__(resolved, "schedule", plan)  # frozen: set once, as __init__ would
        return resolved


def planned_calls_per_trial(program: Program) -> float:
    """Return the LM calls a trial of ``program`` is planned at before any is measured: one per predictor.

    A program that cannot be built is planned at :data:`PLANNED_CALLS_PER_TRIAL`: lifting it reports why.
    """
    try:
        predictors = len(program.effective())
    except ProgramSpecError:
        return PLANNED_CALLS_PER_TRIAL
    return float(max(predictors, PLANNED_CALLS_PER_TRIAL))


def paired_gain(candidate: Scores, incumbent: Scores) -> tuple[float, int]:
    """Return the mean paired difference (candidate minus incumbent) over examples both scored, and n."""
    common = [key for key in candidate.by_example if key in incumbent.by_example]
    if not common:
        return math.nan, 0
    return float(np.mean([candidate.by_example[key] - incumbent.by_example[key] for key in common])), len(common)


@dataclass
class _Step:
    """One step's state while it runs, handed from phase to phase (see :meth:`SimbaCRun._step`).

    Attributes:
        number: the step.
        batch: its mini-batch.
        record: its row, filled as it goes.
        trace: its decisions.
        journaled: its row as an earlier process journaled it (a resumed run), or None.
        incumbent_screen: the incumbent's scores on the mini-batch.
        sources: the programs whose trajectories were sampled, with their scores (the incumbent first).
        shortlisted: candidates that beat the incumbent on the mini-batch, with their gains.
        gains: every screened candidate's gain over the incumbent on the mini-batch.
    """

    number: int
    batch: list[Example]
    record: StepRecord
    trace: DecisionTrace
    journaled: dict[str, Any] | None
    incumbent_screen: Scores
    sources: list[tuple[Candidate, Scores]]
    shortlisted: list[tuple[float, Candidate]] = field(default_factory=list)
    gains: dict[str, float] = field(default_factory=dict)


def run_simba_c(session: RunSession, optimizer: SimbaC) -> tuple[str, str]:
    """Run SIMBA-C for ``dx.optimize`` and return the run's status and why it ended."""
    setup = session.setup
    if optimizer.schedule is None:  # dx.optimize resolves it; a run started otherwise is sized here
        optimizer = optimizer.scheduled(
            budget=setup.budget,
            train_size=len(setup.trainset),
            val_size=len(setup.valset),
            confirm_size=len(setup.confirm_set) if setup.confirm_set is not None else 0,
            calls_per_trial=planned_calls_per_trial(setup.program),
        )
    lifted, slots = lift(setup.program, lm=setup.lm, max_demos=optimizer.max_demos)
    baseline = Candidate("c0", lifted, None, 0, "baseline", "the program as given, with instructions and demos lifted")
    if "c0" not in session.candidate_rows:
        session.record_candidates([baseline])
    run = SimbaCRun(session, optimizer, baseline=baseline, slots=slots)
    run.run()
    return run.status, run.detail or ""


class SimbaCRun:
    """One SIMBA-C run: the loop, its state and its decisions (built by :func:`run_simba_c`).

    Args:
        session: the run's journal side (records, steps, spans, events), its setup and its evaluator.
        optimizer: SIMBA-C's hyperparameters.
        baseline: the lifted program as candidate ``c0``.
        slots: the lifted instruction and demo variables of each predictor.
    """

    def __init__(self, session: RunSession, optimizer: SimbaC, *, baseline: Candidate, slots: Slots) -> None:
        self.session = session
        self.optimizer = optimizer
        self.slots = slots
        self.trainset = session.train_examples
        # The examples candidates are judged on: the valset, or the seeded subset the budget affords (_schedule).
        plan, valset = optimizer.schedule, session.val_examples
        size = plan.validation_size if plan is not None and plan.subset else len(valset)
        self.valset = [valset[position] for position in validation_subset(len(valset), size, seed=session.setup.seed)]
        self.evaluator = session.evaluator
        self.seed = session.setup.seed
        self.lm = session.setup.lm
        self.candidates: dict[str, Candidate] = {baseline.id: baseline}
        self.incumbent = baseline
        self.validation: dict[str, Scores] = {}
        self.screen: dict[str, Scores] = {}
        self.screen_parent: dict[str, float] = {}
        self.tests: dict[str, dict[str, Any]] = {}
        self.pool_scores: dict[str, list[float]] = {}
        self.ledger = EffectLedger()
        self.moves: dict[str, tuple[str, str]] = {}
        # The program as modules: per-module trajectories, placements of demos, measured pair effects.
        self.composition = Composition(
            baseline.program,
            slots,
            lm=self.lm,
            share=optimizer.share,
            cross_bootstrap=optimizer.cross_bootstrap,
            learned_moves=optimizer.learned_moves,
            upstream_rules=optimizer.upstream_rules,
        )
        # Every mutation's moves (one, or a learned pair), read off the candidate as self.moves is.
        self.move_sets: dict[str, tuple[tuple[str, str], ...]] = {}
        # Each screened candidate's paired gain over the incumbent on its mini-batch (a sampler's evidence).
        self.screen_gains: dict[str, float] = {}
        self.move_sampler = self._move_sampler(baseline.program)
        # Demo candidates placed in one module, by candidate id (read off the candidate too).
        self.placed: dict[str, str] = {}
        # When each fresh proposal's making began and ended (its decision span's times); read-back ones have none.
        self.proposal_times: dict[str, tuple[int, int]] = {}
        self.steps: list[StepRecord] = []
        # Sequential validation (see _schedule): each look's end, the look now, how far each candidate was
        # validated, where a futile candidate stopped, and the level the step's decision was taken at.
        self.look_ends = look_ends(len(self.valset), optimizer.validation_looks or 1)
        self.look = 0
        self.validated_upto: dict[str, int] = {}
        self.stopped_at: dict[str, int] = {}
        self.decision_alpha = optimizer.alpha
        # Candidate id -> whether it meets every guardrail of the objective on the validation set (once each).
        self.feasible: dict[str, bool] = {}
        self.status = "running"
        self.detail: str | None = None
        self._has_temperature = any(target == "temperature" for target in baseline.program.targets.values())
        self._explore_lm = _exploration_lm(
            self.lm, seed=self.seed, temperature=None if self._has_temperature else optimizer.exploration_temperature
        )

    # -- experiments ----------------------------------------------------------------------------

    def validate(self, candidate: Candidate) -> Scores:
        """Evaluate ``candidate`` on the validation set up to the current look (each trial once per candidate).

        With one look that is the whole validation set. A candidate stopped for futility stays where
        it stopped; one evaluated further before keeps its longer evaluation.
        """
        end = self.stopped_at.get(candidate.id, self.look_ends[self.look])
        if self.validated_upto.get(candidate.id, 0) < end:
            self.validation[candidate.id] = self.evaluator.evaluate(
                candidate.program, self.valset[:end], record=self.session.record(candidate, "val")
            )
            self.validated_upto[candidate.id] = end
        return self.validation[candidate.id]

    # -- the loop -------------------------------------------------------------------------------

    def run(self) -> None:
        """Run steps until a stopping rule fires."""
        optimizer = self.optimizer
        try:
            baseline_scores = self.validate(self.incumbent)
            if baseline_scores.stopped:
                raise BudgetSpent(baseline_scores.stopped)
            if not baseline_scores.by_example:
                raise OptimizerError(
                    "the baseline scored on no validation example (every trial failed: "
                    + ", ".join(sorted(set(baseline_scores.errors.values())))
                    + "); fix the program or metric before optimizing"
                )
            objective, examples = self.session.setup.objective, self._examples(self.valset)
            detail = baseline_detail(objective, baseline_scores, examples=examples, alpha=optimizer.alpha)
            self._replan()
            self._finish_step(StepRecord(0, "finished", self.incumbent.id, detail=self._with_schedule(detail)))
            without_gain = 0
            for step in range(1, optimizer.max_steps + 1):
                accepted = self._step(step)
                without_gain = 0 if accepted else without_gain + 1
                if without_gain >= optimizer.patience:
                    self.status, self.detail = "finished", f"{without_gain} steps without an accepted candidate"
                    return
            self.status, self.detail = "finished", f"max_steps={optimizer.max_steps} reached"
        except BudgetSpent as spent:
            self.status, self.detail = "stopped", f"budget: {spent}"
            if self.steps and self.steps[-1].status == "running":
                last = self.steps[-1]
                last.status, last.detail = "stopped", self.detail
                self._finish_step(last, replace=True)

    def _step(self, number: int) -> bool:
        """Run one step (sample, propose, screen, validate, decide); return whether it accepted a candidate."""
        step = self._sample(number)
        proposed = self._proposals(step)
        if self._bootstrapping(number):
            # Its demos come from this mini-batch, so a screen there would flatter it: it is validated as it is.
            step.shortlisted.extend((0.0, candidate) for candidate in proposed)
        else:
            self._screen_all(step, proposed)
        return self._decide(step, self._validate_in_looks(step))

    def _sample(self, number: int) -> _Step:
        """Open a step: draw its mini-batch, then sample trajectories of the incumbent and of drawn sources on it."""
        optimizer = self.optimizer
        picks = self._generator(number, MINIBATCH).choice(
            len(self.trainset), size=min(optimizer.bsize, len(self.trainset)), replace=False
        )
        batch = [self.trainset[int(index)] for index in sorted(picks)]
        record = StepRecord(number, "running", self.incumbent.id, minibatch=[example[0] for example in batch])
        self.steps.append(record)
        journaled = self.session.journaled_step(number)
        if journaled is None:
            # A resumed run never rewrites a journaled row with less: that row may be the only record of
            # what this step's rule proposals spent (see _proposals).
            self._record_running(record)
        trace = DecisionTrace(self.session.run_id, number)
        # The incumbent as it is, then sources drawn by a softmax over their scores, each on a hotter LM.
        screen_record = self.session.record(self.incumbent, "screen")
        incumbent_screen = self.evaluator.evaluate(
            self.incumbent.program,
            batch,
            record=screen_record,
            predictor_trace=self.composition.capture(screen_record.id),
        )
        step = _Step(number, batch, record, trace, journaled, incumbent_screen, [(self.incumbent, incumbent_screen)])
        sources = optimizer.num_sources
        for position in range(1, sources):
            source = self._draw_source(self._generator(number, SOURCE, position))
            explored = dataclasses.replace(source, program=self._exploring(source.program))
            explore_record = self.session.record(explored, f"s{number}/explore{position}", role="exploration")
            scores = self.evaluator.evaluate(
                explored.program,
                batch,
                record=explore_record,
                lm=self._explore_lm,
                repeat=self._exploration_repeat(number, position),
                predictor_trace=self.composition.capture(explore_record.id),
            )
            step.sources.append((source, scores))
        self.pool_scores.setdefault(self.incumbent.id, []).append(incumbent_screen.mean)
        return step

    def _proposals(self, step: _Step) -> list[Candidate]:
        """Return the step's new candidates: proposed from its trajectories, or read back when resuming."""
        journaled = step.journaled
        proposed = self.session.recorded_candidates(step.number)
        finished_before = journaled is not None and journaled["status"] == "finished"
        if proposed and journaled is not None and journaled["status"] == "running":
            # The row was written right after these proposals: its totals hold the rule calls that made them.
            self._catch_up(journaled)
        elif not proposed and not finished_before:  # (finished without candidates: it proposed none)
            proposed = (
                self._bootstrap_proposals(step)
                if self._bootstrapping(step.number)
                else self._propose(step.number, step.batch, step.sources, self._generator(step.number, PROPOSAL))
            )
            # The step row goes first, with the spending so far: once the candidates are journaled, a
            # resumed run reuses them instead of asking for their rules again, and takes what those
            # calls cost from this row.
            self._record_running(step.record)
            self.session.record_candidates(proposed)
        self._adopt(proposed, step.trace)
        return proposed

    def _screen_all(self, step: _Step, proposed: list[Candidate]) -> None:
        """Screen the proposals on the mini-batch; then the merge of the changes that screened well, screened too."""
        for candidate in proposed:
            if candidate.strategy != "merge":
                self._screen(step, candidate)
        merged = next((candidate for candidate in proposed if candidate.strategy == "merge"), None)
        if merged is None and "merge" in self.optimizer.strategies:
            started = now_ns()
            merged = self._merge(step.number, [candidate for _, candidate in step.shortlisted], step.gains)
            if merged is not None:
                self.proposal_times[merged.id] = (started, now_ns())
                self.session.record_candidates([merged])
                self._adopt([merged], step.trace)
        if merged is not None:
            self._screen(step, merged)

    def _screen(self, step: _Step, candidate: Candidate) -> None:
        """Run ``candidate`` on the mini-batch; shortlist it when it beats the incumbent there."""
        with step.trace.evaluation(f"screen {candidate.id}") as attributes:
            screen_record = self.session.record(candidate, "screen")
            scores = self.evaluator.evaluate(
                candidate.program,
                step.batch,
                record=screen_record,
                predictor_trace=self.composition.capture(screen_record.id),
            )
        incumbent_screen = step.incumbent_screen
        self.screen[candidate.id] = scores
        gain, n = paired_gain(scores, incumbent_screen)
        step.gains[candidate.id] = gain
        self.screen_gains[candidate.id] = gain
        self.screen_parent[candidate.id] = incumbent_screen.mean
        self.pool_scores.setdefault(candidate.id, []).append(scores.mean)
        if candidate.id in self.moves:
            self.ledger.record(self.moves[candidate.id], gain)
        if candidate.id in self.move_sets:
            self.composition.effects.record(
                self.move_sets[candidate.id], step.number, scores.by_example, incumbent_screen.by_example
            )
        if candidate.id in self.placed:
            self.composition.record_placement(self.placed[candidate.id], gain)
        measured = {
            "candidate": candidate.id,
            "mean": finite(scores.mean),
            "incumbent_mean": finite(incumbent_screen.mean),
            "gain": finite(gain),
            "n": n,
        }
        step.record.screening.append({**measured, "errors": len(scores.errors), "experiment_id": scores.experiment_id})
        attributes.update(measured, experiment_id=scores.experiment_id)
        if n and (gain > 0 or self._toward_feasibility(scores)):
            step.shortlisted.append((gain, candidate))
        if scores.stopped:
            raise BudgetSpent(scores.stopped)

    def _validate(self, step: _Step) -> list[Judged]:
        """Evaluate the best screened on the validation set and test each against the incumbent."""
        optimizer = self.optimizer
        incumbent_val = self.validate(self.incumbent)
        evaluated: list[tuple[Candidate, Scores]] = []
        timed: dict[str, tuple[int, int]] = {}
        for candidate in _diverse(step.shortlisted, optimizer.full_evals):
            started = now_ns()
            scores = self.validate(candidate)
            timed[candidate.id] = (started, now_ns())
            if scores.stopped:
                raise BudgetSpent(scores.stopped)
            evaluated.append((candidate, scores))
        verdicts = judge(
            incumbent_val,
            evaluated,
            ids=self.valset_ids,
            method=optimizer.test,
            alpha=self.decision_alpha,
            max_error_rate=optimizer.max_error_rate,
            objective=self.session.setup.objective,
            examples=self._examples(self.valset),
        )
        for verdict in verdicts:
            candidate = verdict.candidate
            step.record.evaluations.append(verdict.outcome)
            self.tests[candidate.id] = verdict.outcome
            start_ns, end_ns = timed[candidate.id]
            step.trace.add(
                "evaluation", f"validate {candidate.id}", {**verdict.outcome}, start_ns=start_ns, end_ns=end_ns
            )
        return verdicts

    def _toward_feasibility(self, scores: Scores) -> bool:
        """Return whether a screened candidate is shortlisted for feasibility (see ``_objective.meets_estimates``).

        Only while the incumbent breaks a guardrail of the run's objective: then a candidate whose
        mini-batch estimates meet every guardrail is validated even when it scores lower.
        """
        objective = self.session.setup.objective
        if objective is None:
            return False
        incumbent = self.incumbent.id
        if incumbent not in self.feasible:
            validation, examples = self.validate(self.incumbent), self._examples(self.valset)
            checks = check_guardrails(objective, validation, examples=examples, alpha=self.optimizer.alpha)
            self.feasible[incumbent] = all(check.holds for check in checks)
        return not self.feasible[incumbent] and meets_estimates(
            objective, scores, examples=self._examples(self.trainset)
        )

    @staticmethod
    def _examples(examples: Sequence[Example]) -> dict[str, dspy.Example]:
        """Return example id -> example (what a second metric's guardrail reads)."""
        return {example_id: example for example_id, _, example in examples}

    def _decide(self, step: _Step, verdicts: list[Judged]) -> bool:
        """Accept the significant candidate with the largest difference, if any; close and record the step."""
        best: Judged | None = None
        for verdict in verdicts:
            if verdict.significant and (best is None or verdict.difference > best.difference):
                best = verdict
        record = step.record
        reason = decision_reason(verdicts, best, alpha=self.decision_alpha, incumbent_id=self.incumbent.id)
        plan = self.optimizer.schedule
        if verdicts and plan is not None and plan.subset:
            reason += f" (judged on {len(self.valset)} of {plan.valset_size} validation examples, a seeded subset)"
        if best is not None:
            record.accepted_id = best.candidate.id
            self.incumbent = best.candidate
        record.incumbent_id = self.incumbent.id
        record.status = "finished"
        record.detail = reason
        step.trace.conclude(reason)
        self.session.record_trace(step.trace)
        self._finish_step(record, replace=True)
        return best is not None

    def _validate_in_looks(self, step: _Step) -> list[Judged]:
        """Validate the step's shortlist look by look (sequential validation, see ``_schedule``); return the verdicts.

        At each look the candidates still running are evaluated up to its end and tested at its share
        of ``alpha`` (Bonferroni spending; Holm across the step's candidates, a stopped one keeping its
        place in the family with its last scores). A significant candidate ends the validation; one
        whose difference is not positive stops there (futility), which can only withhold acceptances.
        With one look this is one test of every candidate on the whole validation set at ``alpha``.
        """
        verdicts: list[Judged] = []
        try:
            for look, end in enumerate(self.look_ends):
                self.look = look
                self.decision_alpha = look_alpha(self.optimizer.alpha, self.look_ends, look)
                verdicts = self._validate(step)
                for verdict in verdicts:
                    if verdict.candidate.id not in self.stopped_at:
                        verdict.outcome.update(look=look + 1, looks=len(self.look_ends), look_alpha=self.decision_alpha)
                running = [item for item in verdicts if item.candidate.id not in self.stopped_at]
                if look == len(self.look_ends) - 1 or any(item.significant for item in running):
                    break
                for item in running:
                    if not item.difference > 0:
                        self.stopped_at[item.candidate.id] = end
                if all(item.candidate.id in self.stopped_at for item in verdicts):
                    break
        finally:
            self.look = 0
        return verdicts

    def _bootstrapping(self, number: int) -> bool:
        """Tell whether step ``number`` is the schedule's bootstrap step.

        The first step, on a program with one demo slot or with one per module (whose demos come
        from each module's own step of the incumbent's trajectories).
        """
        one_slot = len(self.slots.demos) == 1
        return bool(self.optimizer.bootstrap) and number == 1 and (one_slot or self.composition.active)

    def _bootstrap_proposals(self, step: _Step) -> list[Candidate]:
        """Return the bootstrap step's one candidate: the incumbent with its own best trajectories as demos, and rules.

        Demos: the incumbent's trajectories on the mini-batch that reached the batch's top score (its
        own outputs, never a gold label), longest first (a worked answer of a longer problem shows more
        of the task's steps), up to ``max_demos``. Rules, when the step sampled other sources: one per
        example where the sources disagreed most, written by contrasting the best and the worst
        trajectory there (as the ``rule`` strategy does), up to ``max_rules``; on a pipeline, each such
        whole-pipeline contrast gives every module its advice (:meth:`_bootstrap_module_rules`). One
        candidate, so one test: the changes are judged together. None when nothing could be made.
        """
        program, made = self.incumbent.program, []
        scope = next(iter(self.slots.demos))
        for example_id, placed in self._bootstrap_demos(step):
            try:
                for module, demo in placed:
                    program = append_demo(program, self.slots, module, demo)
            except VariableError:
                continue
            made.append(example_id)
        rules: list[str] = []
        if self.composition.active:
            program, rules = self._bootstrap_module_rules(step, program, scope)
        contrasts = [] if self.composition.active else self._contrasts(step)
        for spread, example, runs in contrasts[: self.optimizer.max_rules]:
            ordered = sorted(runs, key=lambda run: -run[0])
            rule, _ = self._rule(example, ordered[0], ordered[-1], scope)
            if rule is None or spread <= 0:
                continue
            try:
                program = append_rule(program, self.slots, scope, rule, max_rules=self.optimizer.max_rules)
            except (OptimizerError, VariableError):
                continue
            rules.append(rule)
        if not made and not rules:
            return []
        if any(program.fingerprint == item.program.fingerprint for item in self.candidates.values()):
            return []
        rationale = (
            f"bootstrap: {len(made)} demos from {self.incumbent.id}'s own best trajectories on the mini-batch"
            + (" (examples " + ", ".join(made) + ")" if made else "")
            + (
                f" and per-module advice from {len(rules)} whole-pipeline contrasts of its sources' trajectories"
                if self.composition.active
                else f" and {len(rules)} rules from contrasting its sources' trajectories"
            )
        )
        candidate = Candidate(
            f"c{len(self.candidates)}", _as_journaled(program), self.incumbent.id, step.number, "bootstrap", rationale
        )
        return [candidate]

    def _bootstrap_module_rules(self, step: _Step, program: Program, scope: str) -> tuple[Program, list[str]]:
        """Return ``program`` with per-module rules from the step's whole-pipeline contrasts, and their examples.

        Up to ``max_rules`` examples where the sources' scores differ most, each contrast's advice going
        to its module (and, with ``upstream_rules``, to the modules feeding it), as the ``rule`` strategy does.
        """
        used = []
        contrasts = [bucket for bucket in self._buckets(step.batch, step.sources) if bucket[0] > 0]
        for _, _, example_id, example, runs in contrasts[: self.optimizer.max_rules]:
            ordered = sorted(runs, key=lambda run: -run[0])
            good, bad = ordered[0], ordered[-1]
            if not (good[3] and bad[3]):
                continue
            made = self._rule_candidate(program, scope, example_id, example, good, bad)
            if made is not None:
                program = made[0]
                used.append(example_id)
        return program, used

    def _bootstrap_demos(self, step: _Step) -> list[tuple[str, list[tuple[str, dict[str, Any]]]]]:
        """Return (example id, its demos by module) from the incumbent's top-scoring trajectories, longest first.

        One demo slot: the example's inputs with the program's outputs. One slot per module: each
        module's own step of the trajectory (an example whose trajectory was not captured, or lacks a
        module's step, gives none).
        """
        scores = step.incumbent_screen
        top = max(scores.by_example.values(), default=0.0)
        if not top > 0:
            return []
        found = []
        for example_id, _, example in step.batch:
            fields = _prediction_fields(scores.predictions.get(example_id, "{}"))
            if scores.by_example.get(example_id) != top or not fields:
                continue
            if self.composition.active:
                placed = self._module_demos(self.composition.trajectory(scores.experiment_id, example_id) or [])
            else:
                placed = [(next(iter(self.slots.demos)), {**dict(example.inputs()), **fields})]
            if placed:
                found.append((-len(json.dumps(fields)), example_id, placed))
        return [(example_id, placed) for _, example_id, placed in sorted(found, key=lambda item: item[:2])][
            : self.optimizer.max_demos
        ]

    def _module_demos(self, steps: Sequence[TrajectoryStep]) -> list[tuple[str, dict[str, Any]]]:
        """Return a demo for every module from its own step of one trajectory; none unless every module has one."""
        placed = []
        for scope in self.composition.scopes:
            own = [item for item in steps if item.get("module_name") == scope]
            demo = self.composition.demo_for(scope, own)
            if demo is None:
                return []
            placed.append((scope, demo))
        return placed

    def _contrasts(self, step: _Step) -> list[tuple[float, dspy.Example, list[tuple[float, str, Candidate]]]]:
        """Return the mini-batch's examples on which the sources' scores differ, the widest spread first."""
        found = []
        for example_id, _, example in step.batch:
            runs = [
                (scores.by_example[example_id], scores.predictions.get(example_id, "{}"), source)
                for source, scores in step.sources
                if example_id in scores.by_example
            ]
            values = [run[0] for run in runs]
            if len(values) > 1 and max(values) > min(values):
                found.append((max(values) - min(values), example_id, example, runs))
        found.sort(key=lambda item: (-item[0], item[1]))
        return [(spread, example, runs) for spread, _, example, runs in found]

    def _replan(self) -> None:
        """Size the schedule again with the calls per trial the baseline measured, when they differ from the plan.

        The plan assumed ``PLANNED_CALLS_PER_TRIAL``; a pipeline of several modules, or retries, makes
        a trial cost more. The measurement is the baseline's journaled trials, so a replay plans the same.
        """
        plan, spending = self.optimizer.schedule, self.evaluator.spending
        if plan is None or plan.lm_calls is None or not spending.trials or not spending.lm_calls:
            return
        measured = spending.lm_calls / spending.trials
        if abs(measured - plan.calls_per_trial) <= 0.1 * plan.calls_per_trial:
            return
        setup = self.session.setup
        self.optimizer = self.optimizer.scheduled(
            budget=setup.budget,
            train_size=len(self.trainset),
            val_size=len(self.valset),
            confirm_size=len(setup.confirm_set) if setup.confirm_set is not None else 0,
            calls_per_trial=round(measured, 3),
            validation_size=len(self.valset),  # the subset the baseline was judged on stays
        )
        self.look_ends = look_ends(len(self.valset), self.optimizer.validation_looks or 1)

    def _with_schedule(self, detail: str) -> str:
        """Return step 0's detail, with the schedule the budget set (a run without an LM-call budget: as it was)."""
        plan = self.optimizer.schedule
        if plan is None or plan.level is None:
            return detail
        return f"{detail}; {plan.describe()}"

    def _exploration_repeat(self, step: int, position: int) -> int:
        """Return the repeat index the extra source ``position`` of ``step`` runs as: >= 1, one per (step, source).

        With the exploration LM's seed-derived rollout id (:func:`_exploration_lm`), each (seed, step, source)
        samples on DSPy rollout ids of its own: distinct requests to a provider, the same ones on a rerun.
        """
        return (step - 1) * max(self.optimizer.num_sources - 1, 1) + position

    def _generator(self, step: int, purpose: int, index: int = 0) -> np.random.Generator:
        """Return the generator of one decision: ``purpose`` (and ``index``) of ``step``, from the run's seed."""
        return np.random.default_rng([self.seed, step, purpose, index])

    def _adopt(self, proposed: list[Candidate], trace: DecisionTrace) -> None:
        """Make a step's new candidates (fresh or read back from the journal) part of the run.

        A mutation's move is read off the candidate itself (the one variable that differs from its
        parent, or the two of a learned pair), so the measured effects of moves are the same whether
        the candidate was just made or journaled by an earlier process.
        """
        for candidate in proposed:
            self.candidates[candidate.id] = candidate
            parent = self.candidates.get(candidate.parent_id or "")
            if candidate.strategy == "mutate" and parent is not None:
                moves = moves_between(parent.program, candidate.program, mutable_variables(parent.program, self.slots))
                if len(moves) == 1:
                    self.moves[candidate.id] = moves[0]
                if moves and self.optimizer.learned_moves:
                    self.move_sets[candidate.id] = moves
            if candidate.strategy == "demo" and parent is not None and self.composition.active:
                module = self.composition.placed_module(parent.program, candidate.program)
                if module is not None:
                    self.placed[candidate.id] = module
            started, made = self.proposal_times.pop(candidate.id, (None, None))
            trace.add(
                "decision",
                f"propose {candidate.id}",
                {
                    "candidate": candidate.id,
                    "parent": candidate.parent_id,
                    "strategy": candidate.strategy,
                    "rationale": candidate.rationale,
                },
                start_ns=started,
                end_ns=made,
            )

    def _catch_up(self, journaled: dict[str, Any]) -> None:
        """Take a journaled step row's spending totals as the run's (a replay at the point the row was written).

        The replay has counted every trial up to this point; the row also holds the calls no trial
        carries. A row with less than the replay counted was not written at this point (a journal of
        an older dspex_lab wrote its running rows with no totals) and is left alone.
        """
        spending = self.evaluator.spending
        if (
            int(journaled.get("lm_calls") or 0) >= spending.lm_calls
            and int(journaled.get("tokens") or 0) >= spending.tokens
        ):
            spending.restore(journaled)

    def _record_running(self, record: StepRecord) -> None:
        """Journal a step still running, with the run's spending so far."""
        spending = self.evaluator.spending.to_summary()
        record.lm_calls, record.tokens, record.cost = spending["lm_calls"], spending["tokens"], spending["cost"]
        self.session.record_step(record)

    @property
    def valset_ids(self) -> list[str]:
        """The validation set's example ids up to the current look, in order."""
        return [example[0] for example in self.valset[: self.look_ends[self.look]]]

    def _merge(self, step: int, positives: list[Candidate], gains: dict[str, float]) -> Candidate | None:
        """Return the incumbent with every change of the positively screened demos, rules and moves, or None.

        One demo or one rule often moves the score by a few points, too little for a paired test
        on a validation set of a few hundred examples to see; several such changes together can
        be seen. Changes are applied best-screened first: each candidate's new demos and rules are
        appended, and a typed variable takes the value of the best candidate that moved it (with
        ``move_sampler``, the typed variables all take the values of the best candidate that moved any:
        two sampled jumps are two configurations, and a mix of them was measured by neither).
        """
        ordered = sorted((item for item in positives if item.strategy != "merge"), key=lambda item: -gains[item.id])
        if len(ordered) < 2:
            return None
        base = self.incumbent.program
        program = base
        moved: set[str] = set()
        used: list[str] = []
        for candidate in ordered:
            changed = False
            for scope in sorted(self.slots.instructions):
                old_rules = set(rules_of(base, self.slots, scope))
                for rule in rules_of(candidate.program, self.slots, scope):
                    if rule not in old_rules and rule not in rules_of(program, self.slots, scope):
                        try:
                            program = append_rule(program, self.slots, scope, rule, max_rules=self.optimizer.max_rules)
                            changed = True
                        except (OptimizerError, VariableError):
                            pass
                old_demos = list(base.values[self.slots.demos[scope]])
                for demo in candidate.program.values[self.slots.demos[scope]]:
                    if demo not in old_demos and demo not in program.values[self.slots.demos[scope]]:
                        program = append_demo(program, self.slots, scope, demo)
                        changed = True
            # A sampled jump is one configuration, not moves that add up: the best-screened one is taken whole.
            taken = self.move_sampler is not None and bool(moved)
            for name in mutable_variables(base, self.slots):
                value = candidate.program.values[name]
                if value != base.values[name] and name not in moved and not taken:
                    try:
                        program = program.with_values(**{name: value})
                        moved.add(name)
                        changed = True
                    except VariableError:
                        pass
            if changed:
                used.append(candidate.id)
        if len(used) < 2 or any(program.fingerprint == item.program.fingerprint for item in self.candidates.values()):
            return None
        rationale = "merge of " + ", ".join(f"{key} ({gains[key]:+.3f})" for key in used) + " (screening gains)"
        return Candidate(
            f"c{len(self.candidates)}", _as_journaled(program), self.incumbent.id, step, "merge", rationale
        )

    def _exploring(self, program: Any) -> Any:
        """Return ``program`` as the extra sources sample it: at least ``exploration_temperature`` hot.

        A program that sets its own temperature is sampled with that variable raised (within its
        bounds), so a greedy incumbent still disagrees with itself across rollouts; one that does not
        runs on a hotter copy of the run's LM (``_explore_lm``).
        """
        name = next((key for key, target in program.targets.items() if target == "temperature"), None)
        if name is None:
            return program
        variable = program.variables[name]
        wanted = max(float(variable.value), self.optimizer.exploration_temperature)
        high = getattr(variable, "high", None)
        if high is not None and math.isfinite(high):
            wanted = min(wanted, high)
        try:
            return program.with_values(**{name: wanted})
        except VariableError:
            return program

    def _finish_step(self, record: StepRecord, *, replace: bool = False) -> None:
        journaled = self.session.journaled_step(record.step)
        if record.status == "finished" and journaled is not None and journaled["status"] == "finished":
            # A step an earlier process finished: its row's totals are the run's spending at this point,
            # rule calls included (the replay read the rules back instead of asking again).
            self._catch_up(journaled)
        if not replace:
            self.steps.append(record)
        self.session.finish_step(record, self.validation.get(record.incumbent_id))

    # -- proposals ------------------------------------------------------------------------------

    def _draw_source(self, rng: np.random.Generator) -> Candidate:
        pool = [self.candidates[key] for key in self.pool_scores if key in self.candidates] or [self.incumbent]
        scores = np.array([np.nanmean(self.pool_scores.get(item.id, [0.0]) or [0.0]) for item in pool], dtype=float)
        scores = np.nan_to_num(scores, nan=0.0)
        temperature = max(self.optimizer.temperature_for_sampling, 1e-6)
        weights = np.exp((scores - scores.max()) / temperature)
        return pool[int(rng.choice(len(pool), p=weights / weights.sum()))]

    def _propose(
        self,
        step: int,
        batch: Sequence[Example],
        sources: list[tuple[Candidate, Scores]],
        rng: np.random.Generator,
    ) -> list[Candidate]:
        optimizer = self.optimizer
        buckets = self._buckets(batch, sources)
        mutable = self.composition.mutable(
            self.incumbent.program, mutable_variables(self.incumbent.program, self.slots)
        )
        seen = {candidate.program.fingerprint for candidate in self.candidates.values()}
        proposed: list[Candidate] = []
        made_by: dict[str, int] = {}
        attempts = 0
        started = now_ns()  # each proposal is timed from the end of the previous one (its failed tries included)
        while len(proposed) < optimizer.num_candidates and attempts < 4 * optimizer.num_candidates and buckets:
            bucket = buckets[attempts % len(buckets)]
            attempts += 1
            spread, _, example_id, example, runs = bucket
            strategies = [name for name in optimizer.strategies if name != "merge" and (name != "mutate" or mutable)]
            if not strategies:
                break
            if spread <= 0:
                strategies = [name for name in strategies if name != "rule"] or strategies
            strategy = strategies[int(rng.integers(len(strategies)))]
            # One draw may make several candidates (a demo's placements in each module): past its strategy's
            # share of the step, only the first counts, so the strategies keep the mix of single draws.
            share = max(1, math.ceil(optimizer.num_candidates / len(strategies)) - made_by.get(strategy, 0))
            made = self._make(strategy, step, example_id, example, runs, mutable, rng, seen=seen)
            for program, rationale in made[:share]:
                if program.fingerprint in seen or len(proposed) >= optimizer.num_candidates:
                    continue
                seen.add(program.fingerprint)
                made_by[strategy] = made_by.get(strategy, 0) + 1
                proposed.append(
                    Candidate(
                        f"c{len(self.candidates) + len(proposed)}",
                        _as_journaled(program),
                        self.incumbent.id,
                        step,
                        strategy,
                        rationale,
                    )
                )
                made_ns = now_ns()
                self.proposal_times[proposed[-1].id] = (started, made_ns)
                started = made_ns
        return proposed

    def _buckets(self, batch: Sequence[Example], sources: list[tuple[Candidate, Scores]]) -> list[tuple[Any, ...]]:
        """Return the mini-batch's examples by the spread of the sources' scores on them, widest first.

        Each holds (spread, best score, example id, example, runs); a run is a source's (score, final
        prediction, source, per-module trajectory or None).
        """
        buckets = []
        for example_id, _, example in batch:
            runs = [
                (
                    scores.by_example[example_id],
                    scores.predictions.get(example_id, "{}"),
                    source,
                    self.composition.trajectory(scores.experiment_id, example_id),
                )
                for source, scores in sources
                if example_id in scores.by_example
            ]
            if not runs:
                continue
            values = [run[0] for run in runs]
            buckets.append((max(values) - min(values), max(values), example_id, example, runs))
        buckets.sort(key=lambda bucket: (-bucket[0], -bucket[1], bucket[2]))
        return buckets

    def _make(
        self,
        strategy: str,
        step: int,
        example_id: str,
        example: dspy.Example,
        runs: list[Run],
        mutable: list[str],
        rng: np.random.Generator,
        *,
        seen: set[str],
    ) -> list[tuple[Program, str]]:
        """Return what one strategy makes of one example's runs: a candidate, a demo's placements, or nothing.

        ``seen`` holds the fingerprints of the candidates so far, this step's included (a sampled jump
        to one of them is drawn again).
        """
        program = self.incumbent.program
        scopes = sorted(self.slots.instructions)
        scope = scopes[int(rng.integers(len(scopes)))]
        ordered = sorted(runs, key=lambda run: -run[0])
        good, bad = ordered[0], ordered[-1]
        try:
            if strategy == "demo":
                origin = f"a trajectory of {good[2].id} scoring {good[0]:g} (the worst on it scored {bad[0]:g})"
                return self._demos(program, scope, example_id, example, good, origin, rng)
            if strategy == "rule":
                made = self._rule_candidate(program, scope, example_id, example, good, bad)
                return [made] if made is not None else []
            if self.move_sampler is not None:
                jumped = self.move_sampler.jump(program, self._move_evidence(), rng, seen=seen)
                return [] if jumped is None else [jumped]
            result = self.composition.mutation(program, mutable, self.ledger, rng, temperature=0.05)
            return [] if result is None else [(result[0], result[2])]
        except (VariableError, OptimizerError):
            return []

    def _move_sampler(self, program: Program) -> MoveSampler | None:
        """Return the sampler ``mutate`` draws its jumps from (``move_sampler``), or None for the ledger's rule.

        Built before any LM call, so a variable it cannot search (a number without bounds) or a missing
        optuna stops the run before it spends anything.
        """
        kind = self.optimizer.move_sampler
        if kind is None or "mutate" not in self.optimizer.strategies:
            return None
        names = self.composition.mutable(program, mutable_variables(program, self.slots))
        return MoveSampler(kind, program, names) if names else None

    def _move_evidence(self) -> list[Observation]:
        """Return what the run has measured of its typed configurations, in candidate order (the sampler's data).

        Each observation estimates a configuration's validation mean on data that did not select it:
        the baseline's is its validation mean; a candidate's is its parent's validation mean plus its
        paired gain over the parent, measured on the validation set when it was validated there (not
        its screening gain: it was validated *because* that was positive, so that gain is biased up),
        otherwise on the mini-batch it was screened on (every proposal is screened once, unselected).
        Only candidates whose typed values differ from their parent's (a mutation, a merge that moved
        a variable) or that were accepted (the incumbents) speak for a configuration; a rule or demo
        child of the incumbent measures its prompt, not its variables. Everything here is read from
        evaluations a resumed run replays, so the evidence, and the sampler's draws, are the same.
        """
        if self.move_sampler is None:
            return []
        names = list(self.move_sampler.space)
        accepted = {record.accepted_id for record in self.steps if record.accepted_id}
        found = []
        for candidate in self.candidates.values():
            values = {name: candidate.program.values[name] for name in names}
            parent = self.candidates.get(candidate.parent_id or "")
            if parent is None:
                score = self.validation[candidate.id].mean if candidate.id in self.validation else math.nan
            else:
                moved = any(parent.program.values[name] != value for name, value in values.items())
                level = self.validation.get(parent.id)
                if not (moved or candidate.id in accepted) or level is None:
                    continue
                if candidate.id in self.validation:
                    gain = paired_gain(self.validation[candidate.id], level)[0]
                else:
                    gain = self.screen_gains.get(candidate.id, math.nan)
                score = level.mean + gain
            if math.isfinite(score):
                found.append(Observation(candidate.id, values, float(score)))
        return found

    def _demos(
        self,
        program: Program,
        scope: str,
        example_id: str,
        example: dspy.Example,
        good: Run,
        origin: str,
        rng: np.random.Generator,
    ) -> list[tuple[Program, str]]:
        """Return the demo candidates of a good run: per module from its trajectory, else from its final outputs."""
        steps = good[3]
        if steps:
            placed = self.composition.place(program, steps, scope=scope, rng=rng)
            if placed:
                return [(made, f"demo from example {example_id} {where}: {origin}") for made, _, where in placed]
        fields = _prediction_fields(good[1])
        if not fields:
            return []
        demo = {**dict(example.inputs()), **fields}
        return [(append_demo(program, self.slots, scope, demo), f"demo from example {example_id}: {origin}")]

    def _rule_candidate(
        self, program: Program, scope: str, example_id: str, example: dspy.Example, good: Run, bad: Run
    ) -> tuple[Program, str] | None:
        """Return the program with rules from contrasting a good and a bad run, and why; None when none came.

        With both runs' per-module trajectories, ``ProposeRule`` sees the whole pipeline and every
        module's name, and each module's advice goes to that module; otherwise one rule, for ``scope``.
        """
        contrast = (
            f"rule from contrasting example {example_id} ({good[2].id} scored {good[0]:g}, "
            f"{bad[2].id} scored {bad[0]:g})"
        )
        if good[3] and bad[3]:
            advice, discussion = self._ask(
                self.composition.scopes, render(good[3]), render(bad[3]), good=good[0], bad=bad[0]
            )
            applied = self.composition.apply_advice(program, advice or {}, max_rules=self.optimizer.max_rules)
            if applied is None:
                return None
            changed, modules = applied
            return changed, f"{contrast} of the whole pipeline, advice for {', '.join(modules)}: {discussion}"
        rule, discussion = self._rule(example, good, bad, scope)
        if rule is None:
            return None
        return append_rule(program, self.slots, scope, rule, max_rules=self.optimizer.max_rules), (
            f"{contrast}: {discussion}"
        )

    def _rule(self, example: dspy.Example, good: Run, bad: Run, scope: str) -> tuple[str | None, str]:
        """Return one rule for ``scope`` from contrasting two runs' final outputs, and the LM's discussion."""
        names = [scope or "self"]
        inputs = dict(example.inputs())

        def trajectory(prediction: str) -> str:
            return json.dumps(
                [{"module_name": names[0], "inputs": inputs, "outputs": _prediction_fields(prediction)}],
                ensure_ascii=False,
                indent=1,
            )

        advice, discussion = self._ask(names, trajectory(good[1]), trajectory(bad[1]), good=good[0], bad=bad[0])
        if advice is None:
            return None, discussion
        text = (advice.get(names[0]) or next(iter(advice.values()))) if advice else None
        return clean_rule(text), discussion

    def _ask(
        self, names: list[str], better: str, worse: str, *, good: float, bad: float
    ) -> tuple[dict[str, Any] | None, str]:
        """Ask ``ProposeRule`` (metered into the run's spending); return its module advice and discussion.

        On failure the advice is None and the text says why: a failed proposal is skipped, never fatal.
        """
        propose = dspy.Predict(ProposeRule)
        lm = self.optimizer.rule_lm or self.lm
        from dspex_lab.providers import metering

        started = time.perf_counter()
        with metering() as meter, dspy.context(lm=lm):
            try:
                answer = propose(
                    module_names=names,
                    better_program_trajectory=better,
                    better_reward_value=float(good),
                    worse_program_trajectory=worse,
                    worse_reward_value=float(bad),
                )
            except Exception as error:  # a failed proposal is skipped, never fatal
                answer = None
                failure = f"{type(error).__name__}: {error}"
        self.evaluator.spending.add_usage(meter.usage(), proposal_seconds=time.perf_counter() - started)
        if answer is None:
            return None, failure
        advice = getattr(answer, "module_advice", None)
        discussion = clean_rule(getattr(answer, "discussion", "")) or ""
        return (dict(advice) if isinstance(advice, dict) else {}), discussion


def _diverse(shortlisted: list[tuple[float, Candidate]], count: int) -> list[Candidate]:
    """Return up to ``count`` candidates by screening gain, the best of each strategy first.

    Mini-batch gains are noisy: the top two are often the same lucky kind of move (two
    temperature nudges). Taking each strategy's best before a second of any keeps a real
    effect of another kind from being crowded out of the full evaluation. A merge of the
    step's positively screened changes, when there is one, is taken first.
    """
    # A merge (several changes at once) goes first: its effect is the one a paired test can see.
    ordered = sorted(shortlisted, key=lambda item: (item[1].strategy != "merge", -item[0], item[1].id))
    chosen: list[Candidate] = []
    for _, candidate in ordered:
        if len(chosen) < count and all(other.strategy != candidate.strategy for other in chosen):
            chosen.append(candidate)
    for _, candidate in ordered:
        if len(chosen) < count and candidate not in chosen:
            chosen.append(candidate)
    return chosen


def _as_journaled(program: Program) -> Program:
    """Return ``program`` as the journal gives it back (its JSON spec, read again).

    A program made in memory remembers more than its spec: the name of a variant is built from
    every change since its named ancestor, which the spec does not keep. A candidate read back by
    a resumed run would name its own children differently; made this way in every run, a
    candidate and its descendants are the same whether it was made now or journaled earlier.
    """
    return Program.from_dict(program.to_dict())


def _exploration_lm(lm: dspy.BaseLM, *, seed: int, temperature: float | None) -> dspy.BaseLM:
    """Return the LM the extra sources are sampled with: ``temperature`` hot (None: as it is), on its own rollouts.

    Its ``rollout_id`` comes from the run's seed; the trial runner adds the repeat of each exploration
    (:meth:`SimbaCRun._exploration_repeat`, see :func:`dspex_lab.providers.for_repeat`), so two runs with other seeds,
    two steps and two sources never share a request, or a DSPy cache entry.
    """
    digest = hashlib.blake2b(f"simba-c exploration|{seed}".encode(), digest_size=5).digest()
    changes: dict[str, Any] = {"rollout_id": int.from_bytes(digest, "big")}
    if temperature is not None:
        changes["temperature"] = temperature
    try:
        return lm.copy(**changes)
    except Exception:  # an LM that cannot be copied: its rollouts still differ by the exploration's repeat
        return lm


def _prediction_fields(prediction: str) -> dict[str, Any]:
    try:
        fields = json.loads(prediction)
    except (TypeError, ValueError):
        return {}
    if not isinstance(fields, dict):
        return {}
    return {str(key): value for key, value in fields.items() if isinstance(value, (str, int, float, bool))}

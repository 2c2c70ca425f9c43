"""The journal side of one optimization run: records, candidates, steps, spans, events and the result.

An optimization run is an :class:`~dspex_lab.session.Experiment` (:func:`start_run` starts it,
or resumes it under the one identity rule), and each of its evaluations is one of its children.
SIMBA-C (:mod:`~dspex_lab.optimization._simba_c`) and the DSPy bridge
(:mod:`~dspex_lab.optimization._dspy`) decide; :class:`RunSession` keeps what they decide: it
builds each evaluation's experiment record, journals candidates and steps, stores each step's
:class:`~dspex_lab.optimization._decisions.DecisionTrace` in the run, tells subscribers about
every step, runs the confirmation once the search is over, and builds the result. Together with
:class:`~dspex_lab.optimization._evaluator.CandidateEvaluator` (the trials) it is the only part of
the optimization layer that touches the journal.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from dspex_lab.engine import Budget
from dspex_lab.errors import OptimizerError
from dspex_lab.evaluation import EvaluationResult
from dspex_lab.journal import ExperimentRecord
from dspex_lab.optimization._acceptance import finite, mean_and_interval
from dspex_lab.optimization._decisions import DecisionTrace
from dspex_lab.optimization._display import Subscriber
from dspex_lab.optimization._evaluator import CandidateEvaluator, Example, Scores, dataset_examples, evaluation_id
from dspex_lab.optimization._objective import held_out_checks
from dspex_lab.optimization._result import (
    OptimizationResult,
    best_candidate_id,
    build_result,
    candidates_frame,
    memory_trials,
    steps_frame,
)
from dspex_lab.optimization._setup import OptimizationSetup
from dspex_lab.optimization._space import Candidate
from dspex_lab.optimization._spending import BudgetSpent
from dspex_lab.program import Program
from dspex_lab.session import Experiment, experiment_record

__all__ = [
    "OptimizationEnded",
    "OptimizationStanding",
    "OptimizationStarted",
    "OptimizationStep",
    "RunSession",
    "StepRecord",
    "start_run",
]

# The confirmation's budget reserve: the baseline's validation cost per trial, times two programs,
# times this margin (a changed program's prompt is longer: demos and rules).
_RESERVE_MARGIN = 1.25

# The role of a candidate's evaluation in its run, by phase (c0's validation is the ``baseline``).
_PHASE_ROLES = {"val": "candidate-validation", "screen": "candidate-screen", "confirm": "confirmation"}


@dataclass(frozen=True)
class OptimizationStanding:
    """Where an optimization run stands, counted as its result counts it: what a progress display shows.

    The spending is the run's one counter (``Spending.to_summary()``: every trial, SIMBA-C's rule
    proposals, DSPy's own compile calls, what an interrupted run spent before a resume), so the
    standing sent when the run ends equals ``result.spending``. The best is the incumbent after the
    last finished step (``result.best_id`` at the end), with its mean and interval computed from its
    validation trials by :class:`~dspex_lab.evaluation.EvaluationResult`, as ``result.best_result``
    computes them (:func:`dspex_lab.stats.score_interval`: Wilson for 0/1 scores, Student t otherwise).

    Attributes:
        step: the last finished step (0: the baseline), None before the baseline's evaluation ended.
        planned_steps: the steps the optimizer takes at most (SIMBA-C's ``max_steps``; 1 for DSPy's
            optimizers, whose compile is one step); a run may stop earlier (patience, budget). None:
            not known in advance (an Optuna study with no ``n_trials`` runs until its budget is spent).
        screened: candidates screened on a mini-batch so far.
        validated: candidates evaluated on the validation set so far (the baseline apart).
        lm_calls: LM calls so far.
        tokens: input plus output tokens so far.
        cost: dollars so far (None: a call went to a model with no known price).
        trials: trials so far.
        budget: the run's limits (``Budget.limits()``: ``usd``, ``lm_calls``, ``tokens``); empty without one.
        best_id: the best candidate so far (None before the baseline's evaluation ended).
        best_mean: its validation mean.
        best_ci_low: the low end of its 95% interval (None where undefined).
        best_ci_high: the high end of its 95% interval.
        best_ci_method: how the interval was computed (``wilson``, ``t``).
        best_n: the validation examples it scored on.
    """

    step: int | None
    planned_steps: int | None
    screened: int
    validated: int
    lm_calls: int
    tokens: int
    cost: float | None
    trials: int
    budget: dict[str, float]
    best_id: str | None = None
    best_mean: float | None = None
    best_ci_low: float | None = None
    best_ci_high: float | None = None
    best_ci_method: str = ""
    best_n: int = 0


@dataclass(frozen=True)
class OptimizationStarted:
    """An event for the run's display: the run began (before its first evaluation).

    Attributes:
        run_id: the run.
        name: the run's name.
        standing: where it stands (a resumed run: nothing counted yet; its replay counts it again).
    """

    run_id: str
    name: str
    standing: OptimizationStanding


@dataclass(frozen=True)
class OptimizationStep:
    """An event for subscribers (a live convergence plot): a step finished.

    Attributes:
        run_id: the run.
        step: the step that finished (0: the baseline evaluation).
        steps: the steps table so far (see ``OptimizationResult.steps``).
        candidates: the candidates table so far (see ``OptimizationResult.candidates``).
        standing: where the run stands once the step is recorded (spending, counts, best so far).
    """

    run_id: str
    step: int
    steps: pd.DataFrame
    candidates: pd.DataFrame
    standing: OptimizationStanding | None = None


@dataclass(frozen=True)
class OptimizationEnded:
    """An event for the run's display: the run ended, with the numbers its result reports.

    Attributes:
        run_id: the run.
        status: how it ended, in the journal's words (``finished``, ``stopped``, ``interrupted``, ``failed``).
        detail: why it ended.
        standing: the final standing: its spending is ``result.spending``, its best ``result.best_result``'s.
    """

    run_id: str
    status: str
    detail: str | None
    standing: OptimizationStanding


@dataclass
class StepRecord:
    """What one step decided, with the numbers behind it (a row of ``optimization_steps``)."""

    step: int
    status: str
    incumbent_id: str
    accepted_id: str | None = None
    minibatch: list[str] = field(default_factory=list)
    screening: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best_mean: float | None = None
    best_ci_low: float | None = None
    best_ci_high: float | None = None
    lm_calls: int = 0
    tokens: int = 0
    cost: float | None = None
    detail: str | None = None

    def to_row(self) -> dict[str, Any]:
        """Return the journal row."""
        return dict(self.__dict__)


class RunSession:
    """The journal side of one run: records, spans, events, progress and the final result.

    Args:
        setup: what the run was given.
        evaluator: runs the run's evaluations as children of its experiment (``evaluator.run``),
            and counts its spending.
    """

    def __init__(self, setup: OptimizationSetup, evaluator: CandidateEvaluator) -> None:
        self.setup = setup
        self.run: Experiment = evaluator.run
        self.run_id = self.run.id
        self.name = setup.name
        self.journal = setup.journal
        self.evaluator = evaluator
        self.config = setup.config
        self.train_examples: list[Example] = dataset_examples(setup.trainset)
        self.val_examples: list[Example] = dataset_examples(setup.valset)
        display = [setup.display] if setup.display is not None else []
        self.subscribers: list[Subscriber] = [*setup.subscribers, *display]
        # Told when the run starts and ends too (OptimizationStarted/Ended); other subscribers hear steps only.
        self.display: Subscriber | None = setup.display
        self.candidate_rows: dict[str, dict[str, Any]] = {}
        self.step_rows: dict[int, dict[str, Any]] = {}
        self.status = "running"
        self.detail: str | None = None
        self.confirmation: dict[str, Any] = {"status": "not run"}
        self._stored_examples: set[str] = set()
        # The steps as the journal held them when this process began (a resumed run's earlier progress).
        self._journaled_steps: dict[int, dict[str, Any]] = {}
        if self.run.resumed:  # a new run has recorded nothing yet (its experiment may not even be written)
            for row in self.journal.candidate_rows(self.run_id):
                self.candidate_rows[row["candidate_id"]] = row
            self._journaled_steps = {int(row["step"]): row for row in self.journal.step_rows(self.run_id)}
        standing = self._standing_for_display()
        if standing is not None:
            self._tell_display(OptimizationStarted(self.run_id, self.name, standing))

    def load_recorded(self, *, replay: bool) -> None:
        """Take back what the interrupted run this one resumes recorded: its trials and its spending.

        Args:
            replay: the optimizer replays the run (SIMBA-C): each journaled trial is counted when the
                replay uses it, and each step's other calls (rule proposals) come back from its
                journaled row. Otherwise (DSPy's optimizers compile again from the start) what the
                first run spent is counted now: its trials, and its calls no trial carries.
        """
        if not replay:
            self.evaluator.count_journaled()
            self._restore_untracked()

    def _restore_untracked(self) -> None:
        """Count what the interrupted run spent outside trials (DSPy's own calls, rule proposals).

        The journaled trials give their own calls back (``count_journaled``). A finished step row holds
        the run's totals when it was written; minus the calls of the trials finished by then, that is
        the spending no trial carries.
        """
        finished = [row for row in self._journaled_steps.values() if row.get("finished_at") is not None]
        if not finished:
            return
        last = max(finished, key=lambda row: row["finished_at"])
        before = [
            row
            for rows in self.evaluator.rows_by_experiment().values()
            for row in rows
            if row.get("finished_at") is not None and row["finished_at"] <= last["finished_at"]
        ]
        calls = sum(int(row.get("lm_calls") or 0) for row in before)
        tokens = sum(int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0) for row in before)
        costs = [float(row["cost"]) for row in before if row.get("cost") is not None]
        self.evaluator.spending.add_untracked(
            lm_calls=max(int(last.get("lm_calls") or 0) - calls, 0),
            tokens=max(int(last.get("tokens") or 0) - tokens, 0),
            cost=max(float(last["cost"]) - math.fsum(costs), 0.0) if last.get("cost") is not None and costs else None,
        )

    # -- records ---------------------------------------------------------------------------------

    def record(self, candidate: Candidate, phase: str, *, role: str | None = None) -> ExperimentRecord:
        """Return the record of one evaluation nested in this run (``parent_id`` is the run).

        Args:
            candidate: the candidate evaluated.
            phase: ``val``, ``screen`` or ``confirm``, or the label of another evaluation (an
                exploration, a compile configuration), which then names its ``role``.
            role: the evaluation's role (see :data:`~dspex_lab.journal.EXPERIMENT_ROLES`); by default
                the phase's: ``baseline`` for c0's validation, ``candidate-validation``,
                ``candidate-screen``, ``confirmation``.
        """
        experiment_id = evaluation_id(self.run_id, phase) if role is not None else self.evaluation(candidate.id, phase)
        if role is None:
            role = "baseline" if (candidate.id, phase) == ("c0", "val") else _PHASE_ROLES.get(phase)
        if role is None:
            raise OptimizerError(f"an evaluation labelled {phase!r} of run {self.run_id} needs a role")
        setup = self.setup
        data = setup.valset if phase == "val" else setup.confirm_set if phase == "confirm" else setup.trainset
        if data is None:
            raise OptimizerError(f"run {self.run_id} has no confirmation set to record {candidate.id} on")
        # Each dataset's examples are stored once, with the first evaluation on it.
        first_on_data = data.fingerprint not in self._stored_examples
        self._stored_examples.add(data.fingerprint)
        return experiment_record(
            "evaluation",
            f"{self.name} {candidate.id} {phase}",
            program=candidate.program,
            data=data,
            metric=self.config["metric"],
            config={
                "optimization": self.run_id,
                "candidate": candidate.id,
                "phase": phase,
                "lm": self.config["lm"],
                "lm_state": self.config["lm_state"],
                "repeats": 1,
            },
            store_examples=first_on_data,
            parent_id=self.run_id,
            role=role,
            experiment_id=experiment_id,
        )

    def evaluation(self, candidate_id: str, phase: str) -> str:
        """Return the experiment id of a candidate's evaluation in a phase (``val``, ``screen``, ``confirm``)."""
        return evaluation_id(self.run_id, candidate_id, phase)

    def journaled_compiles(self) -> int:
        """Return how many DSPy compiles of this run the journal holds (a resumed run compiles again).

        Each compile's first configuration is its candidate ``e1`` (see ``_CompileTrials``).
        """
        return sum(
            1
            for child in self.journal.children(self.run_id, role="compile")
            if (self.journal.experiment(child.id).get("config") or {}).get("candidate") == "e1"
        )

    def journaled_step(self, step: int) -> dict[str, Any] | None:
        """Return the step's row as the journal held it when this (resumed) run began, or None."""
        return self._journaled_steps.get(step)

    def record_candidates(self, candidates: list[Candidate]) -> None:
        """Keep and journal new candidates."""
        rows = [candidate.to_record() for candidate in candidates]
        for row in rows:
            self.candidate_rows[row["candidate_id"]] = row
        self.journal.record_candidates(self.run_id, rows)

    def recorded_candidates(self, step: int) -> list[Candidate]:
        """Return the candidates a step proposed, as recorded (a resumed run reuses them)."""
        found = [row for row in self.candidate_rows.values() if int(row["step"]) == step and row.get("parent_id")]
        return [
            Candidate(
                row["candidate_id"],
                Program.from_dict(row["program_spec"]),
                row["parent_id"],
                int(row["step"]),
                row["strategy"],
                row.get("rationale") or "",
            )
            for row in sorted(found, key=lambda row: int(row["candidate_id"].lstrip("c") or 0))
        ]

    def record_step(self, record: StepRecord) -> None:
        """Keep and journal a step's row; once the baseline's is finished, hold back the confirmation's budget."""
        row = record.to_row()
        self.step_rows[record.step] = row
        self.journal.record_step(self.run_id, row)
        if record.step == 0 and record.status == "finished":
            self.reserve_confirmation()

    def finish_step(
        self, record: StepRecord, incumbent: Scores | None, *, spending: dict[str, Any] | None = None
    ) -> None:
        """Journal a finished step's row and tell subscribers about it.

        Args:
            record: the step's row; its incumbent's numbers and the run's spending are filled in here.
            incumbent: the incumbent's validation scores (its mean and interval go in the row), if evaluated.
            spending: the run's spending to record (default: as it is now).
        """
        if incumbent is not None:
            record.best_mean, record.best_ci_low, record.best_ci_high = mean_and_interval(incumbent.by_example)
        spending = spending or self.evaluator.spending.to_summary()
        record.lm_calls, record.tokens, record.cost = spending["lm_calls"], spending["tokens"], spending["cost"]
        self.record_step(record)
        self.step_finished(record)

    def reserve_confirmation(self) -> None:
        """Hold back enough of the budget for the confirmation, priced by what the baseline's trials cost.

        Set when the baseline's validation is recorded (step 0): from then on the search stops
        early enough for the baseline and the best to be evaluated on the confirmation set.
        """
        spending = self.evaluator.spending
        confirm_set = self.setup.confirm_set
        if confirm_set is None or spending.budget is None:
            return
        rows = self.evaluator.experiment_rows(self.evaluation("c0", "val"))
        if not rows:
            return
        scale = 2 * len(confirm_set) * _RESERVE_MARGIN / len(rows)
        calls = sum(int(row.get("lm_calls") or 0) for row in rows)
        tokens = sum(int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0) for row in rows)
        cost = sum(float(row.get("cost") or 0.0) for row in rows)
        spending.reserve(lm_calls=math.ceil(calls * scale), tokens=math.ceil(tokens * scale), cost=cost * scale)

    def record_trace(self, trace: DecisionTrace) -> None:
        """Close a step's decision trace and store its spans (``step-N``) in the run's experiment."""
        self.run.add_spans(trace.trace_id, trace.close())

    def step_finished(self, record: StepRecord) -> None:
        """Tell the user (a printed line) and the subscribers that a step finished."""
        if self.setup.print_steps:
            best = f"{record.best_mean:.3f}" if record.best_mean is not None else "-"
            ci = (
                f" [{record.best_ci_low:.3f}, {record.best_ci_high:.3f}]"
                if record.best_ci_low is not None and record.best_ci_high is not None
                else ""
            )
            planned = planned_steps(self.setup.optimizer, self.setup.budget)
            of = f" of {planned}" if planned is not None else ""
            print(
                f"{self.name} step {record.step}{of}: {record.detail}; best {best}{ci}; {record.lm_calls:,} LM calls",
                file=sys.stderr,
            )
        if self.subscribers:
            event = OptimizationStep(self.run_id, record.step, *self.frames(), standing=self._standing_for_display())
            for subscriber in list(self.subscribers):
                self._tell(subscriber, event)

    def _tell(self, subscriber: Subscriber, event: Any) -> None:
        """Give ``event`` to one subscriber; one that raises is removed (a broken display never stops the run)."""
        try:
            subscriber(event)
        except Exception as error:
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)
            if subscriber is self.display:
                self.display = None
            print(f"subscriber {subscriber!r} removed: {type(error).__name__}: {error}", file=sys.stderr)

    def _tell_display(self, event: OptimizationStarted | OptimizationEnded) -> None:
        if self.display is not None:
            self._tell(self.display, event)

    def _standing_for_display(self) -> OptimizationStanding | None:
        """Return :meth:`standing`, or None (said on stderr) when it cannot be computed: a display never stops a run."""
        try:
            return self.standing()
        except Exception as error:
            print(f"run {self.run_id}: progress not updated: {type(error).__name__}: {error}", file=sys.stderr)
            return None

    def standing(self) -> OptimizationStanding:
        """Return where the run stands now: its spending, its counts and its best so far (see the class)."""
        rows = [self.step_rows[key] for key in sorted(self.step_rows)]
        finished = [row for row in rows if row.get("status") != "running"]
        spending = self.evaluator.spending
        summary = spending.to_summary()
        best: dict[str, Any] = self._best(best_candidate_id(finished)) if finished else {}
        return OptimizationStanding(
            step=int(finished[-1]["step"]) if finished else None,
            planned_steps=planned_steps(self.setup.optimizer, self.setup.budget),
            screened=len({item["candidate"] for row in rows for item in row.get("screening") or []}),
            validated=len({item["candidate"] for row in rows for item in row.get("evaluations") or []}),
            lm_calls=int(summary["lm_calls"]),
            tokens=int(summary["tokens"]),
            cost=summary["cost"],
            trials=int(summary["trials"]),
            budget=dict(spending.budget.limits()) if spending.budget is not None else {},
            **best,
        )

    def _best(self, candidate_id: str) -> dict[str, Any]:
        """Return a candidate's validation mean and interval, as the result computes them from its trials."""
        experiment_id = self.evaluation(candidate_id, "val")
        # The columns an evaluation's mean and interval are computed from (a resumed run's rows, read back from
        # the journal, carry timestamps the in-memory trials table would not take).
        columns = ("example_id", "example_index", "status", "score")
        rows = self.evaluator.experiment_rows(experiment_id)
        trials = pd.DataFrame([[row.get(column) for column in columns] for row in rows], columns=list(columns))
        trials["score"] = pd.to_numeric(trials["score"], errors="coerce")
        evaluation = EvaluationResult(
            experiment_id=experiment_id, name=experiment_id, status="finished", trials=trials, journal=self.journal
        )
        if evaluation.n == 0:
            return {"best_id": candidate_id}
        interval = evaluation.interval
        return {
            "best_id": candidate_id,
            "best_mean": finite(evaluation.mean),
            "best_ci_low": finite(interval.low),
            "best_ci_high": finite(interval.high),
            "best_ci_method": interval.method,
            "best_n": evaluation.n,
        }

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Return the steps and candidates tables so far."""
        rows = [self.step_rows[key] for key in sorted(self.step_rows)]
        return steps_frame(rows), candidates_frame(list(self.candidate_rows.values()), rows)

    # -- the end ---------------------------------------------------------------------------------

    def confirm(self) -> None:
        """Evaluate the baseline and the best on the confirmation set (the headline's test reads them back).

        Nothing is evaluated when the optimizer kept the baseline (there is no claim to test) or
        when there is no confirmation set. The budget held back for it is released first.
        """
        rows = [self.step_rows[key] for key in sorted(self.step_rows)]
        if not rows:
            return
        best_id = best_candidate_id(rows)
        confirm_set = self.setup.confirm_set
        if confirm_set is None:
            self.confirmation = {"status": "not run", "best_id": best_id}
            return
        if best_id == "c0":
            self.confirmation = {"status": "unchanged", "best_id": best_id}
            return
        self.evaluator.spending.release()
        examples = dataset_examples(confirm_set)
        stopped = None
        held_out: dict[str, Scores] = {}
        for candidate_id in ("c0", best_id):
            row = self.candidate_rows[candidate_id]
            candidate = Candidate(
                candidate_id,
                Program.from_dict(row["program_spec"]),
                row.get("parent_id"),
                int(row["step"]),
                row["strategy"],
                row.get("rationale") or "",
            )
            try:
                scores = self.evaluator.evaluate(candidate.program, examples, record=self.record(candidate, "confirm"))
            except BudgetSpent as spent:
                stopped = str(spent)
                break
            if scores.stopped:
                stopped = scores.stopped
                break
            held_out[candidate_id] = scores
        self.confirmation = {"status": "stopped" if stopped else "evaluated", "best_id": best_id, "detail": stopped}
        objective = self.setup.objective
        if objective is not None and not stopped:
            # Recorded: the headline reports them, and a second metric's function is not in the journal.
            self.confirmation["guardrails"] = held_out_checks(
                objective, held_out, examples=examples, alpha=float(self.config["confirmation"]["alpha"])
            )

    def end(self, status: str, detail: str | None) -> None:
        """Flush the trials and write how the run ended (once; later calls do nothing)."""
        if self.status != "running":
            return
        self.status, self.detail = status, detail
        summary = {
            "status": status,
            "status_detail": detail,
            "spending": self.evaluator.spending.to_summary(),
            "confirmation": self.confirmation,
        }
        self.run.finish(status, detail=detail, summary=summary)
        if self.run.saved:
            self.journal.finish_children(self.run_id, status="finished" if status != "failed" else "failed")
        standing = self._standing_for_display()
        if standing is not None:
            self._tell_display(OptimizationEnded(self.run_id, status, detail, standing))

    def result(self) -> OptimizationResult:
        """Return the run's result, read back from the journal.

        If the journal refused the run's trials (they were saved aside, see
        :meth:`~dspex_lab.session.Experiment.close`), it is built from this process's rows instead.
        """
        if self.run.saved:
            return OptimizationResult.from_journal(self.journal, self.run_id)
        rows = [self.step_rows[key] for key in sorted(self.step_rows)]
        return build_result(
            run_id=self.run_id,
            name=self.name,
            config=dict(self.config),
            status=self.status,
            status_detail=self.detail,
            step_rows=rows,
            candidate_rows=list(self.candidate_rows.values()),
            trials=memory_trials(self.evaluator.rows_by_experiment()),
            spending=self.evaluator.spending.to_summary(),
            journal=self.journal,
            confirmation=self.confirmation,
        )


def planned_steps(optimizer: Any, budget: Budget | None) -> int | None:
    """Return the steps an optimizer takes at most: SIMBA-C's ``max_steps``; DSPy's compile is one step.

    An Optuna study says its own (:meth:`~dspex_lab.optimization.OptunaSearch.planned_steps`: its
    trials and final choice, or None when only ``budget`` ends it).
    """
    # Imported here: both modules import this one.
    from dspex_lab.optimization._optuna import OptunaSearch
    from dspex_lab.optimization._simba_c import SimbaC

    if isinstance(optimizer, SimbaC):
        return optimizer.max_steps
    if isinstance(optimizer, OptunaSearch):
        return optimizer.planned_steps(budget)
    return 1


def start_run(setup: OptimizationSetup) -> Experiment:
    """Start the run ``setup`` describes, or resume ``setup.resume`` once it is checked to be the same run.

    The run must share with the one it resumes its program, trainset, valset, metric, LM, optimizer
    settings, seed and confirmation set (:func:`~dspex_lab.session.identity`); a finished run is
    final (its result is read back, not resumed).

    Raises:
        OptimizerError: the run to resume is unknown, still running, finished, or not the same run.
    """
    record = experiment_record(
        "optimization",
        setup.name,
        program=setup.program,
        data=setup.trainset,
        metric=setup.config["metric"],
        config=dict(setup.config),
        store_examples=False,  # each set's examples are stored with the first evaluation on it
    )
    if setup.resume is None:
        return Experiment.start(setup.journal, record)
    return Experiment.resume(setup.journal, setup.resume, record, error=OptimizerError)

"""Candidate evaluations of an optimization run: every trial through the engine, each evaluation an experiment.

An optimizer asks for "this program on these examples"; :class:`CandidateEvaluator`
makes that evaluation an experiment nested in the run (``run.child(record)``, see
:class:`~dspex_lab.session.Experiment`) and runs its trials with
:meth:`~dspex_lab.session.Experiment.run` (the same runner, executor, timeouts, retries
and metering as :func:`dx.evaluate <dspex_lab.evaluation>`), so ``dx.compare``,
``dspex journal trials`` and the trace viewer work on it. The experiment remembers every
trial: an evaluation asked for again, in this process or after a crash (``resume=``),
reuses the trials already recorded instead of running them twice.

Each finished trial is counted in the run's one :class:`~dspex_lab.optimization._spending.Spending`:
it is the engine's spending counter for every evaluation (``RunPolicy(budget=spending)``), so an
evaluation stops in the middle once the run's budget is spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspex_lab.data import Dataset
from dspex_lab.engine import Executor, PredictorTraceHook, RunPolicy, TrialRunner, TrialTask
from dspex_lab.journal import ExperimentRecord
from dspex_lab.optimization._display import Subscriber
from dspex_lab.optimization._spending import Spending
from dspex_lab.program import Program
from dspex_lab.session import Experiment
from dspex_lab.trace import SpanRecorder

__all__ = ["CandidateEvaluator", "Example", "Scores", "dataset_examples", "evaluation_id"]

# (example id, position in its dataset, the example)
Example = tuple[str, int, dspy.Example]
Metric = Callable[[dspy.Example, Any], Any]


def evaluation_id(run_id: str, *labels: str) -> str:
    """Return the id of one of a run's evaluations: ``<run>/<candidate>/<phase>`` or ``<run>/<label>``.

    The id is built here only, and only to be readable: nothing parses it. An evaluation's run is
    its record's ``parent_id`` and its purpose its ``role``.
    """
    return "/".join((run_id, *labels))


def dataset_examples(data: Dataset) -> list[Example]:
    """Return a dataset's examples as the evaluator takes them: (example id, position, example)."""
    return [
        (example_id, index, example)
        for index, (example_id, example) in enumerate(zip(data.example_ids, data, strict=True))
    ]


@dataclass(frozen=True)
class Scores:
    """A program's scores on some examples (errors apart, never averaged in).

    Attributes:
        experiment_id: the evaluation's experiment, where its trials are recorded.
        by_example: example id -> mean score of its scored trials.
        errors: example id -> error type, for examples with no scored trial.
        predictions: example id -> the prediction (JSON text) of its first scored trial.
        stopped: why the evaluation stopped early (budget, error budget, interrupt), else None.
        costs: example id -> US dollars its trial's LM calls cost (None: an unpriced model), for every
            example run, errors included (what an objective's cost guardrail and the Pareto front read).
        latencies: example id -> its trial's seconds, for every example run, errors included.
    """

    experiment_id: str
    by_example: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)
    predictions: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None
    costs: dict[str, float | None] = field(default_factory=dict)
    latencies: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Examples with a score."""
        return len(self.by_example)

    @property
    def mean(self) -> float:
        """The mean over scored examples (NaN when none is)."""
        return math.fsum(self.by_example.values()) / len(self.by_example) if self.by_example else math.nan


class CandidateEvaluator:
    """Runs programs on examples for one optimization run: each evaluation an experiment nested in the run.

    Each evaluation is the run's child experiment (:meth:`~dspex_lab.session.Experiment.child`),
    which records its trials and knows them again: an evaluation asked for again, in this process
    or after a crash (``resume=``), runs only the trials it has not recorded.

    Args:
        run: the optimization run's experiment (started or resumed).
        metric: ``metric(example, prediction)``.
        lm: the run's LM.
        executor: where trials run.
        policy: timeout, retries and error budget of every evaluation (its budget is ``spending``).
        spending: the run's spending, shared with the optimizer; every evaluation counts into it.
        trace: capture every trial's span tree into the journal.
        sinks: event subscribers (a progress display) given every evaluation's events.
    """

    def __init__(
        self,
        run: Experiment,
        *,
        metric: Metric,
        lm: dspy.BaseLM,
        executor: Executor,
        policy: RunPolicy,
        spending: Spending,
        trace: bool = False,
        sinks: Sequence[Subscriber] = (),
    ) -> None:
        self.run = run
        self.metric = metric
        self.lm = lm
        self.executor = executor
        self.policy = policy
        self.spending = spending
        self.trace = trace
        self.sinks = list(sinks)
        # The trials a resumed run found journaled and has not counted in ``spending`` yet:
        # (experiment id, example id, repeat). Trials run in this process are counted as they finish.
        self._uncounted: set[tuple[str, str, int]] = {
            (child.id, *key) for child in run.children() for key in child.recorded()
        }
        self._modules: dict[tuple[str, int], dspy.Module] = {}

    def count_journaled(self) -> None:
        """Count every journaled trial of a resumed run now.

        For DSPy's optimizers, which compile again from the start. SIMBA-C replays its run instead, and a
        journaled trial is counted when an evaluation first uses it, which is when the uninterrupted run
        counted it.
        """
        for child in self.run.children():
            for key, row in child.recorded().items():
                self._count_journaled(child.id, key, row)

    def _count_journaled(self, experiment_id: str, key: tuple[str, int], row: dict[str, Any]) -> None:
        """Count a journaled trial's spending once, however often it is used (a row shared by later steps)."""
        marker = (experiment_id, *key)
        if marker in self._uncounted:
            self._uncounted.discard(marker)
            self.spending.add_row(row)

    def experiment_rows(self, experiment_id: str) -> list[dict[str, Any]]:
        """Return the recorded trial rows of one evaluation (this process's and a resumed run's)."""
        for child in self.run.children():
            if child.id == experiment_id:
                return list(child.recorded().values())
        return []

    def rows_by_experiment(self) -> dict[str, list[dict[str, Any]]]:
        """Return every trial row this run knows, by evaluation experiment."""
        return {child.id: list(child.recorded().values()) for child in self.run.children()}

    def evaluate(
        self,
        program: Program,
        examples: Sequence[Example],
        *,
        record: ExperimentRecord,
        lm: dspy.BaseLM | None = None,
        repeat: int = 0,
        predictor_trace: PredictorTraceHook | None = None,
    ) -> Scores:
        """Run ``program`` on ``examples`` (trials already recorded are reused) and return its scores.

        Args:
            program: the candidate.
            examples: (example id, dataset position, example) triples.
            record: the evaluation's experiment record (nested in the run; inserted with its first trial).
            lm: the LM for this evaluation (default: the run's), e.g. a hotter copy for exploration.
            repeat: the repeat (rollout) index of these trials.
            predictor_trace: given each trial's per-predictor DSPy trace as it runs (a trial served
                from the journal runs nothing, so it is not given; see :class:`~dspex_lab.engine.TrialRunner`).

        Raises:
            BudgetSpent: the run's budget was spent before this evaluation could start.
        """
        child = self.run.child(record)
        recorded = child.recorded()
        tasks = [
            TrialTask(index=position, example_id=example_id, example=example, repeat=repeat)
            for example_id, position, example in examples
        ]
        missing = any((task.example_id, repeat) not in recorded for task in tasks)
        stopped = None
        if missing:
            # Checked before the journaled trials below are counted: the uninterrupted run started this
            # evaluation with the spending as it was before any of its trials.
            self.spending.ensure_left()
        for example_id, _, _ in examples:
            row = recorded.get((example_id, repeat))
            if row is not None:
                self._count_journaled(child.id, (example_id, repeat), row)
        if missing:
            # The trials served from the journal may have reached the budget: the uninterrupted run stopped here.
            stopped = self.spending.exhausted()
            if stopped is None:
                stopped = self._run(program, child, tasks, lm=lm or self.lm, predictor_trace=predictor_trace)
        return _scores(child.id, examples, recorded, repeat, stopped)

    def _run(
        self,
        program: Program,
        child: Experiment,
        tasks: list[TrialTask],
        *,
        lm: dspy.BaseLM,
        predictor_trace: PredictorTraceHook | None = None,
    ) -> str | None:
        """Run the trials ``child`` has not recorded through the engine; return why it stopped early, or None."""
        runner = TrialRunner(
            self._module(program, lm),
            self.metric,
            lm=lm,
            retry=self.policy.retry,
            recorder=SpanRecorder() if self.trace else None,
            span_sink=child.span_sink,
            predictor_trace=predictor_trace,
        )
        # The engine counts each trial in the run's spending and stops this evaluation once it is spent.
        policy = RunPolicy(
            timeout=self.policy.timeout,
            retry=self.policy.retry,
            max_errors=self.policy.max_errors,
            budget=self.spending,
        )
        report = child.run(tasks, runner, executor=self.executor, policy=policy, sinks=self.sinks)
        if report.status == "interrupted":
            # The engine swallows the interrupt to record what finished; the optimizer must stop too.
            raise KeyboardInterrupt(f"interrupted during evaluation {child.id}")
        if report.status != "finished":
            return report.detail or report.status
        return None

    def _module(self, program: Program, lm: dspy.BaseLM) -> dspy.Module:
        key = (program.fingerprint, id(lm))
        module = self._modules.get(key)
        if module is None:
            if len(self._modules) > 64:
                self._modules.clear()
            module = self._modules[key] = program.build(lm=lm)
        return module


def _scores(
    experiment_id: str,
    examples: Sequence[Example],
    recorded: Mapping[tuple[str, int], dict[str, Any]],
    repeat: int,
    stopped: str | None,
) -> Scores:
    by_example: dict[str, float] = {}
    errors: dict[str, str] = {}
    predictions: dict[str, str] = {}
    costs: dict[str, float | None] = {}
    latencies: dict[str, float] = {}
    for example_id, _, _ in examples:
        row = recorded.get((example_id, repeat))
        if row is None:
            continue  # not run: the evaluation stopped before it
        costs[example_id] = float(row["cost"]) if row.get("cost") is not None else None
        if row.get("latency") is not None:
            latencies[example_id] = float(row["latency"])
        if row.get("status") == "ok" and row.get("score") is not None:
            by_example[example_id] = float(row["score"])
            predictions[example_id] = row.get("prediction") or "{}"
        else:
            errors[example_id] = row.get("error_type") or "error"
    return Scores(experiment_id, by_example, errors, predictions, stopped, costs, latencies)

"""Candidate evaluations of an optimization run: every trial through the engine, one journal writer.

An optimizer asks for "this program on these examples"; :class:`CandidateEvaluator`
runs the trials with :func:`~dspex_lab.engine.run_trials` (the same runner, executor,
timeouts, retries and metering as :func:`dx.evaluate <dspex_lab.evaluation>`), records
each evaluation as an experiment of its own in the journal (so ``dx.compare``,
``dspex journal trials`` and the trace viewer work on it), and remembers every
trial: an evaluation asked for again, in this process or after a crash (``resume=``),
reuses the trials already recorded instead of running them twice.

Each finished trial is counted in the run's one :class:`~dspex_lab.optimization._spending.Spending`,
and the run's budget is handed to each evaluation as the part still left, so an
evaluation stops at the budget in the middle if it has to.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dspy

from dspex_lab.data import Dataset
from dspex_lab.engine import Executor, RunPolicy, TrialFinished, TrialRunner, TrialTask, run_trials
from dspex_lab.errors import DspexLabWarning
from dspex_lab.journal import DuckDBJournal, ExperimentRecord, TrialWriter
from dspex_lab.optimization._display import Subscriber
from dspex_lab.optimization._spending import Spending
from dspex_lab.program import Program
from dspex_lab.trace import Span, SpanRecorder

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
        experiment_id: where the trials are journaled (None without a journal).
        by_example: example id -> mean score of its scored trials.
        errors: example id -> error type, for examples with no scored trial.
        predictions: example id -> the prediction (JSON text) of its first scored trial.
        stopped: why the evaluation stopped early (budget, error budget, interrupt), else None.
    """

    experiment_id: str | None
    by_example: dict[str, float]
    errors: dict[str, str] = field(default_factory=dict)
    predictions: dict[str, str] = field(default_factory=dict)
    stopped: str | None = None

    @property
    def n(self) -> int:
        """Examples with a score."""
        return len(self.by_example)

    @property
    def mean(self) -> float:
        """The mean over scored examples (NaN when none is)."""
        return math.fsum(self.by_example.values()) / len(self.by_example) if self.by_example else math.nan


class CandidateEvaluator:
    """Runs programs on examples for one optimization run, journaling and remembering every trial.

    Args:
        run_id: the optimization run's id; evaluation experiment ids start with it.
        journal: where trials go (None: kept in memory for this process only).
        metric: ``metric(example, prediction)``.
        metric_name: the metric's recorded name.
        lm: the run's LM.
        executor: where trials run.
        policy: timeout, retries and error budget of every evaluation (its budget is replaced by
            what is left of ``spending``'s).
        spending: the run's spending, shared with the optimizer.
        trace: capture every trial's span tree into the journal.
        sinks: event subscribers (a progress display) given every evaluation's events.
    """

    def __init__(
        self,
        *,
        run_id: str,
        journal: DuckDBJournal | None,
        metric: Metric,
        metric_name: str,
        lm: dspy.BaseLM,
        executor: Executor,
        policy: RunPolicy,
        spending: Spending,
        trace: bool = False,
        sinks: Sequence[Subscriber] = (),
    ) -> None:
        self.run_id = run_id
        self.journal = journal
        self.metric = metric
        self.metric_name = metric_name
        self.lm = lm
        self.executor = executor
        self.policy = policy
        self.spending = spending
        self.trace = trace
        self.sinks = list(sinks)
        self.writer: TrialWriter | None = journal.writer(run_id) if journal is not None else None
        # experiment id -> (example id, repeat) -> trial row; filled from the journal when resuming.
        self._rows: dict[str, dict[tuple[str, int], dict[str, Any]]] = {}
        # (experiment id, example id, repeat) of the rows already counted in ``spending``.
        self._counted: set[tuple[str, str, int]] = set()
        self._created: set[str] = set()
        self._modules: dict[tuple[str, int], dspy.Module] = {}

    def load_recorded(self, *, count: bool = False) -> int:
        """Read the trials this run already journaled (a resume); return how many there are.

        Args:
            count: count every journaled trial's spending now. Without it (SIMBA-C, which replays
                its run) a journaled trial is counted when an evaluation first uses it, which is
                when the uninterrupted run counted it.
        """
        if self.journal is None:
            return 0
        rows = self.journal.children_trial_rows(self.run_id)
        for row in rows:
            experiment_id = row.pop("experiment_id")
            key = (row["example_id"], int(row["repeat"]))
            self._rows.setdefault(experiment_id, {})[key] = row
            if count:
                self._count(experiment_id, key, row)
        self._created.update(child.id for child in self.journal.children(self.run_id))
        return len(rows)

    def _count(self, experiment_id: str, key: tuple[str, int], row: dict[str, Any]) -> None:
        """Add a trial's spending once, however often it is used (a row shared by later steps)."""
        counted = (experiment_id, *key)
        if counted not in self._counted:
            self._counted.add(counted)
            self.spending.add(row)

    def experiment_rows(self, experiment_id: str) -> list[dict[str, Any]]:
        """Return the recorded trial rows of one evaluation (this process's and a resumed run's)."""
        return list(self._rows.get(experiment_id, {}).values())

    def rows_by_experiment(self) -> dict[str, list[dict[str, Any]]]:
        """Return every trial row this run knows, by evaluation experiment."""
        return {experiment_id: list(rows.values()) for experiment_id, rows in self._rows.items()}

    def evaluate(
        self,
        program: Program,
        examples: Sequence[Example],
        *,
        experiment_id: str,
        record: ExperimentRecord | None = None,
        lm: dspy.BaseLM | None = None,
        repeat: int = 0,
    ) -> Scores:
        """Run ``program`` on ``examples`` (trials already recorded are reused) and return its scores.

        Args:
            program: the candidate.
            examples: (example id, dataset position, example) triples.
            experiment_id: the evaluation's experiment (created on first use from ``record``).
            record: the experiment's record, inserted the first time the id is used.
            lm: the LM for this evaluation (default: the run's), e.g. a hotter copy for exploration.
            repeat: the repeat (rollout) index of these trials.

        Raises:
            BudgetSpent: the run's budget was spent before this evaluation could start.
        """
        recorded = self._rows.setdefault(experiment_id, {})
        tasks = [
            TrialTask(index=position, example_id=example_id, example=example, repeat=repeat)
            for example_id, position, example in examples
            if (example_id, repeat) not in recorded
        ]
        stopped = None
        if tasks:
            # Checked before the journaled trials below are counted: the uninterrupted run started this
            # evaluation with the spending as it was before any of its trials.
            self.spending.remaining()
        for example_id, _, _ in examples:
            row = recorded.get((example_id, repeat))
            if row is not None:
                self._count(experiment_id, (example_id, repeat), row)
        if tasks and self.spending.exhausted() is not None:
            # The trials served from the journal reached the budget: the uninterrupted run stopped here.
            stopped = self.spending.exhausted()
        elif tasks:
            if record is not None:
                self.create_experiment(record)
            self._created.add(experiment_id)
            stopped = self._run(program, tasks, experiment_id=experiment_id, lm=lm or self.lm, recorded=recorded)
        return _scores(experiment_id if self.writer is not None else None, examples, recorded, repeat, stopped)

    def _run(
        self,
        program: Program,
        tasks: list[TrialTask],
        *,
        experiment_id: str,
        lm: dspy.BaseLM,
        recorded: dict[tuple[str, int], dict[str, Any]],
    ) -> str | None:
        """Run the trials not recorded yet through the engine; return why the evaluation stopped early, or None."""
        runner = TrialRunner(
            self._module(program, lm),
            self.metric,
            lm=lm,
            retry=self.policy.retry,
            recorder=SpanRecorder() if self.trace and self.writer is not None else None,
            span_sink=functools.partial(self.writer.add_spans, experiment_id=experiment_id)
            if self.writer is not None
            else None,
        )
        # The engine stops this evaluation at what the run's budget has left (see _spending.py).
        policy = RunPolicy(
            timeout=self.policy.timeout,
            retry=self.policy.retry,
            max_errors=self.policy.max_errors,
            budget=self.spending.remaining(),
        )
        with warnings.catch_warnings():
            # The run's budget warnings come from the optimizer, once, not from every evaluation.
            warnings.filterwarnings("ignore", message=r".*budget.*", category=DspexLabWarning)
            report = run_trials(
                tasks,
                runner,
                executor=self.executor,
                policy=policy,
                sinks=[_Recorder(self, experiment_id, recorded), *self.sinks],
                run_id=experiment_id,
                name=experiment_id,
            )
        if report.status == "interrupted":
            # The engine swallows the interrupt to record what finished; the optimizer must stop too.
            raise KeyboardInterrupt(f"interrupted during evaluation {experiment_id}")
        if report.status != "finished":
            # A budget stop is told in the run's totals (the engine only saw this evaluation's share).
            return self.spending.exhausted() or report.detail or report.status
        return None

    def create_experiment(self, record: ExperimentRecord) -> None:
        """Journal an evaluation experiment whose trials something else runs (DSPy's compile), once per id."""
        if self.writer is not None and record.id not in self._created:
            self.writer.create(record)
        self._created.add(record.id)

    def add_trial(self, experiment_id: str, row: dict[str, Any]) -> None:
        """Journal one trial something else ran (DSPy's compile) in an experiment made by :meth:`create_experiment`.

        Thread safety: may be called from any thread (the journal writer takes rows from any thread).
        """
        if self.writer is not None:
            self.writer.add(row, experiment_id=experiment_id)

    def add_spans(self, trace_id: str, spans: Sequence[Span], *, experiment_id: str) -> None:
        """Journal spans the optimizer built (a step's decision trace) in an experiment of this run."""
        if self.writer is not None:
            self.writer.add_spans(trace_id, list(spans), experiment_id=experiment_id)

    def _module(self, program: Program, lm: dspy.BaseLM) -> dspy.Module:
        key = (program.fingerprint, id(lm))
        module = self._modules.get(key)
        if module is None:
            if len(self._modules) > 64:
                self._modules.clear()
            module = self._modules[key] = program.build(lm=lm)
        return module

    def close(self) -> None:
        """Write what is left to the journal."""
        if self.writer is not None:
            self.writer.close()


class _Recorder:
    """Keeps each finished trial's row, counts its spending and streams it to the journal."""

    def __init__(self, evaluator: CandidateEvaluator, experiment_id: str, recorded: dict[tuple[str, int], Any]) -> None:
        self.evaluator = evaluator
        self.experiment_id = experiment_id
        self.recorded = recorded

    def __call__(self, event: Any) -> None:
        if not isinstance(event, TrialFinished):
            return
        row = event.result.to_row()
        key = (row["example_id"], int(row["repeat"]))
        self.recorded[key] = row
        self.evaluator._count(self.experiment_id, key, row)
        if self.evaluator.writer is not None:
            self.evaluator.writer.add(row, experiment_id=self.experiment_id)


def _scores(
    experiment_id: str | None,
    examples: Sequence[Example],
    recorded: dict[tuple[str, int], dict[str, Any]],
    repeat: int,
    stopped: str | None,
) -> Scores:
    by_example: dict[str, float] = {}
    errors: dict[str, str] = {}
    predictions: dict[str, str] = {}
    for example_id, _, _ in examples:
        row = recorded.get((example_id, repeat))
        if row is None:
            continue  # not run: the evaluation stopped before it
        if row.get("status") == "ok" and row.get("score") is not None:
            by_example[example_id] = float(row["score"])
            predictions[example_id] = row.get("prediction") or "{}"
        else:
            errors[example_id] = row.get("error_type") or "error"
    return Scores(experiment_id, by_example, errors, predictions, stopped)

"""``dx.optimize``: improve a program on a trainset, judged on a validation set, every trial journaled."""

from __future__ import annotations

import contextlib
import math
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy
import numpy as np
import pandas as pd

from dspex_lab.data import Dataset
from dspex_lab.engine import Budget, RetryPolicy, RunPolicy
from dspex_lab.errors import ExecutionError, OptimizerError
from dspex_lab.evaluation import warn_if_underpowered
from dspex_lab.evaluation._progress import installed_display
from dspex_lab.journal import DuckDBJournal, ExperimentRecord
from dspex_lab.optimization._evaluator import BudgetSpent, CandidateEvaluator, Example, Spending, evaluation_id
from dspex_lab.optimization._result import (
    OptimizationResult,
    best_candidate_id,
    build_result,
    candidates_frame,
    memory_trials,
    steps_frame,
)
from dspex_lab.optimization._simba_c import Hooks, SimbaC, SimbaCRun, StepRecord
from dspex_lab.optimization._space import Candidate, lift
from dspex_lab.program import Program
from dspex_lab.session import current_context, environment
from dspex_lab.session import lm_state as _lm_state
from dspex_lab.session import metric_name as _metric_name
from dspex_lab.trace.redaction import redact
from dspex_lab.trace.spans import Span, now_ns

__all__ = ["DSPY_OPTIMIZERS", "OptimizationStep", "optimize"]

Metric = Callable[[dspy.Example, Any], Any]

#: Names ``optimizer=`` accepts for DSPy's own optimizers (run through dspex_lab's engine and journal).
DSPY_OPTIMIZERS = ("simba", "mipro", "gepa", "bootstrap")
OPTIMIZER_NAMES = ("simba-c", *DSPY_OPTIMIZERS)

#: The part of the valset held out for the confirmation when no testset is given.
CONFIRM_FRACTION = 0.3
#: The fewest examples a carved confirmation split (and the selection part left) may have.
MINIMUM_SPLIT = 5
# The confirmation split's random stream, apart from every stream the optimizers draw from the seed.
_CONFIRMATION_STREAM = 7_001
# The confirmation's budget reserve: the baseline's validation cost per trial, times two programs,
# times this margin (a changed program's prompt is longer: demos and rules).
_RESERVE_MARGIN = 1.25


@dataclass(frozen=True)
class OptimizationStep:
    """An event for subscribers (a live convergence plot): a step finished.

    Attributes:
        run_id: the run.
        step: the step that finished (0: the baseline evaluation).
        steps: the steps table so far (see ``OptimizationResult.steps``).
        candidates: the candidates table so far (see ``OptimizationResult.candidates``).
    """

    run_id: str
    step: int
    steps: pd.DataFrame
    candidates: pd.DataFrame


def _dataset(value: Dataset | Sequence[dspy.Example], role: str) -> Dataset:
    if isinstance(value, Dataset):
        data = value
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        data = Dataset(list(value))
    else:
        raise OptimizerError(f"{role} must be a dx.Dataset or a sequence of dspy.Example, got {type(value).__name__}")
    if len(data) == 0:
        raise OptimizerError(f"{role} is empty")
    return data


def _examples(data: Dataset) -> list[Example]:
    return [
        (example_id, index, example)
        for index, (example_id, example) in enumerate(zip(data.example_ids, data, strict=True))
    ]


def _resolve_optimizer(optimizer: SimbaC | str | Any) -> Any:
    if isinstance(optimizer, str):
        key = optimizer.lower().replace("_", "-")
        if key in ("simba-c", "simbac"):
            return SimbaC()
        if key in DSPY_OPTIMIZERS:
            from dspex_lab.optimization._dspy import DspyOptimizer

            return DspyOptimizer(key)
        raise OptimizerError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_NAMES)}")
    if isinstance(optimizer, SimbaC) or hasattr(optimizer, "run_dspy"):
        return optimizer
    raise OptimizerError(
        f"optimizer must be dx.SimbaC(...) or one of {', '.join(OPTIMIZER_NAMES)}, got {type(optimizer).__name__}"
    )


def _check_sets(trainset: Dataset, valset: Dataset, optimizer: Any) -> None:
    overlap = set(trainset.example_ids) & set(valset.example_ids)
    if overlap:
        raise OptimizerError(
            f"the valset shares {len(overlap)} examples with the trainset (e.g. {sorted(overlap)[0]}); a candidate "
            "chosen on an example cannot be judged on it: split the data, e.g. data.split(...)"
        )
    bsize = getattr(optimizer, "bsize", None)
    if bsize is not None and len(trainset) < bsize:
        raise OptimizerError(
            f"the trainset has {len(trainset)} examples, fewer than the mini-batch (bsize={bsize}); "
            f"use a larger trainset or SimbaC(bsize={len(trainset)})"
        )


def _check_budget(budget: Budget | None, optimizer: Any, valset: Dataset, confirm: Dataset | None) -> None:
    if budget is None:
        return
    if not isinstance(budget, Budget):
        raise OptimizerError(f"budget must be a dx.Budget, got {type(budget).__name__}")
    if isinstance(optimizer, SimbaC) and budget.lm_calls is not None:
        # At least one LM call per trial: the baseline on the valset, then one step's trajectories and screening,
        # one full evaluation, and the confirmation (the baseline and the best on the confirmation set).
        confirming = 2 * len(confirm) if confirm is not None else 0
        one_step = (
            len(valset)
            + (optimizer.num_sources + optimizer.num_candidates) * optimizer.bsize
            + len(valset)
            + confirming
        )
        if budget.lm_calls < one_step:
            raise OptimizerError(
                f"Budget(lm_calls={budget.lm_calls}) is too small for one SIMBA-C step: the baseline and one step "
                f"need at least {one_step} LM calls ({len(valset)} validation examples, "
                f"{optimizer.num_sources + optimizer.num_candidates} programs x bsize={optimizer.bsize}, one full "
                f"evaluation, {confirming} confirmation trials); raise the budget or lower "
                "bsize/num_candidates/num_sources"
            )


def _acceptance(optimizer: Any) -> tuple[float, str]:
    """Return the optimizer's significance level and paired test (the confirmation uses the same)."""
    if isinstance(optimizer, SimbaC):
        return optimizer.alpha, optimizer.test
    options = getattr(optimizer, "options", {})
    return float(options.get("alpha", 0.05)), str(options.get("test", "auto"))


def _confirmation_split(
    train: Dataset,
    val: Dataset,
    testset: Dataset | Sequence[dspy.Example] | None,
    fraction: float | None,
    seed: int,
    optimizer: Any,
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    """Return the selection set, the confirmation set (or None) and how they were made (recorded in the config).

    The confirmation set is data the optimizer never sees: the testset when one is given, else a
    seeded part of the valset carved off before the search starts.
    """
    alpha, test = _acceptance(optimizer)
    common = {"alpha": alpha, "test": test, "alternative": "greater"}
    if testset is not None:
        if fraction is not None:
            raise OptimizerError(
                f"confirm_fraction={fraction!r} carves a confirmation set from the valset, but a testset is given; "
                "pass one or the other"
            )
        confirm = _dataset(testset, "testset")
        for role, other in (("trainset", train), ("valset", val)):
            overlap = set(confirm.example_ids) & set(other.example_ids)
            if overlap:
                raise OptimizerError(
                    f"the testset shares {len(overlap)} examples with the {role} (e.g. {sorted(overlap)[0]}); a "
                    "confirmation must be on data the optimizer never saw: split the data, e.g. data.split(...)"
                )
        return val, confirm, {"source": "testset", "n": len(confirm), **common, "testset": confirm.manifest()}
    fraction = CONFIRM_FRACTION if fraction is None else fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise OptimizerError(f"confirm_fraction must be a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return val, None, {"source": None, "n": 0, **common}
    size = round(len(val) * fraction)
    if size < MINIMUM_SPLIT or len(val) - size < MINIMUM_SPLIT:
        raise OptimizerError(
            f"the valset has {len(val)} examples: too few to carve a confirmation set of confirm_fraction={fraction} "
            f"with at least {MINIMUM_SPLIT} examples on each side; pass a larger valset, a testset=, or "
            "confirm_fraction=0 (then nothing is claimed)"
        )
    order = np.random.default_rng([seed, _CONFIRMATION_STREAM]).permutation(len(val))
    held = sorted(int(position) for position in order[:size])
    kept = sorted(set(range(len(val))) - set(held))
    selection = val.select(kept).with_name(f"{val.name} (selection)")
    confirm = val.select(held).with_name(f"{val.name} (confirmation)")
    return (
        selection,
        confirm,
        {
            "source": "valset",
            "n": len(confirm),
            "fraction": fraction,
            "seed": seed,
            "selection_n": len(selection),
            "example_ids": list(confirm.example_ids),
            **common,
        },
    )


def optimize(
    program: Program,
    trainset: Dataset | Sequence[dspy.Example],
    valset: Dataset | Sequence[dspy.Example],
    *,
    metric: Metric,
    optimizer: SimbaC | str = "simba-c",
    budget: Budget | None = None,
    seed: int = 0,
    testset: Dataset | Sequence[dspy.Example] | None = None,
    confirm_fraction: float | None = None,
    name: str | None = None,
    resume: str | None = None,
    timeout: float | None = None,
    retries: int = 3,
    max_errors: int | float | None = None,
    trace: bool = False,
    progress: bool | Callable[[Any], None] = True,
    subscribers: Sequence[Callable[[Any], None]] = (),
) -> OptimizationResult:
    """Optimize ``program`` on ``trainset``, accepting changes on ``valset`` evidence, and journal every decision.

    Args:
        program: the program to improve; its typed variables are part of the search space, and
            instructions and demos are added for every predictor.
        trainset: examples for mini-batches, trajectories and demos.
        valset: held-out examples on which candidates are accepted (must not overlap the trainset).
        metric: ``metric(example, prediction)`` returning a finite number or bool.
        optimizer: ``dx.SimbaC(...)`` (default hyperparameters with ``"simba-c"``), or ``"simba"``,
            ``"mipro"``, ``"gepa"``, ``"bootstrap"`` for DSPy's optimizers run through the same engine.
        budget: limits on LM calls, tokens or dollars for the whole run; it stops cleanly when spent.
            Enough for the confirmation is held back once the baseline has shown what a trial costs.
        seed: makes mini-batches, sources, proposals and the confirmation split reproducible.
        testset: examples the optimizer never sees, on which the best program is tested against the
            baseline once the search is over (the headline: ``result.comparison``). Must not overlap
            the trainset or the valset.
        confirm_fraction: without a testset, the fraction of the valset carved off (seeded) as the
            confirmation set before the search starts (default 0.3, at least 5 examples on each
            side); 0 runs no confirmation, and then nothing is claimed.
        name: the run's name (default: the program's name and the optimizer).
        resume: the id of an interrupted run to continue (same program, data, metric, LM and optimizer);
            finished evaluations are not repeated.
        timeout: seconds a trial may take (retries included).
        retries: retries of transient LM failures per trial.
        max_errors: an error budget per evaluation (a count or a fraction).
        trace: capture every trial's span tree (the decisions' spans are always recorded).
        progress: show the run (True): a live widget in a Jupyter kernel (see evaluate/_progress.py), one
            printed line per step elsewhere; or a display (``dx.widgets.RunProgress()``) given every
            evaluation's events and every step; False for nothing.
        subscribers: called with an :class:`OptimizationStep` after every step (e.g. a live plot).

    Returns:
        The :class:`OptimizationResult`; on KeyboardInterrupt the run is marked interrupted in the
        journal and KeyboardInterrupt is raised again naming the id to resume.

    Raises:
        OptimizerError: bad arguments (see the message), or a resume that does not match.
    """
    if not isinstance(program, Program):
        raise OptimizerError(
            f"optimize() takes a dx.Program (the search space is its variables), got {type(program).__name__}; "
            "wrap a module class with dx.Program('module.path', signature=...)"
        )
    if not callable(metric):
        raise OptimizerError(f"metric must be callable as metric(example, prediction), got {metric!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise OptimizerError(f"seed must be an integer, got {seed!r}")
    chosen = _resolve_optimizer(optimizer)
    train = _dataset(trainset, "trainset")
    given_val = _dataset(valset, "valset")
    _check_sets(train, given_val, chosen)
    val, confirm, confirmation = _confirmation_split(train, given_val, testset, confirm_fraction, seed, chosen)
    _check_budget(budget, chosen, val, confirm)
    warn_if_underpowered(len(val), what="valset", alpha=_acceptance(chosen)[0])  # before any LM call is spent
    try:
        policy = RunPolicy(timeout=timeout, retry=RetryPolicy(retries=retries), max_errors=max_errors)
    except (ValueError, ExecutionError) as error:
        raise OptimizerError(str(error)) from error
    context = current_context()
    journal = context.journal
    lm = context.lm
    config = redact(
        {
            "optimizer": chosen.name,
            "optimizer_config": chosen.config(),
            "seed": seed,
            "budget": budget.limits() if budget is not None else None,
            "trainset": train.manifest(),
            "valset": given_val.manifest(),
            "confirmation": confirmation,
            "metric": _metric_name(metric),
            "lm": getattr(lm, "model", repr(lm)),
            "lm_state": _lm_state(lm),
            "timeout": timeout,
            "retries": retries,
            "trace": trace,
        }
    )
    run_name = name or f"{program.name} ({chosen.name})"
    display = progress if callable(progress) else installed_display("optimization") if progress else None
    printing = progress is True and display is None
    # Held for the whole run: opening the DuckDB file costs tens of milliseconds, and a run writes often.
    with journal.hold() if journal is not None else contextlib.nullcontext():
        status = "failed"
        # A display that spans the whole run (the notebook widget) hears when it begins and how it ends.
        begin = getattr(display, "begin", None)
        if callable(begin):
            begin(run_name)
        try:
            result = _run(journal, resume, program, train, val, confirm, metric, config, run_name, chosen, budget,
                          seed, lm, context, policy, trace, printing, subscribers, display)  # fmt: skip
            status = result.status
            return result
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            finish = getattr(display, "finish", None)
            if callable(finish):
                finish(status)


def _run(
    journal: DuckDBJournal | None,
    resume: str | None,
    program: Program,
    train: Dataset,
    val: Dataset,
    confirm: Dataset | None,
    metric: Metric,
    config: dict[str, Any],
    run_name: str,
    chosen: Any,
    budget: Budget | None,
    seed: int,
    lm: dspy.BaseLM,
    context: Any,
    policy: RunPolicy,
    trace: bool,
    progress: bool,
    subscribers: Sequence[Callable[[Any], None]],
    display: Callable[[Any], None] | None = None,
) -> OptimizationResult:
    run_id = _start(journal, resume, program, train, metric, config, run_name)
    spending = Spending(budget=budget)
    evaluator = CandidateEvaluator(
        run_id=run_id,
        journal=journal,
        metric=metric,
        metric_name=_metric_name(metric),
        lm=lm,
        executor=context.executor,
        policy=policy,
        spending=spending,
        trace=trace,
        sinks=[display] if display is not None else [],
    )
    if resume is not None and journal is not None:
        if isinstance(chosen, SimbaC):
            # SIMBA-C replays the run: each journaled trial is counted when the replay uses it, and each
            # step's other calls (rule proposals) come back from its journaled row (see _simba_c.py).
            evaluator.load_recorded()
        else:
            # DSPy's optimizers compile again from the start: what the first run spent is counted up front.
            evaluator.load_recorded(count=True)
            _restore_other_spending(spending, journal, run_id, evaluator.rows_by_experiment())
    steps_to = [*subscribers, display] if display is not None else subscribers
    session = _Session(run_id, run_name, journal, evaluator, config, program, train, val, steps_to, progress)
    session.confirm_set = confirm
    try:
        if isinstance(chosen, SimbaC):
            status, detail = session.run_simba_c(chosen, program, seed, lm)
        else:
            status, detail = session.run_dspy(chosen, program, metric, seed, lm)
        session.confirm()
        session.end(status, detail)
    except KeyboardInterrupt:
        session.end("interrupted", "interrupted by the user")
        raise KeyboardInterrupt(
            f"optimization interrupted; finished evaluations are journaled: continue with resume={run_id!r}"
        ) from None
    except BaseException as error:
        session.end("failed", f"{type(error).__name__}: {error}")
        raise
    return session.result()


def _start(
    journal: DuckDBJournal | None,
    resume: str | None,
    program: Program,
    train: Dataset,
    metric: Metric,
    config: dict[str, Any],
    name: str,
) -> str:
    if resume is None:
        run_id = uuid.uuid4().hex[:12]
        if journal is not None:
            journal.create_experiment(
                ExperimentRecord(
                    id=run_id,
                    kind="optimization",
                    name=name,
                    program_name=program.name,
                    program_fingerprint=program.fingerprint,
                    program_spec=program.to_dict(),
                    dataset_name=train.name,
                    dataset_fingerprint=train.fingerprint,
                    dataset_manifest=train.manifest(),
                    metric=_metric_name(metric),
                    config=config,
                    environment=environment(),
                )
            )
        return run_id
    if journal is None:
        raise OptimizerError("resume needs a journal: use dx.Context(journal=...) with the run's journal")
    try:
        previous = journal.experiment(resume)
    except Exception as error:
        raise OptimizerError(f"cannot resume {resume!r}: {error}") from None
    if previous.get("kind") != "optimization":
        raise OptimizerError(f"cannot resume {resume!r}: it is a {previous.get('kind')}, not an optimization run")
    if previous["status"] == "finished":
        raise OptimizerError(
            f"optimization run {resume} already finished; read it with dx.OptimizationResult.from_journal(journal, "
            f"{resume!r})"
        )
    if previous["status"] == "running":
        raise OptimizerError(f"optimization run {resume} is still running in process {previous.get('pid')}")
    before = previous.get("config") or {}
    checks = [
        ("program", previous.get("program_fingerprint"), program.fingerprint),
        ("trainset", previous.get("dataset_fingerprint"), train.fingerprint),
        ("valset", (before.get("valset") or {}).get("fingerprint"), config["valset"].get("fingerprint")),
        ("metric", previous.get("metric"), _metric_name(metric)),
        ("LM", (before.get("lm"), before.get("lm_state")), (config["lm"], config["lm_state"])),
        ("optimizer", before.get("optimizer_config"), config["optimizer_config"]),
        ("seed", before.get("seed"), config["seed"]),
        ("confirmation set", before.get("confirmation"), config["confirmation"]),
    ]
    for what, old, new in checks:
        if old != new:
            raise OptimizerError(
                f"cannot resume {resume}: it ran with a different {what} ({_short(old)} vs {_short(new)}); "
                f"resume with the same {what}"
            )
    journal.claim_experiment(resume)
    return resume


def _restore_other_spending(
    spending: Spending, journal: DuckDBJournal, run_id: str, recorded: dict[str, list[dict[str, Any]]]
) -> None:
    """Add what the interrupted run spent outside trials (rule proposals, DSPy's own calls) to a resumed run.

    The journaled trials give their own calls back (``load_recorded``). A finished step row holds
    the run's totals when it was written; minus the calls of the trials finished by then, that is
    the spending no trial carries. ``recorded`` holds the run's journaled trials by evaluation.
    """
    finished = [row for row in journal.step_rows(run_id) if row.get("finished_at") is not None]
    if not finished:
        return
    last = max(finished, key=lambda row: row["finished_at"])
    before = [
        row
        for rows in recorded.values()
        for row in rows
        if row.get("finished_at") is not None and row["finished_at"] <= last["finished_at"]
    ]
    calls = sum(int(row.get("lm_calls") or 0) for row in before)
    tokens = sum(int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0) for row in before)
    costs = [float(row["cost"]) for row in before if row.get("cost") is not None]
    spending.lm_calls += max(int(last.get("lm_calls") or 0) - calls, 0)
    spending.tokens += max(int(last.get("tokens") or 0) - tokens, 0)
    if last.get("cost") is not None and costs:
        spending.cost += max(float(last["cost"]) - math.fsum(costs), 0.0)


# The role of a candidate's evaluation in its run, by phase (c0's validation is the ``baseline``).
_PHASE_ROLES = {"val": "candidate-validation", "screen": "candidate-screen", "confirm": "confirmation"}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Session:
    """The journal side of one run: records, spans, events, progress and the final result."""

    def __init__(
        self,
        run_id: str,
        name: str,
        journal: DuckDBJournal | None,
        evaluator: CandidateEvaluator,
        config: dict[str, Any],
        program: Program,
        train: Dataset,
        val: Dataset,
        subscribers: Sequence[Callable[[Any], None]],
        progress: bool,
    ) -> None:
        self.run_id = run_id
        self.name = name
        self.journal = journal
        self.evaluator = evaluator
        self.config = config
        self.program = program
        self.train = train
        self.val = val
        self.subscribers = list(subscribers)
        self.progress = progress
        self.candidate_rows: dict[str, dict[str, Any]] = {}
        self.step_rows: dict[int, dict[str, Any]] = {}
        self.status = "running"
        self.detail: str | None = None
        # The data the optimizer never sees, on which the best is tested once the search is over.
        self.confirm_set: Dataset | None = None
        self.confirmation: dict[str, Any] = {"status": "not run"}
        self._stored_examples: set[str] = set()
        # The steps as the journal held them when this process began (a resumed run's earlier progress).
        self.journaled_steps: dict[int, dict[str, Any]] = {}
        if journal is not None:
            for row in journal.candidate_rows(run_id):
                self.candidate_rows[row["candidate_id"]] = row
            self.journaled_steps = {int(row["step"]): row for row in journal.step_rows(run_id)}

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
        data = self.val if phase == "val" else self.confirm_set if phase == "confirm" else self.train
        if data is None:
            raise OptimizerError(f"run {self.run_id} has no confirmation set to record {candidate.id} on")
        examples = ()
        if data.fingerprint not in self._stored_examples:
            from dspex_lab.session import stored_examples as _stored_examples

            self._stored_examples.add(data.fingerprint)
            examples = _stored_examples(data)
        return ExperimentRecord(
            id=experiment_id,
            kind="evaluation",
            name=f"{self.name} {candidate.id} {phase}",
            program_name=candidate.program.name,
            program_fingerprint=candidate.program.fingerprint,
            program_spec=candidate.program.to_dict(),
            dataset_name=data.name,
            dataset_fingerprint=data.fingerprint,
            dataset_manifest=data.manifest(),
            metric=self.config["metric"],
            config={
                "optimization": self.run_id,
                "candidate": candidate.id,
                "phase": phase,
                "lm": self.config["lm"],
                "lm_state": self.config["lm_state"],
                "repeats": 1,
            },
            environment=environment(),
            examples=examples,
            parent_id=self.run_id,
            role=role,
        )

    def evaluation(self, candidate_id: str, phase: str) -> str:
        """Return the experiment id of a candidate's evaluation in a phase (``val``, ``screen``, ``confirm``)."""
        return evaluation_id(self.run_id, candidate_id, phase)

    def journaled_compiles(self) -> int:
        """Return how many DSPy compiles of this run the journal holds (a resumed run compiles again).

        Each compile's first configuration is its candidate ``e1`` (see ``_CompileTrials``).
        """
        if self.journal is None:
            return 0
        return sum(
            1
            for child in self.journal.children(self.run_id, role="compile")
            if (self.journal.experiment(child.id).get("config") or {}).get("candidate") == "e1"
        )

    def record_candidates(self, candidates: list[Candidate]) -> None:
        rows = [candidate.to_record() for candidate in candidates]
        for row in rows:
            self.candidate_rows[row["candidate_id"]] = row
        if self.journal is not None:
            self.journal.record_candidates(self.run_id, rows)

    def recorded_candidates(self, step: int) -> list[Candidate]:
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
        row = record.to_row()
        self.step_rows[record.step] = row
        if self.journal is not None:
            self.journal.record_step(self.run_id, row)
        if record.step == 0 and record.status == "finished":
            self.reserve_confirmation()

    def reserve_confirmation(self) -> None:
        """Hold back enough of the budget for the confirmation, priced by what the baseline's trials cost.

        Set when the baseline's validation is recorded (step 0): from then on the search stops
        early enough for the baseline and the best to be evaluated on the confirmation set.
        """
        spending = self.evaluator.spending
        if self.confirm_set is None or spending.budget is None:
            return
        rows = self.evaluator.experiment_rows(self.evaluation("c0", "val"))
        if not rows:
            return
        scale = 2 * len(self.confirm_set) * _RESERVE_MARGIN / len(rows)
        calls = sum(int(row.get("lm_calls") or 0) for row in rows)
        tokens = sum(int(row.get("input_tokens") or 0) + int(row.get("output_tokens") or 0) for row in rows)
        cost = sum(float(row.get("cost") or 0.0) for row in rows)
        spending.reserve(lm_calls=math.ceil(calls * scale), tokens=math.ceil(tokens * scale), cost=cost * scale)

    def emit_spans(self, step: int, items: list[dict[str, Any]]) -> None:
        """Store a step's decisions as one orchestration trace (``step-N``) in the run's experiment."""
        if self.evaluator.writer is None:
            return
        trace_id = f"step-{step}"
        end = now_ns()
        root = Span(
            trace_id,
            f"{trace_id}-root",
            parent_id=None,
            kind="decision",
            name=f"step {step}",
            start_ns=end,
            end_ns=end,
            attributes={"run_id": self.run_id, "step": step, "decision": items[-1]["attributes"].get("decision")},
        )
        spans = [root]
        for position, item in enumerate(items):
            spans.append(
                Span(
                    trace_id,
                    f"{trace_id}-{position}",
                    parent_id=root.span_id,
                    kind=item["kind"],
                    name=item["name"],
                    start_ns=end + position + 1,
                    end_ns=end + position + 1,
                    attributes=item["attributes"],
                )
            )
        self.evaluator.writer.add_spans(trace_id, spans, experiment_id=self.run_id)

    def step_finished(self, record: StepRecord) -> None:
        if self.progress:
            best = f"{record.best_mean:.3f}" if record.best_mean is not None else "-"
            ci = (
                f" [{record.best_ci_low:.3f}, {record.best_ci_high:.3f}]"
                if record.best_ci_low is not None and record.best_ci_high is not None
                else ""
            )
            print(
                f"{self.name} step {record.step}: {record.detail}; best {best}{ci}; {record.lm_calls:,} LM calls",
                file=sys.stderr,
            )
        if self.subscribers:
            event = OptimizationStep(self.run_id, record.step, *self.frames())
            for subscriber in list(self.subscribers):
                try:
                    subscriber(event)
                except Exception as error:  # a broken display never stops the run
                    self.subscribers.remove(subscriber)
                    print(f"subscriber {subscriber!r} removed: {type(error).__name__}: {error}", file=sys.stderr)

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        rows = [self.step_rows[key] for key in sorted(self.step_rows)]
        return steps_frame(rows), candidates_frame(list(self.candidate_rows.values()), rows)

    def hooks(self) -> Hooks:
        return Hooks(
            record_candidates=self.record_candidates,
            record_step=self.record_step,
            recorded_candidates=self.recorded_candidates,
            emit_spans=self.emit_spans,
            step_finished=self.step_finished,
            spending=self.evaluator.spending.to_summary,
            run_id=self.run_id,
            journaled_step=self.journaled_steps.get,
        )

    # -- running ---------------------------------------------------------------------------------

    def run_simba_c(self, optimizer: SimbaC, program: Program, seed: int, lm: dspy.BaseLM) -> tuple[str, str]:
        lifted, slots = lift(program, lm=lm, max_demos=optimizer.max_demos)
        baseline = Candidate(
            "c0", lifted, None, 0, "baseline", "the program as given, with instructions and demos lifted"
        )
        if "c0" not in self.candidate_rows:
            self.record_candidates([baseline])
        run = SimbaCRun(
            optimizer,
            baseline=baseline,
            slots=slots,
            trainset=_examples(self.train),
            valset=_examples(self.val),
            evaluator=self.evaluator,
            hooks=self.hooks(),
            seed=seed,
            lm=lm,
        )
        run.run(self.record)
        return run.status, run.detail or ""

    def run_dspy(self, optimizer: Any, program: Program, metric: Metric, seed: int, lm: dspy.BaseLM) -> tuple[str, str]:
        status, detail = optimizer.run_dspy(self, program=program, metric=metric, seed=seed, lm=lm)
        return status, detail

    def confirm(self) -> None:
        """Evaluate the baseline and the best on the confirmation set (the headline's test reads them back).

        Nothing is evaluated when the optimizer kept the baseline (there is no claim to test) or
        when there is no confirmation set. The budget held back for it is released first.
        """
        rows = [self.step_rows[key] for key in sorted(self.step_rows)]
        if not rows:
            return
        best_id = best_candidate_id(rows)
        if self.confirm_set is None:
            self.confirmation = {"status": "not run", "best_id": best_id}
            return
        if best_id == "c0":
            self.confirmation = {"status": "unchanged", "best_id": best_id}
            return
        spending = self.evaluator.spending
        spending.release()
        examples = _examples(self.confirm_set)
        stopped = None
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
                scores = self.evaluator.evaluate(
                    candidate.program,
                    examples,
                    experiment_id=self.evaluation(candidate_id, "confirm"),
                    record=self.record(candidate, "confirm"),
                )
            except BudgetSpent as spent:
                stopped = str(spent)
                break
            if scores.stopped:
                stopped = scores.stopped
                break
        self.confirmation = {"status": "stopped" if stopped else "evaluated", "best_id": best_id, "detail": stopped}

    def end(self, status: str, detail: str | None) -> None:
        if self.status != "running":
            return
        self.status, self.detail = status, detail
        try:
            self.evaluator.close()
        finally:
            if self.journal is not None:
                summary = {
                    "status": status,
                    "status_detail": detail,
                    "spending": self.evaluator.spending.to_summary(),
                    "confirmation": self.confirmation,
                }
                self.journal.finish_experiment(self.run_id, status=status, detail=detail, summary=summary)
                self.journal.finish_children(self.run_id, status="finished" if status != "failed" else "failed")

    def result(self) -> OptimizationResult:
        rows = [self.step_rows[key] for key in sorted(self.step_rows)]
        if self.journal is not None:
            return OptimizationResult.from_journal(self.journal, self.run_id)
        return build_result(
            run_id=self.run_id,
            name=self.name,
            config=self.config,
            status=self.status,
            status_detail=self.detail,
            step_rows=rows,
            candidate_rows=list(self.candidate_rows.values()),
            trials=memory_trials(self.evaluator.rows_by_experiment()),
            spending=self.evaluator.spending.to_summary(),
            journal=None,
            confirmation=self.confirmation,
        )

"""``dx.evaluate``: run a program over a dataset in parallel, journal every trial, summarise.

An evaluation is one :class:`~dspex_lab.session.Experiment`: its record is built, it is started
(or resumed, under the one identity rule), its trials run through the engine and are recorded as
they finish, and its result is read back from it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dspy
import pandas as pd

from dspex_lab import metrics
from dspex_lab.data import Dataset
from dspex_lab.engine import Budget, RetryPolicy, RunPolicy, RunReport, TrialRunner
from dspex_lab.errors import DspexLabWarning, ExecutionError, JournalError, ProgramSpecError, UnderpoweredWarning
from dspex_lab.evaluation._power import TARGET_POWER, power_advice
from dspex_lab.evaluation._result import EvaluationResult
from dspex_lab.journal import ExperimentRecord, JournalStore
from dspex_lab.program import ModuleType, Program, resolve_module
from dspex_lab.session import (
    Context,
    Experiment,
    RunInterrupted,
    current_context,
    environment,
    experiment_record,
    lm_state,
    metric_name,
    plan_trials,
)
from dspex_lab.trace import SpanRecorder
from dspex_lab.trace.redaction import redact

__all__ = ["environment", "evaluate", "imports_needed"]

Metric = Callable[[dspy.Example, Any], Any]
# What an experiment record says of a program: its name, fingerprint and spec (None for a live module).
ProgramIdentity = tuple[str, str | None, dict[str, Any] | None]


def _as_dataset(dataset: Dataset | Sequence[dspy.Example]) -> Dataset:
    """Return ``dataset`` as a :class:`Dataset`, refusing another type or an empty one."""
    if isinstance(dataset, Dataset):
        data = dataset
    elif isinstance(dataset, Sequence) and not isinstance(dataset, (str, bytes)):
        data = Dataset(list(dataset))
    else:
        raise ExecutionError(
            f"dataset must be a dx.Dataset or a sequence of dspy.Example, got {type(dataset).__name__}"
        )
    if len(data) == 0:
        raise ExecutionError(f"dataset {data.name or ''!s} is empty: there is nothing to evaluate".replace("  ", " "))
    return data


# Modules every installation has: a package never needs a user's --import for them.
_BUILT_IN_MODULES = ("dspy", "dspex_lab", "builtins")


def imports_needed(program: Program | dspy.Module, metric: Metric) -> dict[str, list[str]]:
    """Return the Python modules a re-run must import first: the program's custom modules and the metric's."""

    def custom(module: str) -> bool:
        return bool(module) and not module.startswith("__") and module.split(".")[0] not in _BUILT_IN_MODULES

    if isinstance(program, Program):
        names = [program.module]
        names += [
            choice
            for variable in program.variables.values()
            if isinstance(variable, ModuleType)
            for choice in variable.choices
        ]
        program_modules = sorted({resolve_module(name).__module__ for name in names} - {""})
    else:
        program_modules = [type(program).__module__]
    metric_module = getattr(metric, "__module__", "") or ""
    return {
        "program": [module for module in program_modules if custom(module)],
        "metric": [metric_module] if custom(metric_module) else [],
    }


def _program_parts(program: Program | dspy.Module, lm: dspy.BaseLM) -> tuple[dspy.Module, ProgramIdentity]:
    """Return the module to run and what the record says of the program: (name, fingerprint, spec)."""
    if isinstance(program, Program):
        return program.build(lm=lm), (program.name, program.fingerprint, program.to_dict())
    if isinstance(program, dspy.Module):
        # A live module has no spec; record what identifies it without pretending it is reproducible.
        return program, (type(program).__name__, None, None)
    raise ProgramSpecError(f"evaluate() takes a dx.Program or a dspy.Module, got {type(program).__name__}")


def _tqdm_subscriber() -> Callable[[Any], None]:
    # tqdm, or the display installed for notebooks (see evaluate/_progress.py).
    from dspex_lab.evaluation._progress import progress_display

    return progress_display("evaluation")


def _is_priced(lm: Any) -> bool:
    try:
        from dspex_lab.providers import is_priced
    except ImportError:  # pragma: no cover - an lm layer without pricing: nothing can be checked up front
        return True
    return is_priced(lm)


def _policy(
    repeats: int,
    metric: Metric,
    *,
    timeout: float | None,
    retries: int,
    max_errors: int | float | None,
    budget: Budget | None,
) -> RunPolicy:
    """Return the run's policy, once the repeats and the metric are checked too (before anything runs)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ExecutionError(f"repeats must be a positive integer, got {repeats!r}")
    if not callable(metric):
        raise ExecutionError(f"metric must be callable as metric(example, prediction), got {metric!r}")
    if budget is not None and not isinstance(budget, Budget):
        raise ExecutionError(f"budget must be a dx.Budget (limits and a pilot), got {type(budget).__name__}")
    try:
        return RunPolicy(timeout=timeout, retry=RetryPolicy(retries=retries), max_errors=max_errors, budget=budget)
    except ValueError as error:
        raise ExecutionError(str(error)) from error


def evaluate(
    program: Program | dspy.Module,
    dataset: Dataset | Sequence[dspy.Example],
    *,
    metric: Metric | str,
    name: str | None = None,
    repeats: int = 1,
    timeout: float | None = None,
    resume: str | None = None,
    retries: int = 3,
    max_errors: int | float | None = None,
    progress: bool | Callable[[Any], None] = True,
    subscribers: Sequence[Callable[[Any], None]] = (),
    cluster: str | None = None,
    budget: Budget | None = None,
    trace: bool = False,
) -> EvaluationResult:
    """Evaluate ``program`` on ``dataset`` with ``metric``, journaling every trial as it finishes.

    Args:
        program: a :class:`~dspex_lab.Program` (hydrated once) or a live ``dspy.Module``.
        dataset: a :class:`~dspex_lab.Dataset` or any sequence of ``dspy.Example`` (not empty).
        metric: ``metric(example, prediction)`` returning a finite number or bool (or a
            ``dspy.Prediction(score=..., feedback=...)``, whose feedback text is recorded with the trial),
            or the name of a shipped metric (``dx.metrics.NAMES``: ``"exact_match"``,
            ``"answer_exact_match"``, ``"semantic_f1"``, ...); if it raises or returns NaN/±inf, the trial
            is recorded as an error at the ``metric`` stage.
        name: the experiment's name (defaults to the program's).
        repeats: samples per example, each with its own rollout id; scores are averaged per example.
        timeout: seconds a trial may take, retries included; past it the trial is cancelled (no
            further LM request) and recorded as timed out with the spans captured so far.
        resume: an interrupted experiment's id; only its missing trials run (same program, dataset,
            repeats, LM and metric required).
        retries: retries of transient failures (rate limits, timeouts) per trial; the only retry
            layer (the LM's own client retries are turned off for the run).
        max_errors: an error budget (a count, or a fraction of planned trials); past it the run stops.
        progress: show a progress bar (True), or a callable receiving the run's events.
        subscribers: further event subscribers (widgets, loggers).
        cluster: an example field whose values group examples (e.g. a source document); the standard
            error and interval are then clustered.
        budget: spending limits; a pilot of ``budget.pilot`` trials projects the run's cost first,
            a warning comes at 80% of a limit and the run stops cleanly at 100%. A dollar limit on an
            LM without a known price is refused before the first call.
        trace: capture every trial's span tree (modules, adapter, LM calls, metric) into the journal;
            read it back with ``result.trace(trial_id)``, and from a journal file with
            ``journal.trace(experiment_id, trial_id)`` or ``dspex trace``. Without a journal file
            (``dx.Context(journal=False)``) the spans are kept in the context's in-memory journal.

    Returns:
        The result; if the run is interrupted (KeyboardInterrupt) the finished trials are journaled,
        the experiment is marked interrupted and :class:`~dspex_lab.session.RunInterrupted` (a
        KeyboardInterrupt) is raised, naming the id to resume and carrying the partial result.
        If the journal cannot take the trials, they are saved to a private file (a warning says where)
        and the result is still returned.
    """
    metric = metrics.resolve(metric)
    policy = _policy(repeats, metric, timeout=timeout, retries=retries, max_errors=max_errors, budget=budget)
    context = current_context()
    data = _as_dataset(dataset)
    module, described = _program_parts(program, context.lm)
    options = {"repeats": repeats, "timeout": timeout, "retries": retries, "max_errors": max_errors}
    options |= {"cluster": cluster, "trace": trace, "budget": budget.limits() if budget is not None else None}
    clusters = _cluster_keys(data, cluster)
    run = _Run(module=module, metric=metric, repeats=repeats, data=data, policy=policy, trace=trace, clusters=clusters)
    record = experiment_record(
        "evaluation",
        name or described[0],
        program=described,
        data=data,
        metric=metric_name(metric),
        config=_run_config(options, context, imports_needed(program, metric)),
        n_planned=len(data) * repeats,
        store_examples=resume is None,  # a resumed run's examples are stored already
    )
    if resume is None:
        _warn_planned_power(context.journal, record.name, len(data))
    return _execute(run, record, context, resume=resume, sinks=_sinks(progress, subscribers))


@dataclass(frozen=True)
class _Run:
    """What an evaluation runs: the built module, its metric, the planned trials and how to run them."""

    module: dspy.Module
    metric: Metric
    repeats: int
    data: Dataset
    policy: RunPolicy
    trace: bool
    clusters: pd.Series | None


def _execute(
    run: _Run,
    record: ExperimentRecord,
    context: Context,
    *,
    resume: str | None,
    sinks: Sequence[Callable[[Any], None]],
) -> EvaluationResult:
    """Start (or resume) the experiment ``record`` describes, run its trials, finish it and return its result."""
    with context.journal.hold():
        experiment = _begin(context.journal, record, resume)
        recorder = SpanRecorder() if run.trace else None
        runner = TrialRunner(
            run.module,
            run.metric,
            lm=context.lm,
            retry=run.policy.retry,
            recorder=recorder,
            span_sink=experiment.span_sink,
        )
        with experiment:  # leaving flushes its trials to the journal, or saves them aside if it refuses them
            report = experiment.run(
                plan_trials(run.data, run.repeats),
                runner,
                executor=context.executor,
                policy=run.policy,
                sinks=sinks,
                is_priced=_is_priced,
            )
        result = _result(experiment, report, record, run, repeats_differ=runner.repeats_differ)
        experiment.finish(result.status, detail=result.status_detail, summary=result.to_summary())
    _say_how_it_ended(experiment, report, result)
    return result


def _run_config(options: dict[str, Any], context: Context, imports: dict[str, list[str]]) -> dict[str, Any]:
    """Return the run's settings as the journal keeps them (redacted): ``options``, the threads, the LM, the imports."""
    lm = context.lm
    config = {**options, "threads": context.threads, "lm": getattr(lm, "model", repr(lm)), "lm_state": lm_state(lm)}
    return redact({**config, "imports": imports})


def _begin(journal: JournalStore, record: ExperimentRecord, resume: str | None) -> Experiment:
    """Start the experiment ``record`` describes, or resume ``resume`` once it is checked to be the same run."""
    if resume is None:
        return Experiment.start(journal, record)
    return Experiment.resume(journal, resume, record)


def _sinks(
    progress: bool | Callable[[Any], None], subscribers: Sequence[Callable[[Any], None]]
) -> list[Callable[[Any], None]]:
    """Return who hears the run's events: the progress display (or the callable given), then ``subscribers``."""
    shown: list[Callable[[Any], None]] = []
    if progress is True:
        shown.append(_tqdm_subscriber())
    elif callable(progress):
        shown.append(progress)
    return [*shown, *subscribers]


def _result(
    experiment: Experiment, report: RunReport, record: ExperimentRecord, run: _Run, *, repeats_differ: bool
) -> EvaluationResult:
    """Return the result of ``experiment`` (every recorded trial, a resumed run's included) once its run ended."""
    trials = experiment.trials()
    status, detail = report.status, report.detail
    if status == "finished" and len(trials) and not (trials["status"] == "ok").any():
        # Nothing was scored: not a finished measurement, whatever the engine got through.
        status, detail = "failed", f"every one of its {len(trials)} trials failed; no trial scored"
    return EvaluationResult(
        experiment_id=experiment.id,
        name=experiment.name,
        status=status,
        trials=trials,
        program=record.program_spec,
        dataset=record.dataset_manifest,
        metric=record.metric,
        wall_seconds=report.wall_seconds,
        clusters=run.clusters,
        status_detail=detail,
        spending=report.spending,
        journal=experiment.journal,
        # Spans reach the journal with their trials: saved aside, the trials have no traces to read.
        traced=run.trace and experiment.saved,
        identical_repeats=run.repeats > 1 and not repeats_differ,
    )


def _say_how_it_ended(experiment: Experiment, report: RunReport, result: EvaluationResult) -> None:
    """Raise KeyboardInterrupt naming the id to resume after an interrupt; warn of an early stop or metric errors."""
    if report.status == "interrupted":
        kept = f"recorded in {experiment.journal.location}" if experiment.saved else f"saved to {experiment.fallback}"
        raise RunInterrupted(
            f"evaluation {experiment.id} interrupted after {len(report.results)} new trials ({kept}); "
            f"resume with dx.evaluate(..., resume={experiment.id!r})",
            experiment_id=experiment.id,
            kind="evaluation",
            result=result,
        )
    if report.detail:
        warnings.warn(f"evaluation {experiment.id} stopped early: {report.detail}", DspexLabWarning, stacklevel=3)
    if result.n_metric_errors:
        kinds = ", ".join(f"{kind} x{count}" if count > 1 else kind for kind, count in result.metric_errors.items())
        warnings.warn(
            f"evaluation {result.name!r}: the metric raised on {result.n_metric_errors} of {result.n_trials} trials: "
            f"{kinds} (the program answered; these trials are metric errors, counted apart from program errors "
            "and not averaged in; see result.table() where error_stage == 'metric')",
            DspexLabWarning,
            stacklevel=3,
        )


def _warn_planned_power(journal: JournalStore, name: str, n: int) -> None:
    """Warn up front when a registered hypothesis compares this evaluation on too few examples for its effect."""
    try:
        hypotheses = journal.hypothesis_rows()
    except JournalError:  # the run itself will say what is wrong with the journal
        return
    for row in hypotheses:
        if row.get("status") != "registered" or name not in (row.get("baseline"), row.get("treatment")):
            continue
        one_sided = row.get("direction") != "two-sided"
        alpha = float(row["alpha"])
        # A one-sided test at alpha has the power of a two-sided one at 2 alpha (as Hypothesis.decide computes it).
        advice = power_advice(
            n,
            what=f"evaluation {name!r} (hypothesis {row['id']})",
            alpha=min(2 * alpha, 0.5) if one_sided else alpha,
            gain=float(row["min_effect"]),
            power=TARGET_POWER,
        )
        if advice is not None:
            warnings.warn(
                advice + f" (its min_effect){'; one-sided alpha ' + format(alpha, 'g') if one_sided else ''}",
                UnderpoweredWarning,
                stacklevel=3,
            )
            return


def _cluster_keys(data: Dataset, cluster: str | None) -> pd.Series | None:
    """Return each example's cluster key (checked before the run, so a wrong field costs no LM call)."""
    if cluster is None:
        return None
    missing = [example_id for example_id, example in zip(data.example_ids, data, strict=True) if cluster not in example]
    if missing:
        raise ExecutionError(
            f"cluster={cluster!r}: {len(missing)} examples have no such field (first: {missing[0]}); "
            f"fields present: {sorted(data[0].keys())}"
        )
    return pd.Series([str(example[cluster]) for example in data], index=list(data.example_ids), name=cluster)

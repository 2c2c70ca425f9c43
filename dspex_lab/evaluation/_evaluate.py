"""``dx.evaluate``: run a program over a dataset in parallel, journal every trial, summarise."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dspy
import pandas as pd

from dspex_lab.data import Dataset
from dspex_lab.engine import (
    Budget,
    RetryPolicy,
    RunPolicy,
    TrialFinished,
    TrialRunner,
    TrialTask,
    run_trials,
)
from dspex_lab.errors import DspexLabWarning, ExecutionError, JournalError, ProgramSpecError, UnderpoweredWarning
from dspex_lab.evaluation._power import TARGET_POWER, power_advice
from dspex_lab.evaluation._result import EvaluationResult
from dspex_lab.journal import DuckDBJournal, ExperimentRecord, TrialWriter
from dspex_lab.journal._schema import trials_frame
from dspex_lab.program import ModuleType, Program, resolve_module
from dspex_lab.session import current_context, environment, plan_trials
from dspex_lab.session import lm_state as _lm_state
from dspex_lab.session import metric_name as _metric_name
from dspex_lab.session import stored_examples as _stored_examples
from dspex_lab.trace import SpanRecorder
from dspex_lab.trace.redaction import redact

__all__ = ["environment", "evaluate", "imports_needed"]

Metric = Callable[[dspy.Example, Any], Any]


def _as_dataset(dataset: Dataset | Sequence[dspy.Example]) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, Sequence) and not isinstance(dataset, (str, bytes)):
        return Dataset(list(dataset))
    raise ExecutionError(f"dataset must be a dx.Dataset or a sequence of dspy.Example, got {type(dataset).__name__}")


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


def _program_parts(
    program: Program | dspy.Module, lm: dspy.BaseLM
) -> tuple[dspy.Module, dict[str, Any] | None, str, str | None]:
    if isinstance(program, Program):
        return program.build(lm=lm), program.to_dict(), program.name, program.fingerprint
    if isinstance(program, dspy.Module):
        # A live module has no spec; record what identifies it without pretending it is reproducible.
        return program, None, type(program).__name__, None
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


def _policy(timeout: float | None, retries: int, max_errors: int | float | None, budget: Budget | None) -> RunPolicy:
    try:
        return RunPolicy(timeout=timeout, retry=RetryPolicy(retries=retries), max_errors=max_errors, budget=budget)
    except ValueError as error:
        raise ExecutionError(str(error)) from error


def evaluate(
    program: Program | dspy.Module,
    dataset: Dataset | Sequence[dspy.Example],
    *,
    metric: Metric,
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
        metric: ``metric(example, prediction)`` returning a finite number or bool; if it raises or
            returns NaN/±inf, the trial is recorded as an error at the ``metric`` stage.
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
            read it back with ``journal.trace(experiment_id, trial_id)`` or ``dspex trace``.

    Returns:
        The result; if the run is interrupted (KeyboardInterrupt) the finished trials are journaled,
        the experiment is marked interrupted and KeyboardInterrupt is raised again naming the id to resume.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ExecutionError(f"repeats must be a positive integer, got {repeats!r}")
    if not callable(metric):
        raise ExecutionError(f"metric must be callable as metric(example, prediction), got {metric!r}")
    policy = _policy(timeout, retries, max_errors, budget)
    context = current_context()
    journal = context.journal
    data = _as_dataset(dataset)
    if len(data) == 0:
        raise ExecutionError(f"dataset {data.name or ''!s} is empty: there is nothing to evaluate".replace("  ", " "))
    if trace and journal is None:
        raise ExecutionError(
            "trace=True stores each trial's span tree in the journal, and this evaluation has none: "
            "give dx.Context a journal (a path, or the default instead of journal=False) to keep the traces"
        )
    module, spec, program_name, fingerprint = _program_parts(program, context.lm)
    planned = plan_trials(data, repeats)
    if resume is None:
        _warn_planned_power(journal, name or program_name, len(data))
    config = redact(
        {
            "repeats": repeats,
            "timeout": timeout,
            "retries": retries,
            "max_errors": max_errors,
            "cluster": cluster,
            "trace": trace,
            "budget": budget.limits() if budget is not None else None,
            "threads": context.threads,
            "lm": getattr(context.lm, "model", repr(context.lm)),
            "lm_state": _lm_state(context.lm),
            "imports": imports_needed(program, metric),
        }
    )
    with journal.hold() if journal is not None else contextlib.nullcontext():
        start = _start_record(
            journal, resume, name or program_name, program_name, spec, fingerprint, data, metric, config, planned
        )
        tasks = [task for task in planned if (task.example_id, task.repeat) not in start.done_before]
        writer = journal.writer(start.experiment_id, create=start.record) if start.experiment_id else None
        rows: list[dict[str, Any]] = []
        sinks: list[Callable[[Any], None]] = [_RowSink(rows, writer)]
        if progress is True:
            sinks.append(_tqdm_subscriber())
        elif callable(progress):
            sinks.append(progress)
        sinks.extend(subscribers)
        runner = TrialRunner(
            module,
            metric,
            lm=context.lm,
            retry=policy.retry,
            recorder=SpanRecorder() if trace else None,
            span_sink=writer.add_spans if writer is not None else None,
        )
        try:
            report = run_trials(
                tasks,
                runner,
                executor=context.executor,
                policy=policy,
                sinks=sinks,
                run_id=start.experiment_id or "memory",
                name=start.name,
                already_done=len(start.done_before),
                is_priced=_is_priced,
            )
        finally:
            saved_elsewhere = _close_writer(writer, rows, start.experiment_id)
        stored = journal is not None and start.experiment_id is not None and saved_elsewhere is None
        trials = journal.trials(start.experiment_id) if stored and start.done_before else _frame(rows)
        status, detail = report.status, report.detail
        if status == "finished" and len(trials) and not (trials["status"] == "ok").any():
            # Nothing was scored: not a finished measurement, whatever the engine got through.
            status, detail = "failed", f"every one of its {len(trials)} trials failed; no trial scored"
        result = EvaluationResult(
            experiment_id=start.experiment_id,
            name=start.name,
            status=status,
            trials=trials,
            program=spec,
            dataset=data.manifest(),
            metric=_metric_name(metric),
            wall_seconds=report.wall_seconds,
            clusters=_cluster_keys(data, cluster),
            status_detail=detail,
            spending=report.spending,
            journal=journal if stored else None,
            traced=trace and stored,
            identical_repeats=repeats > 1 and not runner.repeats_differ,
        )
        if stored:
            try:
                journal.finish_experiment(  # type: ignore[union-attr]
                    start.experiment_id, status=status, detail=detail, summary=result.to_summary()
                )
            except JournalError as error:
                warnings.warn(
                    f"the trials of {start.experiment_id} are journaled, but its final status could not be: {error}",
                    DspexLabWarning,
                    stacklevel=2,
                )
    if report.status == "interrupted":
        raise KeyboardInterrupt(
            f"evaluation {start.experiment_id} interrupted after {len(report.results)} new trials (all journaled); "
            f"resume with dx.evaluate(..., resume={start.experiment_id!r})"
        )
    if report.detail:
        warnings.warn(f"evaluation {start.experiment_id} stopped early: {report.detail}", DspexLabWarning, stacklevel=2)
    if result.n_metric_errors:
        kinds = ", ".join(f"{kind} x{count}" if count > 1 else kind for kind, count in result.metric_errors.items())
        warnings.warn(
            f"evaluation {start.name!r}: the metric raised on {result.n_metric_errors} of {result.n_trials} trials: "
            f"{kinds} (the program answered; these trials are metric errors, counted apart from program errors "
            "and not averaged in; see result.table() where error_stage == 'metric')",
            DspexLabWarning,
            stacklevel=2,
        )
    return result


def _warn_planned_power(journal: DuckDBJournal | None, name: str, n: int) -> None:
    """Warn up front when a registered hypothesis compares this evaluation on too few examples for its effect."""
    if journal is None:
        return
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


class _RowSink:
    """Keep every recorded trial's row for the result, and stream it to the journal writer."""

    def __init__(self, rows: list[dict[str, Any]], writer: TrialWriter | None) -> None:
        self.rows = rows
        self.writer = writer

    def __call__(self, event: Any) -> None:
        if isinstance(event, TrialFinished):
            row = event.result.to_row()
            self.rows.append(row)
            if self.writer is not None:
                self.writer.add(row)


@dataclass(frozen=True)
class _Start:
    experiment_id: str | None
    name: str
    record: ExperimentRecord | None
    done_before: frozenset[tuple[str, int]]


def _start_record(
    journal: DuckDBJournal | None,
    resume: str | None,
    name: str,
    program_name: str,
    spec: dict[str, Any] | None,
    fingerprint: str | None,
    data: Dataset,
    metric: Metric,
    config: dict[str, Any],
    planned: Sequence[TrialTask],
) -> _Start:
    """Resume an experiment (checked to be the same run) or describe a new one for the writer to insert."""
    if resume is not None:
        if journal is None:
            raise ExecutionError("resume needs a journal: use dx.Context(journal=...) with the run's journal")
        previous = journal.experiment(resume)
        if previous["status"] in ("running",):
            raise ExecutionError(f"experiment {resume} is still running in process {previous['pid']}")
        _check_resumable(previous, fingerprint, data, config, _metric_name(metric))
        done = frozenset(journal.finished_keys(resume))
        journal.claim_experiment(resume)
        return _Start(resume, previous["name"], None, done)
    if journal is None:
        return _Start(None, name, None, frozenset())
    # Inserted by the writer's thread, so the first trials start without waiting for the file.
    record = ExperimentRecord(
        kind="evaluation",
        name=name,
        program_name=program_name,
        program_fingerprint=fingerprint,
        program_spec=spec,
        dataset_name=data.name,
        dataset_fingerprint=data.fingerprint,
        dataset_manifest=data.manifest(),
        metric=_metric_name(metric),
        config=config,
        environment=environment(),
        n_planned=len(planned),
        examples=_stored_examples(data),
    )
    return _Start(record.id, name, record, frozenset())


def _close_writer(writer: TrialWriter | None, rows: list[dict[str, Any]], experiment_id: str | None) -> Path | None:
    """Flush the journal writer; if the journal cannot take the trials, save them beside it and say where."""
    if writer is None:
        return None
    try:
        writer.close()
        return None
    except JournalError as error:
        # A new file only this user can read (mkstemp: O_EXCL, mode 0600), never one planted in the shared temp folder.
        descriptor, name = tempfile.mkstemp(prefix=f"dspex-unsaved-{experiment_id}-", suffix=".jsonl")
        fallback = Path(name)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False, default=repr) + "\n")
        warnings.warn(
            f"the journal could not be written ({error}); the run's {len(rows)} trials are in the returned "
            f"result and were saved to {fallback}",
            DspexLabWarning,
            stacklevel=3,
        )
        return fallback


def _cluster_keys(data: Dataset, cluster: str | None) -> pd.Series | None:
    if cluster is None:
        return None
    missing = [example_id for example_id, example in zip(data.example_ids, data, strict=True) if cluster not in example]
    if missing:
        raise ExecutionError(
            f"cluster={cluster!r}: {len(missing)} examples have no such field (first: {missing[0]}); "
            f"fields present: {sorted(data[0].keys())}"
        )
    return pd.Series([str(example[cluster]) for example in data], index=list(data.example_ids), name=cluster)


def _check_resumable(
    previous: dict[str, Any], fingerprint: str | None, data: Dataset, config: dict[str, Any], metric: str
) -> None:
    if fingerprint is None or previous["program_fingerprint"] != fingerprint:
        raise ExecutionError(
            f"cannot resume {previous['id']}: it ran program {previous['program_fingerprint']!s:.12}, "
            f"this is {fingerprint!s:.12}; resume with the same dx.Program"
        )
    if previous["dataset_fingerprint"] != data.fingerprint:
        raise ExecutionError(
            f"cannot resume {previous['id']}: it ran on dataset {previous['dataset_fingerprint']!s:.12}, "
            f"this is {data.fingerprint:.12}; resume with the same dataset"
        )
    before = previous.get("config") or {}
    previous_repeats = before.get("repeats", 1)
    if previous_repeats != config["repeats"]:
        raise ExecutionError(
            f"cannot resume {previous['id']}: it ran with repeats={previous_repeats}, not {config['repeats']}"
        )
    # Mixing two LMs or two metrics in one experiment would make its statistics meaningless.
    if "lm" in before and (before.get("lm"), before.get("lm_state")) != (config["lm"], config["lm_state"]):
        raise ExecutionError(
            f"cannot resume {previous['id']}: it ran with LM {before.get('lm')!r}"
            + (" (other settings)" if before.get("lm") == config["lm"] else "")
            + f", this run has {config['lm']!r}; resume with the same LM"
        )
    if previous.get("metric") is not None and previous["metric"] != metric:
        raise ExecutionError(
            f"cannot resume {previous['id']}: it was scored with metric {previous['metric']!r}, not {metric!r}"
        )


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = trials_frame(rows, experiment_id=None)
    return frame.sort_values(["example_index", "repeat"], kind="stable").reset_index(drop=True)

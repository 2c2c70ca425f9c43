"""``dx.evaluate``: run a program over a dataset in parallel, journal every trial, summarise."""

from __future__ import annotations

import contextlib
import functools
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import dspy
import pandas as pd

from dspex_lab.data import Dataset
from dspex_lab.engine import (
    EventBus,
    RetryPolicy,
    RunFinished,
    RunStarted,
    RunStatus,
    TrialFinished,
    TrialResult,
    TrialRunner,
    TrialTask,
)
from dspex_lab.errors import DspexLabWarning, ExecutionError, ProgramSpecError
from dspex_lab.evaluate._budget import Budget, BudgetTracker
from dspex_lab.evaluate._context import current_context
from dspex_lab.evaluate._result import EvaluationResult
from dspex_lab.journal import ExperimentRecord
from dspex_lab.journal._schema import trials_frame
from dspex_lab.program import Program
from dspex_lab.trace import SpanRecorder

__all__ = ["environment", "evaluate"]

Metric = Callable[[dspy.Example, Any], Any]


@functools.cache
def _environment() -> tuple[tuple[str, str], ...]:
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ("dspy", "dspex_lab", "duckdb", "numpy", "scipy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return tuple(versions.items())


def environment() -> dict[str, str]:
    """Return the versions that make a result reproducible (read once per process)."""
    return dict(_environment())


def _lm_state(lm: dspy.BaseLM) -> dict[str, Any] | None:
    # dump_state leaves out API keys; an LM that cannot describe itself is recorded by model only.
    try:
        return lm.dump_state()
    except Exception:
        return None


def _as_dataset(dataset: Dataset | Sequence[dspy.Example]) -> Dataset:
    if isinstance(dataset, Dataset):
        return dataset
    if isinstance(dataset, Sequence) and not isinstance(dataset, (str, bytes)):
        return Dataset(list(dataset))
    raise ExecutionError(f"dataset must be a dx.Dataset or a sequence of dspy.Example, got {type(dataset).__name__}")


def _metric_name(metric: Metric) -> str:
    module = getattr(metric, "__module__", "") or ""
    name = getattr(metric, "__name__", None) or type(metric).__name__
    return f"{module}.{name}" if module and not module.startswith("__") else name


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
    from dspex_lab.evaluate._progress import TqdmProgress

    return TqdmProgress()


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
        dataset: a :class:`~dspex_lab.Dataset` or any sequence of ``dspy.Example``.
        metric: ``metric(example, prediction)`` returning a number or bool; if it raises, the
            trial is recorded as an error at the ``metric`` stage.
        name: the experiment's name (defaults to the program's).
        repeats: samples per example, each with its own rollout id; scores are averaged per example.
        timeout: seconds after which a trial is abandoned and retried (then recorded as an error).
        resume: an interrupted experiment's id; only its missing trials run.
        retries: retries of transient failures (rate limits, timeouts) per trial.
        max_errors: an error budget (a count, or a fraction of planned trials); past it the run stops.
        progress: show a progress bar (True), or a callable receiving the run's events.
        subscribers: further event subscribers (widgets, loggers).
        cluster: an example field whose values group examples (e.g. a source document); the standard
            error and interval are then clustered.
        budget: spending limits; a pilot of ``budget.pilot`` trials projects the run's cost first,
            a warning comes at 80% of a limit and the run stops cleanly at 100%.
        trace: capture every trial's span tree (modules, adapter, LM calls, metric) into the journal;
            read it back with ``journal.trace(experiment_id, trial_id)`` or ``dspex trace``.

    Returns:
        The result; if the run is interrupted (KeyboardInterrupt) the finished trials are journaled,
        the experiment is marked interrupted and KeyboardInterrupt is raised again naming the id to resume.
    """
    if not isinstance(repeats, int) or repeats < 1:
        raise ExecutionError(f"repeats must be a positive integer, got {repeats!r}")
    if timeout is not None and timeout <= 0:
        raise ExecutionError(f"timeout must be positive seconds, got {timeout!r}")
    if not callable(metric):
        raise ExecutionError(f"metric must be callable as metric(example, prediction), got {metric!r}")
    context = current_context()
    journal = context.journal
    data = _as_dataset(dataset)
    module, spec, program_name, fingerprint = _program_parts(program, context.lm)
    run_name = name or program_name
    planned = [
        TrialTask(index=index, example_id=example_id, example=example, repeat=repeat)
        for index, (example_id, example) in enumerate(zip(data.example_ids, data, strict=True))
        for repeat in range(repeats)
    ]
    clusters = _cluster_keys(data, cluster)
    error_budget = (
        None
        if max_errors is None
        else (int(max_errors * len(planned)) if isinstance(max_errors, float) and max_errors < 1 else int(max_errors))
    )
    config = {
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
    }

    if trace and journal is None:
        raise ExecutionError(
            "trace=True stores each trial's span tree in the journal, and this evaluation has none: "
            "give dx.Context a journal (a path, or the default instead of journal=False) to keep the traces"
        )

    with journal.hold() if journal is not None else contextlib.nullcontext():
        experiment_id: str | None = None
        new_record: ExperimentRecord | None = None
        manifest = data.manifest()
        done_before: set[tuple[str, int]] = set()
        if resume is not None:
            if journal is None:
                raise ExecutionError("resume needs a journal: use dx.Context(journal=...) with the run's journal")
            previous = journal.experiment(resume)
            if previous["status"] in ("running",):
                raise ExecutionError(f"experiment {resume} is still running in process {previous['pid']}")
            _check_resumable(previous, fingerprint, data, repeats)
            experiment_id = resume
            done_before = journal.finished_keys(resume)
            journal.claim_experiment(resume)
            run_name = previous["name"]
        elif journal is not None:
            # Inserted by the writer's thread, so the first trials start without waiting for the file.
            new_record = ExperimentRecord(
                kind="evaluation",
                name=run_name,
                program_name=program_name,
                program_fingerprint=fingerprint,
                program_spec=spec,
                dataset_name=data.name,
                dataset_fingerprint=data.fingerprint,
                dataset_manifest=manifest,
                metric=_metric_name(metric),
                config=config,
                environment=environment(),
                n_planned=len(planned),
                examples=_stored_examples(data),
            )
            experiment_id = new_record.id
        tasks = [task for task in planned if (task.example_id, task.repeat) not in done_before]

        bus = EventBus(list(subscribers))
        if progress is True:
            bus.subscribe(_tqdm_subscriber())
        elif callable(progress):
            bus.subscribe(progress)
        writer = (
            journal.writer(experiment_id, create=new_record)
            if journal is not None and experiment_id is not None
            else None
        )
        results: list[TrialResult] = []
        rows: list[dict[str, Any]] = []
        counters = {"errors": 0}
        run_id = experiment_id or "memory"

        def on_result(result: TrialResult) -> bool:
            spans = result.spans
            if spans:
                # The spans now belong to the writer; keeping them here would hold every trial's prompts to the
                # end. The runner built this result for this call alone, so it is emptied in place rather than
                # copied with dataclasses.replace, which costs more than the rest of this function.
                object.__setattr__(result, "spans", ())
            results.append(result)
            row = result.to_row()
            rows.append(row)
            if result.status == "error":
                counters["errors"] += 1
            if writer is not None:
                writer.add(row, spans=spans)
            bus.emit(TrialFinished(run_id, result, len(results), len(tasks), counters["errors"]))
            if spending is not None and spending.add(result):
                return True
            return error_budget is not None and counters["errors"] > error_budget

        spending = BudgetTracker(budget) if budget is not None else None
        runner = TrialRunner(
            module,
            metric,
            lm=context.lm,
            retry=RetryPolicy(retries=retries),
            recorder=SpanRecorder() if trace else None,
        )
        bus.emit(RunStarted(run_id, run_name, len(planned), len(done_before)))
        started = time.perf_counter()
        try:
            phases = [tasks]
            if spending is not None and len(tasks) > budget.pilot:  # type: ignore[union-attr]
                phases = [tasks[: budget.pilot], tasks[budget.pilot :]]  # type: ignore[union-attr]
            status = RunStatus.FINISHED
            for position, phase in enumerate(phases):
                status = context.executor.run(phase, runner, on_result=on_result, timeout=timeout, retry=runner.retry)
                if status != RunStatus.FINISHED:
                    break
                if position == 0 and spending is not None and len(phases) > 1:
                    spending.project(len(tasks))
        finally:
            wall = time.perf_counter() - started
            if writer is not None:
                writer.close()
        detail = None
        if status == RunStatus.STOPPED:
            detail = (
                spending.exceeded
                if spending is not None and spending.exceeded
                else f"error budget: {counters['errors']} errors > {error_budget}"
            )
        final_status = {RunStatus.FINISHED: "finished", RunStatus.INTERRUPTED: "interrupted"}.get(status, "stopped")
        bus.emit(RunFinished(run_id, final_status, len(results), len(tasks), counters["errors"], wall))

        if journal is not None and experiment_id is not None and done_before:
            trials = journal.trials(experiment_id)
        else:
            trials = _frame(rows)
        result = EvaluationResult(
            experiment_id=experiment_id,
            name=run_name,
            status=final_status,
            trials=trials,
            program=spec,
            dataset=manifest,
            metric=_metric_name(metric),
            wall_seconds=wall,
            clusters=clusters,
            status_detail=detail,
            spending=spending.to_summary() if spending is not None else None,
            journal=journal,
            traced=trace,
        )
        if journal is not None and experiment_id is not None:
            journal.finish_experiment(experiment_id, status=final_status, detail=detail, summary=result.to_summary())
        if status == RunStatus.INTERRUPTED:
            raise KeyboardInterrupt(
                f"evaluation {experiment_id} interrupted after {len(results)} new trials (all journaled); "
                f"resume with dx.evaluate(..., resume={experiment_id!r})"
            )
        if detail:
            warnings.warn(f"evaluation {experiment_id} stopped early: {detail}", DspexLabWarning, stacklevel=2)
        return result


# Datasets up to this size are stored in the journal, so an experiment can be exported and re-run
# from the journal alone; larger ones are identified by fingerprint and source hash only.
MAX_STORED_EXAMPLES = 20_000


def _stored_examples(data: Dataset) -> tuple[tuple[str, dict[str, Any]], ...]:
    if len(data) > MAX_STORED_EXAMPLES:
        return ()
    stored = []
    for example_id, example in zip(data.example_ids, data, strict=True):
        fields = {key: value for key, value in example.toDict().items() if not key.startswith("dspy_")}
        stored.append((example_id, {"fields": fields, "inputs": list(data.inputs)}))
    return tuple(stored)


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


def _check_resumable(previous: dict[str, Any], fingerprint: str | None, data: Dataset, repeats: int) -> None:
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
    previous_repeats = (previous.get("config") or {}).get("repeats", 1)
    if previous_repeats != repeats:
        raise ExecutionError(f"cannot resume {previous['id']}: it ran with repeats={previous_repeats}, not {repeats}")


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = trials_frame(rows, experiment_id=None)
    return frame.sort_values(["example_index", "repeat"], kind="stable").reset_index(drop=True)

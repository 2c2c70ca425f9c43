"""The run primitive: trial tasks in, one frozen policy, events out to sinks.

Every workload runs its trials through :func:`run_trials`: an evaluation, an optimizer's
mini-batch screening and full evaluations, a DSPy optimizer's candidate evaluations. It
owns what used to be spread over ``evaluate()``: the pilot and projection of a cost
budget, the error budget, timeouts (through the executor), stopping, and emitting the
run's events. Sinks receive the events in order on the calling thread: the journal
writer, a progress bar, :class:`LiveStatistics`, widgets. Spans never travel on results:
the runner hands them to its span sink as each trial ends.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dspex_lab.engine._budget import Budget, BudgetTracker, SpendingCounter
from dspex_lab.engine._contract import Executor, RunStatus
from dspex_lab.engine._events import EventBus, RunFinished, RunStarted, TrialFinished
from dspex_lab.engine._trial import RetryPolicy, TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import DspexLabWarning, ExecutionError

__all__ = ["LiveStatistics", "RunPolicy", "RunReport", "run_trials"]

Sink = Callable[[Any], None]
logger = logging.getLogger("dspex_lab.engine")


@dataclass(frozen=True)
class RunPolicy:
    """How a run treats its trials; validated once, shared by every workload.

    Args:
        timeout: seconds a trial may take, all its attempts included (None: no limit).
        retry: the retry policy for transient failures (the only retry layer): every trial of the
            run retries under it, whatever the runner was made with (see :func:`run_trials`).
        max_errors: an error budget: a count, or a fraction (0 < f < 1) of the planned trials;
            past it the run stops.
        budget: spending limits, with a pilot that projects the run's cost first; or a
            :class:`~dspex_lab.engine.SpendingCounter` the run counts into and stops by (one shared
            by several runs under one budget: no pilot, no projection).
    """

    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    max_errors: int | float | None = None
    budget: Budget | SpendingCounter | None = None

    def __post_init__(self) -> None:
        timeout = self.timeout
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ExecutionError(f"timeout must be a finite positive number of seconds or None, got {timeout!r}")
        if not isinstance(self.retry, RetryPolicy):
            raise ExecutionError(f"retry must be a RetryPolicy, got {type(self.retry).__name__}")
        errors = self.max_errors
        if errors is not None and (
            isinstance(errors, bool)
            or not isinstance(errors, (int, float))
            or not math.isfinite(errors)
            or errors < 0
            or (isinstance(errors, float) and not errors.is_integer() and errors >= 1)
        ):
            raise ExecutionError(
                f"max_errors must be a count (an integer >= 0) or a fraction between 0 and 1, got {errors!r}"
            )
        if self.budget is not None and not isinstance(self.budget, (Budget, SpendingCounter)):
            raise ExecutionError(f"budget must be a dx.Budget (or a SpendingCounter), got {type(self.budget).__name__}")

    def error_budget(self, planned: int) -> int | None:
        """Return the number of errors the run tolerates before it stops."""
        if self.max_errors is None:
            return None
        if isinstance(self.max_errors, float) and self.max_errors < 1:
            return int(self.max_errors * planned)
        return int(self.max_errors)


@dataclass(frozen=True)
class RunReport:
    """How a run ended and what it produced (the results in completion order).

    ``stuck_threads`` counts the threads of trials given up on that are still running in this
    process when the run ends (thread executor: code that cannot be cancelled, such as a
    metric that never returns; they are capped, see :class:`ThreadExecutor`), over all the
    executor's runs. ``replaced_workers`` counts the process or Dask workers this run had
    replaced because such a thread was stuck in them.
    """

    status: str
    results: tuple[TrialResult, ...]
    detail: str | None
    wall_seconds: float
    n_errors: int
    spending: dict[str, Any] | None
    n_cancelled: int = 0
    stuck_threads: int = 0
    replaced_workers: int = 0


class LiveStatistics:
    """A sink that keeps the running mean of scored trials and its 95% interval.

    Repeats of an example are averaged first, as in an evaluation's result; the interval is
    :func:`dspex_lab.stats.score_interval` over the per-example means (Wilson for 0/1 scores,
    Student t otherwise): the same rule every view uses. Errors are counted apart (by type,
    metric errors also in ``metric_errors``), never averaged in. Read ``mean``, ``ci``, ``n``,
    ``errors`` while the run goes (from the thread that emits, or after it).
    """

    def __init__(self) -> None:
        self._totals: dict[str, list[float]] = {}
        self.errors: dict[str, int] = {}
        self.metric_errors = 0
        self.cost = 0.0

    def __call__(self, event: Any) -> None:
        """Update from a :class:`TrialFinished` event; ignore other events."""
        if not isinstance(event, TrialFinished):
            return
        result = event.result
        if result.cost is not None:
            self.cost += result.cost
        if result.status != "ok" or result.score is None:
            key = result.error_type or "error"
            self.errors[key] = self.errors.get(key, 0) + 1
            self.metric_errors += result.error_stage == "metric"
            return
        totals = self._totals.setdefault(result.example_id, [0.0, 0.0])
        totals[0] += result.score
        totals[1] += 1

    def _means(self) -> list[float]:
        return [total / count for total, count in self._totals.values()]

    @property
    def n(self) -> int:
        """Examples with at least one scored trial."""
        return len(self._totals)

    @property
    def mean(self) -> float:
        """The mean of the per-example mean scores (NaN before the first score)."""
        means = self._means()
        return math.fsum(means) / len(means) if means else math.nan

    @property
    def stderr(self) -> float:
        """The standard error of the mean over examples (NaN below two)."""
        means = self._means()
        if len(means) < 2:
            return math.nan
        center = math.fsum(means) / len(means)
        return math.sqrt(math.fsum((value - center) ** 2 for value in means) / (len(means) - 1) / len(means))

    @property
    def ci(self) -> tuple[float, float]:
        """The 95% interval of :func:`dspex_lab.stats.score_interval` (NaN before it is defined)."""
        from dspex_lab.stats import score_interval  # loaded when read, not with the engine

        interval = score_interval(self._means())
        return (interval.low, interval.high)


def run_trials(
    tasks: Sequence[TrialTask],
    runner: TrialRunner,
    *,
    executor: Executor,
    policy: RunPolicy,
    sinks: Sequence[Sink] = (),
    run_id: str = "memory",
    name: str = "run",
    already_done: int = 0,
    is_priced: Callable[[Any], bool] | None = None,
) -> RunReport:
    """Run ``tasks`` with ``runner`` on ``executor`` under ``policy``, emitting events to ``sinks``.

    Events, in order: one :class:`RunStarted`, one :class:`TrialFinished` per recorded trial,
    one :class:`RunFinished`. A trial cancelled because the run stopped (budget, error budget,
    interrupt) is not recorded, so a resume runs it again; its spending still counts.

    Args:
        tasks: the trials to run.
        runner: runs one trial; the trials retry under ``policy.retry`` (see :meth:`TrialRunner.with_retry`).
        executor: where trials run.
        policy: timeout, retries, error and cost budgets.
        sinks: event subscribers (called on this thread, in order; one that raises is dropped).
        run_id: the id events carry (the experiment's).
        name: the run's name, for displays.
        already_done: trials recorded before (a resumed run), for progress displays.
        is_priced: tells whether an LM's cost is known before its first call; with a dollar
            budget an unpriced run LM is refused before any call.

    Returns:
        The report; a KeyboardInterrupt is not re-raised here (status ``"interrupted"``).
    """
    _refuse_an_unmeasurable_budget(policy.budget, runner, is_priced)
    tally = _Tally(policy, planned=len(tasks), bus=EventBus(list(sinks)), run_id=run_id)
    tally.bus.emit(RunStarted(run_id, name, len(tasks) + already_done, already_done))
    started = time.perf_counter()
    replaced_before = _count(executor, "replaced_workers")
    status = _run_phases(tasks, runner.with_retry(policy.retry), executor, policy.timeout, tally)
    wall = time.perf_counter() - started
    stuck_threads = _count(executor, "stuck_threads")
    replaced = _count(executor, "replaced_workers") - replaced_before
    _log_what_faults_left(name, stuck_threads, replaced)
    final = {RunStatus.FINISHED: "finished", RunStatus.INTERRUPTED: "interrupted"}.get(status, "stopped")
    tally.bus.emit(RunFinished(run_id, final, len(tally.results), len(tasks), tally.errors, wall))
    if final == "finished":
        _warn_if_every_trial_failed(name, tally.results)
    return RunReport(
        status=final,
        results=tuple(tally.results),
        detail=tally.stop_detail(executor) if status == RunStatus.STOPPED else None,
        wall_seconds=wall,
        n_errors=tally.errors,
        spending=tally.spending.to_summary() if tally.spending is not None else None,
        n_cancelled=tally.cancelled,
        stuck_threads=stuck_threads,
        replaced_workers=replaced,
    )


def _refuse_an_unmeasurable_budget(
    budget: Budget | SpendingCounter | None, runner: TrialRunner, is_priced: Callable[[Any], bool] | None
) -> None:
    """Refuse, before any call, a dollar budget on a run LM whose price is not known.

    An outside :class:`SpendingCounter` applies its own rule to unpriced calls.
    """
    if not isinstance(budget, Budget) or budget.usd is None or runner.lm is None or is_priced is None:
        return
    if is_priced(runner.lm):
        return
    model = getattr(runner.lm, "model", type(runner.lm).__name__)
    raise ExecutionError(
        f"Budget(usd={budget.usd:g}) cannot be enforced: model {model!r} has no known price, so its "
        "spending cannot be measured; use Budget(lm_calls=...) or Budget(tokens=...) for it"
    )


class _Tally:
    """What a run keeps of its trials, as the executor delivers them (its ``on_result``).

    It records each trial (results in completion order, errors), emits :class:`TrialFinished`,
    counts spending, and says when the run must stop: a cost limit reached, or the error
    budget exceeded. A trial cancelled because the run stopped only counts its spending.
    """

    def __init__(self, policy: RunPolicy, *, planned: int, bus: EventBus, run_id: str) -> None:
        self.planned = planned
        self.bus = bus
        self.run_id = run_id
        self.results: list[TrialResult] = []
        self.errors = 0
        self.cancelled = 0
        self.error_budget = policy.error_budget(planned)
        budget = policy.budget
        self.spending: SpendingCounter | None = BudgetTracker(budget) if isinstance(budget, Budget) else budget

    def __call__(self, result: TrialResult) -> bool:
        """Record ``result``; return True when the run must stop."""
        if result.error_stage == "cancelled":
            self.cancelled += 1  # stopped by the run, not by its own failure: left for a resume
            if self.spending is not None:
                self.spending.add(result)
            return False
        self.results.append(result)
        if result.status == "error":
            self.errors += 1
        self.bus.emit(TrialFinished(self.run_id, result, len(self.results), self.planned, self.errors))
        if self.spending is not None and self.spending.add(result):
            return True
        return self.error_budget is not None and self.errors > self.error_budget

    def stop_detail(self, executor: Executor) -> str:
        """Say why a stopped run stopped: a cost limit, the executor (stuck threads), or the error budget."""
        if self.spending is not None and self.spending.exceeded:
            return self.spending.exceeded
        stuck = getattr(executor, "stuck_detail", None)
        if stuck:
            return str(stuck)
        return f"error budget: {self.errors} errors > {self.error_budget}"


def _run_phases(
    tasks: Sequence[TrialTask], runner: TrialRunner, executor: Executor, timeout: float | None, tally: _Tally
) -> str:
    """Run the budget's pilot first, project the whole run's spending from it, then the rest; return the status.

    Only the engine's own tracker (built from a :class:`Budget`) has a pilot; a run counting into an
    outside :class:`SpendingCounter` runs in one phase.
    """
    tracker = tally.spending if isinstance(tally.spending, BudgetTracker) else None
    phases: list[Sequence[TrialTask]] = [tasks]
    if tracker is not None and len(tasks) > tracker.budget.pilot:
        phases = [tasks[: tracker.budget.pilot], tasks[tracker.budget.pilot :]]
    status = RunStatus.FINISHED
    for position, phase in enumerate(phases):
        status = executor.run(phase, runner, on_result=tally, timeout=timeout)
        if status != RunStatus.FINISHED:
            break
        if position == 0 and tracker is not None and len(phases) > 1:
            tracker.project(len(tasks))
    return status


def _log_what_faults_left(name: str, stuck_threads: int, replaced: int) -> None:
    """Warn on the engine's logger about trial threads stuck in this process and workers replaced."""
    if stuck_threads:
        logger.warning(
            "%s: %d trial threads are stuck in this process in code that cannot be cancelled (such as a metric that "
            "never returns); they end only with the process (the cap is the executor's max_stuck); "
            "executor='process' replaces a stuck worker instead",
            name,
            stuck_threads,
        )
    if replaced:
        logger.warning(
            "%s: %d workers were replaced because a trial's thread was stuck in them past its timeout", name, replaced
        )


def _warn_if_every_trial_failed(name: str, results: Sequence[TrialResult]) -> None:
    """Warn, with the error counts and the first message, when a finished run has no scored trial."""
    if not results or any(result.status != "error" for result in results):
        return
    by_type: dict[str, int] = {}
    for result in results:
        by_type[result.error_type or "error"] = by_type.get(result.error_type or "error", 0) + 1
    first = results[0]
    warnings.warn(
        f"every trial of {name} failed ("
        + ", ".join(f"{count} {kind}" for kind, count in sorted(by_type.items(), key=lambda item: -item[1]))
        + f"); the first: {first.error_type}: {(first.error_message or '')[:300]}",
        DspexLabWarning,
        stacklevel=4,  # the caller of the workload (evaluate, say) that called run_trials
    )


def _count(executor: Executor, name: str) -> int:
    # Executors made outside dspex_lab need not count stuck threads or replaced workers.
    value = getattr(executor, name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0

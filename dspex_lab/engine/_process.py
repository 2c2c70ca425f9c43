"""A pool of local worker processes, each running trials on its own threads.

Why not ``concurrent.futures.ProcessPoolExecutor``: it runs one task per process at a time
(an LM-bound run needs dozens in flight per process), and after one worker dies every
future fails with ``BrokenProcessPool``, with no way to tell which trials had finished.
Here each worker has its own pipe; the driver hands it at most ``2 * threads_per_worker``
trials at once, so when a worker dies (``kill -9``, out of memory) the driver knows
exactly which trials it held, starts a fresh worker, and gives those trials to the pool
again. A trial is delivered once: a result for a trial already delivered is dropped.

Faults stay where they happen. The trials a dead worker held are *suspects*: each is run
again alone, one at a time, on a worker of its own (the isolation worker, one thread), so
a trial that kills its worker (``os._exit``, the out-of-memory killer) is recorded as the
error, and the innocent trials it shared a worker with get their real results. A trial
whose thread is still running :data:`STUCK_GRACE` seconds after it was given up (a metric
that never returns) makes its worker report itself stuck; the driver stops feeding it,
starts a replacement, and kills it once its other trials are done, so a hung metric costs
one worker start, never the run.

The driver's side is a backend of the coordination loop (:mod:`dspex_lab.engine._loop`),
which owns ordering, delivery once, stopping and stuck-worker accounting; driver and worker
speak in the typed messages below (frozen dataclasses, pickled on each worker's pipe).

Workers are started with ``spawn`` (never ``fork``: the driver has threads and an open
journal) and ignore SIGINT, so a notebook interrupt reaches only the driver, which
cancels the workers' trials and returns at once.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

from dspex_lab.engine._cancel import STUCK_GRACE, CancelToken
from dspex_lab.engine._contract import (
    REIMPORTED_MAIN_EXIT,
    Message,
    RunStatus,
    SetupFailed,
    Submission,
    TrialLost,
    TrialReturned,
    TrialsRequeued,
    TrialsSuspected,
    WorkerStuck,
)
from dspex_lab.engine._loop import TrialLedger, coordinate
from dspex_lab.engine._remote import (
    WorkPlan,
    decode,
    encode,
    plan_for,
    runner_for,
    spans_from,
    task_from,
    task_payload,
)
from dspex_lab.engine._sizing import InFlightTuner, Sizing
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError

__all__ = ["ProcessExecutor"]

# A run fails, instead of starting workers forever, when this many die before they are ready.
MAX_FAILED_STARTS = 3
# Seconds of each worker's measurements (summed over the pool) the in-flight tuner takes as one observation.
WINDOW_SECONDS = 1.0


# What the driver sends a worker.


@dataclass(frozen=True)
class LoadPlan:
    """A run's :class:`~dspex_lab.engine._remote.WorkPlan`, encoded; the worker keeps it under ``key``."""

    key: str
    data: bytes


@dataclass(frozen=True)
class RemoteTrial:
    """One trial for a worker: its run and submission number (which key the answer), plan, payload, timeout."""

    run: int
    submission: int
    plan_key: str
    payload: bytes
    timeout: float | None


@dataclass(frozen=True)
class RunTrials:
    """Trials to run, in one message: a pipe write and a worker wake-up per trial cost more than the data."""

    trials: tuple[RemoteTrial, ...]


@dataclass(frozen=True)
class CancelRun:
    """Cancel every trial of ``run`` running in the worker, and skip the ones still queued there."""

    run: int
    reason: str


@dataclass(frozen=True)
class SetInFlight:
    """Run at most ``limit`` trials at once from now on (the worker's threads stay the cap)."""

    limit: int


@dataclass(frozen=True)
class StopWorker:
    """End the worker process."""


# What a worker sends the driver.


@dataclass(frozen=True)
class WorkerReady:
    """The worker has started and takes trials."""


@dataclass(frozen=True)
class TrialAnswered:
    """A trial's record and the spans it captured (journal rows)."""

    run: int
    submission: int
    result: TrialResult
    span_rows: list[dict[str, Any]]


@dataclass(frozen=True)
class ThreadsStuck:
    """``count`` threads of trials given up on are still running in the worker past ``STUCK_GRACE``."""

    count: int


@dataclass(frozen=True)
class RunnerUnavailable:
    """The worker could not rebuild ``run``'s trial runner (a metric it cannot import, say)."""

    run: int
    error: str


@dataclass(frozen=True)
class WorkerLoad:
    """What a worker measured about itself so far, as running totals (the driver takes differences).

    Attributes:
        cpu: the process's CPU seconds (``time.process_time``).
        clock: the worker's ``time.monotonic`` when measured.
        busy: trial-seconds in flight: the integral over time of the trials running at once.
    """

    cpu: float
    clock: float
    busy: float


@dataclass(frozen=True)
class Reports:
    """Every answer and notice waiting in a worker, in one message (a busy worker writes once per batch)."""

    items: tuple[TrialAnswered | ThreadsStuck, ...]
    load: WorkerLoad | None = None


WorkerMessage = WorkerReady | TrialAnswered | ThreadsStuck | RunnerUnavailable | Reports


def _flatten(messages: Iterable[WorkerMessage]) -> list[WorkerMessage]:
    """Return ``messages`` with every :class:`Reports` batch replaced by its items, in order."""
    flat: list[WorkerMessage] = []
    for message in messages:
        if isinstance(message, Reports):
            flat.extend(message.items)
        else:
            flat.append(message)
    return flat


class ProcessExecutor:
    """Run trials in local worker processes (``executor="process"``), for CPU-heavy runs.

    Threads in one interpreter share the GIL, so a CPU-heavy run (DSPy's per-call Python,
    span capture) cannot use more than one core with :class:`ThreadExecutor`. Here each of
    ``workers`` processes runs ``threads_per_worker`` trials at once. Workers are stateless:
    each receives the run's :class:`~dspex_lab.engine._remote.WorkPlan` (program spec, metric
    by reference, LM settings without secrets) and one small payload per trial; results and
    spans come back to this process, which alone calls ``on_result`` and the span sink.

    The processes are started on first use and kept for later runs; :meth:`close` (or the
    interpreter's exit) stops them. A worker that dies is replaced (``restarts``) and the
    trials it held are re-run alone (``isolated_trials``); a worker with a thread stuck past
    its trial's deadline is replaced too (``replaced_workers``). No trial thread ever runs in
    this process, so ``stuck_threads`` is always 0: stuck threads end with their worker.

    With ``tune=True`` (what ``executor="process"`` makes) the trials each worker runs at once
    follow the trials' measured CPU share (:class:`~dspex_lab.engine.InFlightTuner`, kept
    across runs), up to ``threads_per_worker``: a trial heavy on the CPU runs beside few others,
    so it does not wait for the GIL (nor its timeout count that wait), while LM-bound trials keep
    every thread busy. Without it, every worker runs ``threads_per_worker`` trials at once.

    Args:
        workers: worker processes.
        threads_per_worker: the trials each worker runs at once (with ``tune``, at most).
        tune: tune the trials in flight per worker to the measured CPU share of a trial.
    """

    stuck_threads = 0

    def __init__(self, workers: int = 2, *, threads_per_worker: int = 4, tune: bool = False) -> None:
        for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExecutionError(f"{name} must be a positive integer, got {value!r}")
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.threads = workers * threads_per_worker
        self.tuner = InFlightTuner(threads_per_worker) if tune else None
        self._window = _LoadWindow()
        self._pool: list[_Worker] = []
        # Workers replaced because a thread is stuck in them: not fed, killed once their trials are done.
        self._retiring: list[_Worker] = []
        # The worker that runs suspects, one at a time (started when a worker dies, stopped with the run).
        self._isolation: _Worker | None = None
        self._runs = itertools.count(1)
        self._lock = threading.Lock()
        self._failed_starts = 0
        self.restarts = 0
        self.replaced_workers = 0
        self.isolated_trials = 0

    def __repr__(self) -> str:
        tune = ", tune=True" if self.tuner is not None else ""
        return f"ProcessExecutor(workers={self.workers}, threads_per_worker={self.threads_per_worker}{tune})"

    @property
    def in_flight(self) -> int:
        """The trials each worker runs at once now (``threads_per_worker`` unless tuned lower)."""
        return self.threads_per_worker if self.tuner is None else self.tuner.limit

    @property
    def sizing(self) -> Sizing:
        """Worker processes, trials in flight per worker now, and the CPU share measured (tuned pools only)."""
        share = self.tuner.cpu_share if self.tuner is not None else None
        return Sizing(self.workers, self.in_flight, share)

    def _note_load(self, worker: _Worker, load: WorkerLoad) -> None:
        """Add a pool worker's measurements since its last report to the window; tune once the window is full."""
        last, worker.load = worker.load, load
        if self.tuner is None or last is None or worker.isolated or worker.retiring_since is not None:
            return
        window = self._window
        window.add(load.cpu - last.cpu, load.clock - last.clock, load.busy - last.busy)
        if window.wall >= WINDOW_SECONDS * self.workers:  # about a second of each worker
            self.tuner.observe(window.cpu / window.wall, window.busy / window.wall)
            self._window = _LoadWindow()

    @property
    def pids(self) -> list[int]:
        """The process ids of the live workers (for monitoring, and for tests that kill one)."""
        return [worker.process.pid for worker in self._pool if worker.process.pid is not None]

    def close(self) -> None:
        """Stop every worker process."""
        with self._lock:
            pool, self._pool = self._pool, []
            extra, self._retiring = self._retiring, []
            if self._isolation is not None:
                extra.append(self._isolation)
                self._isolation = None
        for worker in pool:
            worker.stop()
        for worker in extra:
            worker.kill()

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(
        self,
        tasks: Iterable[TrialTask],
        runner: TrialRunner,
        *,
        on_result: Callable[[TrialResult], bool | None],
        timeout: float | None = None,
    ) -> str:
        """Run ``tasks`` with ``runner``'s plan in the worker processes; see :class:`Executor` for the contract.

        Raises:
            ExecutionError: the runner cannot travel to a worker (a lambda metric, an LM that is
                not data), or the workers cannot rebuild it (a metric they cannot import).
        """
        backend = _ProcessRun(self, runner, timeout, run=next(self._runs))
        return coordinate(tasks, backend, runner=runner, on_result=on_result).status

    def _live_workers(self) -> list[_Worker]:
        isolation = [self._isolation] if self._isolation is not None else []
        return [*self._pool, *self._retiring, *isolation]

    def _fill_pool(self) -> None:
        with self._lock:
            self._pool = [worker for worker in self._pool if worker.process.is_alive()]
            while len(self._pool) < self.workers:
                self._pool.append(_Worker(self.threads_per_worker))

    def _take_notices(self, worker: _Worker) -> None:
        """Read what a worker sent between runs: a stuck report retires it before it is given trials."""
        messages, _ = worker.receive()
        for message in _flatten(messages):
            if isinstance(message, WorkerReady):
                worker.ready = True
            elif isinstance(message, ThreadsStuck):
                self._retire(worker)

    def _retire(self, worker: _Worker) -> None:
        """Stop feeding a worker with a stuck thread and start its replacement; it ends once its trials are done."""
        if worker.retiring_since is not None:
            return
        worker.retiring_since = time.monotonic()
        with self._lock:
            if worker is self._isolation:
                self._isolation = None  # the next suspect gets a fresh one
            elif worker in self._pool:
                self._pool.remove(worker)
                self._pool.append(_Worker(self.threads_per_worker))
            else:
                return
            self._retiring.append(worker)
            self.replaced_workers += 1

    def _forget(self, worker: _Worker) -> None:
        """Drop a dead worker from wherever it was; a pool worker is replaced (a restart)."""
        with self._lock:
            if worker is self._isolation:
                self._isolation = None
            elif worker in self._retiring:
                self._retiring.remove(worker)
            elif worker in self._pool:
                self._pool.remove(worker)
                self._pool.append(_Worker(self.threads_per_worker))
                self.restarts += 1

    def _end_run(self) -> None:
        """Kill the workers that only this run needed: the retiring ones and the isolation worker."""
        with self._lock:
            extra, self._retiring = self._retiring, []
            if self._isolation is not None:
                extra.append(self._isolation)
                self._isolation = None
        for worker in extra:
            worker.kill()


class _ProcessRun:
    """One run of a :class:`ProcessExecutor`: the loop's backend, feeding worker pipes and reading them.

    Each pool worker holds at most ``2 * threads_per_worker`` of the run's trials; suspects go
    to the isolation worker one at a time. A worker's death turns the trials it held into
    suspects (or, for the isolation worker, into the error of the trial it ran alone).
    """

    replace_at = 1  # a worker that reports any stuck thread is retired at once
    ledger: TrialLedger  # the run's, from start()

    def __init__(self, executor: ProcessExecutor, runner: TrialRunner, timeout: float | None, *, run: int) -> None:
        self.executor = executor
        self.runner = runner
        self.timeout = timeout
        self.run = run
        plan: WorkPlan = plan_for(runner, executor="process", cloudpickle_functions=True)  # refused up front
        self.plan_key = plan.key
        self.plan_bytes = encode(plan)

    def start(self, ledger: TrialLedger) -> str | None:
        """Start the pool's missing workers and read what the others said since the last run."""
        self.ledger = ledger
        self.executor._failed_starts = 0
        self.executor._fill_pool()
        for worker in list(self.executor._pool):
            worker.held.clear()  # submissions are numbered per run
            # Measured from its first report of this run, not across the idle time before; the window itself
            # carries over, so many short runs (an optimization's mini-batches) still add up to observations.
            worker.load = None
            self.executor._take_notices(worker)  # a worker found stuck after the last run is replaced now
        return None

    def submit(self) -> None:
        """Fill each ready pool worker up to its capacity, then give the isolation worker its next suspect.

        A worker holds twice the trials it runs at once, so the next is there when one finishes.
        """
        in_flight = self.executor.in_flight
        for worker in self.executor._pool:
            if worker.ready:  # a worker still starting would hold trials that others could run now
                if worker.in_flight != in_flight:
                    worker.send(SetInFlight(in_flight))
                    worker.in_flight = in_flight
                self._feed(worker, self.ledger.queue, 2 * in_flight)
        self._isolate()

    def _feed(self, worker: _Worker, source: collections.deque[Submission], capacity: int) -> None:
        if self.plan_key not in worker.plans and source:
            worker.send(LoadPlan(self.plan_key, self.plan_bytes))
            worker.plans.add(self.plan_key)
        batch = self.ledger.take(source, capacity - len(worker.held))
        if batch:  # one message for all: a pipe write and a worker wake-up per trial cost more than the data
            worker.held.update(submission.number for submission in batch)
            trials = tuple(
                RemoteTrial(self.run, item.number, self.plan_key, encode(task_payload(item.task)), self.timeout)
                for item in batch
            )
            worker.send(RunTrials(trials))

    def _isolate(self) -> None:
        """Give the isolation worker the next suspect once it has finished the one before (one at a time)."""
        suspects, undelivered = self.ledger.suspects, self.ledger.undelivered
        while suspects and suspects[0].number not in undelivered:
            suspects.popleft()
        if not suspects:
            return
        if self.executor._isolation is None:
            self.executor._isolation = _Worker(1, isolated=True)
        worker = self.executor._isolation
        worker.held.intersection_update(undelivered)
        if worker.ready and not worker.held:
            self._feed(worker, suspects, capacity=1)

    def receive(self) -> Sequence[Message]:
        """Wait for any worker's pipe or death (a tenth of a second while one is retiring, else half)."""
        workers = self.executor._live_workers()
        watched = [item for worker in workers for item in (worker.connection, worker.process.sentinel)]
        ready = wait(watched, 0.1 if self.executor._retiring else 0.5)
        messages: list[Message] = []
        for worker in workers:
            if worker.connection not in ready and worker.process.sentinel not in ready:
                continue
            reports, alive = worker.receive()
            for report in reports:
                if isinstance(report, Reports) and report.load is not None:
                    self.executor._note_load(worker, report.load)
            for report in _flatten(reports):
                messages.extend(self._translate(report, worker))
            if not alive:
                messages.extend(self._lost(worker))
        return messages

    def _translate(self, report: WorkerMessage, worker: _Worker) -> list[Message]:
        """Return what a worker's report means to the loop (nothing, for a ready notice or an earlier run's answer)."""
        if isinstance(report, TrialAnswered):
            if report.run != self.run:
                return []  # a late result of an earlier, stopped run
            worker.held.discard(report.submission)
            wanted = report.span_rows and self.runner.span_sink is not None
            spans = spans_from(report.span_rows) if wanted and report.submission in self.ledger.undelivered else ()
            return [TrialReturned(report.submission, report.result, spans)]
        if isinstance(report, WorkerReady):
            worker.ready = True
        elif isinstance(report, ThreadsStuck):
            return [WorkerStuck(worker, report.count)]
        elif isinstance(report, RunnerUnavailable) and report.run == self.run:  # an earlier run's was reported
            return [SetupFailed(f"a worker process could not rebuild the trial runner: {report.error}")]
        return []

    def _lost(self, worker: _Worker) -> list[Message]:
        """Handle a dead worker: the error of a trial that killed its worker alone; the others become suspects."""
        executor = self.executor
        if not worker.ready:
            if worker.process.exitcode == REIMPORTED_MAIN_EXIT:
                raise ExecutionError(_reimported_main_message())
            executor._failed_starts += 1
            if executor._failed_starts >= MAX_FAILED_STARTS:
                raise ExecutionError(
                    f"worker processes exit while starting (exit code {worker.process.exitcode}, "
                    f"{executor._failed_starts} times): can `python -c 'import dspex_lab.engine'` run in this "
                    "environment?"
                )
        held = tuple(sorted(submission for submission in worker.held if submission in self.ledger.undelivered))
        worker.held.clear()
        worker.kill()
        messages: list[Message] = []
        if worker.isolated:
            # It ran this one trial and nothing else: the trial killed it.
            error = ExecutionError(
                f"the worker process died while running this trial alone ({_exit_text(worker.process.exitcode)}); "
                "it was run on a fresh worker of its own after its first worker died, so this trial is the cause "
                "(often memory: the out-of-memory killer)"
            )
            messages = [TrialLost(submission, error, time.time()) for submission in held]
        elif held:
            # Any of them may have killed it, or none: each runs again alone, and only a killer is recorded as one.
            executor.isolated_trials += len(held)
            messages = [TrialsSuspected(held)]
        executor._forget(worker)
        return messages

    def expire(self) -> Sequence[Message]:
        """Kill each retiring worker once its trials are delivered, or once they had their time; requeue the rest."""
        # Past this, a trial it holds has not started (or would have been given up already): it runs elsewhere.
        patience = (self.timeout or 0.0) + STUCK_GRACE
        messages: list[Message] = []
        for worker in list(self.executor._retiring):
            held = tuple(sorted(submission for submission in worker.held if submission in self.ledger.undelivered))
            alive = worker.process.is_alive()
            if held and alive and time.monotonic() - (worker.retiring_since or 0.0) < patience:
                continue
            if held:
                messages.append(TrialsRequeued(held, isolated=worker.isolated))
            worker.held.clear()
            worker.kill()
            with self.executor._lock:
                self.executor._retiring.remove(worker)
        return messages

    def replace(self, worker: Hashable) -> str | None:
        """Retire a worker with a stuck thread: fed no more, replaced now, killed once its trials are done."""
        if isinstance(worker, _Worker):  # this run's WorkerStuck messages name its _Worker objects
            self.executor._retire(worker)
        return None

    def stop(self, status: str, stuck: Sequence[Hashable]) -> None:
        """Cancel the run's trials in every worker and kill the workers only this run needed."""
        for worker in stuck:  # found stuck as the run stopped: replaced now rather than fed by the next run
            if isinstance(worker, _Worker):
                self.executor._retire(worker)
        reason = "run interrupted" if status == RunStatus.INTERRUPTED else "run stopped"
        for worker in self.executor._pool:
            worker.cancel(self.run, reason)
        self.executor._end_run()


def _reimported_main_message() -> str:
    """Say that the workers re-ran the user's script from the top, and how to stop them."""
    script = getattr(sys.modules.get("__main__"), "__file__", None) or "your script"
    return (
        f"the worker processes re-ran {script} from the top (a new process imports the main script) and "
        'would start this run again in each: put the code that runs it under `if __name__ == "__main__":`'
    )


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Worker:
    """The driver's handle on one worker process: its pipe and the trials it holds."""

    def __init__(self, threads: int, *, isolated: bool = False) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_worker_main, args=(child, threads), name="dspex-worker", daemon=True)
        self.process.start()
        child.close()
        self.held: set[int] = set()
        self.plans: set[str] = set()
        self.ready = False
        self.in_flight = threads  # the limit it runs under (its threads until told otherwise)
        self.load: WorkerLoad | None = None  # its last measurement of this run
        self.isolated = isolated  # runs suspects, one at a time
        self.retiring_since: float | None = None  # when it was found stuck

    def send(self, message: LoadPlan | RunTrials | CancelRun | SetInFlight | StopWorker) -> None:
        # A dead worker cannot be written to; the run loop sees its sentinel and replaces it.
        with contextlib.suppress(OSError):
            self.connection.send_bytes(encode(message))

    def receive(self) -> tuple[list[WorkerMessage], bool]:
        """Return every message waiting, and whether the worker is still alive."""
        messages = []
        try:
            while self.connection.poll():
                messages.append(decode(self.connection.recv_bytes()))
        except (EOFError, OSError):
            return messages, False
        return messages, self.process.is_alive()

    def cancel(self, run: int, reason: str) -> None:
        self.send(CancelRun(run, reason))

    def stop(self) -> None:
        self.send(StopWorker())
        self.process.join(timeout=2 if self.ready else 0.1)  # one still starting has nothing to finish
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=2)
        self.connection.close()

    def kill(self) -> None:
        """End the process now (it is stateless: nothing is lost but the trials it held, requeued by the caller)."""
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=2)
        self.connection.close()


def _worker_main(connection: Connection, threads: int) -> None:
    """The worker process: run trials on ``threads`` threads, answer through ``connection``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a notebook interrupt is the driver's to handle
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    WorkerLoop(connection, threads).serve()
    # Stateless: nothing to flush. Skipping interpreter shutdown avoids waiting on libraries' own threads.
    os._exit(0)


@dataclass(frozen=True)
class _RunningTrial:
    """A trial a worker thread is running: its token, when it started, the task and the runner running it."""

    token: CancelToken
    started: float
    task: TrialTask
    runner: TrialRunner


class WorkerLoop:
    """One worker process's loop: trials on threads, timeouts enforced here, results sent back."""

    def __init__(self, connection: Connection, threads: int) -> None:
        self.connection = connection
        self.threads = threads
        self.send_lock = threading.Lock()
        self.inbox: queue.SimpleQueue[RemoteTrial | None] = queue.SimpleQueue()
        self.plans: dict[str, WorkPlan] = {}
        # Answers and notices wait here for the sender thread, which sends all that are waiting as one message.
        self.outbox: queue.SimpleQueue[TrialAnswered | ThreadsStuck] = queue.SimpleQueue()
        # (run, submission) -> the trials running now.
        self.running: dict[tuple[int, int], _RunningTrial] = {}
        self.done: set[tuple[int, int]] = set()
        self.cancelled_runs: set[int] = set()
        # (run, submission) -> when the trial was given up (deadline or stopped run), while its thread runs on.
        self.given_up: dict[tuple[int, int], float] = {}
        self.stuck: set[tuple[int, int]] = set()  # of those, the ones still running STUCK_GRACE later
        self.lock = threading.Lock()
        self.spare = 4 * threads  # threads that may be added in place of ones stuck past their deadline
        # At most `limit` trials run at once (the driver's SetInFlight; the threads are the cap). A trial holds
        # its slot from its start until it returns or is given up; `busy` integrates the slots held over time.
        self.slots = threading.Condition(self.lock)
        self.limit = threads
        self.admitted: set[tuple[int, int]] = set()
        self.busy = 0.0
        self.busy_since = time.monotonic()

    def serve(self) -> None:
        """Read messages until told to stop (or the driver goes away)."""
        self.send(WorkerReady())
        for _ in range(self.threads):
            threading.Thread(target=self.work, name="dspex-trial", daemon=True).start()
        threading.Thread(target=self.watch, name="dspex-deadlines", daemon=True).start()
        threading.Thread(target=self.send_results, name="dspex-results", daemon=True).start()
        while True:
            try:
                message = decode(self.connection.recv_bytes())
            except (EOFError, OSError):
                return
            if isinstance(message, StopWorker):
                return
            if isinstance(message, LoadPlan):
                self.plans[message.key] = decode(message.data)
            elif isinstance(message, RunTrials):
                for trial in message.trials:
                    self.inbox.put(trial)
            elif isinstance(message, CancelRun):
                self.cancel(message)
            elif isinstance(message, SetInFlight):
                with self.slots:
                    self.limit = max(1, message.limit)
                    self.slots.notify_all()

    def cancel(self, message: CancelRun) -> None:
        """Cancel the run's trials running here; its queued ones are skipped."""
        with self.lock:
            self.cancelled_runs.add(message.run)
            for (run, _), running in self.running.items():
                if run == message.run:
                    running.token.cancel(message.reason)

    def send(self, message: WorkerReady | RunnerUnavailable | Reports) -> None:
        data = encode(message)
        with self.send_lock:
            try:
                self.connection.send_bytes(data)
            except (BrokenPipeError, OSError):
                os._exit(0)  # the driver is gone; nothing left to do

    def send_results(self) -> None:
        """Send every answer waiting in the outbox as one message, so a busy worker writes once per batch."""
        while True:
            batch = [self.outbox.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self.outbox.get_nowait())
            self.send(Reports(tuple(batch), self.load()))

    def load(self) -> WorkerLoad:
        """Return the process's CPU time, clock and trial-seconds in flight so far."""
        with self.lock:
            now = self._count_busy()
            return WorkerLoad(time.process_time(), now, self.busy)

    def _count_busy(self) -> float:
        """Add the slots held since the last count to ``busy`` (the caller holds the lock); return the time."""
        now = time.monotonic()
        self.busy += len(self.admitted) * (now - self.busy_since)
        self.busy_since = now
        return now

    def admit(self, key: tuple[int, int]) -> None:
        """Wait for a slot under the in-flight limit and take it for the trial ``key``."""
        with self.slots:
            while len(self.admitted) >= self.limit:
                self.slots.wait()
            self._count_busy()
            self.admitted.add(key)

    def release(self, key: tuple[int, int]) -> None:
        """Give back the slot of trial ``key`` (once; the caller holds the lock)."""
        if key in self.admitted:
            self._count_busy()
            self.admitted.discard(key)
            self.slots.notify()

    def work(self) -> None:
        """A trial thread: run trials from the inbox until the stop marker."""
        while True:
            trial = self.inbox.get()
            if trial is None:
                return
            if trial.run in self.cancelled_runs:
                continue
            try:
                runner, stash = runner_for(self.plans[trial.plan_key])
            except Exception as error:
                self.send(RunnerUnavailable(trial.run, f"{type(error).__name__}: {error}"))
                continue
            task = task_from(decode(trial.payload))
            key = (trial.run, trial.submission)
            self.admit(key)  # the trial's clock starts once it runs, not while it waits for a slot
            token = CancelToken(trial.timeout)
            with self.lock:
                if trial.run in self.cancelled_runs:  # cancelled while it waited
                    self.release(key)
                    continue
                self.running[key] = _RunningTrial(token, time.time(), task, runner)
            try:
                result = runner(task, token=token)
            except BaseException as error:  # the runner records errors; this is a last resort
                result = TrialRunner.failure(
                    task, error, stage="runner", started=time.time(), clock=time.perf_counter(), attempt=1
                )
            with self.lock:
                self.running.pop(key, None)
                self.release(key)
                late = key in self.done
                self.done.discard(key)
            if late:
                return  # given up at its deadline; a replacement thread took this one's place
            self.outbox.put(TrialAnswered(trial.run, trial.submission, result, stash.take(task.trial_id)))

    def watch(self) -> None:
        """Give up on trials past their deadline, as the thread executor does, keep capacity, and report stuck threads.

        A thread still running :data:`STUCK_GRACE` seconds after its trial was given up is stuck in
        code that cannot be cancelled; the driver is told (:class:`ThreadsStuck`) and replaces this
        worker, because nothing else can end that thread.
        """
        while True:
            time.sleep(0.02)
            overdue, newly_stuck, stuck = self._note_overdue(time.monotonic())
            for (run, submission), running in overdue:
                reason = f"timeout after {running.token.timeout:g} s"
                result = running.runner.abandon(running.task, running.token, started=running.started, reason=reason)
                spans = running.runner.span_sink.take(running.task.trial_id)  # type: ignore[union-attr]  # a SpanStash
                self.outbox.put(TrialAnswered(run, submission, result, spans))
                if self.spare > 0:
                    self.spare -= 1
                    threading.Thread(target=self.work, name="dspex-trial", daemon=True).start()
            if newly_stuck:
                self.outbox.put(ThreadsStuck(stuck))

    def _note_overdue(
        self, now: float
    ) -> tuple[list[tuple[tuple[int, int], _RunningTrial]], list[tuple[int, int]], int]:
        """Return the trials past their deadline (marked done), the threads newly found stuck, and all stuck now."""
        with self.lock:
            overdue = [
                (key, running)
                for key, running in self.running.items()
                if key not in self.done
                and running.token.timeout is not None
                and running.token.cancelled
                and (running.token.reason or "").startswith("timeout")
            ]
            for key, _ in overdue:
                self.done.add(key)
                self.release(key)  # its thread may never return; a replacement thread runs the next trial
            for key, running in self.running.items():
                if key not in self.given_up and (key in self.done or running.token.cancelled):
                    self.given_up[key] = now
            for key in [key for key in self.given_up if key not in self.running]:
                del self.given_up[key]  # its thread returned after all
                self.stuck.discard(key)
            newly_stuck = [
                key for key, since in self.given_up.items() if key not in self.stuck and now - since > STUCK_GRACE
            ]
            self.stuck.update(newly_stuck)
            return overdue, newly_stuck, len(self.stuck)


class _LoadWindow:
    """The pool workers' measurements summed (seconds of CPU, of wall, of trials in flight): one tuner observation."""

    def __init__(self) -> None:
        self.cpu = self.wall = self.busy = 0.0

    def add(self, cpu: float, wall: float, busy: float) -> None:
        if wall > 0 and cpu >= 0 and busy >= 0:
            self.cpu, self.wall, self.busy = self.cpu + cpu, self.wall + wall, self.busy + busy

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

Workers are started with ``spawn`` (never ``fork``: the driver has threads and an open
journal) and ignore SIGINT, so a notebook interrupt reaches only the driver, which
cancels the workers' trials and returns at once.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import multiprocessing
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection, wait
from typing import Any

from dspex_lab.engine._cancel import STUCK_GRACE, CancelToken
from dspex_lab.engine._executor import RunStatus
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
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError

__all__ = ["ProcessExecutor"]

# A run fails, instead of starting workers forever, when this many die before they are ready.
MAX_FAILED_STARTS = 3


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

    Args:
        workers: worker processes.
        threads_per_worker: trials each worker runs at once.
    """

    stuck_threads = 0

    def __init__(self, workers: int = 2, *, threads_per_worker: int = 4) -> None:
        for name, value in (("workers", workers), ("threads_per_worker", threads_per_worker)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExecutionError(f"{name} must be a positive integer, got {value!r}")
        self.workers = workers
        self.threads_per_worker = threads_per_worker
        self.threads = workers * threads_per_worker
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
        return f"ProcessExecutor(workers={self.workers}, threads_per_worker={self.threads_per_worker})"

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
        plan = plan_for(runner, executor="process", cloudpickle_functions=True)
        plan_bytes = encode(plan)
        run = next(self._runs)
        pending = collections.deque(enumerate(tasks))
        if not pending:
            return RunStatus.FINISHED
        in_flight = {submission: task for submission, task in pending}
        suspects: collections.deque[tuple[int, TrialTask]] = collections.deque()
        self._failed_starts = 0
        status = RunStatus.FINISHED
        try:
            self._fill_pool()
            for worker in list(self._pool):
                worker.held.clear()  # submissions are numbered per run
                self._take_notices(worker)  # a worker found stuck after the last run is replaced now
            while in_flight and status == RunStatus.FINISHED:
                self._reap(pending, suspects, in_flight, timeout)
                for worker in self._pool:
                    if worker.ready:  # a worker still starting would hold trials that others could run now
                        capacity = 2 * self.threads_per_worker
                        self._feed(worker, pending, in_flight, run, plan.key, plan_bytes, timeout, capacity)
                self._isolate(suspects, in_flight, run, plan.key, plan_bytes, timeout)
                workers = self._live_workers()
                watched = [item for worker in workers for item in (worker.connection, worker.process.sentinel)]
                ready = wait(watched, 0.1 if self._retiring else 0.5)
                for worker in workers:
                    if worker.connection not in ready and worker.process.sentinel not in ready:
                        continue
                    messages, alive = worker.receive()
                    for message in messages:
                        if status != RunStatus.FINISHED:
                            break
                        status = self._handle(message, worker, run, in_flight, runner, on_result, status)
                    if not alive:
                        for result in self._lost(worker, suspects, in_flight):  # delivered even past a stop
                            if on_result(result):
                                status = RunStatus.STOPPED
        except KeyboardInterrupt:
            status = RunStatus.INTERRUPTED
        finally:
            reason = "run interrupted" if status == RunStatus.INTERRUPTED else "run stopped"
            for worker in self._pool:
                worker.cancel(run, reason)
            self._end_run()
        return status

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
        for message in messages:
            items = message[1] if message[0] == "results" else [message]
            for item in items:
                if item[0] == "ready":
                    worker.ready = True
                elif item[0] == "stuck":
                    self._retire(worker)

    def _feed(
        self,
        worker: _Worker,
        pending: collections.deque[tuple[int, TrialTask]],
        in_flight: dict[int, TrialTask],
        run: int,
        plan_key: str,
        plan_bytes: bytes,
        timeout: float | None,
        capacity: int,
    ) -> None:
        if plan_key not in worker.plans and pending:
            worker.send(("plan", plan_key, plan_bytes))
            worker.plans.add(plan_key)
        batch = []
        while pending and len(worker.held) < capacity:
            submission, task = pending.popleft()
            if submission not in in_flight:
                continue
            worker.held.add(submission)
            batch.append((run, submission, plan_key, encode(task_payload(task)), timeout))
        if batch:  # one message for all: a pipe write and a worker wake-up per trial cost more than the data
            worker.send(("tasks", batch))

    def _isolate(
        self,
        suspects: collections.deque[tuple[int, TrialTask]],
        in_flight: dict[int, TrialTask],
        run: int,
        plan_key: str,
        plan_bytes: bytes,
        timeout: float | None,
    ) -> None:
        """Give the isolation worker the next suspect once it has finished the one before (one at a time)."""
        while suspects and suspects[0][0] not in in_flight:
            suspects.popleft()
        if not suspects:
            return
        if self._isolation is None:
            self._isolation = _Worker(1, isolated=True)
        worker = self._isolation
        worker.held.intersection_update(in_flight)
        if worker.ready and not worker.held:
            self._feed(worker, suspects, in_flight, run, plan_key, plan_bytes, timeout, capacity=1)

    def _handle(
        self,
        message: tuple[Any, ...],
        worker: _Worker,
        run: int,
        in_flight: dict[int, TrialTask],
        runner: TrialRunner,
        on_result: Callable[[TrialResult], bool | None],
        status: str,
    ) -> str:
        kind = message[0]
        if kind == "results":
            for result_message in message[1]:
                if status != RunStatus.FINISHED:
                    break
                status = self._handle(result_message, worker, run, in_flight, runner, on_result, status)
            return status
        if kind == "ready":
            worker.ready = True
            return status
        if kind == "stuck":
            self._retire(worker)
            return status
        if kind == "setup":
            if message[1] != run:
                return status  # an earlier run's failure, already reported
            raise ExecutionError(f"a worker process could not rebuild the trial runner: {message[2]}")
        _, message_run, submission, result, span_rows = message
        if message_run != run:
            return status  # a late result of an earlier, stopped run
        worker.held.discard(submission)
        task = in_flight.pop(submission, None)
        if task is None:
            return status  # already delivered (its first worker died after sending it)
        if span_rows and runner.span_sink is not None:
            runner.span_sink(task.trial_id, spans_from(span_rows))
        return RunStatus.STOPPED if on_result(result) else status

    def _retire(self, worker: _Worker) -> None:
        """Stop feeding a worker with a stuck thread and start its replacement; :meth:`_reap` ends it."""
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

    def _reap(
        self,
        pending: collections.deque[tuple[int, TrialTask]],
        suspects: collections.deque[tuple[int, TrialTask]],
        in_flight: dict[int, TrialTask],
        timeout: float | None,
    ) -> None:
        """Kill each retiring worker once its trials are delivered, or once they had their time; requeue the rest."""
        # Past this, a trial it holds has not started (or would have been given up already): it runs elsewhere.
        patience = (timeout or 0.0) + STUCK_GRACE
        for worker in list(self._retiring):
            held = sorted(submission for submission in worker.held if submission in in_flight)
            alive = worker.process.is_alive()
            if held and alive and time.monotonic() - (worker.retiring_since or 0.0) < patience:
                continue
            back = suspects if worker.isolated else pending
            for submission in reversed(held):
                back.appendleft((submission, in_flight[submission]))
            worker.held.clear()
            worker.kill()
            with self._lock:
                self._retiring.remove(worker)

    def _lost(
        self,
        worker: _Worker,
        suspects: collections.deque[tuple[int, TrialTask]],
        in_flight: dict[int, TrialTask],
    ) -> list[TrialResult]:
        """Handle a dead worker: return the error of a trial that killed its worker alone, suspect the others."""
        if not worker.ready:
            self._failed_starts += 1
            if self._failed_starts >= MAX_FAILED_STARTS:
                raise ExecutionError(
                    f"worker processes exit while starting (exit code {worker.process.exitcode}, "
                    f"{self._failed_starts} times): can `python -c 'import dspex_lab.engine'` run in this environment?"
                )
        held = sorted(submission for submission in worker.held if submission in in_flight)
        worker.held.clear()
        worker.kill()
        results = []
        if worker.isolated:
            # It ran this one trial and nothing else: the trial killed it.
            for submission in held:
                error = ExecutionError(
                    f"the worker process died while running this trial alone ({_exit_text(worker.process.exitcode)}); "
                    "it was run on a fresh worker of its own after its first worker died, so this trial is the cause "
                    "(often memory: the out-of-memory killer)"
                )
                results.append(
                    TrialRunner.failure(
                        in_flight.pop(submission),
                        error,
                        stage="runner",
                        started=time.time(),
                        clock=time.perf_counter(),
                        attempt=1,
                    )
                )
        else:
            # Any of them may have killed it, or none: each runs again alone, and only a killer is recorded as one.
            suspects.extend((submission, in_flight[submission]) for submission in held)
            self.isolated_trials += len(held)
        with self._lock:
            if worker is self._isolation:
                self._isolation = None
            elif worker in self._retiring:
                self._retiring.remove(worker)
            elif worker in self._pool:
                self._pool.remove(worker)
                self._pool.append(_Worker(self.threads_per_worker))
                self.restarts += 1
        return results

    def _end_run(self) -> None:
        """Kill the workers that only this run needed: the retiring ones and the isolation worker."""
        with self._lock:
            extra, self._retiring = self._retiring, []
            if self._isolation is not None:
                extra.append(self._isolation)
                self._isolation = None
        for worker in extra:
            worker.kill()


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
        self.isolated = isolated  # runs suspects, one at a time
        self.retiring_since: float | None = None  # when it was found stuck

    def send(self, message: tuple[Any, ...]) -> None:
        # A dead worker cannot be written to; the run loop sees its sentinel and replaces it.
        with contextlib.suppress(OSError):
            self.connection.send_bytes(encode(message))

    def receive(self) -> tuple[list[tuple[Any, ...]], bool]:
        """Return every message waiting, and whether the worker is still alive."""
        messages = []
        try:
            while self.connection.poll():
                messages.append(decode(self.connection.recv_bytes()))
        except (EOFError, OSError):
            return messages, False
        return messages, self.process.is_alive()

    def cancel(self, run: int, reason: str) -> None:
        self.send(("cancel", run, reason))

    def stop(self) -> None:
        self.send(("stop",))
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


class WorkerLoop:
    """One worker process's loop: trials on threads, timeouts enforced here, results sent back."""

    def __init__(self, connection: Connection, threads: int) -> None:
        self.connection = connection
        self.threads = threads
        self.send_lock = threading.Lock()
        self.inbox: queue.SimpleQueue[tuple[int, int, str, bytes, float | None] | None] = queue.SimpleQueue()
        self.plans: dict[str, WorkPlan] = {}
        # Results wait here for the sender thread, which sends all that are waiting as one message.
        self.outbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        # (run, submission) -> (token, started, task, runner) of trials running now.
        self.running: dict[tuple[int, int], tuple[CancelToken, float, TrialTask, TrialRunner]] = {}
        self.done: set[tuple[int, int]] = set()
        self.cancelled_runs: set[int] = set()
        # (run, submission) -> when the trial was given up (deadline or stopped run), while its thread runs on.
        self.given_up: dict[tuple[int, int], float] = {}
        self.stuck: set[tuple[int, int]] = set()  # of those, the ones still running STUCK_GRACE later
        self.lock = threading.Lock()
        self.spare = 4 * threads  # threads that may be added in place of ones stuck past their deadline

    def serve(self) -> None:
        """Read messages until told to stop (or the driver goes away)."""
        self.send(("ready",))
        for _ in range(self.threads):
            threading.Thread(target=self.work, name="dspex-trial", daemon=True).start()
        threading.Thread(target=self.watch, name="dspex-deadlines", daemon=True).start()
        threading.Thread(target=self.send_results, name="dspex-results", daemon=True).start()
        while True:
            try:
                message = decode(self.connection.recv_bytes())
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "stop":
                return
            if kind == "plan":
                self.plans[message[1]] = decode(message[2])
            elif kind == "tasks":
                for item in message[1]:
                    self.inbox.put(item)
            elif kind == "cancel":
                _, run, reason = message
                with self.lock:
                    self.cancelled_runs.add(run)
                    for (running_run, _), (token, *_) in self.running.items():
                        if running_run == run:
                            token.cancel(reason)

    def send(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        with self.send_lock:
            try:
                self.connection.send_bytes(data)
            except (BrokenPipeError, OSError):
                os._exit(0)  # the driver is gone; nothing left to do

    def send_results(self) -> None:
        """Send every result waiting in the outbox as one message, so a busy worker writes once per batch."""
        while True:
            batch = [self.outbox.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    batch.append(self.outbox.get_nowait())
            self.send(("results", batch))

    def work(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                return
            run, submission, plan_key, payload, timeout = item
            if run in self.cancelled_runs:
                continue
            try:
                runner, stash = runner_for(self.plans[plan_key])
            except Exception as error:
                self.send(("setup", run, f"{type(error).__name__}: {error}"))
                continue
            task = task_from(decode(payload))
            token = CancelToken(timeout)
            key = (run, submission)
            with self.lock:
                self.running[key] = (token, time.time(), task, runner)
            try:
                result = runner(task, token=token)
            except BaseException as error:  # the runner records errors; this is a last resort
                result = TrialRunner.failure(
                    task, error, stage="runner", started=time.time(), clock=time.perf_counter(), attempt=1
                )
            with self.lock:
                self.running.pop(key, None)
                late = key in self.done
                self.done.discard(key)
            if late:
                return  # given up at its deadline; a replacement thread took this one's place
            self.outbox.put(("result", run, submission, result, stash.take(task.trial_id)))

    def watch(self) -> None:
        """Give up on trials past their deadline, as the thread executor does, keep capacity, and report stuck threads.

        A thread still running :data:`STUCK_GRACE` seconds after its trial was given up is stuck in
        code that cannot be cancelled; the driver is told (``("stuck", count)``) and replaces this
        worker, because nothing else can end that thread.
        """
        while True:
            time.sleep(0.02)
            now = time.monotonic()
            with self.lock:
                overdue = [
                    (key, entry)
                    for key, entry in self.running.items()
                    if key not in self.done
                    and entry[0].timeout is not None
                    and entry[0].cancelled
                    and (entry[0].reason or "").startswith("timeout")
                ]
                for key, _ in overdue:
                    self.done.add(key)
                for key, (token, *_) in self.running.items():
                    if key not in self.given_up and (key in self.done or token.cancelled):
                        self.given_up[key] = now
                for key in [key for key in self.given_up if key not in self.running]:
                    del self.given_up[key]  # its thread returned after all
                    self.stuck.discard(key)
                newly_stuck = [
                    key for key, since in self.given_up.items() if key not in self.stuck and now - since > STUCK_GRACE
                ]
                self.stuck.update(newly_stuck)
                stuck = len(self.stuck)
            for (run, submission), (token, started, task, runner) in overdue:
                result = runner.abandon(task, token, started=started, reason=f"timeout after {token.timeout:g} s")
                spans = runner.span_sink.take(task.trial_id)  # type: ignore[union-attr]  # a SpanStash
                self.outbox.put(("result", run, submission, result, spans))
                if self.spare > 0:
                    self.spare -= 1
                    threading.Thread(target=self.work, name="dspex-trial", daemon=True).start()
            if newly_stuck:
                self.outbox.put(("stuck", stuck))


def default_workers(threads: int) -> tuple[int, int]:
    """Return (workers, threads per worker) for ``threads`` trials at once on this machine's cores."""
    workers = max(1, min(os.cpu_count() or 1, threads))
    return workers, math.ceil(threads / workers)

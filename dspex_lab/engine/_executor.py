"""The thread executor (the default) and :func:`make_executor`, which turns a spec into an executor."""

from __future__ import annotations

import contextvars
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass

from dspex_lab.engine._cancel import CancelToken
from dspex_lab.engine._contract import Executor, Message, RunStatus, Submission, TrialLost, TrialReturned, WorkerStuck
from dspex_lab.engine._loop import TrialLedger, coordinate
from dspex_lab.engine._sizing import choose_sizing
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError

# Executor and RunStatus live in _contract (so the backends need not import this module); named here as before.
__all__ = ["Executor", "RunStatus", "ThreadExecutor", "make_executor"]


class ThreadExecutor:
    """Run trials on daemon worker threads inside this process (the default).

    Each trial runs in a copy of the caller's ``contextvars`` context, so
    ``dspy.context(...)`` settings, the active dspex context and DSPy's active
    call id reach the worker. A trial past its deadline is cancelled (its next LM
    call raises, and a request in flight carries the remaining time as its timeout).
    A thread stuck in code that cannot be cancelled (a metric that never returns) cannot be
    killed: it is left behind, counted (``stuck_threads``, across runs, until it returns) and
    replaced so capacity stays constant. At most ``max_stuck`` may be left behind at once,
    over all the runs of this executor: past that a run stops rather than pile up threads,
    and says why (``stuck_detail``); a run that would start with none of its own threads
    left under that cap does not start.
    """

    def __init__(self, threads: int = 8, *, max_stuck: int | None = None) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ExecutionError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self.max_stuck = 4 * threads if max_stuck is None else max_stuck
        self.stuck_detail: str | None = None
        self._left_behind: set[threading.Thread] = set()  # threads of trials given up on, until they return
        self._left_lock = threading.Lock()

    @property
    def stuck_threads(self) -> int:
        """Threads of trials given up on (past their deadline) that are still running, over all runs."""
        with self._left_lock:
            self._left_behind = {thread for thread in self._left_behind if thread.is_alive()}
            return len(self._left_behind)

    def leave_behind(self, thread: threading.Thread) -> None:
        """Count ``thread`` as left behind: its trial was given up on while it ran."""
        with self._left_lock:
            self._left_behind.add(thread)

    def __repr__(self) -> str:
        return f"ThreadExecutor(threads={self.threads})"

    def run(
        self,
        tasks: Iterable[TrialTask],
        runner: TrialRunner,
        *,
        on_result: Callable[[TrialResult], bool | None],
        timeout: float | None = None,
    ) -> str:
        """Run ``tasks`` with ``runner``; see :class:`Executor` for the contract."""
        self.stuck_detail = None
        outcome = coordinate(tasks, _ThreadBackend(self, runner, timeout), runner=runner, on_result=on_result)
        self.stuck_detail = outcome.detail
        return outcome.status


@dataclass(frozen=True)
class _Running:
    """A trial a worker thread is running: its token, when it started, the thread, the task."""

    token: CancelToken
    started: float
    thread: threading.Thread
    task: TrialTask


class _ThreadBackend:
    """One run of a :class:`ThreadExecutor`: an inbox of submissions, worker threads, an outbox of records.

    The worker threads register what they run in ``running``; the loop's thread alone reads
    the outbox, gives up trials past their deadline (``runner.abandon``) and starts threads.
    """

    replace_at = 1  # a thread stuck in a trial given up on is replaced at once (under the executor's cap)
    ledger: TrialLedger  # the run's, from start()

    def __init__(self, executor: ThreadExecutor, runner: TrialRunner, timeout: float | None) -> None:
        self.executor = executor
        self.runner = runner
        self.timeout = timeout
        self.inbox: queue.SimpleQueue[Submission | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[TrialReturned | TrialLost] = queue.SimpleQueue()
        self.running: dict[int, _Running] = {}
        self.abandoned: set[int] = set()  # trials given up at their deadline (their threads exit when they return)
        self.stopping = threading.Event()
        self.context = contextvars.copy_context()
        self.workers = 0

    def start(self, ledger: TrialLedger) -> str | None:
        """Start the worker threads: no more than the trials, nor than the cap on stuck threads leaves room for."""
        self.ledger = ledger
        executor = self.executor
        left_behind = executor.stuck_threads
        # A 12-trial mini-batch needs no 64 threads.
        workers = min(executor.threads, len(ledger.undelivered), executor.threads + executor.max_stuck - left_behind)
        if workers < 1:
            return (
                f"{left_behind} threads of earlier trials are still stuck in code that cannot be cancelled (such as "
                f"a metric that never returns), the most this executor leaves behind ({executor.max_stuck}); restart "
                "the kernel to end them, or use executor='process', whose stuck workers are replaced"
            )
        for _ in range(workers):
            self._start_thread()
        return None

    def _start_thread(self) -> None:
        threading.Thread(target=self._work, name="dspex-trial", daemon=True).start()
        self.workers += 1

    def _work(self) -> None:
        """A worker thread: run submissions from the inbox until the run's stop marker."""
        while True:
            submission = self.inbox.get()
            if submission is None:
                return
            if self.stopping.is_set():
                continue
            token = CancelToken(self.timeout)
            started = time.time()
            self.running[submission.number] = _Running(token, started, threading.current_thread(), submission.task)
            try:
                result = self.context.copy().run(self.runner, submission.task, token=token)
            except BaseException as error:  # the runner records errors; this is a last resort
                self.outbox.put(TrialLost(submission.number, error, started))
            else:
                self.outbox.put(TrialReturned(submission.number, result))
            if submission.number in self.abandoned:
                return  # a replacement took this thread's place while it was stuck

    def submit(self) -> None:
        """Put every queued trial in the inbox: the threads take them as they come free."""
        for submission in self.ledger.take(self.ledger.queue, len(self.ledger.queue)):
            self.inbox.put(submission)

    def receive(self) -> Sequence[Message]:
        """Return the records in the outbox, waiting up to half a second (less with a short timeout) for one."""
        wait = 0.5 if self.timeout is None else max(0.01, min(0.5, self.timeout / 4))
        answers: list[TrialReturned | TrialLost] = []
        try:
            answers.append(self.outbox.get(timeout=wait))
            while True:  # drain what else is ready, without waking up once per result
                answers.append(self.outbox.get_nowait())
        except queue.Empty:
            pass
        for answer in answers:
            self.running.pop(answer.submission, None)
        return answers

    def expire(self) -> list[Message]:
        """Give up the trials past their deadline: record them as timed out, and count their threads as stuck."""
        if self.timeout is None:
            return []
        messages: list[Message] = []
        for number, running in list(self.running.items()):
            if number in self.abandoned or not running.token.cancelled:
                continue
            self.abandoned.add(number)
            self.executor.leave_behind(running.thread)
            reason = f"timeout after {self.timeout:g} s"
            result = self.runner.abandon(running.task, running.token, started=running.started, reason=reason)
            messages += [TrialReturned(number, result), WorkerStuck(running.thread, 1)]
        return messages

    def replace(self, worker: Hashable) -> str | None:
        """Start a thread in place of a stuck one, unless the executor already leaves too many behind."""
        left_behind = self.executor.stuck_threads
        if left_behind <= self.executor.max_stuck:
            self._start_thread()
            return None
        return (
            f"{left_behind} trial threads did not return after their {self.timeout:g} s timeout (stuck in code "
            "that cannot be cancelled, such as a metric that never returns), over the "
            f"{self.executor.max_stuck} this executor may leave behind; stopped instead of leaving more"
        )

    def stop(self, status: str, stuck: Sequence[Hashable]) -> None:
        """Cancel the trials still running and send every thread its stop marker (stuck threads need none)."""
        self.stopping.set()
        reason = "run interrupted" if status == RunStatus.INTERRUPTED else "run stopped"
        for running in list(self.running.values()):
            running.token.cancel(reason)
        for _ in range(self.workers):
            self.inbox.put(None)


def make_executor(spec: object = None, *, threads: int | None = None) -> Executor:
    """Return an executor from a spec.

    Args:
        spec: None or ``"thread"`` (a thread pool in this process); ``"process"`` (local worker
            processes, one per core up to ``threads``, sharing ``threads`` trials at once, each
            running as many as the trials' measured CPU share needs: see
            :func:`~dspex_lab.engine.choose_sizing`);
            ``"dask://host:port"`` or a ``distributed.Client`` (a Dask cluster); or an
            :class:`Executor` instance, returned as is.
        threads: trials at once for the thread and process executors (default 8).

    Raises:
        ExecutionError: an unknown spec, or a Dask scheduler that cannot be reached.
        MissingDependencyError: a Dask spec without dask and distributed installed.
    """
    count = 8 if threads is None else threads
    if spec is None or spec == "thread":
        return ThreadExecutor(count)
    if spec == "process":
        from dspex_lab.engine._process import ProcessExecutor

        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ExecutionError(f"threads must be a positive integer, got {count!r}")
        sizing = choose_sizing(None, cores=os.cpu_count() or 1, trials_at_once=count)
        return ProcessExecutor(sizing.processes, threads_per_worker=sizing.in_flight, tune=True)
    from dspex_lab.engine._dask import is_dask_client

    if (isinstance(spec, str) and spec.startswith("dask://")) or is_dask_client(spec):
        from dspex_lab.engine._dask import DaskExecutor

        return DaskExecutor(spec)
    if hasattr(spec, "run") and hasattr(spec, "threads"):
        return spec  # type: ignore[return-value]
    raise ExecutionError(
        f"unknown executor {spec!r:.80}: use 'thread', 'process', 'dask://host:port', a distributed.Client "
        "or an Executor instance"
    )

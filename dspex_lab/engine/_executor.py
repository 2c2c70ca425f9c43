"""Executors: run many trials in parallel with timeouts, retries, an error budget and cancel."""

from __future__ import annotations

import contextvars
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from dspex_lab.engine._cancel import CancelToken
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError

__all__ = ["Executor", "RunStatus", "ThreadExecutor", "make_executor"]


class RunStatus:
    """How a run ended."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"


class Executor(Protocol):
    """Runs trials in parallel and hands each finished one to ``on_result``.

    Contract: every task gets its own :class:`CancelToken` carrying ``timeout`` (the whole
    trial's time, all attempts included); ``on_result`` is called on the calling thread,
    once per task, in completion order. A trial past its deadline is handed to
    ``runner.abandon`` (no further LM request; its partial spans kept) and its record passed
    to ``on_result``. If ``on_result`` returns True the run stops: queued trials never start,
    running ones are cancelled, and ``run`` returns ``"stopped"``. A KeyboardInterrupt while
    waiting does the same and ``run`` returns ``"interrupted"``; every result delivered
    before that is kept by the caller.

    Executors of dspex_lab also count what faults leave behind, which :func:`run_trials`
    reports: ``stuck_threads`` (threads of trials given up on still running in this
    process) and ``replaced_workers`` (workers replaced because such a thread was stuck in
    them). An executor without them counts as 0.
    """

    threads: int

    def run(
        self,
        tasks: Iterable[TrialTask],
        runner: TrialRunner,
        *,
        on_result: Callable[[TrialResult], bool | None],
        timeout: float | None = None,
    ) -> str:
        """Run ``tasks`` with ``runner``; return a :class:`RunStatus` value."""
        ...


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
        inbox: queue.SimpleQueue[tuple[int, TrialTask] | None] = queue.SimpleQueue()
        outbox: queue.SimpleQueue[tuple[int, TrialResult | None]] = queue.SimpleQueue()
        running: dict[int, tuple[CancelToken, float, threading.Thread]] = {}
        abandoned: set[int] = set()  # trials given up at their deadline (their threads exit when they return)
        stopping = threading.Event()
        base_context = contextvars.copy_context()
        in_flight: dict[int, TrialTask] = {}
        self.stuck_detail = None

        def work() -> None:
            while True:
                item = inbox.get()
                if item is None:
                    return
                submission, task = item
                if stopping.is_set():
                    continue
                token = CancelToken(timeout)
                running[submission] = (token, time.time(), threading.current_thread())
                try:
                    result = base_context.copy().run(runner, task, token=token)
                except BaseException as error:  # the runner records errors; this is a last resort
                    result = TrialRunner.failure(
                        task, error, stage="runner", started=time.time(), clock=time.perf_counter(), attempt=1
                    )
                outbox.put((submission, result))
                if submission in abandoned:
                    return  # a replacement took this thread's place while it was stuck

        for submission, task in enumerate(tasks):
            in_flight[submission] = task
            inbox.put((submission, task))
        # A 12-trial mini-batch needs no 64 threads; and no more threads than the cap on stuck ones leaves room for.
        left_behind = self.stuck_threads
        workers = min(self.threads, len(in_flight), self.threads + self.max_stuck - left_behind)
        if in_flight and workers < 1:
            self.stuck_detail = (
                f"{left_behind} threads of earlier trials are still stuck in code that cannot be cancelled (such as "
                f"a metric that never returns), the most this executor leaves behind ({self.max_stuck}); restart "
                "the kernel to end them, or use executor='process', whose stuck workers are replaced"
            )
            return RunStatus.STOPPED
        for _ in range(workers):
            threading.Thread(target=work, name="dspex-trial", daemon=True).start()
        wait = 0.5 if timeout is None else max(0.01, min(0.5, timeout / 4))
        status = RunStatus.FINISHED
        try:
            while in_flight and status == RunStatus.FINISHED:
                finished: list[tuple[int, TrialResult | None]] = []
                try:
                    finished.append(outbox.get(timeout=wait))
                    while True:  # drain what else is ready, without waking up once per result
                        finished.append(outbox.get_nowait())
                except queue.Empty:
                    pass
                for submission, result in finished:
                    running.pop(submission, None)
                    if submission not in in_flight:
                        continue  # the late result of a trial given up at its deadline
                    del in_flight[submission]
                    if result is not None and on_result(result):
                        status = RunStatus.STOPPED
                        break
                if timeout is None or status != RunStatus.FINISHED:
                    continue
                for submission, (token, started, thread) in list(running.items()):
                    if submission not in in_flight or not token.cancelled:
                        continue
                    task = in_flight.pop(submission)
                    abandoned.add(submission)
                    with self._left_lock:
                        self._left_behind.add(thread)
                    left_behind = self.stuck_threads
                    if left_behind <= self.max_stuck:
                        threading.Thread(target=work, name="dspex-trial", daemon=True).start()
                        workers += 1
                    elif self.stuck_detail is None:
                        self.stuck_detail = (
                            f"{left_behind} trial threads did not return after their {timeout:g} s timeout (stuck in "
                            "code that cannot be cancelled, such as a metric that never returns), over the "
                            f"{self.max_stuck} this executor may leave behind; stopped instead of leaving more"
                        )
                    if on_result(runner.abandon(task, token, started=started, reason=f"timeout after {timeout:g} s")):
                        status = RunStatus.STOPPED
                        break
                    if self.stuck_detail is not None:
                        status = RunStatus.STOPPED
                        break
        except KeyboardInterrupt:
            status = RunStatus.INTERRUPTED
        finally:
            stopping.set()
            for token, _, _ in list(running.values()):
                token.cancel("run stopped" if status != RunStatus.INTERRUPTED else "run interrupted")
            for _ in range(workers):
                inbox.put(None)
        return status


def make_executor(spec: object = None, *, threads: int | None = None) -> Executor:
    """Return an executor from a spec.

    Args:
        spec: None or ``"thread"`` (a thread pool in this process); ``"process"`` (local worker
            processes, one per core up to ``threads``, sharing ``threads`` trials at once);
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
        from dspex_lab.engine._process import ProcessExecutor, default_workers

        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ExecutionError(f"threads must be a positive integer, got {count!r}")
        workers, per_worker = default_workers(count)
        return ProcessExecutor(workers, threads_per_worker=per_worker)
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

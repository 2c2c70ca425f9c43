"""Executors: run many trials in parallel with timeouts, retries, an error budget and cancel."""

from __future__ import annotations

import contextvars
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from dspex_lab.engine._trial import RetryPolicy, TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError

__all__ = ["Executor", "RunStatus", "ThreadExecutor", "make_executor"]


class RunStatus:
    """How a run ended."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"


class Executor(Protocol):
    """Runs trials in parallel and hands each finished one to ``on_result``.

    Contract: ``on_result`` is called on the calling thread, once per task, in
    completion order; if it returns True the run stops (no new trials start, the
    running ones are abandoned) and ``run`` returns ``"stopped"``. A
    KeyboardInterrupt while waiting stops the run promptly and ``run`` returns
    ``"interrupted"``; every result delivered before that is kept by the caller.
    """

    threads: int

    def run(
        self,
        tasks: Iterable[TrialTask],
        runner: TrialRunner,
        *,
        on_result: Callable[[TrialResult], bool | None],
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> str:
        """Run ``tasks`` with ``runner``; return a :class:`RunStatus` value."""
        ...


class ThreadExecutor:
    """Run trials on daemon worker threads inside this process (the default).

    Each trial runs in a copy of the caller's ``contextvars`` context, so
    ``dspy.context(...)`` settings, the active dspex context and DSPy's active
    call id reach the worker. A trial that passes its timeout is abandoned (a
    Python thread cannot be killed): its worker is replaced so capacity stays
    constant, and its late result is ignored.
    """

    def __init__(self, threads: int = 8) -> None:
        if not isinstance(threads, int) or threads < 1:
            raise ExecutionError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads

    def __repr__(self) -> str:
        return f"ThreadExecutor(threads={self.threads})"

    def run(
        self,
        tasks: Iterable[TrialTask],
        runner: TrialRunner,
        *,
        on_result: Callable[[TrialResult], bool | None],
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> str:
        """Run ``tasks`` with ``runner``; see :class:`Executor` for the contract."""
        retry = retry or RetryPolicy()
        inbox: queue.SimpleQueue[tuple[int, TrialTask, int] | None] = queue.SimpleQueue()
        outbox: queue.SimpleQueue[tuple[int, TrialResult | None]] = queue.SimpleQueue()
        started: dict[int, float] = {}
        cancel = threading.Event()
        base_context = contextvars.copy_context()
        submission_ids = itertools.count()
        in_flight: dict[int, tuple[TrialTask, int]] = {}

        def work() -> None:
            while True:
                item = inbox.get()
                if item is None:
                    return
                submission, task, attempt = item
                if cancel.is_set():
                    continue
                started[submission] = time.monotonic()
                try:
                    result = base_context.copy().run(runner, task, attempt=attempt)
                except BaseException as error:  # the runner records errors; this is a last resort
                    result = TrialRunner.failure(
                        task, error, stage="runner", started=time.time(), clock=time.perf_counter(), attempt=attempt
                    )
                outbox.put((submission, result))

        def submit(task: TrialTask, attempt: int) -> None:
            submission = next(submission_ids)
            in_flight[submission] = (task, attempt)
            inbox.put((submission, task, attempt))

        def start_worker() -> None:
            threading.Thread(target=work, name="dspex-trial", daemon=True).start()

        # Every task is queued up front: workers never wait for the coordinating thread to hand
        # out work, which matters when many threads compete for the GIL.
        for task in tasks:
            submit(task, 1)
        workers = self.threads
        for _ in range(workers):
            start_worker()
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
                    if submission not in in_flight:
                        continue  # a late result of an abandoned (timed-out) attempt
                    del in_flight[submission]
                    started.pop(submission, None)
                    if result is not None and on_result(result):
                        status = RunStatus.STOPPED
                        break
                if timeout is not None and status == RunStatus.FINISHED:
                    now = time.monotonic()
                    for late in [sid for sid, began in list(started.items()) if now - began > timeout]:
                        began = started.pop(late)
                        if late not in in_flight:
                            continue
                        task, attempt = in_flight.pop(late)
                        start_worker()  # the stuck worker is lost to this run; keep capacity
                        workers += 1
                        if attempt <= retry.retries:
                            submit(task, attempt + 1)
                        elif on_result(
                            TrialRunner.timed_out(
                                task, timeout=timeout, started=time.time() - (now - began), attempts=attempt
                            )
                        ):
                            status = RunStatus.STOPPED
                            break
        except KeyboardInterrupt:
            status = RunStatus.INTERRUPTED
        finally:
            cancel.set()
            for _ in range(workers):
                inbox.put(None)
        return status


def make_executor(spec: object = None, *, threads: int | None = None) -> Executor:
    """Return an executor from a spec: None/"thread" (thread pool), or an Executor instance."""
    if spec is None or spec == "thread":
        return ThreadExecutor(threads or 8)
    if isinstance(spec, str) and spec.startswith("dask://"):
        raise ExecutionError("the Dask executor is not available in this version of dspex_lab; use executor='thread'")
    if hasattr(spec, "run") and hasattr(spec, "threads"):
        return spec  # type: ignore[return-value]
    raise ExecutionError(f"unknown executor {spec!r}: use 'thread' or an Executor instance")

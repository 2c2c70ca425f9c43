"""Run trials on a Dask cluster (``executor="dask://host:port"`` or a ``distributed.Client``).

Dask schedules; dspex_lab does not add a scheduler of its own. Each Dask task runs a
chunk of trials, ``dspex_lab.engine._remote.run_remote_chunk(plan, payloads, timeout)``,
so the workers need dspex_lab (and the modules the metric and program come from)
installed. A chunk holds up to :data:`MAX_CHUNK` trials, as many as take about
:data:`CHUNK_SECONDS`, and chunks shrink as the run drains (see :func:`chunk_size`); with
a timeout each task is one trial. The driver keeps a window of
tasks submitted (twice the cluster's threads, or exactly its threads when trials have a
timeout, so a task's time since submission is close to its running time), collects
results as they complete and alone calls ``on_result`` and the span sink. Results are
keyed by their submission number: when a worker dies, Dask's scheduler runs its chunk
again elsewhere (up to its ``allowed-failures``; past that its trials are recorded as
errors) and the driver delivers each trial once. ``dask`` and ``distributed`` are imported only when a Dask
executor is made.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from dspex_lab.engine._executor import RunStatus
from dspex_lab.engine._remote import encode, plan_for, spans_from, task_payload
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask, stopped_result
from dspex_lab.errors import ExecutionError, MissingDependencyError

__all__ = ["DaskExecutor", "chunk_size", "is_dask_client"]

# Seconds past a trial's timeout after which the driver stops waiting for its worker.
TIMEOUT_GRACE = 2.0
# Times a trial is queued again after Dask cancelled its task by itself, before it is recorded as an error.
MAX_REQUEUES = 3
# The most trials one Dask task runs, one after another.
MAX_CHUNK = 8
# Seconds the driver waits for the results of chunks Dask reports finished before it gives up on the run
# (fetching them normally takes milliseconds; a fetch that never returns once held a benchmark run forever).
GATHER_TIMEOUT = 60.0
# A chunk is sized to take about this long, so a finished trial waits at most that for its
# chunk-mates before the driver records it (and an interrupt loses no more than that).
CHUNK_SECONDS = 0.5


def chunk_size(pending: int, threads: int, timeout: float | None, trial_seconds: float | None) -> int:
    """Return how many of ``pending`` trials the next Dask task runs.

    A Dask task costs milliseconds of scheduler, worker and driver CPU, as much as a
    trial on the lab LM, so short trials travel in chunks. A chunk takes about
    :data:`CHUNK_SECONDS` at the trials' mean wall time so far (``trial_seconds``; one
    trial per task until the first results say how long trials take), so slow trials
    travel alone and results keep arriving. Chunks also shrink as the queue drains (a
    share of what is left per thread, as in guided self-scheduling), so the last tasks
    are single trials and no thread runs a long chunk while the others idle. With a
    timeout every task is one trial: the driver's deadline counts from submission, which
    a trial waiting behind others in its chunk would overrun.
    """
    if timeout is not None or trial_seconds is None:
        return 1
    by_time = int(CHUNK_SECONDS / max(trial_seconds, 1e-6))
    return max(1, min(MAX_CHUNK, pending // threads, by_time))


def is_dask_client(value: object) -> bool:
    """Return whether ``value`` is a ``distributed.Client`` (without importing distributed)."""
    kind = type(value)
    return kind.__name__ == "Client" and kind.__module__.split(".")[0] == "distributed"


def _distributed() -> Any:
    try:
        import distributed
    except ImportError as error:
        raise MissingDependencyError("distributed", "dask") from error
    return distributed


class DaskExecutor:
    """Run trials as Dask tasks on an existing cluster.

    Args:
        cluster: ``"dask://host:port"`` (or ``"tcp://host:port"``), or a ``distributed.Client``.
            A client made here from an address is closed by :meth:`close`; one passed in is left open.
        connect_timeout: seconds to wait for the scheduler when connecting to an address.
    """

    def __init__(self, cluster: str | Any, *, connect_timeout: float = 10.0) -> None:
        distributed = _distributed()
        self._own_client = False
        # Chunks Dask cancelled by itself, whose trials were queued again (for monitoring).
        self.cancelled_by_dask = 0
        # Trials found in no queue and no task, queued again (for monitoring; should stay 0).
        self.orphaned_trials = 0
        # Finished tasks found by their state after half a second without any done-callback (for monitoring;
        # the benchmark counts a few per run under load: callbacks lag or go missing).
        self.missed_callbacks = 0
        # Result fetches that did not return within GATHER_TIMEOUT (each stopped its run with an error).
        self.stalled_gathers = 0
        self._fetcher: concurrent.futures.ThreadPoolExecutor | None = None
        if is_dask_client(cluster):
            self.client = cluster
        elif isinstance(cluster, str) and cluster.startswith(("dask://", "tcp://")):
            address = "tcp://" + cluster.split("://", 1)[1]
            if address == "tcp://":
                raise ExecutionError(f"executor {cluster!r} names no scheduler: use 'dask://host:port'")
            try:
                self.client = distributed.Client(address, timeout=f"{connect_timeout}s", set_as_default=False)
            except (OSError, TimeoutError) as error:
                raise ExecutionError(
                    f"cannot reach the Dask scheduler at {address} ({error}); start one (dask scheduler) or check "
                    "the address"
                ) from None
            self._own_client = True
        else:
            raise ExecutionError(
                f"a Dask executor takes 'dask://host:port' or a distributed.Client, got {cluster!r:.80}"
            )

    def __repr__(self) -> str:
        return f"DaskExecutor({self.client.scheduler.address!r})"

    @property
    def threads(self) -> int:
        """Worker threads across the cluster now (at least 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def close(self) -> None:
        """Close the client if this executor made it."""
        if self._fetcher is not None:
            self._fetcher.shutdown(wait=False)
            self._fetcher = None
        if self._own_client:
            self.client.close()

    def run(
        self,
        tasks: Iterable[TrialTask],
        runner: TrialRunner,
        *,
        on_result: Callable[[TrialResult], bool | None],
        timeout: float | None = None,
    ) -> str:
        """Run ``tasks`` as Dask tasks; see :class:`Executor` for the contract.

        Raises:
            ExecutionError: the runner cannot travel to a worker, or the workers cannot rebuild it.
        """
        from dspex_lab.engine._remote import cancel_run_on_worker, run_remote_chunk

        plan_bytes = encode(plan_for(runner, executor="dask", cloudpickle_functions=True))
        pending = collections.deque(enumerate(tasks))
        in_flight = dict(pending)
        threads = self.threads
        window = threads * (1 if timeout is not None else 2)
        run_key = uuid.uuid4().hex[:12]
        submitted: dict[Any, tuple[list[int], float]] = {}
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        status = RunStatus.FINISHED
        trial_seconds: float | None = None  # the mean wall time of the trials delivered so far
        delivered = 0
        requeued: dict[int, int] = {}  # submission -> times its chunk was cancelled by Dask
        try:
            while in_flight and status == RunStatus.FINISHED:
                chunks = []
                while pending and len(submitted) + len(chunks) < window:
                    size = chunk_size(len(pending), threads, timeout, trial_seconds)
                    chunks.append([pending.popleft() for _ in range(min(len(pending), size))])
                if chunks:
                    # One message to the scheduler for every chunk submitted now: a submit each cost the
                    # driver and the scheduler about a millisecond of CPU per task on top of the task itself.
                    futures = self.client.map(
                        run_remote_chunk,
                        [plan_bytes] * len(chunks),
                        [[(submission, encode(task_payload(task))) for submission, task in chunk] for chunk in chunks],
                        [timeout] * len(chunks),
                        [run_key] * len(chunks),
                        key=[f"dspex-trials-{run_key}-{chunk[0][0]}" for chunk in chunks],
                        pure=False,
                    )
                    now = time.time()
                    for chunk, future in zip(chunks, futures, strict=True):
                        submitted[future] = ([submission for submission, _ in chunk], now)
                        future.add_done_callback(finished.put)  # called on the client's thread
                done = []
                try:
                    done.append(finished.get(timeout=0.5))
                    while True:  # take what else is ready, without waking once per result
                        done.append(finished.get_nowait())
                except queue.Empty:
                    pass
                if not done:
                    # Half a second without a callback: trust the futures' own states over callbacks that
                    # may never come (the benchmark's hangs left the cluster idle with the driver waiting).
                    missed = [future for future in submitted if future.status in ("finished", "error", "cancelled")]
                    self.missed_callbacks += len(missed)
                    done.extend(missed)
                done = list(dict.fromkeys(future for future in done if future in submitted))  # not given up
                for future in [future for future in done if future.status in ("pending", "lost")]:
                    done.remove(future)  # its result was lost with its worker; Dask runs it again
                    future.add_done_callback(finished.put)
                for future in [future for future in done if future.status == "cancelled"]:
                    # Not by this loop (it forgets a future before cancelling it) but by Dask itself: the
                    # scheduler cancelling keys, or the client losing its scheduler connection. Unhandled,
                    # its trials were neither queued nor submitted, and the run waited for them forever.
                    done.remove(future)
                    submissions, _ = submitted.pop(future)
                    self.cancelled_by_dask += 1
                    for result in self._requeue(submissions, pending, in_flight, requeued):
                        if on_result(result):
                            status = RunStatus.STOPPED
                # One gather for every finished chunk: each future.result() is a round trip through the
                # client's event loop, which cost ~7 ms a chunk on a busy 2-core machine.
                answers = self._gather([future for future in done if future.status == "finished"])
                for future in done:
                    submissions, started = submitted.pop(future)
                    answer = answers.get(future)
                    for result in self._results_of(future, answer, submissions, in_flight, runner, started):
                        delivered += 1
                        trial_seconds = (trial_seconds or 0.0) + (result.latency - (trial_seconds or 0.0)) / delivered
                        if on_result(result):
                            status = RunStatus.STOPPED
                            break
                    if status != RunStatus.FINISHED:
                        break
                if timeout is not None and status == RunStatus.FINISHED:
                    status = self._expire(submitted, in_flight, timeout, on_result)
                if status == RunStatus.FINISHED and in_flight and not pending and not submitted:
                    # Trials no chunk holds any more would be waited for forever. A guard: 3 of 7 benchmark
                    # runs hung with no cause found. Queue them again (delivery stays once per trial).
                    self.orphaned_trials += len(in_flight)
                    for result in self._requeue(sorted(in_flight), pending, in_flight, requeued):
                        if on_result(result):
                            status = RunStatus.STOPPED
        except KeyboardInterrupt:
            status = RunStatus.INTERRUPTED
        finally:
            if submitted:
                self.client.cancel(list(submitted))
            if status != RunStatus.FINISHED:
                # Trials already running on workers stop before their next LM call (not waited for).
                reason = "run interrupted" if status == RunStatus.INTERRUPTED else "run stopped"
                self.client.run(cancel_run_on_worker, run_key, reason, wait=False)
        return status

    @staticmethod
    def _requeue(
        submissions: list[int],
        pending: collections.deque[tuple[int, TrialTask]],
        in_flight: dict[int, TrialTask],
        requeued: dict[int, int],
    ) -> list[TrialResult]:
        """Queue again the undelivered trials of a chunk Dask cancelled; return errors for those cancelled too often."""
        failures = []
        for submission in reversed(submissions):
            if submission not in in_flight:
                continue
            requeued[submission] = requeued.get(submission, 0) + 1
            if requeued[submission] <= MAX_REQUEUES:
                pending.appendleft((submission, in_flight[submission]))
                continue
            error = ExecutionError(f"this trial's Dask task was cancelled or lost {requeued[submission]} times")
            task = in_flight.pop(submission)
            failures.append(
                TrialRunner.failure(
                    task, error, stage="runner", started=time.time(), clock=time.perf_counter(), attempt=1
                )
            )
        return failures

    def _gather(self, futures: list[Any]) -> dict[Any, Any]:
        """Return the answers of finished chunks, fetched from their workers in one round trip.

        Raises:
            ExecutionError: the answers did not come within :data:`GATHER_TIMEOUT` seconds. The
                run stops with what it has recorded (``resume=`` continues it) instead of waiting
                forever; the stuck fetch is left to its thread, and the next fetch uses a new one.
        """
        if not futures:
            return {}
        if self._fetcher is None:
            self._fetcher = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dspex-dask-gather")
        fetch = self._fetcher.submit(self.client.gather, futures)
        try:
            answers = fetch.result(timeout=GATHER_TIMEOUT)
        except concurrent.futures.TimeoutError:
            self._fetcher.shutdown(wait=False)
            self._fetcher = None
            self.stalled_gathers += 1
            raise ExecutionError(
                f"Dask reported {len(futures)} chunks finished but their results did not arrive within "
                f"{GATHER_TIMEOUT:g} s (scheduler {self.client.scheduler.address}); the trials recorded so far are "
                "kept: check the cluster's workers, then run again with resume="
            ) from None
        return dict(zip(futures, answers, strict=True))

    @staticmethod
    def _results_of(
        future: Any,
        answer: Any,
        submissions: list[int],
        in_flight: dict[int, TrialTask],
        runner: TrialRunner,
        started: float,
    ) -> list[TrialResult]:
        """Return the results of a done chunk not delivered before, taking them out of ``in_flight``."""
        if future.status == "cancelled":
            return []
        if future.status == "error":
            error = future.exception()
            # KilledWorker: the scheduler ran it on workers that died, up to its allowed failures.
            return [
                TrialRunner.failure(
                    in_flight.pop(submission),
                    error,
                    stage="runner",
                    started=started,
                    clock=time.perf_counter(),
                    attempt=1,
                )
                for submission in submissions
                if submission in in_flight
            ]
        kind, outcome = answer
        if kind == "setup":
            raise ExecutionError(f"a Dask worker could not rebuild the trial runner: {outcome}")
        results = []
        for submission, result, span_rows in outcome:
            task = in_flight.pop(submission, None)
            if task is None:
                continue  # delivered already (a chunk run again after its worker died)
            if span_rows and runner.span_sink is not None:
                runner.span_sink(task.trial_id, spans_from(span_rows))
            results.append(result)
        return results

    def _expire(
        self,
        submitted: dict[Any, tuple[list[int], float]],
        in_flight: dict[int, TrialTask],
        timeout: float,
        on_result: Callable[[TrialResult], bool | None],
    ) -> str:
        # A worker enforces the deadline before every LM call; this catches a trial stuck elsewhere.
        now = time.time()
        for future, (submissions, started) in list(submitted.items()):
            if now - started <= timeout + TIMEOUT_GRACE:
                continue
            del submitted[future]
            future.cancel()
            for submission in submissions:
                task = in_flight.pop(submission, None)
                if task is None:
                    continue
                result = stopped_result(
                    task,
                    timed_out=True,
                    message=f"trial timeout after {timeout:g} s; its Dask worker did not answer by then",
                    started=started,
                    finished=now,
                )
                if on_result(result):
                    return RunStatus.STOPPED
        return RunStatus.FINISHED

"""Run trials on a Dask cluster (``executor="dask://host:port"`` or a ``distributed.Client``).

Dask schedules; dspex_lab does not add a scheduler of its own. Each Dask task runs a
chunk of trials (:func:`run_dask_chunk`, around ``dspex_lab.engine._remote.run_remote_chunk``),
so the workers need dspex_lab (and the modules the metric and program come from)
installed. A chunk holds up to :data:`MAX_CHUNK` trials, as many as take about
:data:`CHUNK_SECONDS`, and chunks shrink as the run drains (see :func:`chunk_size`); with
a timeout each task is one trial. The driver keeps a window of
tasks submitted (twice the cluster's threads, or exactly its threads when trials have a
timeout, so a task's time since submission is close to its running time), collects
results as they complete and alone calls ``on_result`` and the span sink. Results are
keyed by their submission number, so the driver delivers each trial once, whichever
copy of a chunk answers first. ``dask`` and ``distributed`` are imported only when a Dask
executor is made.

Faults stay where they happen. The driver follows the scheduler's reports of workers that
died (``client.subscribe_topic`` on each worker's address): the chunks that were on a dead
worker are cancelled, so the scheduler does not run them again next to other trials, and
their trials become *suspects*, run again alone by :func:`run_isolated_trials` (one worker
runs them one at a time, each in a child process of its own), so only a trial that kills
its process is recorded as the error. With a timeout, a worker runs each trial on a thread
of its own and gives it up at its deadline (:mod:`dspex_lab.engine._remote`); a worker left
with a thread stuck there (a metric that never returns) is restarted through its nanny
(``client.restart_workers``), as is the worker of a trial whose answer never came. A
chunk whose death the driver did not see fails with ``KilledWorker`` once the scheduler has
run it on ``allowed-failures`` + 1 workers; its trials become suspects too.

A run never waits forever. When no trial has come back for :data:`LIVENESS_SECONDS`, the
driver asks the scheduler (``client.run_on_scheduler``), not its own view of the futures,
whether the run can still end: a worker holding the run's tasks that has sent no heartbeat
for as long is frozen (issue 21 found one deadlocked inside CPython), tasks that are no
longer running or waiting but whose results never reached the client will never come, and
a scheduler that does not answer cannot say; each ends the run with one
:class:`~dspex_lab.errors.ExecutionError`, the trials recorded so far kept for ``resume=``.
A slow trial on a live worker is waited for.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dspex_lab.engine._cancel import STUCK_GRACE
from dspex_lab.engine._contract import (
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
    cancel_run_on_worker,
    decode,
    encode,
    held_after_stop,
    plan_for,
    run_remote_chunk,
    run_remote_trial,
    run_stopped,
    spans_from,
    stuck_threads,
    task_from,
    task_payload,
)
from dspex_lab.engine._sizing import InFlightTuner, Sizing
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask, stopped_result
from dspex_lab.errors import ExecutionError, MissingDependencyError

__all__ = [
    "ChunkAnswer",
    "DaskExecutor",
    "chunk_size",
    "is_dask_client",
    "run_dask_chunk",
    "run_dask_isolated",
    "run_isolated_trials",
]

# Seconds past a trial's timeout after which the driver stops waiting for its worker. The worker itself
# answers at the deadline (STUCK_GRACE later when the trial's thread is stuck), so this is only for a worker
# that cannot answer at all (frozen in code that holds the interpreter); it is long because a task's time
# on a worker includes a fresh worker's import of DSPy (seconds on a busy machine), which is not the trial's.
TIMEOUT_GRACE = 30.0
# Seconds a worker restart (its nanny's kill and the new process joining) may take.
RESTART_TIMEOUT = 30.0
# A worker with this many threads stuck in trials given up at their deadline is restarted during the run;
# one with fewer is restarted when the run ends (a restart mid-run makes the scheduler run its other tasks again).
MAX_STUCK_PER_WORKER = 4
# Seconds an isolation child process may take to start (it imports DSPy) before it counts as dead.
CHILD_START_TIMEOUT = 120.0
# Seconds between two checks, during a run, for workers whose thread a stopped run's hung trial still holds.
HELD_CHECK_SECONDS = 5.0
# Times a trial is queued again after Dask cancelled its task by itself, before it is recorded as an error.
MAX_REQUEUES = 3
# The most trials one Dask task runs, one after another.
MAX_CHUNK = 8
# Seconds the driver waits for the results of chunks Dask reports finished before it gives up on the run
# (fetching them normally takes milliseconds; a fetch that never returns once held a benchmark run forever).
GATHER_TIMEOUT = 60.0
# Seconds without any trial answered after which the driver asks the scheduler whether the run can still end,
# and how long a worker holding the run's tasks may send the scheduler no heartbeat before it counts as frozen
# (a worker heartbeats about every second, but a fresh one importing DSPy on a busy machine can fall silent for
# seconds; a frozen process never again). The check runs with or without a trial timeout, so a run never waits
# forever for a worker that will not answer.
LIVENESS_SECONDS = 60.0
# Task states in which the scheduler still runs, or will run, a task: the run waits for those.
_UNDER_WAY = ("processing", "waiting", "queued", "no-worker")
# Seconds between two questions to the scheduler about the workers' CPU use, for the in-flight tuner.
LOAD_SECONDS = 1.0
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
    share of what is left per thread, rounded up, as in guided self-scheduling), so only
    the last ``threads`` trials travel alone and no thread runs a long chunk while the
    others idle. With a timeout every task is one trial: the driver's deadline counts from
    submission, which a trial waiting behind others in its chunk would overrun.
    """
    if timeout is not None or trial_seconds is None:
        return 1
    by_time = int(CHUNK_SECONDS / max(trial_seconds, 1e-6))
    return max(1, min(MAX_CHUNK, -(-pending // threads), by_time))


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
        tune: keep the trials in flight per worker to what the trials' measured CPU share needs
            (:class:`~dspex_lab.engine.InFlightTuner`, from the CPU use and tasks executing each
            worker reports to the scheduler), up to the workers' threads; False: every thread.
    """

    def __init__(self, cluster: str | Any, *, connect_timeout: float = 10.0, tune: bool = True) -> None:
        distributed = _distributed()
        self._own_client = False
        self.tuner: InFlightTuner | None = None  # made at the first run, when the workers' threads are known
        self._tune = tune
        self._load = _ClusterLoad()
        # Chunks Dask cancelled by itself, whose trials were queued again (for monitoring).
        self.cancelled_by_dask = 0
        # Trials found in no queue and no task, queued again (for monitoring; should stay 0).
        self.orphaned_trials = 0
        # Finished tasks found by their state after half a second without any done-callback (for monitoring;
        # the benchmark counts a few per run under load: callbacks lag or go missing).
        self.missed_callbacks = 0
        # Result fetches that did not return within GATHER_TIMEOUT (each stopped its run with an error).
        self.stalled_gathers = 0
        # Runs ended by the liveness check: no answer for LIVENESS_SECONDS and the scheduler said none would come.
        self.stalled_runs = 0
        # Workers restarted because a trial's thread was stuck in them, or a trial's answer never came.
        self.replaced_workers = 0
        # Trials run again alone because their worker died while they were on it.
        self.isolated_trials = 0
        self._fetcher: concurrent.futures.ThreadPoolExecutor | None = None
        self._restarter: concurrent.futures.ThreadPoolExecutor | None = None
        self._prober: concurrent.futures.ThreadPoolExecutor | None = None
        self._restarted: dict[str, float] = {}  # worker address -> when this executor had it restarted
        self._restart_lock = threading.Lock()
        self._held_checked = 0.0  # when the workers were last asked about threads held after a stop
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

    # Trials never run on the driver's threads: a stuck trial thread lives (and ends) in its worker.
    stuck_threads = 0

    @property
    def sizing(self) -> Sizing:
        """Workers, trials in flight per worker (tuned, or the most threads of a worker) and the CPU share measured."""
        threads = self.client.nthreads()
        most = max(threads.values(), default=1)
        if self.tuner is None:
            return Sizing(max(1, len(threads)), most)
        return Sizing(max(1, len(threads)), min(most, self.tuner.limit), self.tuner.cpu_share)

    def _window(self, window: int, workers: int) -> int:
        """Return ``window`` chunks, or fewer when the tuner runs fewer trials per worker than it has threads.

        A Dask worker runs a task on each free thread; with at most ``limit`` tasks per worker out,
        the scheduler (which places each on the least busy worker) leaves each about ``limit``.
        """
        tuner = self.tuner
        if tuner is None or tuner.limit >= tuner.cap:
            return window
        return max(1, min(window, tuner.limit * workers))

    def close(self) -> None:
        """Close the client if this executor made it."""
        self._load.close()
        for pool in (self._fetcher, self._prober):
            if pool is not None:
                pool.shutdown(wait=False)
        self._fetcher = self._prober = None
        if self._restarter is not None:
            self._restarter.shutdown(wait=False)
            self._restarter = None
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
        backend = _DaskRun(self, runner, timeout)
        return coordinate(tasks, backend, runner=runner, on_result=on_result).status

    def _restart_stuck_workers(self, delay: float = 0.0) -> None:
        """Restart the workers still holding a thread stuck in an earlier run's trial (after ``delay`` seconds).

        A stopped run without a timeout leaves its hung trial running there, holding one of the worker's threads.
        """
        time.sleep(delay)
        with contextlib.suppress(Exception):  # a worker that cannot answer is left as it is
            counts = self.client.run(held_after_stop, on_error="return")
            self._restart([address for address, count in counts.items() if isinstance(count, int) and count > 0])

    def _restarted_lately(self, address: str, now: float) -> bool:
        return now - self._restarted.get(address, -RESTART_TIMEOUT - 1.0) <= RESTART_TIMEOUT

    def _restart(self, addresses: list[str]) -> None:
        """Restart workers with a stuck thread through their nannies, without waiting (one restart at a time)."""
        now = time.monotonic()
        with self._restart_lock:  # also called from the background thread (_restart_stuck_workers)
            fresh = [address for address in addresses if not self._restarted_lately(address, now)]
            if not fresh:
                return
            for address in [address for address, when in self._restarted.items() if now - when > RESTART_TIMEOUT]:
                del self._restarted[address]
            self._restarted.update(dict.fromkeys(fresh, now))
            self.replaced_workers += len(fresh)
        self._in_background(_restart_workers, self.client, fresh)

    def _in_background(self, function: Callable[..., Any], *args: Any) -> concurrent.futures.Future[Any]:
        """Run ``function`` on this executor's one background thread (restarts never block a run)."""
        with self._restart_lock:
            if self._restarter is None:
                self._restarter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dspex-dask-restart")
            return self._restarter.submit(function, *args)

    def _gather(self, futures: list[Any]) -> dict[Any, ChunkAnswer]:
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

    def _scheduler_view(self, keys: list[str]) -> tuple[dict[str, int], dict[str, float]] | None:
        """Return the scheduler's states of ``keys`` and, per worker processing one, seconds since its heartbeat.

        None when the scheduler did not answer within :data:`LIVENESS_SECONDS` (the question is
        left to its thread; the next one uses a new thread).
        """
        if self._prober is None:
            self._prober = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dspex-dask-liveness")
        probe = self._prober.submit(self.client.run_on_scheduler, _task_states_probe(), keys)
        try:
            return probe.result(timeout=LIVENESS_SECONDS)
        except concurrent.futures.TimeoutError:
            self._prober.shutdown(wait=False)
            self._prober = None
            return None


@dataclass(frozen=True)
class ChunkAnswer:
    """What a Dask task of dspex_lab returns to the driver (:func:`run_dask_chunk`, :func:`run_dask_isolated`).

    Attributes:
        trials: ``(submission, record, span rows)`` of each trial the task ran, in order.
        setup_error: why the worker could not rebuild the trial runner (``trials`` is then empty).
        worker: the worker's address, when threads of trials given up at their deadline are stuck there.
        stuck_threads: how many are (0: none; nothing but a new process ends them).
    """

    trials: tuple[tuple[int, TrialResult, list[dict[str, Any]]], ...] = ()
    setup_error: str | None = None
    worker: str | None = None
    stuck_threads: int = 0

    @classmethod
    def of(cls, answer: tuple[str, Any]) -> ChunkAnswer:
        """Return the answer ``("ok", trials)`` or ``("setup", error)`` of ``run_remote_chunk`` as a ChunkAnswer."""
        kind, outcome = answer
        if kind == "setup":
            return cls(setup_error=str(outcome))
        return cls(trials=tuple(outcome))


class _DaskRun:
    """One run of a :class:`DaskExecutor`: the loop's backend, submitting chunks and collecting futures.

    The driver keeps a window of chunks submitted (twice the cluster's threads, or its threads
    with a timeout); each finished future's done-callback puts it on ``finished``. Suspects go
    to one isolation task at a time (:func:`run_dask_isolated`).
    """

    replace_at = MAX_STUCK_PER_WORKER  # a restart mid-run makes the scheduler run the worker's other tasks again
    ledger: TrialLedger  # the run's, from start()

    def __init__(self, executor: DaskExecutor, runner: TrialRunner, timeout: float | None) -> None:
        self.executor = executor
        self.client = executor.client
        self.runner = runner
        self.timeout = timeout
        self.plan_bytes = encode(plan_for(runner, executor="dask", cloudpickle_functions=True))  # refused up front
        self.run_key = uuid.uuid4().hex[:12]
        self.threads = 1
        self.workers = 1
        self.window = 1
        self.watch: _WorkerWatch | None = None
        self.submitted: dict[Any, tuple[list[int], float]] = {}  # future of a chunk -> its submissions, when sent
        self.by_key: dict[str, Any] = {}  # task key -> future of the chunks submitted
        self.isolating: dict[Any, tuple[list[int], float]] = {}  # the isolation task's future, likewise
        self.finished: queue.SimpleQueue[Any] = queue.SimpleQueue()  # futures whose done-callback came
        self.trial_seconds: float | None = None  # the mean wall time of the trials answered so far
        self.answered = 0
        self.requeued: dict[int, int] = {}  # submission -> times its chunk was cancelled by Dask or orphaned
        self.answered_at = time.monotonic()  # when a trial last came back (or the run started)
        self.checked_at = time.monotonic()  # when the liveness check last asked the scheduler
        # When the scheduler first said none of the run's tasks is under way though their results had not come.
        self.lost_since: float | None = None

    def start(self, ledger: TrialLedger) -> str | None:
        """Restart workers an earlier run left a hung trial in, follow worker deaths, size the window."""
        self.ledger = ledger
        self.executor._held_checked = time.monotonic()
        # Waited for, but not forever: a frozen worker never answers (the liveness check then ends the run).
        with contextlib.suppress(concurrent.futures.TimeoutError):
            self.executor._in_background(self.executor._restart_stuck_workers).result(timeout=LIVENESS_SECONDS)
        self.watch = _WorkerWatch(self.client)
        threads = self.client.nthreads()
        self.threads = max(1, sum(threads.values()))
        self.workers = max(1, len(threads))
        self.window = self.threads * (1 if self.timeout is not None else 2)
        if self.executor._tune:
            cap = max(threads.values(), default=1)
            if self.executor.tuner is None:
                self.executor.tuner = InFlightTuner(cap)
            self.executor.tuner.resize(cap)
        self.answered_at = self.checked_at = time.monotonic()
        return None

    def submit(self) -> None:
        """Fill the window with chunks, sent in one ``client.map``; send waiting suspects to be run alone."""
        chunks: list[list[Submission]] = []
        queue_ = self.ledger.queue
        window = self.executor._window(self.window, self.workers)
        if self.trial_seconds is None and self.timeout is None:
            # Until results say how long a trial takes every task is one trial: one per thread, not a
            # window's worth, so the run pays Dask's per-task cost for as few single trials as it can.
            window = min(window, self.threads)
        while queue_ and len(self.submitted) + len(chunks) < window:
            size = chunk_size(len(queue_), self.threads, self.timeout, self.trial_seconds)
            chunk = self.ledger.take(queue_, size)
            if chunk:
                chunks.append(chunk)
        if chunks:
            # One message to the scheduler for every chunk submitted now: a submit each cost the
            # driver and the scheduler about a millisecond of CPU per task on top of the task itself.
            futures = self.client.map(
                run_dask_chunk,
                [self.plan_bytes] * len(chunks),
                [[(item.number, encode(task_payload(item.task))) for item in chunk] for chunk in chunks],
                [self.timeout] * len(chunks),
                [self.run_key] * len(chunks),
                key=[f"dspex-trials-{self.run_key}-{chunk[0].number}" for chunk in chunks],
                pure=False,
            )
            now = time.time()
            for chunk, future in zip(chunks, futures, strict=True):
                self.submitted[future] = ([item.number for item in chunk], now)
                self.by_key[future.key] = future
                future.add_done_callback(self.finished.put)  # called on the client's thread
        self._isolate()

    def _isolate(self) -> None:
        """Send the suspects to one worker, which runs them one at a time in child processes of its own."""
        if self.isolating:  # one isolation task at a time: the next takes every suspect found meanwhile
            return
        batch = self.ledger.take(self.ledger.suspects, len(self.ledger.suspects))
        if not batch:
            return
        future = self.client.submit(
            run_dask_isolated,
            self.plan_bytes,
            [(item.number, encode(task_payload(item.task))) for item in batch],
            self.timeout,
            self.run_key,
            key=f"dspex-isolated-{self.run_key}-{batch[0].number}-{uuid.uuid4().hex[:6]}",
            pure=False,
        )
        self.isolating[future] = ([item.number for item in batch], time.time())
        future.add_done_callback(self.finished.put)

    def receive(self) -> Sequence[Message]:
        """Collect the futures done within half a second, and the chunks lost with a worker that died."""
        orphans = self._orphans()
        if orphans:
            return orphans
        done = self._wait_for_done()
        messages = self._lost_with_their_worker()
        if not done:
            done = self._missed_callbacks()
        messages += self._isolated_answers(done)
        messages += self._chunk_answers(done)
        if messages:
            self.answered_at = time.monotonic()
        return messages

    def _orphans(self) -> list[Message]:
        """Queue again trials that nothing holds any more, which would be waited for forever.

        A guard: 3 of 7 benchmark runs hung with no cause found. Delivery stays once per trial.
        """
        undelivered = self.ledger.undelivered
        if not undelivered or self.ledger.waiting or self.submitted or self.isolating:
            return []
        self.executor.orphaned_trials += len(undelivered)
        return self._requeue(sorted(undelivered))

    def _wait_for_done(self) -> list[Any]:
        done = []
        try:
            done.append(self.finished.get(timeout=0.5))
            while True:  # take what else is ready, without waking once per result
                done.append(self.finished.get_nowait())
        except queue.Empty:
            pass
        return done

    def _lost_with_their_worker(self) -> list[Message]:
        """Cancel the chunks that were on a worker that died (not one restarted here) and suspect their trials.

        Cancelled: the scheduler would run such a chunk again with its neighbours, and a trial that
        kills its worker would take them down with it again. Its trials run alone instead.
        """
        lost = []
        for address, keys in self.watch.removals() if self.watch is not None else ():
            if self.executor._restarted_lately(address, time.monotonic()):
                continue  # restarted here because a thread was stuck in it: its other tasks are not suspects
            for key in keys:
                future = self.by_key.get(key)
                if future is not None and future in self.submitted:
                    lost.append(future)
        for key in [key for key, future in self.by_key.items() if future not in self.submitted]:
            del self.by_key[key]
        messages: list[Message] = []
        for future in dict.fromkeys(lost):
            self.client.cancel([future])
            messages += self._suspect(self.submitted.pop(future)[0])
        return messages

    def _missed_callbacks(self) -> list[Any]:
        """Return the futures that are done though no callback said so.

        Half a second without a callback: trust the futures' own states over callbacks that may
        never come (the benchmark's hangs left the cluster idle with the driver waiting).
        """
        missed = [future for future in [*self.submitted, *self.isolating] if future.status in _DONE]
        self.executor.missed_callbacks += len(missed)
        return missed

    def _isolated_answers(self, done: list[Any]) -> list[Message]:
        messages: list[Message] = []
        for future in dict.fromkeys(future for future in done if future in self.isolating):
            if future.status in ("pending", "lost"):
                continue  # Dask runs it again elsewhere; its callback comes then
            submissions, started = self.isolating.pop(future)
            answer = self.executor._gather([future]).get(future) if future.status == "finished" else None
            messages += self._answers_of(future, answer, submissions, started)
        return messages

    def _chunk_answers(self, done: list[Any]) -> list[Message]:
        """Return what the done chunks answered (one gather for all of them), and release them."""
        done = list(dict.fromkeys(future for future in done if future in self.submitted))  # not given up
        messages: list[Message] = []
        for future in [future for future in done if future.status in ("pending", "lost")]:
            done.remove(future)  # its result was lost with its worker; Dask runs it again
            future.add_done_callback(self.finished.put)
        for future in [future for future in done if future.status == "cancelled"]:
            # Not by this run (it forgets a future before cancelling it) but by Dask itself: the scheduler
            # cancelling keys, or the client losing its scheduler connection. Unhandled, its trials were
            # neither queued nor submitted, and the run waited for them forever.
            done.remove(future)
            self.executor.cancelled_by_dask += 1
            messages += self._requeue(self.submitted.pop(future)[0])
        for future in [future for future in done if _killed_its_workers(future)]:
            # Workers died running it as often as the scheduler allows (a death the watch missed).
            done.remove(future)
            messages += self._suspect(self.submitted.pop(future)[0])
        # One gather for every finished chunk: each future.result() is a round trip through the
        # client's event loop, which cost ~7 ms a chunk on a busy 2-core machine.
        answers = self.executor._gather([future for future in done if future.status == "finished"])
        for future in done:
            submissions, started = self.submitted.pop(future)
            messages += self._answers_of(future, answers.get(future), submissions, started)
            # Answered: the scheduler may forget it, so restarting its worker never runs it again.
            future.release()
        return messages

    def _answers_of(
        self, future: Any, answer: ChunkAnswer | None, submissions: list[int], started: float
    ) -> list[Message]:
        """Return the messages of a done chunk: its trials' records, a worker with stuck threads, a setup error."""
        if future.status == "error":
            # KilledWorker: the scheduler ran it on workers that died, up to its allowed failures.
            error = future.exception()
            return [TrialLost(submission, error, started) for submission in submissions]
        if answer is None:
            return []  # cancelled: its trials are delivered by another copy, or queued again when nothing holds them
        messages: list[Message] = []
        if answer.worker is not None and answer.stuck_threads:
            messages.append(WorkerStuck(answer.worker, answer.stuck_threads))
        if answer.setup_error is not None:
            return [*messages, SetupFailed(f"a Dask worker could not rebuild the trial runner: {answer.setup_error}")]
        wants_spans = self.runner.span_sink is not None
        for submission, result, span_rows in answer.trials:
            if submission not in self.ledger.undelivered:
                continue  # delivered already (a chunk run again after its worker died)
            self.answered += 1
            mean = self.trial_seconds or 0.0
            self.trial_seconds = mean + (result.latency - mean) / self.answered
            spans = spans_from(span_rows) if span_rows and wants_spans else ()
            messages.append(TrialReturned(submission, result, spans))
        return messages

    def _suspect(self, submissions: list[int]) -> list[Message]:
        undelivered = tuple(submission for submission in submissions if submission in self.ledger.undelivered)
        self.executor.isolated_trials += len(undelivered)
        return [TrialsSuspected(undelivered)] if undelivered else []

    def _requeue(self, submissions: list[int]) -> list[Message]:
        """Queue again the undelivered trials of a chunk Dask cancelled; record those cancelled too often as lost."""
        again: list[int] = []
        lost: list[Message] = []
        for submission in submissions:
            if submission not in self.ledger.undelivered:
                continue
            times = self.requeued[submission] = self.requeued.get(submission, 0) + 1
            if times <= MAX_REQUEUES:
                again.append(submission)
            else:
                error = ExecutionError(f"this trial's Dask task was cancelled or lost {times} times")
                lost.append(TrialLost(submission, error, time.time()))
        return [TrialsRequeued(tuple(again)), *lost] if again else lost

    def expire(self) -> Sequence[Message]:
        """Give up on chunks whose worker did not answer in time; now and then, look for workers hung trials hold."""
        messages = self._expire_overdue() if self.timeout is not None else []
        if not messages:
            self._check_liveness()
        if self.executor.tuner is not None:
            self.executor._load.feed(self.client, self.executor.tuner)
        if time.monotonic() - self.executor._held_checked > HELD_CHECK_SECONDS:
            # An earlier run's hung trial may hold a thread this run waits for (its cancel can reach the
            # worker after the check made when that run stopped).
            self.executor._held_checked = time.monotonic()
            self.executor._in_background(self.executor._restart_stuck_workers)
        return messages

    def _check_liveness(self) -> None:
        """Stop the run when nothing came back for :data:`LIVENESS_SECONDS` and the scheduler says nothing will.

        Asked of the scheduler, not of this client's view of its futures (which is what stops
        changing when messages are lost): the run waits as long as a live worker runs its tasks
        (a slow trial is not a stall), and stops when a worker holding them has sent no heartbeat
        for :data:`LIVENESS_SECONDS` (a frozen process: issue 21 found a worker deadlocked in
        CPython, python/cpython#106883), when none of its tasks is running or waiting any more
        though their results never came, or when the scheduler does not answer.

        Raises:
            ExecutionError: the run cannot end by itself; the trials recorded so far are kept.
        """
        now = time.monotonic()
        if now - self.answered_at < LIVENESS_SECONDS or now - self.checked_at < LIVENESS_SECONDS / 4:
            return
        keys = [str(future.key) for future in [*self.submitted, *self.isolating]]
        if not keys:
            return
        view = self.executor._scheduler_view(keys)
        self.checked_at = time.monotonic()
        reason = stall_reason(view, len(keys), limit=LIVENESS_SECONDS)
        if reason is None or (self.lost_since is not None and self.lost_since < self.answered_at):
            self.lost_since = None
        if reason is None:
            return
        if view is not None and results_outstanding(view, limit=LIVENESS_SECONDS):
            # Finished tasks whose results are on their way: under load the client hears of them seconds
            # after the scheduler does. Lost only when the scheduler says so for half the limit more.
            if self.lost_since is None:
                self.lost_since = self.checked_at
            if self.checked_at - self.lost_since < LIVENESS_SECONDS / 2:
                return
        self.executor.stalled_runs += 1
        raise ExecutionError(
            f"no trial came back from Dask for {now - self.answered_at:.0f} s and none will: {reason} (scheduler "
            f"{self.client.scheduler.address}); the trials recorded so far are kept: restart the cluster's workers, "
            "then run again with resume="
        )

    def _expire_overdue(self) -> list[Message]:
        """Record as timed out the trials of chunks on a worker past their timeout plus :data:`TIMEOUT_GRACE`.

        A worker gives each trial up at its deadline; this catches a worker that did not answer even
        so (frozen in code that holds the interpreter, say): that worker is restarted. A task the
        scheduler has not given to a worker yet (waiting for one that is restarting, say) has not
        started: its clock starts again now.
        """
        timeout = self.timeout or 0.0
        now = time.time()
        overdue = [future for future, (_, sent) in self.submitted.items() if now - sent > timeout + TIMEOUT_GRACE]
        if not overdue:
            return []
        try:
            processing: dict[str, Any] | None = self.client.processing()
        except Exception:  # a scheduler that cannot say: give up on them all, as before
            processing = None
        expired = overdue
        if processing is not None:
            on_workers = {str(key) for keys in processing.values() for key in keys}
            expired = [future for future in overdue if str(future.key) in on_workers]
            for future in overdue:
                if future not in expired:
                    self.submitted[future] = (self.submitted[future][0], now)
            keys = {str(future.key) for future in expired}
            self.executor._restart(
                [address for address, held in processing.items() if keys.intersection(map(str, held))]
            )
        messages: list[Message] = []
        message = f"trial timeout after {timeout:g} s; its Dask worker did not answer by then"
        for future in expired:
            submissions, started = self.submitted.pop(future)
            future.cancel()
            for submission in submissions:
                task = self.ledger.undelivered.get(submission)
                if task is not None:
                    result = stopped_result(task, timed_out=True, message=message, started=started, finished=now)
                    messages.append(TrialReturned(submission, result))
        return messages

    def replace(self, worker: Hashable) -> str | None:
        """Restart a worker with :data:`MAX_STUCK_PER_WORKER` stuck threads through its nanny (in the background)."""
        self.executor._restart([str(worker)])
        return None

    def stop(self, status: str, stuck: Sequence[Hashable]) -> None:
        """Cancel the run's tasks; unless it finished, cancel its trials on the workers; restart stuck workers."""
        if self.watch is not None:
            self.watch.close()
        if self.submitted or self.isolating:
            self.client.cancel([*self.submitted, *self.isolating])
        if stuck:
            self.executor._restart([str(worker) for worker in stuck])  # in the background: the run's results are in
        if status != RunStatus.FINISHED:
            # Trials already running on workers stop before their next LM call (not waited for).
            reason = "run interrupted" if status == RunStatus.INTERRUPTED else "run stopped"
            self.client.run(cancel_run_on_worker, self.run_key, reason, wait=False)
            # One that did not stop (a hung metric, no timeout) holds its worker's thread: restart that worker.
            self.executor._in_background(self.executor._restart_stuck_workers, STUCK_GRACE + 0.5)


_DONE = ("finished", "error", "cancelled")  # the states of a future that will not change any more


def stall_reason(view: tuple[dict[str, int], dict[str, float]] | None, outstanding: int, *, limit: float) -> str | None:
    """Return why a run that got no answer for a while can never end, from the scheduler's ``view``, or None.

    Args:
        view: the scheduler's states of the run's ``outstanding`` tasks and, per worker processing
            one of them, seconds since its last heartbeat (None: the scheduler did not answer).
        outstanding: how many tasks of the run the driver still waits for.
        limit: seconds of silence after which a worker counts as frozen.
    """
    if view is None:
        return f"the scheduler did not answer within {limit:g} s"
    states, silence = view
    frozen = sorted(address for address, seconds in silence.items() if seconds > limit)
    if frozen:
        quiet = max(silence[address] for address in frozen)
        names = f"worker {frozen[0]} runs" if len(frozen) == 1 else f"workers {', '.join(frozen)} run"
        return f"{names} this run's tasks but sent the scheduler no heartbeat for {quiet:.0f} s (frozen)"
    if results_outstanding(view, limit=limit):
        return (
            f"the scheduler runs none of its {outstanding} outstanding tasks ({_counts(states)}) yet their results "
            "never reached this client"
        )
    return None


def results_outstanding(view: tuple[dict[str, int], dict[str, float]], *, limit: float) -> bool:
    """Tell whether the scheduler's ``view`` has no worker frozen and none of the run's tasks under way.

    Then the results the driver waits for are either on their way to it or lost: which one, only
    time tells (see ``_check_liveness``).
    """
    states, silence = view
    frozen = any(seconds > limit for seconds in silence.values())
    return not frozen and not any(states.get(state) for state in _UNDER_WAY)


def _counts(states: dict[str, int]) -> str:
    return ", ".join(f"{count} {state}" for state, count in sorted(states.items()))


def _task_states_probe() -> Callable[..., tuple[dict[str, int], dict[str, float]]]:
    """Return the function the liveness check runs on the scheduler (``client.run_on_scheduler``).

    Made here as a closure so it travels by value: the scheduler need not have dspex_lab installed.
    """

    def task_states(keys: list[str], dask_scheduler: Any = None) -> tuple[dict[str, int], dict[str, float]]:
        now = time.time()
        states: dict[str, int] = {}
        silence: dict[str, float] = {}
        for key in keys:
            task = dask_scheduler.tasks.get(key)
            state = "forgotten" if task is None else str(task.state)
            states[state] = states.get(state, 0) + 1
            worker = None if task is None else task.processing_on
            if worker is not None:
                silence[str(worker.address)] = now - float(worker.last_seen)
        return states, silence

    return task_states


def _restart_workers(client: Any, addresses: list[str]) -> None:
    """End the worker processes at ``addresses``; their nannies start new ones (as after an out-of-memory kill).

    Not ``client.restart_workers``: it asks the worker to close first, which waits for its executor
    threads, and when one of them is stuck (a hung trial without a timeout) the nanny closed
    itself after the kill instead of starting a new worker, leaving the cluster without it. A
    worker without a nanny is not replaced: its deployment may start a new one.
    """
    client.run(_end_this_worker, workers=addresses, wait=False)


async def _end_this_worker() -> None:
    """End this worker process at once (run in the worker by :func:`_restart_workers`)."""
    import os

    os._exit(70)  # EX_SOFTWARE: ended on purpose, its threads stuck beyond cancelling


def _killed_its_workers(future: Any) -> bool:
    """Return whether a chunk failed because workers died running it as often as the scheduler allows."""
    if future.status != "error":
        return False
    return type(future.exception()).__name__ == "KilledWorker"


class _ClusterLoad:
    """The workers' CPU use and tasks executing, as the scheduler last heard them, fed to the in-flight tuner.

    Asked about once a second on a thread of its own (``client.scheduler_info``, Dask's public view of
    the workers' heartbeats: each reports its process's CPU percent and its tasks by state), never
    waited for: a scheduler that does not answer leaves the tuner where it is (the liveness check
    deals with it). A Dask task runs its chunk's trials one after another, so tasks executing are
    trials in flight.
    """

    def __init__(self) -> None:
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._asking: concurrent.futures.Future[tuple[float, float] | None] | None = None
        self._asked = 0.0

    def feed(self, client: Any, tuner: InFlightTuner) -> None:
        """Give the tuner the last answer, if it came; ask again once a second."""
        asking = self._asking
        if asking is not None:
            if not asking.done():
                return
            self._asking = None
            with contextlib.suppress(Exception):  # an answer that did not come says nothing about the load
                answer = asking.result()
                if answer is not None:
                    tuner.observe(*answer)
        if time.monotonic() - self._asked < LOAD_SECONDS:
            return
        self._asked = time.monotonic()
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dspex-dask-load")
        self._asking = self._pool.submit(cluster_load, client)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


def cluster_load(client: Any) -> tuple[float, float] | None:
    """Return the workers' mean CPU use (in cores) and mean tasks executing, from the scheduler (None: no workers)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    samples = [
        (float(metrics.get("cpu", 0.0)) / 100, float(metrics.get("task_counts", {}).get("executing", 0)))
        for metrics in (worker.get("metrics", {}) for worker in workers.values())
    ]
    if not samples:
        return None
    return sum(cpu for cpu, _ in samples) / len(samples), sum(running for _, running in samples) / len(samples)


class _WorkerWatch:
    """The scheduler's reports of workers that left the cluster, for one run (``client.subscribe_topic``).

    The scheduler logs a worker's removal, with the tasks it was processing, under the worker's
    address; this subscribes to the address of every worker of the cluster (again every second,
    for workers that joined since) and unsubscribes when the run ends.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self.topics: set[str] = set()
        self.checked = 0.0
        self._subscribe()

    def _subscribe(self) -> None:
        self.checked = time.monotonic()
        with contextlib.suppress(Exception):  # no watch is better than a failed run: KilledWorker still shows
            for address in self.client.nthreads():
                if address not in self.topics:
                    self.topics.add(address)
                    self.client.subscribe_topic(address, _Forward(address, self.events))

    def removals(self) -> list[tuple[str, list[str]]]:
        """Return (address, keys it was processing) for each worker removed since the last call."""
        found = []
        while True:
            try:
                address, message = self.events.get_nowait()
            except queue.Empty:
                break
            if isinstance(message, dict) and message.get("action") == "remove-worker":
                found.append((address, [str(key) for key in message.get("processing-tasks", ())]))
        if found or time.monotonic() - self.checked > 1.0:
            self._subscribe()
        return found

    def close(self) -> None:
        for topic in self.topics:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(topic)
        self.topics.clear()


class _Forward:
    """A topic handler: puts ``(address, message)`` on a queue (called on the client's event loop)."""

    def __init__(self, address: str, events: queue.SimpleQueue[tuple[str, Any]]) -> None:
        self.address = address
        self.events = events

    def __call__(self, event: tuple[float, Any]) -> None:
        self.events.put((self.address, event[1]))


def run_dask_chunk(
    plan_bytes: bytes, payloads: list[tuple[int, bytes]], timeout: float | None, run_key: str | None = None
) -> ChunkAnswer:
    """The Dask task: :func:`~dspex_lab.engine._remote.run_remote_chunk`, and whether this worker needs a restart.

    Returns:
        The chunk's answer; it names this worker and its stuck threads when threads of trials given up
        at their deadline are stuck here: nothing but a new process ends them.
    """
    answer = ChunkAnswer.of(run_remote_chunk(plan_bytes, payloads, timeout, run_key))
    stuck = stuck_threads() if answer.setup_error is None else 0
    if stuck:
        return replace(answer, worker=_worker_address(), stuck_threads=stuck)
    return answer


def run_dask_isolated(
    plan_bytes: bytes, payloads: list[tuple[int, bytes]], timeout: float | None, run_key: str | None = None
) -> ChunkAnswer:
    """The Dask task for suspects: :func:`run_isolated_trials`, answered as a :class:`ChunkAnswer`."""
    return ChunkAnswer.of(run_isolated_trials(plan_bytes, payloads, timeout, run_key))


def _worker_address() -> str | None:
    try:
        import distributed

        return str(distributed.get_worker().address)
    except (ImportError, ValueError):
        return None


def run_isolated_trials(
    plan_bytes: bytes, payloads: list[tuple[int, bytes]], timeout: float | None, run_key: str | None = None
) -> tuple[str, Any]:
    """Run trials one at a time, each in a child process of this worker (the Dask task for suspects).

    A trial that kills its process (``os._exit``, the out-of-memory killer) takes only the child
    with it and is recorded as the error; the next trial gets a new child. A child that does not
    answer by a trial's deadline (plus :data:`~dspex_lab.engine._cancel.STUCK_GRACE`) is killed and
    the trial recorded as timed out, as is one whose thread stays stuck in the child.

    Returns:
        ``("ok", [(submission, result, span rows), ...])``, or ``("setup", error text)``.
    """
    results: list[tuple[int, TrialResult, list[Any]]] = []
    child: _Child | None = None
    try:
        for submission, payload in payloads:
            if _stopped(run_key):
                break  # the driver has gone on without these; a resume runs them
            if child is None:
                child = _Child()
            started = time.time()
            limit = None if timeout is None else timeout + STUCK_GRACE + 2.0
            answer = child.run(plan_bytes, payload, timeout, limit, stopped=lambda: _stopped(run_key))
            if child.abandoned:
                break  # the run stopped while this trial ran: nobody waits for it, and it holds this thread
            if answer is None and not child.ready:
                code = child.end(dying=True)
                return ("setup", f"a child process of this worker exited while starting ({_exit_text(code)})")
            if answer is None:  # died, or did not answer in time
                late = child.late
                code = child.end(dying=not late)
                child = None
                task = task_from(decode(payload))
                results.append((submission, _lost_in_child(task, started, timeout, late=late, code=code), []))
                continue
            kind, outcome, span_rows, stuck = answer
            if kind == "setup":
                return ("setup", outcome)
            results.append((submission, outcome, span_rows))
            if stuck:
                child.end()
                child = None
    finally:
        if child is not None:
            child.end()
    return ("ok", results)


def _stopped(run_key: str | None) -> bool:
    return run_key is not None and run_stopped(run_key)


def _lost_in_child(task: TrialTask, started: float, timeout: float | None, *, late: bool, code: int) -> TrialResult:
    """Return the record of a trial whose child process was killed for being late, or died running it alone."""
    if late and timeout is not None:
        return stopped_result(
            task,
            timed_out=True,
            message=f"trial timeout after {timeout:g} s; its process was stuck and was killed",
            started=started,
            finished=time.time(),
        )
    error = ExecutionError(
        f"the worker process died while running this trial alone ({_exit_text(code)}); it was run in a process "
        "of its own after its first worker died, so this trial is the cause (often memory: the out-of-memory killer)"
    )
    return TrialRunner.failure(task, error, stage="runner", started=started, clock=time.perf_counter(), attempt=1)


def _exit_text(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class _Child:
    """A child process of a Dask worker that runs one trial at a time, spoken to over its stdin and stdout.

    Frames are a 4-byte length and :func:`~dspex_lab.engine._remote.encode` bytes; only this
    worker and its own child hold the pipes. The child writes its trial output elsewhere (its
    stdout is moved to stderr), so nothing a program prints can break a frame.
    """

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from dspex_lab.engine._dask import isolated_child_main; isolated_child_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.replies: queue.SimpleQueue[Any] = queue.SimpleQueue()
        threading.Thread(target=self._read, name="dspex-isolated-reader", daemon=True).start()
        self.ready = False
        self.late = False  # it did not answer in time (rather than dying)
        self.abandoned = False  # its run stopped while it ran a trial

    def _read(self) -> None:
        stream = self.process.stdout
        try:
            while stream is not None:
                header = stream.read(4)
                if len(header) < 4:
                    break
                (size,) = struct.unpack(">I", header)
                self.replies.put(decode(stream.read(size)))
        except (OSError, ValueError, EOFError):
            pass
        self.replies.put(None)  # the child is gone

    def _reply(self, limit: float | None, stopped: Callable[[], bool] = lambda: False) -> Any:
        deadline = None if limit is None else time.monotonic() + limit
        while True:
            wait = 0.25 if deadline is None else min(0.25, max(0.0, deadline - time.monotonic()))
            try:
                return self.replies.get(timeout=wait)
            except queue.Empty:
                pass
            if stopped():
                self.abandoned = True
                return None
            if deadline is not None and time.monotonic() >= deadline:
                self.late = True
                return None

    def run(
        self,
        plan_bytes: bytes,
        payload: bytes,
        timeout: float | None,
        limit: float | None,
        *,
        stopped: Callable[[], bool],
    ) -> Any:
        """Return the child's ``(kind, result, span rows, stuck)`` for one trial.

        None if it died, did not answer in time (``late``), or the run was ``stopped`` meanwhile (``abandoned``).
        """
        if not self.ready:
            if self._reply(CHILD_START_TIMEOUT, stopped) != ("ready",):
                return None
            self.ready = True
        data = encode((plan_bytes, payload, timeout))
        stdin = self.process.stdin
        try:
            if stdin is None:
                return None
            stdin.write(struct.pack(">I", len(data)) + data)
            stdin.flush()
        except (OSError, ValueError):
            return None
        return self._reply(limit, stopped)

    def end(self, *, dying: bool = False) -> int:
        """Stop the child (killed, unless it is ``dying`` on its own) and return its exit code."""
        if dying:
            # It closed its pipe: it is dying on its own; give it a moment to say how.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.process.poll() is None:
            self.process.kill()
        code = -9
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError, ValueError):
                if stream is not None:
                    stream.close()
        return code


def isolated_child_main() -> None:
    """The isolation child's loop: read a trial, run it, answer; until its stdin closes."""
    import os

    frames_in = sys.stdin.buffer
    frames_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever the program or metric prints goes to stderr, never into a frame
    sys.stdout = sys.stderr

    def send(value: Any) -> None:
        data = encode(value)
        frames_out.write(struct.pack(">I", len(data)) + data)
        frames_out.flush()

    send(("ready",))
    while True:
        header = frames_in.read(4)
        if len(header) < 4:
            break
        (size,) = struct.unpack(">I", header)
        plan_bytes, payload, timeout = decode(frames_in.read(size))
        kind, outcome, span_rows = run_remote_trial(plan_bytes, payload, timeout)
        send((kind, outcome, span_rows, stuck_threads() > 0))
    os._exit(0)

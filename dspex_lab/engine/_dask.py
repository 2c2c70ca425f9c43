"""Run trials on a Dask cluster (``executor="dask://host:port"`` or a ``distributed.Client``).

Dask schedules; dspex_lab does not add a scheduler of its own. Each trial is one Dask
task, ``dspex_lab.engine._remote.run_remote_trial(plan, payload, timeout)``, so the
workers need dspex_lab (and the modules the metric and program come from) installed.
The driver keeps a window of tasks submitted (twice the cluster's threads, or exactly
its threads when trials have a timeout, so a task's time since submission is close to
its running time), collects results as they complete and alone calls ``on_result`` and
the span sink. When a worker dies, Dask's scheduler runs its tasks again elsewhere (up
to its ``allowed-failures``; past that the trial is recorded as an error); the driver
delivers each trial once. ``dask`` and ``distributed`` are imported only when a Dask
executor is made.
"""

from __future__ import annotations

import collections
import queue
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from dspex_lab.engine._executor import RunStatus
from dspex_lab.engine._remote import encode, plan_for, spans_from, task_payload
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError, MissingDependencyError, TrialTimeoutError

__all__ = ["DaskExecutor", "is_dask_client"]

# Seconds past a trial's timeout after which the driver stops waiting for its worker.
TIMEOUT_GRACE = 2.0


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
        from dspex_lab.engine._remote import cancel_run_on_worker, run_remote_trial

        plan_bytes = encode(plan_for(runner, executor="dask", cloudpickle_functions=True))
        pending = collections.deque(enumerate(tasks))
        in_flight = dict(pending)
        window = self.threads * (1 if timeout is not None else 2)
        run_key = uuid.uuid4().hex[:12]
        submitted: dict[Any, tuple[int, float]] = {}
        finished: queue.SimpleQueue[Any] = queue.SimpleQueue()
        status = RunStatus.FINISHED
        try:
            while in_flight and status == RunStatus.FINISHED:
                while pending and len(submitted) < window:
                    submission, task = pending.popleft()
                    future = self.client.submit(
                        run_remote_trial,
                        plan_bytes,
                        encode(task_payload(task)),
                        timeout,
                        run_key,
                        key=f"dspex-trial-{run_key}-{submission}",
                        pure=False,
                    )
                    submitted[future] = (submission, time.time())
                    future.add_done_callback(finished.put)  # called on the client's thread
                done = []
                try:
                    done.append(finished.get(timeout=0.5))
                    while True:  # take what else is ready, without waking once per result
                        done.append(finished.get_nowait())
                except queue.Empty:
                    pass
                for future in done:
                    if future not in submitted:
                        continue  # given up at its deadline, or cancelled
                    submission, started = submitted.pop(future)
                    task = in_flight.pop(submission, None)
                    if task is None:
                        continue  # delivered already
                    result = self._result_of(future, task, runner, started)
                    if result is not None and on_result(result):
                        status = RunStatus.STOPPED
                        break
                if timeout is not None and status == RunStatus.FINISHED:
                    status = self._expire(submitted, in_flight, timeout, on_result)
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
    def _result_of(future: Any, task: TrialTask, runner: TrialRunner, started: float) -> TrialResult | None:
        if future.status == "cancelled":
            return None
        if future.status == "error":
            error = future.exception()
            # KilledWorker: the scheduler ran it on workers that died, up to its allowed failures.
            return TrialRunner.failure(
                task, error, stage="runner", started=started, clock=time.perf_counter(), attempt=1
            )
        kind, result, span_rows = future.result()
        if kind == "setup":
            raise ExecutionError(f"a Dask worker could not rebuild the trial runner: {result}")
        if span_rows and runner.span_sink is not None:
            runner.span_sink(task.trial_id, spans_from(span_rows))
        return result  # type: ignore[no-any-return]

    def _expire(
        self,
        submitted: dict[Any, tuple[int, float]],
        in_flight: dict[int, TrialTask],
        timeout: float,
        on_result: Callable[[TrialResult], bool | None],
    ) -> str:
        # A worker enforces the deadline before every LM call; this catches a trial stuck elsewhere.
        now = time.time()
        for future, (submission, started) in list(submitted.items()):
            if now - started <= timeout + TIMEOUT_GRACE or submission not in in_flight:
                continue
            del submitted[future]
            future.cancel()
            task = in_flight.pop(submission)
            result = TrialResult(
                index=task.index,
                example_id=task.example_id,
                repeat=task.repeat,
                status="error",
                score=None,
                prediction=None,
                error_type=TrialTimeoutError.__name__,
                error_message=f"trial timeout after {timeout:g} s; its Dask worker did not answer by then",
                error_stage="timeout",
                latency=now - started,
                started_at=started,
                finished_at=now,
            )
            if on_result(result):
                return RunStatus.STOPPED
        return RunStatus.FINISHED

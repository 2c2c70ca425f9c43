"""The coordination loop every executor runs: one loop, and a backend per executor for the rest.

A backend supplies only how trials reach its workers and how their outcomes come back:
threads in this process (:class:`~dspex_lab.engine.ThreadExecutor`), worker processes
(:class:`~dspex_lab.engine.ProcessExecutor`), Dask futures
(:class:`~dspex_lab.engine.DaskExecutor`). The loop owns the rest, the same for all three:

- **ordering**: trials wait in a queue (and suspects in a queue of their own) until the
  backend has room; each trial is delivered once, in the order answers arrive, whichever
  copy of it answers first (a chunk run again after its worker died, a late answer);
- **stopping**: ``on_result`` returning True (an error or cost budget) stops the run, and
  nothing more is delivered; a KeyboardInterrupt interrupts it; either way the backend
  cancels what still runs (:meth:`Backend.stop`);
- **stuck workers**: a worker reporting threads stuck past their trials' deadlines is
  replaced once it has :attr:`Backend.replace_at` of them; the rest are replaced when the
  run ends; a backend that may not replace one says why and the run stops;
- **records of lost trials**: a trial its backend lost is recorded as an error at the
  ``runner`` stage, built here from its task.

The loop never emits events itself: ``on_result`` is :func:`~dspex_lab.engine.run_trials`'s,
which counts errors and spending and emits :class:`~dspex_lab.engine.TrialFinished`.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Protocol

from dspex_lab.engine._contract import (
    Message,
    RunOutcome,
    RunStatus,
    SetupFailed,
    Submission,
    TrialLost,
    TrialReturned,
    TrialsRequeued,
    TrialsSuspected,
    WorkerStuck,
)
from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask
from dspex_lab.errors import ExecutionError

__all__ = ["Backend", "TrialLedger", "coordinate"]


class TrialLedger:
    """The run's trials as the loop sees them: queued, queued to run alone, not yet delivered.

    Backends read :attr:`undelivered` and take trials from :attr:`queue` and :attr:`suspects`
    with :meth:`take`; only the loop changes the ledger otherwise. Used from the loop's thread only.
    """

    def __init__(self, tasks: Iterable[TrialTask]) -> None:
        self.undelivered: dict[int, TrialTask] = dict(enumerate(tasks))
        self.queue = collections.deque(Submission(number, task) for number, task in self.undelivered.items())
        self.suspects: collections.deque[Submission] = collections.deque()

    @property
    def waiting(self) -> bool:
        """Whether trials wait in the loop's queues (not handed to the backend yet)."""
        return bool(self.queue or self.suspects)

    def take(self, queue: collections.deque[Submission], limit: int) -> list[Submission]:
        """Take up to ``limit`` undelivered trials from the front of ``queue`` (delivered ones are dropped)."""
        taken: list[Submission] = []
        while queue and len(taken) < limit:
            submission = queue.popleft()
            if submission.number in self.undelivered:
                taken.append(submission)
        return taken


class Backend(Protocol):
    """How one executor runs one run's trials: how they reach its workers and how outcomes come back.

    Contract: one instance per run, called from the loop's thread only. :meth:`submit`,
    :meth:`receive` and :meth:`expire` are called in that order, round after round, while
    trials are undelivered and the run goes on; :meth:`stop` is called once at the end,
    even when a call raised. Messages are applied in order; once the run stops, the rest
    of a round's messages are dropped (a :class:`WorkerStuck` is still noted, for
    :meth:`stop`), so a backend finishes its own bookkeeping before it returns them.
    """

    #: Stuck threads at which a worker is replaced during the run (see :class:`WorkerStuck`).
    replace_at: int

    def start(self, ledger: TrialLedger) -> str | None:
        """Prepare the run's workers; return why the run cannot start (it stops), or None."""
        ...

    def submit(self) -> None:
        """Hand the ledger's queued trials (and suspects, to run alone) to workers with room for them."""
        ...

    def receive(self) -> Sequence[Message]:
        """Wait a little for answers; return what came back (nothing after the wait is fine)."""
        ...

    def expire(self) -> Sequence[Message]:
        """Give up on what is overdue: trials past their deadline, workers that no longer answer."""
        ...

    def replace(self, worker: Hashable) -> str | None:
        """Replace a worker with stuck threads; return why the run must stop instead, or None."""
        ...

    def stop(self, status: str, stuck: Sequence[Hashable]) -> None:
        """End the run: cancel what still runs (nothing, when it finished) and replace the ``stuck`` workers."""
        ...


def coordinate(
    tasks: Iterable[TrialTask],
    backend: Backend,
    *,
    runner: TrialRunner,
    on_result: Callable[[TrialResult], bool | None],
) -> RunOutcome:
    """Run ``tasks`` through ``backend``, delivering each trial's record to ``on_result`` once.

    Raises:
        ExecutionError: a worker cannot rebuild the trial runner (:class:`SetupFailed`).
    """
    ledger = TrialLedger(tasks)
    if not ledger.undelivered:
        return RunOutcome(RunStatus.FINISHED)
    delivery = _Delivery(ledger, backend, runner, on_result)
    try:
        refusal = backend.start(ledger)
        if refusal is not None:
            delivery.status, delivery.detail = RunStatus.STOPPED, refusal
        while ledger.undelivered and delivery.going:
            backend.submit()
            delivery.apply(backend.receive())
            if delivery.going:
                delivery.apply(backend.expire())
    except KeyboardInterrupt:
        delivery.status = RunStatus.INTERRUPTED
    finally:
        backend.stop(delivery.status, list(delivery.stuck))
    return RunOutcome(delivery.status, delivery.detail)


class _Delivery:
    """Apply a backend's messages to the ledger, delivering records and deciding when the run stops."""

    def __init__(
        self,
        ledger: TrialLedger,
        backend: Backend,
        runner: TrialRunner,
        on_result: Callable[[TrialResult], bool | None],
    ) -> None:
        self.ledger = ledger
        self.backend = backend
        self.runner = runner
        self.on_result = on_result
        self.status = RunStatus.FINISHED
        self.detail: str | None = None
        # Workers with stuck threads not replaced yet (fewer than the backend's replace_at): replaced at the end.
        self.stuck: dict[Hashable, int] = {}

    @property
    def going(self) -> bool:
        """Whether the run goes on (not stopped, not interrupted)."""
        return self.status == RunStatus.FINISHED

    def apply(self, messages: Iterable[Message]) -> None:
        """Apply ``messages`` in order; once the run stops, drop the rest but note workers with stuck threads."""
        for message in messages:
            if not self.going:
                if isinstance(message, WorkerStuck):  # replaced when the run ends, not left to the next run
                    self.stuck[message.worker] = message.threads
                continue
            if isinstance(message, TrialReturned):
                self._deliver(message.submission, message.result, message.spans)
            elif isinstance(message, TrialLost):
                self._record_lost(message)
            elif isinstance(message, TrialsRequeued):
                self._requeue(message)
            elif isinstance(message, TrialsSuspected):
                self.ledger.suspects.extend(self._submissions(message.submissions))
            elif isinstance(message, WorkerStuck):
                self._note_stuck(message)
            elif isinstance(message, SetupFailed):
                raise ExecutionError(message.message)
            else:  # pragma: no cover - a backend sending something that is not a Message
                raise TypeError(f"not a coordination message: {message!r:.80}")

    def _deliver(self, submission: int, result: TrialResult, spans: tuple[object, ...]) -> None:
        task = self.ledger.undelivered.pop(submission, None)
        if task is None:
            return  # delivered before: a late answer, or a copy run again after its worker died
        if spans and self.runner.span_sink is not None:
            self.runner.span_sink(task.trial_id, spans)
        if self.on_result(result):
            self.status = RunStatus.STOPPED

    def _record_lost(self, message: TrialLost) -> None:
        task = self.ledger.undelivered.get(message.submission)
        if task is not None:
            record = TrialRunner.failure(
                task, message.error, stage="runner", started=message.started, clock=time.perf_counter(), attempt=1
            )
            self._deliver(message.submission, record, ())

    def _requeue(self, message: TrialsRequeued) -> None:
        queue = self.ledger.suspects if message.isolated else self.ledger.queue
        queue.extendleft(reversed(self._submissions(message.submissions)))

    def _submissions(self, numbers: Iterable[int]) -> list[Submission]:
        undelivered = self.ledger.undelivered
        return [Submission(number, undelivered[number]) for number in numbers if number in undelivered]

    def _note_stuck(self, message: WorkerStuck) -> None:
        if message.threads < self.backend.replace_at:
            self.stuck[message.worker] = message.threads
            return
        self.stuck.pop(message.worker, None)
        refusal = self.backend.replace(message.worker)
        if refusal is not None:
            self.status, self.detail = RunStatus.STOPPED, refusal

"""What the executors and the coordination loop agree on: run statuses, the Executor protocol, typed messages.

Imports point one way. This module imports only the trial's types; the coordination loop
(:mod:`dspex_lab.engine._loop`), the thread executor (:mod:`dspex_lab.engine._executor`),
the process pool (:mod:`dspex_lab.engine._process`) and the Dask executor
(:mod:`dspex_lab.engine._dask`) import it, and it imports none of them.

The loop hands a backend :class:`Submission` values and gets back the messages of
:data:`Message`, each a frozen dataclass: what a trial returned, a trial its backend lost,
trials to queue again or to run alone, a worker with stuck threads, a worker that cannot
rebuild the runner. A submission number keys every answer, so the loop delivers each trial
once, whichever copy of it answers first.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dspex_lab.engine._trial import TrialResult, TrialRunner, TrialTask

__all__ = [
    "REIMPORTED_MAIN_EXIT",
    "Executor",
    "Message",
    "RunOutcome",
    "RunStatus",
    "SetupFailed",
    "Submission",
    "TrialLost",
    "TrialReturned",
    "TrialsRequeued",
    "TrialsSuspected",
    "WorkerStuck",
]

#: The exit code of a worker process that refused to start a run while re-importing the user's
#: script (a script without ``if __name__ == "__main__":``; see :func:`dspex_lab.session.current_context`):
#: the executor reads it as that mistake, not as a broken environment.
REIMPORTED_MAIN_EXIT = 86


class RunStatus:
    """How a run ended."""

    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    STOPPED = "stopped"


class Executor(Protocol):
    """Runs trials in parallel and hands each finished one to ``on_result``.

    Contract: every task gets its own :class:`~dspex_lab.engine.CancelToken` carrying
    ``timeout`` (the whole trial's time, all attempts included); ``on_result`` is called on
    the calling thread, once per task, in completion order. A trial past its deadline is
    handed to ``runner.abandon`` (no further LM request; its partial spans kept) and its
    record passed to ``on_result``. If ``on_result`` returns True the run stops: queued
    trials never start, running ones are cancelled, no further result is delivered, and
    ``run`` returns ``"stopped"``. A KeyboardInterrupt while waiting does the same and ``run``
    returns ``"interrupted"``; every result delivered before that is kept by the caller.

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


@dataclass(frozen=True)
class Submission:
    """A trial handed to a backend: its number in this run (which keys its answer) and its task."""

    number: int
    task: TrialTask


@dataclass(frozen=True)
class TrialReturned:
    """A trial's record came back; ``spans`` are those captured in a worker, for the runner's span sink."""

    submission: int
    result: TrialResult
    spans: tuple[Any, ...] = ()


@dataclass(frozen=True)
class TrialLost:
    """The backend lost a trial (its worker died running it alone, its task failed); the loop records ``error``."""

    submission: int
    error: BaseException
    started: float


@dataclass(frozen=True)
class TrialsRequeued:
    """Trials that did not run (or whose answer is lost) go back to the front of the queue.

    ``isolated``: to the front of the queue of trials run alone, where they came from.
    """

    submissions: tuple[int, ...]
    isolated: bool = False


@dataclass(frozen=True)
class TrialsSuspected:
    """Trials that were on a worker that died: each is run again alone, so only a trial that kills is recorded so."""

    submissions: tuple[int, ...]


@dataclass(frozen=True)
class WorkerStuck:
    """``threads`` threads of trials given up at their deadline are stuck in ``worker`` (a total, not an increment)."""

    worker: Hashable
    threads: int


@dataclass(frozen=True)
class SetupFailed:
    """A worker cannot rebuild the trial runner (a metric it cannot import): the run fails with ``message``."""

    message: str


Message = TrialReturned | TrialLost | TrialsRequeued | TrialsSuspected | WorkerStuck | SetupFailed


@dataclass(frozen=True)
class RunOutcome:
    """How the loop ended a run: a :class:`RunStatus` value and, when a backend stopped it, why."""

    status: str
    detail: str | None = None

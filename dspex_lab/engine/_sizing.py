"""How many worker processes to start, and how many trials each runs at once, from a trial's CPU share.

A trial spends part of its wall time on the CPU (DSPy's Python, the adapter, the metric, span
capture) and the rest waiting (the LM's answer). Its *CPU share* ``s`` is its CPU time over its
wall time when it runs alone: about 0.025 for ``ChainOfThought`` on a 20 ms lab LM (0.5 ms of
CPU per 20 ms call), 1 for a trial that only computes. One process keeps one core busy (threads
share its GIL) once about ``1 / s`` trials are in flight in it; fewer leave the core idle while
they wait, more only queue for the GIL: their wall time grows (and with it the time a trial
timeout counts) for no more throughput.

The rule (:func:`choose_sizing`):

- **processes**: one per core, never more than the trials at once. A process with enough
  trials in flight fills its core whatever ``s`` is, so more processes than cores only add
  start-up time, memory and context switches; fewer leave cores unused.
- **trials in flight per process**: ``ceil(HEADROOM / s)``, at least 1, never more than the
  process's share of the trials at once the researcher asked for (which is also all of them when
  ``s`` is not known yet). :data:`HEADROOM` is 2 because trial times vary: in the
  machine-repairman model (exponential CPU and waiting times, the pessimistic case) ``2 / s``
  trials keep a core at least 98% busy for any ``s``, ``1 / s`` trials as little as 79%
  (``tests/engine/test_sizing.py`` checks both against the model's closed form).

The share cannot be known before trials run, and measured per trial it is biased: under GIL
contention a trial's wall time includes its wait for the GIL, so CPU over wall underestimates
``s`` exactly when too many run. :class:`InFlightTuner` therefore works from what a worker
process measures about itself over a window of about a second: its CPU utilization ``U`` (process
CPU time over wall time, in cores) and the mean number of trials in flight ``n``. While the
process is not saturated (``U`` below :data:`SATURATED`), trials do not wait for each other and
``s = U / n`` (Little's law); the limit goes to ``ceil(HEADROOM / s)``. While it is saturated,
the window only says ``s >= U / n``, so the tuner lowers the limit step by step (by
:data:`STEP_DOWN`) until the process is no longer saturated, measures ``s`` there, and settles
on ``ceil(HEADROOM / s)``. A measured share is trusted for :data:`TRUSTED_WINDOWS` saturated
windows in a row, then measured again the same way (the trials may have become heavier). It
starts at the cap, the researcher's trials at once: a share not measured yet never starves a
run of an LM that is slow to answer, and on a shared machine (where a process gets less than a
core and never looks saturated) the tuner stays at the cap, as a fixed pool would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dspex_lab.errors import ExecutionError

__all__ = ["HEADROOM", "SATURATED", "STEP_DOWN", "TRUSTED_WINDOWS", "InFlightTuner", "Sizing", "choose_sizing"]

#: Trials in flight per process, in units of ``1 / s``: enough that a core stays busy while trial times vary.
HEADROOM = 2.0
#: CPU utilization of a worker process (in cores) from which it counts as saturated: its trials wait for the GIL.
SATURATED = 0.85
#: The factor the in-flight limit is lowered by, per saturated window, while the share is not known.
STEP_DOWN = 0.8
#: Saturated windows in a row after which a measured share is measured again (lowering until unsaturated).
TRUSTED_WINDOWS = 30
#: The smallest mean in flight a window needs to say anything about the share (an idle process says nothing).
MIN_IN_FLIGHT = 1.0


@dataclass(frozen=True)
class Sizing:
    """Worker processes and trials in flight per process, as :func:`choose_sizing` chose them.

    Attributes:
        processes: worker processes (one per core, at most the trials at once).
        in_flight: trials each process runs at once (its threads, or its limit under them).
        cpu_share: the trial CPU share the choice was made from (None: not measured, the cap).
    """

    processes: int
    in_flight: int
    cpu_share: float | None = None

    def __str__(self) -> str:
        share = "share not measured" if self.cpu_share is None else f"CPU share {self.cpu_share:.3f}"
        return f"{self.processes} processes x {self.in_flight} trials in flight ({share})"


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ExecutionError(f"{name} must be a positive integer, got {value!r}")
    return value


def needed_in_flight(cpu_share: float) -> int:
    """Return the trials in flight that keep one core busy at ``cpu_share``: ``ceil(HEADROOM / s)``, at least 1."""
    if not cpu_share > 0:  # nothing measured on the CPU (or NaN): any number fits on a core
        return 1 << 30
    return max(1, math.ceil(HEADROOM / min(cpu_share, 1.0) - 1e-9))


def choose_sizing(cpu_share: float | None, *, cores: int, trials_at_once: int) -> Sizing:
    """Return worker processes and trials in flight per process for trials of CPU share ``cpu_share``.

    Args:
        cpu_share: a trial's CPU time over its wall time when it runs alone (None: not known yet).
        cores: the cores the workers may use.
        trials_at_once: the most trials the researcher wants running at once, over all processes.

    Examples:
        >>> choose_sizing(0.025, cores=2, trials_at_once=64)  # LM-bound: every trial asked for
        Sizing(processes=2, in_flight=32, cpu_share=0.025)
        >>> choose_sizing(0.5, cores=2, trials_at_once=64)  # CPU-heavy: 4 keep a core busy
        Sizing(processes=2, in_flight=4, cpu_share=0.5)
        >>> choose_sizing(None, cores=8, trials_at_once=3)
        Sizing(processes=3, in_flight=1, cpu_share=None)
    """
    cores = _positive("cores", cores)
    trials_at_once = _positive("trials_at_once", trials_at_once)
    processes = min(cores, trials_at_once)
    share = math.ceil(trials_at_once / processes)
    if cpu_share is None:
        return Sizing(processes, share)
    return Sizing(processes, min(share, needed_in_flight(cpu_share)), cpu_share)


class InFlightTuner:
    """The trials in flight per worker process, tuned from the processes' measured CPU utilization.

    Kept by an executor across its runs (an optimization runs hundreds of evaluations on one
    executor), fed one window at a time with :meth:`observe`; see the module docstring for the
    rule. Used from one thread (the run loop's).

    Args:
        cap: the most trials in flight per process (its threads; the researcher's share).
    """

    def __init__(self, cap: int) -> None:
        self.cap = _positive("cap", cap)
        self.limit = self.cap
        #: The trials' CPU share last measured in an unsaturated window (None: not yet, or no longer trusted).
        self.cpu_share: float | None = None
        self.saturated_windows = 0  # in a row
        self.windows = 0

    def __repr__(self) -> str:
        return f"InFlightTuner(cap={self.cap}, limit={self.limit}, cpu_share={self.cpu_share})"

    def observe(self, utilization: float, in_flight: float) -> int:
        """Take one window of a worker process and return the new limit.

        Args:
            utilization: the process's CPU time over the window's wall time (1.0: one core busy).
            in_flight: the mean number of trials running in it over the window.
        """
        if not in_flight >= MIN_IN_FLIGHT or not utilization >= 0:
            return self.limit  # idle (between runs, the end of a run): says nothing about the share
        self.windows += 1
        if utilization < SATURATED:
            self.saturated_windows = 0
            self.cpu_share = utilization / in_flight
            self.limit = max(self.limit, min(self.cap, needed_in_flight(self.cpu_share)))
            return self.limit
        self.saturated_windows += 1
        if self.cpu_share is not None and self.saturated_windows > TRUSTED_WINDOWS:
            self.cpu_share = None  # trusted long enough: find out again whether fewer trials keep the core busy
        if self.cpu_share is None or self.limit > needed_in_flight(self.cpu_share):
            self.limit = max(1, min(self.limit - 1, math.floor(self.limit * STEP_DOWN)))
        return self.limit

    def resize(self, cap: int) -> None:
        """Take a new cap (a cluster's workers changed): a limit at the old cap follows it, a lower one stays."""
        at_cap = self.limit >= self.cap
        self.cap = _positive("cap", cap)
        self.limit = self.cap if at_cap else min(self.limit, self.cap)

    def sizing(self, processes: int) -> Sizing:
        """Return the sizing in force now for ``processes`` worker processes."""
        return Sizing(processes, self.limit, self.cpu_share)

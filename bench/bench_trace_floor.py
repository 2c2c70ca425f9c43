"""Measure what tracing costs per trial, and how much of it is the floor of dispatching calls at all.

The machine this project is measured on is shared and noisy: two runs of the same evaluation differ by
±15%, more than the effects measured here. So each trial is run twice back to back, once by an untraced
``TrialRunner`` (the anchor) and once by a traced one, in alternating order, and the median of the
per-trial differences is reported: both halves of a pair see the same machine.

Three traced sides, each against the same anchor:

* ``full``: the recorder as ``dx.evaluate(trace=True)`` uses it;
* ``structure``: spans with their ids, parents and times but no attributes at all;
* ``dispatch``: handlers that do nothing, so only DSPy's callback dispatch, the trial span and the metric span remain.

The journal writer is not part of this (``bench_trace.py`` measures the whole evaluation).

Run: python bench/bench_trace_floor.py [--trials 2000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import dspy
from _common import format_table, prepare_for_measurement

import dspex_lab as dx
from dspex_lab.engine import RetryPolicy, TrialRunner, TrialTask
from dspex_lab.trace import SpanRecorder

_KINDS = ("module", "lm", "adapter_format", "adapter_parse", "tool", "evaluate")


class DispatchOnly(SpanRecorder):
    """A recorder whose handlers do nothing: what is left is the cost of reaching them."""


class StructureOnly(SpanRecorder):
    """A recorder that opens and closes spans but captures no attribute."""


def _ignore_start(self: SpanRecorder, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
    return None


def _ignore_end(self: SpanRecorder, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
    return None


def _open_bare(kind: str) -> Any:
    def start(self: SpanRecorder, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self._open(call_id, instance, kind=kind, name=type(instance).__name__)

    return start


def _close_bare(self: SpanRecorder, call_id: str, outputs: Any, exception: BaseException | None = None) -> None:
    pending = self._take(call_id)
    if pending is not None:
        self._finish(call_id, pending, exception=exception)


for _kind in _KINDS:
    setattr(DispatchOnly, f"on_{_kind}_start", _ignore_start)
    setattr(DispatchOnly, f"on_{_kind}_end", _ignore_end)
    setattr(StructureOnly, f"on_{_kind}_start", _open_bare(_kind))
    setattr(StructureOnly, f"on_{_kind}_end", _close_bare)


def paired(anchor: TrialRunner, traced: TrialRunner, tasks: list[TrialTask]) -> tuple[float, float]:
    """Return (median anchor µs per trial, median traced-minus-anchor µs per trial) over paired runs."""
    clock = time.perf_counter_ns
    base: list[int] = []
    extra: list[int] = []
    for position, task in enumerate(tasks):
        first, second = (anchor, traced) if position % 2 else (traced, anchor)
        start = clock()
        first(task)
        middle = clock()
        second(task)
        end = clock()
        anchor_ns, traced_ns = (middle - start, end - middle) if first is anchor else (end - middle, middle - start)
        base.append(anchor_ns)
        extra.append(traced_ns - anchor_ns)
    return statistics.median(base) / 1e3, statistics.median(extra) / 1e3


def main() -> int:
    """Run the three traced sides against the untraced anchor and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    arguments = parser.parse_args()

    lm = dx.lab_lm("lab/small")
    module = dspy.ChainOfThought("question -> answer")
    examples = dx.datasets.arithmetic(arguments.trials, seed=0)
    tasks = [TrialTask(index, f"e{index}", example) for index, example in enumerate(examples)]
    retry = RetryPolicy()
    anchor = TrialRunner(module, dx.metrics.exact_match, lm=lm, retry=retry)
    sides = {
        "full": SpanRecorder(),
        "structure": StructureOnly(),
        "dispatch": DispatchOnly(),
    }
    rows = []
    for name, recorder in sides.items():
        traced = TrialRunner(module, dx.metrics.exact_match, lm=lm, retry=retry, recorder=recorder)
        for task in tasks[:100]:  # warm-up
            anchor(task)
            traced(task)
        prepare_for_measurement()
        base, extra = paired(anchor, traced, tasks)
        rows.append([name, f"{base:.0f} µs", f"{extra:+.0f} µs", f"{extra / base:+.1%}"])
        print(f"{name}: anchor {base:.0f} µs/trial, traced {extra:+.0f} µs/trial", flush=True)
    print()
    print(format_table(["traced side", "untraced trial (anchor)", "traced minus untraced", "overhead"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

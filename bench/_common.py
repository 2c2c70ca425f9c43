"""Helpers shared by the benchmarks in ``bench/``: timing, DSPy state resets, tables and JSON output.

Nothing here imports ``dspex_lab`` at module level, so a benchmark can decide
what to import (and when) before any measurement starts.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "Timing",
    "format_table",
    "machine_description",
    "median_or_none",
    "prepare_for_measurement",
    "reset_dspy_history",
    "timed",
    "write_json",
]


@dataclass
class Timing:
    """The wall-clock time of one measured block, filled in when the block ends.

    Attributes:
        seconds: elapsed wall time in seconds (``perf_counter``).
        cpu_seconds: CPU time of the whole process (every thread) over the block; far less
            sensitive than wall time to other processes on a shared machine.
        load_before: the 1-minute load average when the block started (None where unsupported).
        load_after: the 1-minute load average when the block ended.
    """

    seconds: float = 0.0
    cpu_seconds: float = 0.0
    load_before: float | None = None
    load_after: float | None = None


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


@contextmanager
def timed() -> Iterator[Timing]:
    """Measure the wall time of a ``with`` block.

    Yields:
        A :class:`Timing` whose ``seconds`` is set when the block exits (also on error).
    """
    timing = Timing(load_before=_load_average())
    start = time.perf_counter()
    cpu_start = time.process_time()
    try:
        yield timing
    finally:
        timing.seconds = time.perf_counter() - start
        timing.cpu_seconds = time.process_time() - cpu_start
        timing.load_after = _load_average()


def reset_dspy_history() -> None:
    """Empty DSPy's process-wide LM history so every measured run starts from the same state.

    ``dspy.clients.base_lm.GLOBAL_HISTORY`` keeps the last 10,000 LM calls of the
    whole process; once full, every call pops its first element. Clearing it
    before each run keeps one side from inheriting a full list from the other.
    """
    from dspy.clients import base_lm

    base_lm.GLOBAL_HISTORY.clear()


def prepare_for_measurement() -> None:
    """Reset shared state and collect garbage before a measured run (identically for every side)."""
    reset_dspy_history()
    gc.collect()


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Return the median of the values that are not None, or None when there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def machine_description() -> dict[str, Any]:
    """Return what identifies the machine and the software versions of a measurement."""
    description: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": _load_average(),
    }
    for package in ("dspy", "dspex_lab", "duckdb"):
        try:
            description[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            description[package] = "not installed"
    return description


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render rows as a plain-text table with left-aligned columns.

    Args:
        headers: the column titles.
        rows: the cells; each is converted with ``str``.

    Returns:
        The table, one line per row, with a rule under the headers.
    """
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(str(header)), *(len(row[column]) for row in cells)) for column, header in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(value.ljust(width) for value, width in zip(values, widths, strict=True)).rstrip()

    return "\n".join(
        [line([str(header) for header in headers]), line(["-" * width for width in widths])]
        + [line(row) for row in cells]
    )


def write_json(path: str | os.PathLike[str], data: Any, *, default: Callable[[Any], Any] = repr) -> None:
    """Write ``data`` as indented JSON, creating the parent folder."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=2, default=default) + "\n", encoding="utf-8")

"""The recorder's own cost on the hot path (see overhead.py for the full measurement)."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest


def load_measure():
    # The tests directory is not a package (pytest runs with --import-mode=importlib), so load the script by path.
    spec = importlib.util.spec_from_file_location("trace_overhead", Path(__file__).with_name("overhead.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.measure


@pytest.mark.slow
def test_capture_overhead_is_small_beside_dspy_callback_dispatch() -> None:
    result = load_measure()(200, clock=time.process_time)
    ratio = result["recorder"] / result["empty_callback"]
    print(f"recorder / none = {result['recorder'] / result['none']:.3f}; recorder / empty callback = {ratio:.3f}")
    # Loose: CPU time on a shared machine is noisy; the measured ratio is typically 1.05-1.15.
    assert ratio < 1.5

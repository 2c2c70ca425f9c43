"""Shared fixtures: a clean DSPy configuration and no DSPEX_* settings leaking between tests."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

# The loopback provider is a plain module of the test suite (tests have no packages under importlib mode).
sys.path.insert(0, str(Path(__file__).parent / "providers"))
# So are the optimizer tests' oracle modules (tests/optimization/oracle.py).
sys.path.insert(0, str(Path(__file__).parent / "optimization"))
# And the helpers several folders share (tests/support/local_dask.py).
sys.path.insert(0, str(Path(__file__).parent / "support"))
from loopback import LoopbackProvider


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("DSPEX_"):
            monkeypatch.delenv(name)
    # A test never writes a journal into the repository: the default lands in its temp dir.
    monkeypatch.chdir(tmp_path)
    saved_lm = dspy.settings.lm
    # An in-process IPython shell (the magics tests) installs its own __main__, a module without __spec__,
    # and multiprocessing's spawn (process pools, Dask's LocalCluster) then fails in every later test.
    saved_main = sys.modules["__main__"]
    # Every test starts with Python's own Ctrl-C handler: a server or cluster started by an earlier test may have
    # replaced it (then a simulated interrupt, _thread.interrupt_main, does nothing and an interrupt test hangs).
    saved_interrupt = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, saved_interrupt)
    dspy.configure(lm=saved_lm)
    sys.modules["__main__"] = saved_main


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.duckdb"


@pytest.fixture
def loopback_provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackProvider]:
    """A running OpenAI-compatible server on 127.0.0.1 (see tests/providers/loopback.py), stopped after the test."""
    # DSPy prices calls from its bundled model map; without this it would first try to fetch one over the network.
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    with LoopbackProvider() as provider:
        yield provider

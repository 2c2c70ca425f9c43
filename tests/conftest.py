"""Shared fixtures: a clean DSPy configuration and no DSPEX_* settings leaking between tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest


@pytest.fixture(autouse=True)
def clean_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    for name in list(os.environ):
        if name.startswith("DSPEX_"):
            monkeypatch.delenv(name)
    # A test never writes a journal into the repository: the default lands in its temp dir.
    monkeypatch.chdir(tmp_path)
    saved_lm = dspy.settings.lm
    yield
    dspy.configure(lm=saved_lm)


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.duckdb"

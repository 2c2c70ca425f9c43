"""Fixtures of the notebook-layer tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from IPython.core.interactiveshell import InteractiveShell

import dspex_lab as dx


@pytest.fixture
def shell(tmp_path: Any) -> Iterator[InteractiveShell]:
    """IPython's test shell with the extension loaded, inside a lab-LM context with a journal in the test's folder."""
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "dspex_lab")
    with dx.Context(lm=dx.lab_lm(), journal=tmp_path / "j.duckdb"):
        yield ip
    ip.user_ns.clear()

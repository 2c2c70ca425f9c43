"""Context.configure changes a session in place (what %dspex config calls), all or nothing."""

from __future__ import annotations

import pytest

import dspex_lab as dx
from dspex_lab.engine import ThreadExecutor
from dspex_lab.errors import ExecutionError


def test_configure_changes_what_is_given_and_keeps_the_rest(tmp_path):
    context = dx.Context(lm="lab/small", journal=False, threads=2)
    journal = context.journal
    context.configure(threads=5)
    assert context.threads == 5 and context.journal is journal and context.lm.model == "lab/small"
    context.configure(lm="lab/large", journal=tmp_path / "j.duckdb")
    assert context.lm.model == "lab/large" and context.journal.location.endswith("j.duckdb")
    assert context.threads == 5


def test_threads_for_an_executor_that_sizes_itself_is_refused_and_changes_nothing():
    executor = ThreadExecutor(3)
    context = dx.Context(lm="lab/small", journal=False, executor=executor)
    with pytest.raises(ExecutionError, match=r"threads=4: this context runs on ThreadExecutor\(threads=3\)"):
        context.configure(lm="lab/large", threads=4)
    assert context.executor is executor and context.lm.model == "lab/small"

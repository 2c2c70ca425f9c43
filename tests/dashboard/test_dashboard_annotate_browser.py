"""Annotating a trial as a user does: the served dashboard's trace page in headless Chromium, then the journal.

A journal holding one evaluation is served by the real ``dspex dashboard`` command on 127.0.0.1; a
trial is selected in the trace page's table, annotated through the form, and the journal must hold
that annotation (written by the server's process) while the table shows the trial's new label.
"""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.journal import open_journal

pytestmark = pytest.mark.slow


def test_a_trial_annotated_from_the_trace_page_is_in_the_journal(serve, browser, tmp_path: Path) -> None:
    path = tmp_path / "journal.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=1):
        program = dx.Program("dspy.Predict", signature="question -> answer", name="qa-annotate")
        result = dx.evaluate(
            program, list(dx.datasets.arithmetic(6, seed=4)), metric=dx.metrics.exact_match, progress=False
        )
    trial_id = str(result.table()["trial_id"].iloc[3])
    page = browser.page
    page.goto(serve(path))
    page.wait_for_selector("text=1 of 1 experiment shown")
    page.get_by_text("Trace", exact=True).first.click()
    page.locator(".tabulator-cell[tabulator-field=trial]", has_text=trial_id).click()
    page.wait_for_selector(f"text=Annotate {trial_id} (not annotated)")
    page.get_by_placeholder("a short tag").fill("wrong gold")
    page.get_by_placeholder("why").fill("the question has two readings")
    page.get_by_placeholder('42, or {"answer": "42"}').fill("42")
    page.get_by_role("button", name="Annotate").click()
    page.wait_for_selector(f"text=annotated trial {trial_id} with label")
    page.locator(".tabulator-cell[tabulator-field=label]", has_text="wrong gold").wait_for()
    browser.keep("trace-annotated.png")
    [row] = open_journal(path).annotation_rows(result.experiment_id)
    assert (row["trial_id"], row["label"], row["note"]) == (trial_id, "wrong gold", "the question has two readings")
    assert row["corrected_gold"] == {"answer": "42"} and row["author"] == getpass.getuser()
    assert not browser.errors and browser.hosts <= {"127.0.0.1"}

"""ExperimentBrowser's annotation form in JupyterLab, driven through headless Chromium.

A journal holds one evaluation; a trial is selected in the browser and annotated through the form under
the trial table (a preset label, a note, a corrected gold). The row must show the label, the form's
line must say what was recorded, a label past its bound must be refused in one line, and a last cell
reads the journal in the kernel, which proves the click went through ``journal.annotate``. A screenshot
stays in the test's temporary directory (and in $DSPEX_ARTIFACTS when set).
"""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

# Test folders are not packages (importlib import mode). Importing the harness skips this module when
# anywidget, JupyterLab, nbformat or playwright is missing; its marks skip it without chromium.
sys.path.insert(0, str(Path(__file__).parent))
from jupyterlab_harness import (
    BROWSER_MARKS,
    RENDER_TIMEOUT_MS,
    keep_screenshot,
    notebook_page,
    printed_json,
    run_cell,
    sync_api,
)

pytestmark = BROWSER_MARKS

SETUP_CELL = """\
import json
import dspex_lab as dx

with dx.Context(lm=dx.lab_lm("lab/small"), journal=JOURNAL, threads=1):
    result = dx.evaluate(dx.Program("dspy.Predict", signature="question -> answer", name="qa-annotate"),
                         dx.datasets.arithmetic(5, seed=3), metric=dx.metrics.exact_match, progress=False)
print("ready:", json.dumps({"experiment": result.experiment_id, "trials": list(result.table()["trial_id"])}))"""

BROWSER_CELL = """\
browser = dx.ExperimentBrowser(JOURNAL)
browser"""

STATE_CELL = """\
print("kernel state:", json.dumps(dx.open_journal(JOURNAL).annotation_rows(result.experiment_id), default=str))"""

SETUP, BROWSER, STATE = range(3)


def test_a_trial_annotated_in_the_browser_widget_is_in_the_journal(tmp_path: Path) -> None:
    with notebook_page(tmp_path, "annotate.ipynb", [SETUP_CELL, BROWSER_CELL, STATE_CELL]) as page:
        cells = page.locator(".jp-Notebook .jp-Cell")
        made = printed_json(page, SETUP, "ready:")
        trial_id = made["trials"][2]

        run_cell(page, BROWSER)
        browser = cells.nth(BROWSER).locator(".dspex-browser")
        browser.locator(f".dspex-experiments tbody tr[data-id='{made['experiment']}']").click()
        row = browser.locator(f".dspex-trials-table tbody tr[data-id='{trial_id}']")
        row.click()
        form = browser.locator(".dspex-annotate")
        sync_api.expect(form.locator(".dspex-browser-title")).to_have_text(f"annotate {trial_id}: not annotated")
        form.locator(".dspex-annotate-label").fill("x" * 101)
        form.locator(".dspex-annotate-button").click()
        message = form.locator(".dspex-annotate-message")
        sync_api.expect(message).to_contain_text("not annotated:", timeout=RENDER_TIMEOUT_MS)
        form.locator(".dspex-annotate-preset").select_option("wrong gold")
        sync_api.expect(form.locator(".dspex-annotate-label")).to_have_value("wrong gold")
        form.locator(".dspex-annotate-note").fill("the gold is off by one")
        form.locator(".dspex-annotate-gold").fill("42")
        form.locator(".dspex-annotate-button").click()
        sync_api.expect(message).to_contain_text(f"annotated trial {trial_id} with label 'wrong gold'")
        sync_api.expect(row.locator(".dspex-label")).to_have_text("wrong gold")
        sync_api.expect(form.locator(".dspex-browser-title")).to_have_text(f"annotate {trial_id}: label now wrong gold")
        keep_screenshot(cells.nth(BROWSER), tmp_path / "experiment_browser_annotate.png")
        # Withdraw shows while the trial has an annotation in force, and withdraws it.
        withdraw = form.locator(".dspex-withdraw-button")
        withdraw.click()
        sync_api.expect(message).to_have_text(f"withdrew the annotation of trial {trial_id}: it has none in force")
        sync_api.expect(row.locator(".dspex-label")).to_have_text("")
        sync_api.expect(form.locator(".dspex-browser-title")).to_have_text(f"annotate {trial_id}: not annotated")
        sync_api.expect(withdraw).to_be_hidden()

        rows = printed_json(page, STATE, "kernel state:")
    annotation, withdrawal = rows
    assert (withdrawal["trial_id"], withdrawal["label"], withdrawal["note"], withdrawal["corrected_gold"]) == (
        trial_id,
        None,
        None,
        None,
    )
    assert (annotation["trial_id"], annotation["label"], annotation["note"]) == (
        trial_id,
        "wrong gold",
        "the gold is off by one",
    )
    assert annotation["corrected_gold"] == {"answer": "42"} and annotation["author"] == getpass.getuser()

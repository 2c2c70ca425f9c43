"""ExperimentBrowser's grouped runs in JupyterLab, driven through headless Chromium.

A journal holds the researcher's two evaluations and a short SIMBA-C run with its candidate evaluations.
The browser lists the two evaluations and the run only, sorted by mean (where candidates used to fill
the top rows), its count says what is shown and what is folded; the run's ▸ button unfolds its nested
experiments right under it, and "show nested runs" lists every one. A last cell reports the kernel's
view, which proves the clicks reached Python. A screenshot stays in the test's temporary directory (and
in $DSPEX_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("anywidget")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[test]')")
pytest.importorskip("nbformat")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

sys.path.insert(0, str(Path(__file__).parent))  # test folders are not packages (importlib import mode)
from jupyterlab_harness import (
    CHROMIUM,
    RENDER_TIMEOUT_MS,
    chromium_page,
    jupyterlab,
    keep_screenshot,
    run_cell,
    sync_api,
    write_notebook,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed"),
]

SETUP_CELL = """\
import json
import warnings
import dspex_lab as dx

data = list(dx.datasets.arithmetic(48, seed=4))
with dx.Context(lm=dx.lab_lm("lab/small"), journal=JOURNAL, threads=2), warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for module, name in (("dspy.Predict", "qa-predict"), ("dspy.ChainOfThought", "qa-cot")):
        dx.evaluate(dx.Program(module, signature="question -> answer", name=name), data[24:],
                    metric=dx.metrics.exact_match, progress=False)
    run = dx.optimize(dx.Program("dspy.Predict", signature="question -> answer", name="qa-opt"), data[:24],
                      data[24:], metric=dx.metrics.exact_match, progress=False, seed=2,
                      optimizer=dx.SimbaC(max_steps=2, bsize=6, num_candidates=2, num_sources=1, patience=2))
children = [child.id for child in dx.open_journal(JOURNAL).children(run.run_id)]
print("ready:", json.dumps({"run": run.run_id, "children": children}))"""

BROWSER_CELL = """\
browser = dx.ExperimentBrowser(JOURNAL)
browser"""

STATE_CELL = """\
print("kernel state:", json.dumps({"expanded": browser.tables.expanded, "nested": browser.nested,
                                   "shown": [row["id"] for row in browser.experiments]}))"""

SETUP, BROWSER, STATE = range(3)


def test_the_browser_folds_a_runs_candidates_and_unfolds_them_on_a_click(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    journal = f"JOURNAL = {str(root / 'journal.duckdb')!r}\n"
    write_notebook(root / "runs.ipynb", [journal + SETUP_CELL, BROWSER_CELL, STATE_CELL])
    with (
        jupyterlab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log") as server,
        chromium_page(f"{server.url}/lab/tree/runs.ipynb?token={server.token}") as page,
    ):
        cells = page.locator(".jp-Notebook .jp-Cell")
        run_cell(page, SETUP)
        ready = cells.nth(SETUP).locator(".jp-OutputArea-output")
        sync_api.expect(ready).to_contain_text("ready:", timeout=RENDER_TIMEOUT_MS)
        made = json.loads(ready.inner_text().split("ready:", 1)[1])
        nested = len(made["children"])
        assert nested >= 4

        run_cell(page, BROWSER)
        browser = cells.nth(BROWSER).locator(".dspex-browser")
        rows = browser.locator(".dspex-experiments tbody tr")
        sync_api.expect(rows).to_have_count(3, timeout=RENDER_TIMEOUT_MS)
        count = browser.locator(".dspex-browser-count").first
        sync_api.expect(count).to_have_text(f"3 of 3 experiments shown · 0 of {nested} nested in 1 run shown")
        browser.locator("th[data-column='mean']").click()
        sync_api.expect(browser.locator("th[data-column='mean']")).to_have_text("mean [95% CI] ▼")
        sync_api.expect(rows).to_have_count(3)
        assert not any(child in rows.all_inner_texts()[0] for child in made["children"])

        run_row = browser.locator(f".dspex-experiments tbody tr[data-id='{made['run']}']")
        fold = run_row.locator("button.dspex-fold")
        sync_api.expect(fold).to_have_text(f"▸ {nested} nested")
        fold.click()
        nested_rows = browser.locator(".dspex-experiments tbody tr.dspex-nested")
        sync_api.expect(nested_rows).to_have_count(nested)
        sync_api.expect(fold).to_have_text(f"▾ {nested} nested")
        sync_api.expect(count).to_contain_text(f"{nested} of {nested} nested in 1 run shown")
        ids = [rows.nth(index).get_attribute("data-id") for index in range(rows.count())]
        at = ids.index(made["run"])
        assert sorted(ids[at + 1 : at + 1 + nested]) == sorted(made["children"])
        sync_api.expect(nested_rows.first.locator(".dspex-role")).to_have_text(re.compile("baseline|candidate-"))
        keep_screenshot(cells.nth(BROWSER), tmp_path / "experiment_browser_runs_nest.png")

        fold.click()
        sync_api.expect(nested_rows).to_have_count(0)
        browser.locator(".dspex-show-nested").check()
        sync_api.expect(nested_rows).to_have_count(nested)

        run_cell(page, STATE)
        state_output = cells.nth(STATE).locator(".jp-OutputArea-output")
        sync_api.expect(state_output).to_contain_text("kernel state:", timeout=RENDER_TIMEOUT_MS)
        state = json.loads(state_output.inner_text().split("kernel state:", 1)[1])
    assert state["nested"] is True and state["expanded"] == []
    assert set(state["shown"]) >= set(made["children"]) | {made["run"]}

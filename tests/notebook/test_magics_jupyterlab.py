"""The %dspex magics in JupyterLab, driven through headless Chromium as a user would.

One JupyterLab server on 127.0.0.1 runs a notebook that loads the extension, defines a program in a
``%%dspex program`` cell, evaluates it with ``%dspex evaluate`` (its RunProgress widget and the result's
rich HTML render in the output), queries the journal with ``%%dspex sql``, and shows how a mistyped cell and
a wrong magic read: one line each, naming the cell's line and the allowed range, or the subcommands.
The screenshot stays in the test's temporary directory (and in $DSPEX_ARTIFACTS when set).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("anywidget")
pytest.importorskip("yaml")
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

CELLS = [
    # 0: the process-wide context comes from DSPEX_* settings, as a terminal user's would.
    """\
import os
os.environ["DSPEX_JOURNAL"] = "magics.duckdb"
os.environ["DSPEX_THREADS"] = "2"
import dspex_lab as dx
%load_ext dspex_lab
data = dx.Dataset(dx.datasets.arithmetic(12, seed=0), name="arith-12")
print("ready")""",
    # 1
    """\
%%dspex program qa
module: dspy.ChainOfThought
signature: "question -> answer"
variables:
  temperature:
    type: float
    value: 0.3
    low: 0.0
    high: 1.0""",
    # 2
    "%dspex evaluate qa --data data --metric exact_match --name browser-run",
    # 3
    """\
%%dspex sql
SELECT count(*) AS n_trials FROM trials""",
    # 4
    """\
%%dspex program broken
module: dspy.Predict
signature: "question -> answer"
variables:
  temperature:
    type: float
    value: 2.5
    low: 0.0
    high: 1.0""",
    # 5
    "%dspex frobnicate",
]


def output(cell):
    return cell.locator(".jp-OutputArea-output")


def test_dspex_cells_run_in_jupyterlab_and_show_rich_results_and_one_line_errors(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "magics.ipynb", CELLS)
    expect = sync_api.expect
    with (
        jupyterlab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log") as server,
        chromium_page(f"{server.url}/lab/tree/magics.ipynb?token={server.token}") as page,
    ):
        cells = page.locator(".jp-Notebook .jp-Cell")
        try:
            run_cell(page, 0)
            expect(output(cells.nth(0))).to_contain_text("ready", timeout=RENDER_TIMEOUT_MS)

            run_cell(page, 1)
            expect(output(cells.nth(1))).to_contain_text("temperature", timeout=RENDER_TIMEOUT_MS)

            run_cell(page, 2)
            evaluation = cells.nth(2).locator(".dspex-evaluation")
            expect(evaluation).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            expect(evaluation).to_contain_text("browser-run")
            expect(evaluation).to_contain_text("mean score")
            progress = cells.nth(2).locator(".dspex-progress")
            expect(progress).to_be_visible()  # progress=True in a kernel: the RunProgress widget
            expect(progress).to_contain_text("12")

            run_cell(page, 3)
            expect(output(cells.nth(3))).to_contain_text("n_trials", timeout=RENDER_TIMEOUT_MS)
            expect(output(cells.nth(3))).to_contain_text("12")

            run_cell(page, 4)
            broken = output(cells.nth(4))
            expect(broken).to_contain_text("UsageError", timeout=RENDER_TIMEOUT_MS)
            expect(broken).to_contain_text("line 6 of the cell")  # the `value: 2.5` line
            expect(broken).to_contain_text("allowed: a float in [0.0, 1.0]")
            assert "Traceback" not in broken.inner_text()

            run_cell(page, 5)
            wrong = output(cells.nth(5))
            expect(wrong).to_contain_text("expected one of program, evaluate, compare", timeout=RENDER_TIMEOUT_MS)
            assert "Traceback" not in wrong.inner_text()
        finally:
            keep_screenshot(page, tmp_path / "magics_jupyterlab.png")
    assert (root / "magics.duckdb").exists()

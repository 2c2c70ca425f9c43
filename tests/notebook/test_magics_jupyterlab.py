"""The %dspex magics in JupyterLab, driven through headless Chromium as a user would.

One JupyterLab server on 127.0.0.1 runs a notebook that loads the extension, defines a program in a
``%%dspex program`` cell, evaluates it with ``%dspex evaluate`` (its RunProgress widget and the result's
rich HTML render in the output), queries the journal with ``%%dspex sql``, and shows how a mistyped cell and
a wrong magic read: one line each, naming the cell's line and the allowed range, or the subcommands. Then, with
the session set by ``%dspex config`` (no ``with`` block), an evaluation of a JSONL file (``--data FILE``) is
stopped with its widget's Cancel: one printed line, no traceback, the widget reading "interrupted" as the
journal does; ``--resume`` by name finishes it with every trial recorded once; a mistyped file is one line.
The screenshot stays in the test's temporary directory (and in $DSPEX_ARTIFACTS when set).
"""

from __future__ import annotations

import json
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

SLOW_TRIALS = 80  # 10 s uncancelled (2 threads, 0.25 s a call): Cancel lands well before the end

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
    # 6: a slow lab LM (latency per call) and a data file, as a researcher's own JSONL would be.
    """\
import json
slow = dx.lab_lm("lab/small", latency=0.25)
with open("slow.jsonl", "w") as handle:
    for example in dx.datasets.arithmetic(SLOW_TRIALS, seed=1):
        handle.write(json.dumps(example.toDict()) + "\\n")
print("written")""".replace("SLOW_TRIALS", str(SLOW_TRIALS)),
    # 7: the session's LM and threads, set once: no `with dx.Context` block from here on.
    "%dspex config lm=slow threads=2",
    # 8: stopped with Cancel.
    "%dspex evaluate qa --data slow.jsonl --metric exact_match --name slow-run --out partial",
    # 9: continued by name.
    "%dspex evaluate qa --data slow.jsonl --metric exact_match --resume slow-run --out full",
    # 10
    """\
trials = dx.load("slow-run").trials
print("resumed:", json.dumps({
    "trials": len(trials),
    "distinct": len(set(zip(trials["example_id"], trials["repeat"]))),
    "partial": [partial.status, partial.n_trials, _.experiment_id == partial.experiment_id],
    "full": [full.status, full.experiment_id == partial.experiment_id],
}))""",
    # 11
    "%dspex evaluate qa --data slow.jsonll --metric exact_match",
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

            cancel_resume_and_a_missing_file(page, cells, tmp_path)
        finally:
            keep_screenshot(page, tmp_path / "magics_jupyterlab.png")
    assert (root / "magics.duckdb").exists()


def cancel_resume_and_a_missing_file(page, cells, tmp_path: Path) -> None:
    """Cancel a ``%dspex evaluate --data FILE``: one line, no traceback; ``--resume`` finishes it, each trial once."""
    expect = sync_api.expect
    run_cell(page, 6)
    expect(output(cells.nth(6))).to_contain_text("written", timeout=RENDER_TIMEOUT_MS)
    run_cell(page, 7)
    expect(output(cells.nth(7))).to_contain_text("'threads': '2'", timeout=RENDER_TIMEOUT_MS)

    run_cell(page, 8)
    stopped = cells.nth(8)
    progress = stopped.locator(".dspex-progress")
    expect(progress.locator(".dspex-progress-status")).to_have_text("running", timeout=RENDER_TIMEOUT_MS)
    progress.locator(".dspex-progress-trials").evaluate(
        "(element) => new Promise((resolve) => { const check = () => parseInt(element.textContent) >= 4 ?"
        " resolve() : setTimeout(check, 50); check(); })"
    )
    progress.locator(".dspex-progress-cancel").click()
    # The widget, the journal and the terminal say the same word.
    expect(progress.locator(".dspex-progress-status")).to_have_text("interrupted", timeout=10_000)
    said = stopped.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stdout']")
    expect(said).to_contain_text("--resume", timeout=RENDER_TIMEOUT_MS)
    lines = said.inner_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evaluation ") and " interrupted: " in lines[0], lines
    assert "the partial result is in _ and partial" in lines[0]
    assert "Traceback" not in " ".join(output(stopped).all_inner_texts())
    assert not stopped.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    keep_screenshot(stopped, tmp_path / "magics_cancelled.png")

    run_cell(page, 9)
    resumed = cells.nth(9).locator(".dspex-evaluation")
    expect(resumed).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    expect(resumed).to_contain_text("slow-run")
    expect(cells.nth(9).locator(".dspex-progress-status")).to_have_text("finished")

    run_cell(page, 10)
    report = output(cells.nth(10))
    expect(report).to_contain_text("resumed:", timeout=RENDER_TIMEOUT_MS)
    state = json.loads(report.inner_text().split("resumed:", 1)[1])
    assert state["trials"] == state["distinct"] == SLOW_TRIALS  # every trial once
    status, kept, underscore = state["partial"]
    assert status == "interrupted" and 4 <= kept < SLOW_TRIALS and underscore
    assert state["full"] == ["finished", True]

    run_cell(page, 11)
    missing = output(cells.nth(11))
    expect(missing).to_contain_text("slow.jsonll: no such file", timeout=RENDER_TIMEOUT_MS)
    assert "Traceback" not in missing.inner_text()

"""RunProgress during an optimization in JupyterLab, driven through headless Chromium.

One cell runs a short SIMBA-C optimization on the lab LM (a little latency per call, so its steps take
a second or so each) with ``progress=True``: the kernel shows one RunProgress for the whole run. While the
cell runs, the page's "step" line is read again and again; it must advance through the baseline and
every step, in order, each "of 3". Once the cell ends, the widget's LM calls, tokens and best interval
must read as the result's summary, which the cell prints. A screenshot of the finished widget stays in
the test's temporary directory (and in $DSPEX_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("anywidget")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[test]')")
pytest.importorskip("nbformat")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

sys.path.insert(0, str(Path(__file__).parent))  # test folders are not packages (importlib import mode)
from jupyterlab_harness import (
    CHROMIUM,
    LIGHT,
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

OPTIMIZE_CELL = """\
import json
import warnings

import dspex_lab as dx

warnings.simplefilter("ignore")  # the valset is small on purpose: its power warning is not what is tested
data = list(dx.datasets.arithmetic(72, seed=17))
program = dx.Program("dspy.Predict", signature="question -> answer", name="opt")
optimizer = dx.SimbaC(max_steps=3, bsize=8, num_candidates=3, num_sources=2, patience=3)
with dx.Context(lm=dx.lab_lm("lab/small", latency=0.04), journal=JOURNAL, threads=2):
    result = dx.optimize(program, data[:32], data[32:], metric=dx.metrics.exact_match, optimizer=optimizer)
summary = result.to_summary()
print("summary:", json.dumps({
    "lm_calls": summary["lm_calls"], "tokens": summary["tokens"], "steps": summary["steps"],
    "best_id": result.best_id, "best_mean": result.best_result.mean, "best_ci": summary["selection"]["best_ci"],
}))"""

FINAL = {"finished", "stopped", "interrupted", "failed"}


def watch_steps(progress: sync_api.Locator, *, timeout: float) -> list[str]:
    """Read the widget's step line until the run's status is final; return each text it showed, in order."""
    seen: list[str] = []
    status = progress.locator(".dspex-progress-status")
    step = progress.locator(".dspex-progress-step")
    ends = time.monotonic() + timeout
    while time.monotonic() < ends:
        text = step.inner_text()
        if not seen or seen[-1] != text:
            seen.append(text)
        if status.inner_text() in FINAL:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"the optimization did not end within {timeout:.0f} s; step lines seen: {seen}")


def test_an_optimizations_progress_steps_through_k_of_n_and_ends_on_the_summarys_numbers(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "progress.ipynb", [f"JOURNAL = {str(root / 'journal.duckdb')!r}\n" + OPTIMIZE_CELL])
    with (
        jupyterlab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log", theme=LIGHT) as server,
        chromium_page(f"{server.url}/lab/tree/progress.ipynb?token={server.token}") as page,
    ):
        cell = page.locator(".jp-Notebook .jp-Cell").first
        try:
            run_cell(page, 0)
            progress = cell.locator(".dspex-progress")
            sync_api.expect(progress.locator(".dspex-progress-step")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            steps = watch_steps(progress, timeout=300)
            sync_api.expect(cell.locator(".jp-OutputArea-output").last).to_contain_text("summary:")
            printed = cell.locator(".jp-OutputArea").inner_text().split("summary:")[-1]
            summary = json.loads(printed.strip().splitlines()[0])
            tokens = progress.locator(".dspex-progress-tokens").inner_text()
            best = progress.locator(".dspex-progress-best").inner_text()
            keep_screenshot(progress, tmp_path / "run_progress_optimization.png")
        except BaseException:
            keep_screenshot(page, tmp_path / "progress_failure.png")
            raise

    # The step line advanced while the cell ran: the baseline, then each step in order, each "of 3".
    found = [re.search(r"step (\d+)(?: of (\d+))?", text) for text in steps]
    assert all(match is not None and match.group(2) in ("3", None) for match in found), steps
    assert all(match.group(2) == "3" for match in found[1:]), steps  # N is known once the run has started
    numbers = [int(match.group(1)) for match in found]
    assert numbers == sorted(numbers) and numbers[-1] == summary["steps"]
    assert len(set(numbers)) >= 3, steps  # seen mid-run, not only at the end
    assert steps[-1].startswith(f"step {summary['steps']} of 3 · ")
    # The final numbers are the summary's (the page formats them with thousands separators).
    assert tokens.startswith(f"{summary['tokens']:,} ({summary['lm_calls']:,} LM calls"), tokens
    low, high = summary["best_ci"]
    assert best.startswith(f"{summary['best_id']}: {summary['best_mean']:.3f} [{low:.3f}, {high:.3f}]"), best

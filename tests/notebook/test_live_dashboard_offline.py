"""The dashboard with no network: every page, the optimization's convergence plots included, loads from 127.0.0.1.

The dashboard is served in this process (``serve_dashboard``, as ``%dspex dashboard`` does from a kernel)
over a journal with an evaluation and a short SIMBA-C run. Headless Chromium refuses and records every
request outside 127.0.0.1, as on a cluster without internet; each page is opened and the test fails if
one was made. A screenshot of the optimization page stays in the test's temporary directory (and in
$DSPEX_ARTIFACTS when set).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("panel")
pytest.importorskip("holoviews")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

sys.path.insert(0, str(Path(__file__).parent))  # test folders are not packages (importlib import mode)
from jupyterlab_harness import ARTIFACTS, CHROMIUM, RENDER_TIMEOUT_MS, keep_screenshot
from test_live_convergence_jupyterlab import offline_page

import dspex_lab as dx
from dspex_lab.notebook import serve_dashboard

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed"),
]


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.duckdb"
    problems = list(dx.datasets.arithmetic(40, seed=3))
    program = dx.Program("dspy.Predict", signature="question -> answer", name="qa")
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        dx.evaluate(program, problems[:12], metric=dx.metrics.exact_match, progress=False, trace=True)
        dx.optimize(
            program,
            problems[:16],
            problems[16:],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=2, bsize=8),
            name="qa-opt",
            progress=False,
        )
    return path


def test_every_dashboard_page_loads_with_no_request_outside_127_0_0_1(journal: Path, tmp_path: Path) -> None:
    outside: list[str] = []
    server = serve_dashboard(journal)
    try:
        with offline_page(server.url, outside, lab=False) as page:
            page.wait_for_selector("text=experiments shown", timeout=RENDER_TIMEOUT_MS)
            for tab in ("Compare", "Trace", "Optimization"):
                page.get_by_text(tab, exact=True).first.click()
                page.wait_for_load_state("networkidle")
            # The optimization page's convergence plots are drawn (bokeh's canvases, from the server's /static).
            page.locator("canvas").nth(3).wait_for(state="attached", timeout=RENDER_TIMEOUT_MS)
            keep_screenshot(page, tmp_path / "dashboard_optimization_offline.png")
            # The optimization page's history and timeline, drawn when their tabs open.
            for tab in ("History", "Timeline"):
                page.get_by_text(tab, exact=True).first.click()
                page.wait_for_load_state("networkidle")
            page.locator(".dspex-timeline-note").wait_for(timeout=RENDER_TIMEOUT_MS)
            keep_screenshot(page, tmp_path / "dashboard_timeline_offline.png")
    finally:
        server.stop()
    print(f"screenshot in {tmp_path}" + (f" and {ARTIFACTS}" if ARTIFACTS else ""))
    assert outside == [], f"the dashboard asked for URLs outside 127.0.0.1: {sorted(set(outside))}"

"""The optimization page's Importance tab as a user sees it: `dspex dashboard` served, driven in headless Chromium.

The forest plot must hold one point per estimable contrast of ``result.importance()``, the table under it
one row per contrast, and the page must fetch nothing from any host but 127.0.0.1. A screenshot is kept in
the test's temporary directory (and copied to ``$DSPEX_ARTIFACTS`` when set).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from urllib.parse import urlparse

import pytest

import dspex_lab as dx

pytest.importorskip("panel")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = os.environ.get("DSPEX_ARTIFACTS")  # read at import: the autouse fixture removes DSPEX_* variables
GUARD_MS = 120_000  # the longest any wait for the page may take before the test fails as hung
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed"),
]
# Rows of the page's Bokeh data sources having both columns: the forest plot's points have "effect" and "share".
COUNT_ROWS = """([first, second]) => {
    let rows = 0;
    for (const document of window.Bokeh.documents) {
        for (const model of document.all_models) {
            const data = model.data instanceof Map ? Object.fromEntries(model.data) : model.data;
            if (data && typeof data === "object" && first in data && second in data) {
                rows += data[first].length;
            }
        }
    }
    return rows;
}"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path):
    """A SIMBA-C run over module type and temperature, served by `dspex dashboard` on 127.0.0.1."""
    path = tmp_path / "journal.duckdb"
    data = list(dx.datasets.arithmetic(100, seed=4))
    program = dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="qa-importance",
        variables={
            "module": dx.ModuleType("dspy.Predict", choices=("dspy.Predict", "dspy.ChainOfThought")),
            "temperature": dx.Float(0.8, low=0.0, high=1.0),
        },
    )
    optimizer = dx.SimbaC(max_steps=2, bsize=12, num_candidates=3, num_sources=2, patience=2, strategies=("mutate",))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2), warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.errors.UnderpoweredWarning)
        result = dx.optimize(
            program, data[:40], data[40:], metric=dx.metrics.exact_match, optimizer=optimizer, progress=False, seed=0
        )
    port = free_port()
    command = [sys.executable, "-m", "dspex_lab.cli", "dashboard", "--journal", str(path)]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115 - closed with the process
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = process.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line + (tmp_path / "server.log").read_text()
        yield {"url": f"http://127.0.0.1:{port}/", "result": result}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_importance_tab_draws_each_estimable_effect_and_lists_every_contrast(served, tmp_path: Path) -> None:
    frame = served["result"].importance()
    estimable = int(frame["estimable"].sum())
    assert estimable > 0
    errors: list[str] = []
    hosts: set[str] = set()
    arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[*arguments, "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(GUARD_MS)
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        # A blob: URL (bokeh's web workers) names the page that made it: its host is that page's.
        page.on("request", lambda request: hosts.add(urlparse(request.url.removeprefix("blob:")).hostname or "?"))
        page.goto(served["url"])
        page.wait_for_selector("text=1 of 1 experiment shown")  # the run; its evaluations are nested

        page.get_by_text("Optimization", exact=True).first.click()
        page.get_by_text("Importance", exact=True).first.click()
        table = page.locator("table.dspex-importance")
        table.wait_for()
        assert table.locator("tr").count() == len(frame) + 1
        assert table.get_by_text("dspy.ChainOfThought vs dspy.Predict").count() == 1
        page.wait_for_function(f"() => ({COUNT_ROWS})(['effect', 'share']) === {estimable}")
        page.screenshot(path=tmp_path / "optimization-importance.png", full_page=True)
        browser.close()
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(tmp_path / "optimization-importance.png", Path(ARTIFACTS) / "dashboard-optimization-importance.png")
    assert errors == []
    assert hosts == {"127.0.0.1"}

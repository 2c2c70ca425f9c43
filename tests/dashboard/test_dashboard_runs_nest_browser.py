"""Grouped runs as a user sees them: the served dashboard folds an optimization's candidates under its run.

`dspex dashboard` serves a journal holding the researcher's two evaluations and one SIMBA-C run with its
candidate evaluations; in headless Chromium the experiments table lists the two evaluations and the run
only, its count says what is shown (and what a filter hides), the run's row expands into its nested
experiments, and "Show nested runs" lists them under the run. Screenshots are kept in the test's
temporary directory (and copied to ``$DSPEX_ARTIFACTS`` when set).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import dspex_lab as dx

pytest.importorskip("panel")
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Read at import: the suite's autouse fixture removes every DSPEX_* variable before each test runs.
ARTIFACTS = os.environ.get("DSPEX_ARTIFACTS")
GUARD_MS = 120_000  # the longest any wait for the page may take before the test fails as hung
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed"),
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def journal(tmp_path: Path) -> dict:
    path = tmp_path / "journal.duckdb"
    data = list(dx.datasets.arithmetic(50, seed=4))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        for module, name in (("dspy.Predict", "qa-predict"), ("dspy.ChainOfThought", "qa-cot")):
            program = dx.Program(module, signature="question -> answer", name=name)
            dx.evaluate(program, data[:24], metric=dx.metrics.exact_match, progress=False)
        run = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="qa-opt"),
            data[:24],
            data[24:],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=2, bsize=6, num_candidates=2, num_sources=1, patience=2),
            progress=False,
            seed=2,
        )
    children = dx.open_journal(path).children(run.run_id)
    assert len(children) >= 4
    return {"path": path, "run": run.run_id, "children": [(child.id, child.name) for child in children]}


@pytest.fixture
def served(journal: dict, tmp_path: Path):
    port = free_port()
    command = [sys.executable, "-m", "dspex_lab.cli", "dashboard", "--journal", str(journal["path"])]
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
        yield {**journal, "url": f"http://127.0.0.1:{port}/", "process": process}
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_experiments_page_folds_a_runs_candidates_and_unfolds_them_on_a_click(served, tmp_path: Path) -> None:
    errors: list[str] = []
    nested = len(served["children"])
    arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[*arguments, "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(GUARD_MS)
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(served["url"])

        # Folded: the researcher's two evaluations and the run, no candidate, and a count that says so.
        page.wait_for_selector(f"text=3 of 3 experiments shown · 0 of {nested} nested in 1 run shown")
        board = page.locator(".tabulator").first  # the experiments table (the other pages' tables follow it)
        rows = board.locator(".tabulator-row")
        rows.first.wait_for()
        assert rows.count() == 3
        table = board.inner_text()
        assert "qa-predict" in table and "qa-cot" in table and served["run"] in table
        assert not any(child_id in table for child_id, _ in served["children"])
        page.screenshot(path=tmp_path / "runs-folded.png", full_page=True)

        # A filter's count is of what it shows.
        page.get_by_placeholder("any name").fill("qa-cot")
        page.get_by_placeholder("any name").press("Enter")
        page.wait_for_selector("text=1 of 3 experiments shown")
        page.get_by_placeholder("any name").fill("")
        page.get_by_placeholder("any name").press("Enter")
        page.wait_for_selector("text=3 of 3 experiments shown")

        # One click on the run's ► opens its nested experiments under its row.
        run_row = board.locator(".tabulator-row", has_text=served["run"])
        run_row.locator(".tabulator-cell", has_text="►").click()
        page.wait_for_selector("table.dspex-nested")
        assert page.locator("tr.dspex-nested-row").count() == nested
        opened = page.locator("table.dspex-nested").inner_text()
        assert all(child_id in opened for child_id, _ in served["children"])
        page.screenshot(path=tmp_path / "run-expanded.png", full_page=True)

        # "Show nested runs" lists every candidate right under its run, marked.
        page.locator(".bk-Checkbox", has_text="Show nested runs").locator("input[type=checkbox]").check()
        page.wait_for_selector(f"text=3 of 3 experiments shown · {nested} of {nested} nested in 1 run shown")
        rows.nth(2 + nested).wait_for()
        names = [text.strip() for text in rows.all_inner_texts()]
        assert len(names) == 3 + nested
        at = next(index for index, text in enumerate(names) if served["run"] in text)
        assert all("↳" in text for text in names[at + 1 : at + 1 + nested])
        page.screenshot(path=tmp_path / "runs-nested.png", full_page=True)
        browser.close()

    for name in ("runs-folded", "run-expanded", "runs-nested"):
        if ARTIFACTS:
            Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / f"{name}.png", Path(ARTIFACTS) / f"dashboard-{name}.png")
    assert errors == []

"""Fixtures of the optimization page's tests: a journal holding one SIMBA-C run, served, and a browser to read it.

``optimization_run`` (over module type and temperature) and ``guarded_run`` (a cost guardrail over the
model) are built once per test module; ``serve`` serves a journal with the real ``dspex dashboard``
command on 127.0.0.1; ``browser`` is a headless Chromium page (Debian's chromium) that records console
errors and every host it asks, and keeps screenshots.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

import dspex_lab as dx

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Read at import: the suite's autouse fixture removes every DSPEX_* variable before each test runs.
ARTIFACTS = os.environ.get("DSPEX_ARTIFACTS")
GUARD_MS = 120_000  # the longest any wait for the page may take before the test fails as hung
# Rows of the page's Bokeh data sources having both columns (a glyph's source holds its hover columns too).
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


def _optimized(path: Path, program: dx.Program, data: list[Any], optimizer: dx.SimbaC, **options: Any) -> Any:
    """Optimize ``program`` on the lab LM into the journal at ``path``: 40 examples train, the rest validate."""
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2), warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.errors.UnderpoweredWarning)
        return dx.optimize(
            program, data[:40], data[40:], metric=dx.metrics.exact_match, optimizer=optimizer, progress=False, **options
        )


@pytest.fixture(scope="module")
def optimization_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A journal holding one SIMBA-C run over module type and temperature on the lab LM: its path and result."""
    path = tmp_path_factory.mktemp("optimization-page") / "journal.duckdb"
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
    result = _optimized(path, program, list(dx.datasets.arithmetic(100, seed=4)), optimizer, seed=0)
    return {"path": path, "result": result}


@pytest.fixture(scope="module")
def guarded_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A journal holding one SIMBA-C run with a cost guardrail, its model a variable (lab/large: ~16x the price)."""
    path = tmp_path_factory.mktemp("guarded-run") / "journal.duckdb"
    program = dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="qa-guarded",
        variables={"model": dx.Choice("lab/small", choices=["lab/small", "lab/large"])},
    )
    objective = dx.Objective(guardrails=[dx.Guardrail("cost", at_most=2e-4)])
    data = list(dx.datasets.arithmetic(260, seed=3))
    result = _optimized(path, program, data, dx.SimbaC(max_steps=2, bsize=16), objective=objective, seed=0)
    return {"path": path, "result": result}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Path], str]]:
    """Serve a journal with ``dspex dashboard`` on 127.0.0.1 in its own process (stopped after the test): its URL."""
    pytest.importorskip("panel")
    processes: list[subprocess.Popen[str]] = []

    def start(journal: Path) -> str:
        port = _free_port()
        command = [sys.executable, "-m", "dspex_lab.cli", "dashboard", "--journal", str(journal)]
        process = subprocess.Popen(
            [*command, "--port", str(port), "--no-browser"],
            stdout=subprocess.PIPE,
            stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115 - closed with the process
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        processes.append(process)
        line = process.stdout.readline() if process.stdout is not None else ""
        assert f"http://127.0.0.1:{port}/" in line, line + (tmp_path / "server.log").read_text()
        return f"http://127.0.0.1:{port}/"

    yield start
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@dataclass
class BrowserPage:
    """A Playwright page with what it reported: console and page errors, and the host of every request."""

    page: Any
    folder: Path
    errors: list[str] = field(default_factory=list)
    hosts: set[str] = field(default_factory=set)

    def open_optimization_tab(self, url: str, tab: str) -> None:
        """Open the served dashboard of a journal holding one run, then its optimization page's ``tab``."""
        self.page.goto(url)
        self.page.wait_for_selector("text=1 of 1 experiment shown")  # the run; its evaluations are nested
        self.page.get_by_text("Optimization", exact=True).first.click()
        self.page.get_by_text(tab, exact=True).first.click()

    def wait_for_rows(self, first: str, second: str, count: int) -> None:
        """Wait until the page's Bokeh sources having both columns hold ``count`` rows in all."""
        self.page.wait_for_function(f"() => ({COUNT_ROWS})({[first, second]!r}) === {count}")

    def keep(self, name: str) -> Path:
        """Screenshot the whole page into the test's folder (and ``$DSPEX_ARTIFACTS`` when set)."""
        path = self.folder / name
        self.page.screenshot(path=path, full_page=True)
        if ARTIFACTS:
            Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(ARTIFACTS) / f"dashboard-{name}")
        return path


def _host(url: str) -> str:
    # A blob: URL (bokeh's web workers) names the page that made it: its host is that page's.
    return urlparse(url.removeprefix("blob:")).hostname or "?"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[BrowserPage]:
    """A headless Chromium page (1300 x 900) that records errors and the hosts it asks; closed after the test."""
    playwright = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium package is not installed")
    arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=CHROMIUM, args=[*arguments, "--disable-gpu"])
        page = launched.new_page(viewport={"width": 1300, "height": 900})
        page.set_default_timeout(GUARD_MS)
        opened = BrowserPage(page, tmp_path)
        page.on("console", lambda message: opened.errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: opened.errors.append(str(error)))
        page.on("request", lambda request: opened.hosts.add(_host(request.url)))
        try:
            yield opened
        finally:
            launched.close()

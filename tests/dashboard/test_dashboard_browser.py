"""The dashboard as a user sees it: `dspex dashboard` in its own process, driven by Playwright in headless Chromium.

A journal with two traced evaluations and a short SIMBA-C run is served by the real command on
127.0.0.1; each page must load without a JavaScript error and show the journal's data, and an
evaluation written by a second process must appear on the open page without a reload. Screenshots of
every page are kept in the test's temporary directory (and copied to ``$DSPEX_ARTIFACTS`` when set).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
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

WRITER = """
import sys
import dspex_lab as dx

with dx.Context(lm=dx.lab_lm("lab/small"), journal=sys.argv[1], threads=2):
    program = dx.Program("dspy.Predict", signature="question -> answer", name="fresh-from-kernel")
    dx.evaluate(program, list(dx.datasets.arithmetic(12, seed=9)), metric=dx.metrics.exact_match, progress=False)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def journal(tmp_path: Path) -> dict:
    path = tmp_path / "journal.duckdb"
    data = list(dx.datasets.arithmetic(50, seed=4))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        results = [
            dx.evaluate(
                dx.Program(module, signature="question -> answer", name=name),
                data[:24],
                metric=dx.metrics.exact_match,
                progress=False,
                trace=True,
            )
            for module, name in (("dspy.Predict", "qa-predict"), ("dspy.ChainOfThought", "qa-cot"))
        ]
        run = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="qa-opt"),
            data[:24],
            data[24:],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=1, bsize=6, num_candidates=2, num_sources=1, patience=1),
            progress=False,
            seed=2,
        )
    return {"path": path, "comparison": dx.compare(*results), "run": run}


@pytest.fixture
def served(journal: dict, tmp_path: Path):
    port = free_port()
    command = [sys.executable, "-m", "dspex_lab.cli", "dashboard", "--journal", str(journal["path"])]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--no-browser"],
        stdout=subprocess.PIPE,
        stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115 - closed with the process
        text=True,
        # Ctrl-C must reach the server even when the suite itself was started in the background, where a
        # shell without job control starts commands with SIGINT ignored (and a child inherits that).
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


def keep(screenshot: Path) -> None:
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(ARTIFACTS) / f"dashboard-{screenshot.name}")


def test_every_page_loads_shows_the_journal_and_follows_a_writer(served, tmp_path: Path) -> None:
    errors: list[str] = []
    arguments = ["--no-sandbox"] if os.geteuid() == 0 else []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=[*arguments, "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        # Hang guards only, generous for a loaded machine: each wait below is for what the page must show.
        page.set_default_timeout(GUARD_MS)
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(served["url"])

        page.wait_for_selector("text=experiments shown")
        for name in ("qa-predict", "qa-cot", "qa-opt (simba-c)"):
            assert page.get_by_text(name, exact=True).count() >= 1, name
        page.screenshot(path=tmp_path / "experiments.png", full_page=True)

        page.get_by_text("Compare", exact=True).first.click()
        comparison = served["comparison"]
        page.wait_for_selector(f"text=b - a = {comparison.difference:+.3f}")
        low, high = comparison.ci
        assert page.get_by_text(f"[{low:+.3f}, {high:+.3f}]".replace("-0.000", "+0.000"), exact=False).count() == 1
        page.screenshot(path=tmp_path / "compare.png", full_page=True)

        page.get_by_text("Trace", exact=True).first.click()
        page.wait_for_selector("table.dspex-trace")
        assert page.locator("tr.dspex-span").count() >= 5
        assert page.get_by_text("trials 1 to 24 of 24").count() == 1
        page.get_by_text("arith-4-3/r0", exact=True).first.click()  # another trial's row
        page.wait_for_selector("text=Trial arith-4-3/r0")
        check_trace_page(page, served["path"], tmp_path)
        page.screenshot(path=tmp_path / "trace.png", full_page=True)

        page.get_by_text("Optimization", exact=True).first.click()
        page.locator("canvas").nth(3).wait_for(state="attached")  # four plots drawn (in Bokeh's shadow roots)
        page.screenshot(path=tmp_path / "optimization.png", full_page=True)
        check_optimization_page(page, served, tmp_path)

        page.get_by_text("Experiments", exact=True).first.click()
        writer = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(WRITER), str(served["path"])],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert writer.returncode == 0, writer.stderr
        page.wait_for_selector("text=fresh-from-kernel")  # the page follows the writer without a reload
        page.screenshot(path=tmp_path / "refreshed.png", full_page=True)
        browser.close()

    for name in (
        "experiments",
        "compare",
        "trace",
        "search",
        "optimization",
        "optimization-history",
        "optimization-timeline",
        "refreshed",
    ):
        keep(tmp_path / f"{name}.png")
    assert errors == []
    served["process"].send_signal(signal.SIGINT)
    assert served["process"].wait(timeout=60) == 0  # a hang guard: Ctrl-C ends the server cleanly


def check_trace_page(page, journal_path: Path, tmp_path: Path) -> None:
    """The trial table reads question to latency; a span's detail shows expected vs got; search opens a match."""
    heads = page.locator(".tabulator-col-title").all_inner_texts()
    for column in ("question", "expected", "answer", "tokens", "cost", "latency"):
        assert column in heads, heads
    latency = page.locator(".tabulator-cell[tabulator-field=latency]").first.inner_text()
    assert re.fullmatch(r"\d+(\.\d)? ms|\d+\.\d\d s", latency), latency
    assert page.locator(".tabulator-cell[tabulator-field=cost]").first.inner_text().startswith("$")
    # The selected trial's metric span: the question, then expected vs got field by field.
    detail = page.locator(".dspex-span-detail")
    detail.get_by_text("metric · exact_match").wait_for()
    expected = next(example.answer for example in dx.datasets.arithmetic(50, seed=4) if example.id == "arith-4-3")
    assert detail.locator("tr[data-field=answer] td.dspex-expected").inner_text() == expected
    assert detail.locator("pre.dspex-question").count() == 1

    # A search over the experiment's spans lists every trial's parse span; a click opens one of them.
    search = page.get_by_placeholder("text in span names, prompts, completions or errors")
    search.fill("chatadapter.parse")
    page.wait_for_selector("text=24 matching spans in 24 trials")
    # The results' rows (they have a span column; the trial table above has a trial column too): their count
    # shows before the table draws them, and a cell of the trial table would open that trial's metric span.
    matches = page.locator(".tabulator-row", has=page.locator(".tabulator-cell[tabulator-field=span]"))
    matches.first.wait_for()
    first = matches.locator(".tabulator-cell[tabulator-field=trial]", has_text=re.compile(r"/r0$")).last
    opened = first.inner_text()
    first.click()
    page.wait_for_selector(f"text=Trial {opened}")
    detail.get_by_text("adapter_parse · ChatAdapter.parse").wait_for()
    assert detail.locator("pre.dspex-completion").count() == 1
    page.screenshot(path=tmp_path / "search.png", full_page=True)


# The bars the page's Bokeh document holds: the timeline's data sources are the ones with a "duration" column.
# A script counting the rows of the page's Bokeh data sources that have both columns named.
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
# The timeline's bars: its sources have "duration" and "outcome"; the history's points: "variables" and "score".
TIMELINE_BARS = ["duration", "outcome"]
HISTORY_POINTS = ["variables", "score"]


def check_optimization_page(page, served: dict, tmp_path: Path) -> None:
    """The history is drawn, and the timeline has one bar per evaluation nested in the run."""
    page.get_by_text("History", exact=True).first.click()
    candidates = served["run"].candidates
    points = int(candidates["screen_mean"].notna().sum() + candidates["val_mean"].notna().sum())
    page.wait_for_function(f"() => ({COUNT_ROWS})({HISTORY_POINTS}) === {points}")
    page.screenshot(path=tmp_path / "optimization-history.png", full_page=True)
    children = dx.open_journal(served["path"]).children(served["run"].run_id)
    page.get_by_text("Timeline", exact=True).first.click()
    note = page.locator(".dspex-timeline-note")
    note.wait_for()
    assert note.get_attribute("data-bars") == str(len(children))
    assert f"{len(children)} evaluations from" in note.inner_text()
    page.wait_for_function(f"() => ({COUNT_ROWS})({TIMELINE_BARS}) === {len(children)}")
    assert page.evaluate(COUNT_ROWS, TIMELINE_BARS) == len(children)
    page.screenshot(path=tmp_path / "optimization-timeline.png", full_page=True)

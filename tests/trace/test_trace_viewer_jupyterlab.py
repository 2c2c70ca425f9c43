"""The trace viewer in JupyterLab, driven through headless Chromium as a user would.

A JupyterLab server runs on 127.0.0.1 in the test's temporary directory, with its own config,
runtime, settings and workspace folders; its kernel runs in this virtualenv. Chromium (Debian's
package, driven by Playwright) opens a notebook that runs a small traced evaluation and shows a
``TraceViewer``, clicks nodes of the span tree open, selects the LM span and reads the detail pane.
A last cell, run after the clicks, reports the widget's Python state, which proves that the clicks
reached the kernel. It then checks what a user reads: the header, the column headers, a whole error
name, the waterfall's bars, a retried attempt's label, expected vs got on the metric span and the
search's match count, in JupyterLab's light and dark themes. The screenshots (taken also when the test
fails) and the server's log stay in the test's temporary directory as CI artifacts, and the screenshots
are copied to ``$DSPEX_ARTIFACTS`` when it is set.
"""

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dspex_lab as dx

pytest.importorskip("anywidget")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[test]')")
nbformat = pytest.importorskip("nbformat")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed"),
]

# A loaded two-core machine needs a while to start JupyterLab, a kernel and dspy; a quiet one takes seconds.
START_TIMEOUT_S = 120
STEP_TIMEOUT_MS = 30_000
RENDER_TIMEOUT_MS = 120_000

PROBLEMS = dx.datasets.arithmetic(6, seed=0)
# With this seed the six trials include a failed one, retried ones and ok ones on the first attempt.
FAULTS = "error_rate=0.2, rate_limit_rate=0.3, seed=1"

SETUP_CELL = """\
import json
import sys

import dspex_lab as dx

print("kernel prefix:", sys.prefix)
problems = dx.Dataset(dx.datasets.arithmetic(6, seed=0), name="arithmetic-6")
cot = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
with dx.Context(lm=dx.lab_lm("lab/small", FAULTS), journal=JOURNAL, threads=2):
    result = dx.evaluate(cot, problems, metric=dx.metrics.exact_match, progress=False, trace=True, retries=2)
trials = result.table()
first_try = trials.query("status == 'ok' and attempts == 1")["trial_id"].iloc[0]
print("traced trials:", len(trials), "failed:", result.n_errors)""".replace("FAULTS", FAULTS)

VIEWER_CELL = """\
viewer = dx.widgets.TraceViewer(JOURNAL, result.experiment_id, trial_id=first_try)
viewer"""

STATE_CELL = """\
print("python state:", json.dumps({"expanded": viewer.expanded, "selected_span": viewer.selected_span}))"""

# The page talks to JupyterLab through `window.jupyterapp` (the server exposes it for tests).
KERNEL_IDLE = """() => {
  const kernel = window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel;
  return kernel?.status === "idle" && kernel.connectionStatus === "connected";
}"""

RUN_LAST_CELL = """async () => {
  const notebook = window.jupyterapp.shell.currentWidget.content;
  notebook.activeCellIndex = notebook.widgets.length - 1;
  await window.jupyterapp.commands.execute("notebook:run-cell");
}"""

# No toast (the news question, an update notice) may cover the widget, and nothing calls out to the web.
NOTIFICATION_SETTINGS = {"checkForUpdates": False, "doNotDisturbMode": True, "fetchNews": "false"}

# The widget's background, read in the page: light in the light theme, dark in the dark one.
LUMINANCE = """(element) => {
  const [r, g, b] = getComputedStyle(element).backgroundColor.match(/\\d+(\\.\\d+)?/g).map(Number);
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}"""
# Whether an element shows all of its text (nothing cut off by its box).
SHOWS_ALL = "(element) => element.scrollWidth <= element.clientWidth + 1"


@dataclass(frozen=True)
class LabServer:
    url: str
    token: str
    root: Path
    log: Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else "(no server log)"


def wait_until_ready(server: LabServer, process: subprocess.Popen) -> None:
    # Talk to 127.0.0.1 directly, whatever proxy the environment names.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"{server.url}/api/status", headers={"Authorization": f"token {server.token}"})
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {process.returncode}:\n{log_tail(server.log)}")
        try:
            with opener.open(request, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer /api/status within {START_TIMEOUT_S} s:\n{log_tail(server.log)}")


@pytest.fixture(params=["JupyterLab Light", "JupyterLab Dark"])
def theme(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def lab_server(tmp_path: Path, theme: str) -> Iterator[LabServer]:
    root = tmp_path / "lab"
    root.mkdir()
    state = tmp_path / "jupyter"
    settings = state / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps(NOTIFICATION_SETTINGS), encoding="utf-8")
    themes = notification.parent / "themes.jupyterlab-settings"
    themes.write_text(json.dumps({"theme": theme}), encoding="utf-8")
    # Config, runtime, settings, workspaces and the user's data folder are the test's own: a kernelspec
    # in ~/.local/share/jupyter cannot shadow the venv's. The venv's data folder stays on the path, so
    # its python3 kernelspec and the anywidget and ipywidgets lab extensions are found.
    environment = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "IPYTHONDIR": str(state / "ipython"),
    }
    server = LabServer(
        url=f"http://127.0.0.1:{free_port()}",
        token=secrets.token_hex(16),
        root=root,
        log=tmp_path / "jupyterlab.log",
    )
    command = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={server.url.rsplit(':', 1)[1]}",
        "--ServerApp.port_retries=0",
        f"--IdentityProvider.token={server.token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")
    with server.log.open("wb") as log:
        process = subprocess.Popen(command, cwd=root, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(server, process)
        yield server
    finally:
        # SIGTERM lets the server shut its kernels down before it exits.
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def write_notebook(server: LabServer) -> str:
    journal = f"JOURNAL = {str(server.root / 'journal.duckdb')!r}\n"
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    notebook.cells = [
        nbformat.v4.new_code_cell(journal + SETUP_CELL),
        nbformat.v4.new_code_cell(VIEWER_CELL),
        nbformat.v4.new_code_cell(STATE_CELL),
    ]
    nbformat.write(notebook, server.root / "trace_viewer.ipynb")
    return "trace_viewer.ipynb"


# Read when the module is imported: tests/conftest.py clears every DSPEX_* variable while a test runs.
ARTIFACTS = os.environ.get("DSPEX_ARTIFACTS")


def keep_artifact(path: Path) -> None:
    """Copy a screenshot to ``$DSPEX_ARTIFACTS`` (CI's artifact folder) when it is set."""
    folder = ARTIFACTS
    if folder and path.exists():
        Path(folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(folder) / path.name)


def test_jupyterlab_shows_the_trace_viewer_and_it_answers_clicks(
    lab_server: LabServer, tmp_path: Path, theme: str
) -> None:
    name = write_notebook(lab_server)
    dark = theme == "JupyterLab Dark"
    screenshot = tmp_path / f"trace_viewer_jupyterlab_{'dark' if dark else 'light'}.png"
    arguments = ["--no-proxy-server", "--disable-gpu", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=arguments, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        page.set_default_timeout(STEP_TIMEOUT_MS)
        try:
            page.goto(f"{lab_server.url}/lab/tree/{name}?token={lab_server.token}", timeout=RENDER_TIMEOUT_MS)
            page.wait_for_function(KERNEL_IDLE, timeout=RENDER_TIMEOUT_MS)
            page.evaluate('() => window.jupyterapp.commands.execute("notebook:run-all-cells")')

            cells = page.locator(".jp-Notebook .jp-Cell")
            viewer = cells.nth(1).locator(".dspex-trace-viewer")
            rows = viewer.locator(".dspex-span")
            try:
                expect(rows.first).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            except AssertionError:
                outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
                pytest.fail(f"the widget did not render; the cells' outputs:\n{outputs[-3000:]}")
            expect(cells.nth(0).locator(".jp-OutputArea-output")).to_contain_text(f"kernel prefix: {sys.prefix}\n")
            expect(viewer.locator(".dspex-trial")).to_have_count(len(PROBLEMS))
            expect(viewer.locator(".dspex-detail")).to_have_text("select a span")
            check_header_and_columns(viewer, dark=dark)
            example_id = rows.first.locator(".dspex-name").inner_text().split("/")[0]  # "<example id>/r<repeat>"

            def row(kind: str, name: str) -> sync_api.Locator:
                return rows.filter(has=page.locator(".dspex-kind", has_text=re.compile(f"^{kind}$"))).filter(
                    has=page.locator(".dspex-name", has_text=re.compile(f"^{re.escape(name)}$"))
                )

            # Only the trial's root span is open at first; under it each try is an attempt span, and the
            # LM call sits two closed levels below the first attempt.
            lm_row = row("lm", "lab/small")
            expect(lm_row).to_have_count(0)
            attempt = rows.filter(has=page.locator(".dspex-kind", has_text=re.compile("^attempt$"))).first
            attempt.locator(".dspex-toggle").click()
            expect(row("module", "ChainOfThought")).to_be_visible()
            closed = rows.count()
            module_id = row("module", "ChainOfThought").get_attribute("data-span-id")
            row("module", "ChainOfThought").locator(".dspex-toggle").click()
            expect(row("module", "Predict")).to_be_visible()
            one_open = rows.count()
            assert one_open > closed
            predict_id = row("module", "Predict").get_attribute("data-span-id")
            row("module", "Predict").locator(".dspex-toggle").click()
            expect(lm_row).to_be_visible()
            assert rows.count() > one_open

            lm_id = lm_row.get_attribute("data-span-id")
            lm_row.locator(".dspex-name").click()
            # The detail pane draws only the `detail` trait, which the kernel computes on selection.
            expect(viewer.locator(".dspex-detail h4")).to_have_text("lm · lab/small")
            expect(viewer.locator(".dspex-span.dspex-selected")).to_have_attribute("data-span-id", lm_id)
            attributes = json.loads(viewer.locator(".dspex-detail .dspex-attributes").inner_text())
            question = next(example.question for example in PROBLEMS if example.id == example_id)
            assert attributes["model"] == "lab/small"
            # Prompts and completions are shown as text blocks, one per message, newlines kept.
            messages = viewer.locator(".dspex-detail .dspex-message")
            assert [messages.nth(i).get_attribute("data-title") for i in range(messages.count())] == ["system", "user"]
            assert question in messages.nth(1).locator(".dspex-text").inner_text()
            completion = viewer.locator(".dspex-detail .dspex-completion .dspex-text").inner_text()
            # Real line breaks around DSPy's field markers, not JSON's escaped ones.
            assert "\n[[ ## answer ## ]]\n" in completion and "\\n" not in completion

            # The tree's expansion is drawn by the front end alone: ask the kernel what it received.
            state_output = cells.nth(2).locator(".jp-OutputArea-output")
            expect(state_output).to_contain_text('"selected_span": ""')  # from the first run
            page.evaluate(RUN_LAST_CELL)
            expect(state_output).to_contain_text(lm_id)
            state = json.loads(state_output.inner_text().split("python state:", 1)[1])
            assert state["selected_span"] == lm_id
            assert {module_id, predict_id} <= set(state["expanded"])

            # The LM row's columns: temperature (the LM's default), tokens in→out and a priced cost.
            expect(lm_row.locator(".dspex-cell-temperature")).to_have_text("—")
            expect(lm_row.locator(".dspex-cell-tokens")).to_have_text(re.compile(r"^\d+→\d+$"))
            expect(lm_row.locator(".dspex-cell-cost")).to_have_text(re.compile(r"^\$0\.0\d+$"))
            check_waterfall(rows)

            metric_row = rows.filter(has=page.locator(".dspex-kind", has_text=re.compile("^metric$")))
            metric_row.locator(".dspex-name").click()
            answer = viewer.locator(".dspex-detail .dspex-compare tr[data-field='answer']")
            expected = next(example.answer for example in PROBLEMS if example.id == example_id)
            expect(answer.locator(".dspex-expected")).to_have_text(expected)
            expect(answer.locator(".dspex-got")).not_to_have_text("")

            search = viewer.locator(".dspex-search")
            search.fill("ChatAdapter")  # one format and one parse span in this trial
            count = viewer.locator(".dspex-match-count")
            # Searched across the experiment too: every trial's format and parse spans match, and each is marked.
            expect(count).to_have_text(re.compile(r"^1 of 2 matches · [1-6] trials? match$"))
            expect(viewer.locator(".dspex-trial.dspex-trial-match").first).to_be_visible()
            viewer.locator(".dspex-next").click()
            expect(count).to_have_text(re.compile(r"^2 of 2 matches · "))
            expect(viewer.locator(".dspex-span.dspex-current .dspex-name")).to_have_text("ChatAdapter.parse")
            search.fill("")
            expect(count).to_have_text("")

            check_failed_and_retried_trials(viewer, rows)
            viewer.scroll_into_view_if_needed()
        finally:
            with contextlib.suppress(sync_api.Error):  # a crashed page keeps the original error in front
                page.screenshot(path=screenshot, full_page=True)
            keep_artifact(screenshot)
            browser.close()
    print(f"screenshot: {screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000


def check_header_and_columns(viewer: sync_api.Locator, *, dark: bool) -> None:
    """The header names the run and gives its figures; both panes have column headers; colours follow the theme."""
    expect = sync_api.expect
    header = viewer.locator(".dspex-header")
    expect(header.locator(".dspex-title")).to_contain_text("cot")
    expect(header.locator("[data-stat=mean] .dspex-stat-value")).to_have_text(
        re.compile(r"^\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\] 95% CI$")
    )
    expect(header.locator("[data-stat=n] .dspex-stat-value")).to_have_text(re.compile(r"^[1-6]$"))
    errors = header.locator("[data-stat=errors] .dspex-stat-value")
    expect(errors).to_have_text(re.compile(r"^1 \(LMProviderError 1\)$"))
    expect(header.locator("[data-stat=tokens] .dspex-stat-value")).to_have_text(re.compile(r"^[\d,]+ in · [\d,]+ out$"))
    expect(header.locator("[data-stat=cost] .dspex-stat-value")).to_have_text(re.compile(r"^\$0\.0\d+$"))
    assert viewer.locator(".dspex-trials-head .dspex-column").all_inner_texts() == [
        "trial", "question", "expected", "answer", "score", "status", "tokens", "cost", "latency",
    ]  # fmt: skip
    check_trial_list(viewer)
    columns = viewer.locator(".dspex-tree-head .dspex-column").all_inner_texts()
    assert columns[:6] == ["span", "status", "T", "tokens", "cost", "duration"]
    assert re.fullmatch(r"timeline [\d.]+ m?s", columns[6])
    luminance = viewer.evaluate(LUMINANCE)
    assert (luminance < 0.3) if dark else (luminance > 0.8), f"background luminance {luminance:.2f}"
    ok_trial = viewer.locator(".dspex-trial.dspex-ok .dspex-trial-id").first
    text = ok_trial.evaluate("(element) => getComputedStyle(element).color")
    channels = [float(value) for value in re.findall(r"[\d.]+", text)[:3]]
    assert (min(channels) > 150) if dark else (max(channels) < 110), f"text colour {text}"


def check_trial_list(viewer: sync_api.Locator) -> None:
    """At a 1500 px window the trial list spans the widget: every column, cost and latency whole, is readable."""
    expect = sync_api.expect
    trials = viewer.locator(".dspex-trials")
    width = trials.evaluate("(element) => element.getBoundingClientRect().width")
    widget = viewer.evaluate("(element) => element.getBoundingClientRect().width")
    assert width > 0.95 * widget and width > 900, f"trial list {width:.0f} px of a {widget:.0f} px widget"
    ok = viewer.locator(".dspex-trial.dspex-ok").first
    for cell in ("dspex-cost", "dspex-latency", "dspex-tokens", "dspex-score"):
        assert ok.locator(f".{cell}").evaluate(SHOWS_ALL), cell
    heads = viewer.locator(".dspex-trials-head .dspex-column")
    for position in range(heads.count()):
        assert heads.nth(position).evaluate(SHOWS_ALL), heads.nth(position).inner_text()
    expect(ok.locator(".dspex-cost")).to_have_text(re.compile(r"^\$0\.0\d+$"))
    expect(ok.locator(".dspex-latency")).to_have_text(re.compile(r"^[\d.]+ m?s$"))
    example_id = ok.get_attribute("data-trial-id").split("/")[0]
    example = next(example for example in PROBLEMS if example.id == example_id)
    expect(ok.locator(".dspex-question")).to_have_attribute("title", " ".join(example.question.split()))
    expect(ok.locator(".dspex-expected")).to_have_text(example.answer)
    # A column head's right edge resizes that column.
    question = viewer.locator(".dspex-trials-head .dspex-column").nth(1)
    box = question.bounding_box()
    handle = question.locator(".dspex-resize").bounding_box()
    page = viewer.page
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 150, handle["y"] + 2, steps=4)
    page.mouse.up()
    resized = question.bounding_box()["width"]
    assert abs(resized - 150) < 12, f"dragged to 150 px, the column is {resized:.0f} px"


def check_waterfall(rows: sync_api.Locator) -> None:
    """Each drawn span has a bar placed by its start and duration within the trial; the root's spans it all."""
    bars = rows.evaluate_all(
        """(rows) => rows.map((row) => {
          const cell = row.querySelector(".dspex-cell-timeline").getBoundingClientRect();
          const bar = row.querySelector(".dspex-bar").getBoundingClientRect();
          return { left: (bar.left - cell.left) / cell.width, right: (bar.right - cell.left) / cell.width,
                   kind: row.querySelector(".dspex-kind").textContent };
        })"""
    )
    assert len(bars) == rows.count() > 5
    assert bars[0]["kind"] == "trial" and bars[0]["left"] < 0.01 and bars[0]["right"] > 0.97
    for bar in bars[1:]:
        assert -0.01 <= bar["left"] <= bar["right"] <= 1.01
    metric = next(bar for bar in bars if bar["kind"] == "metric")
    lm = next(bar for bar in bars if bar["kind"] == "lm")
    assert metric["left"] >= lm["right"] - 0.01  # the metric runs after the program's LM call


def check_failed_and_retried_trials(viewer: sync_api.Locator, rows: sync_api.Locator) -> None:
    """A failed trial's error name is shown whole, with its message as the title; a retry names its cause."""
    expect = sync_api.expect
    page = viewer.page  # a filter's inner locator is relative to the row: it starts from the page
    failed = viewer.locator(".dspex-trial.dspex-error")
    expect(failed).to_have_count(1)
    status = failed.locator(".dspex-trial-outcome")
    expect(status).to_have_text(re.compile("^LMProviderError( \u00d7\\d)?$"))  # failed on its 2nd try
    assert "simulated provider error" in status.get_attribute("title")
    assert status.evaluate(SHOWS_ALL)
    failed_id = failed.get_attribute("data-trial-id")
    failed.click()
    expect(viewer.locator(".dspex-trial.dspex-selected")).to_have_attribute("data-trial-id", failed_id)
    expect(rows.first.locator(".dspex-name")).to_have_text(failed_id)  # the kernel sent the trial's spans
    root_status = rows.first.locator(".dspex-cell-status")
    expect(root_status).to_have_text("LMProviderError")
    assert root_status.evaluate(SHOWS_ALL)

    retried = viewer.locator(".dspex-trial.dspex-ok", has=page.locator(".dspex-attempts")).first
    retried_id = retried.get_attribute("data-trial-id")
    retried.click()
    expect(rows.first.locator(".dspex-name")).to_have_text(retried_id)
    second = rows.filter(has=page.locator(".dspex-name", has_text=re.compile("^attempt 2$")))
    expect(second.locator(".dspex-label")).to_have_text(" — LMRateLimitError")
    expect(second.locator(".dspex-cell-name")).to_have_attribute("title", "attempt 2 — LMRateLimitError")
    first = rows.filter(has=page.locator(".dspex-name", has_text=re.compile("^attempt 1$")))
    expect(first.locator(".dspex-cell-status")).to_have_text("LMRateLimitError")
    # Left selected for the screenshot: the metric span's expected vs got.
    rows.filter(has=page.locator(".dspex-kind", has_text=re.compile("^metric$"))).locator(".dspex-name").click()
    expect(viewer.locator(".dspex-detail .dspex-compare")).to_be_visible()

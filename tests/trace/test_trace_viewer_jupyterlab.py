"""The trace viewer in JupyterLab, driven through headless Chromium as a user would.

A JupyterLab server runs on 127.0.0.1 in the test's temporary directory, with its own config,
runtime, settings and workspace folders; its kernel runs in this virtualenv. Chromium (Debian's
package, driven by Playwright) opens a notebook that runs a small traced evaluation and shows a
``TraceViewer``, clicks nodes of the span tree open, selects the LM span and reads the detail pane.
A last cell, run after the clicks, reports the widget's Python state, which proves that the clicks
reached the kernel. The screenshot (taken also when the test fails) and the server's log stay in the
test's temporary directory as CI artifacts.
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

SETUP_CELL = """\
import json
import sys

import dspex_lab as dx

print("kernel prefix:", sys.prefix)
problems = dx.Dataset(dx.datasets.arithmetic(6, seed=0), name="arithmetic-6")
cot = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
with dx.Context(lm=dx.lab_lm("lab/small"), journal=JOURNAL, threads=2):
    result = dx.evaluate(cot, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
print("traced trials:", result.n)"""

VIEWER_CELL = """\
viewer = dx.widgets.TraceViewer(JOURNAL, result.experiment_id)
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


@pytest.fixture
def lab_server(tmp_path: Path) -> Iterator[LabServer]:
    root = tmp_path / "lab"
    root.mkdir()
    state = tmp_path / "jupyter"
    settings = state / "settings"
    notification = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps(NOTIFICATION_SETTINGS), encoding="utf-8")
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


def test_jupyterlab_shows_the_trace_viewer_and_it_answers_clicks(lab_server: LabServer, tmp_path: Path) -> None:
    name = write_notebook(lab_server)
    screenshot = tmp_path / "trace_viewer_jupyterlab.png"
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

            viewer.scroll_into_view_if_needed()
        finally:
            with contextlib.suppress(sync_api.Error):  # a crashed page keeps the original error in front
                page.screenshot(path=screenshot, full_page=True)
            browser.close()
    print(f"screenshot: {screenshot}")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000

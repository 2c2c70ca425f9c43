"""JupyterLab in headless Chromium for the widget tests: a server, a page, cells run one by one, screenshots.

The low-level pieces (waiting for the server, the page's probes, the timeouts) come from the trace viewer's
browser test, tests/trace/test_trace_viewer_jupyterlab.py, loaded by path because test folders are not
packages. What the widget tests need beyond it lives here: a server whose settings pick the theme, running
one chosen cell, switching the theme in the open page, and keeping screenshots as artifacts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_TRACE_TEST = Path(__file__).resolve().parents[1] / "trace" / "test_trace_viewer_jupyterlab.py"
_spec = importlib.util.spec_from_file_location("_trace_viewer_jupyterlab", _TRACE_TEST)
assert _spec is not None and _spec.loader is not None
_trace_test = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_trace_test)

CHROMIUM: str | None = _trace_test.CHROMIUM
# A browser test's marks (slow; skipped without Debian's chromium). Loading the trace test above already
# skips a module that imports this harness when anywidget, JupyterLab, nbformat or playwright is missing.
BROWSER_MARKS: list[Any] = _trace_test.pytestmark
KERNEL_IDLE: str = _trace_test.KERNEL_IDLE
LabServer = _trace_test.LabServer
NOTIFICATION_SETTINGS: dict[str, Any] = _trace_test.NOTIFICATION_SETTINGS
RENDER_TIMEOUT_MS: int = _trace_test.RENDER_TIMEOUT_MS
STEP_TIMEOUT_MS: int = _trace_test.STEP_TIMEOUT_MS
free_port = _trace_test.free_port
wait_until_ready = _trace_test.wait_until_ready
sync_api = _trace_test.sync_api
nbformat = _trace_test.nbformat

# Read at import: the suite's autouse fixture removes every DSPEX_* variable while a test runs.
ARTIFACTS = os.environ.get("DSPEX_ARTIFACTS")
LIGHT = "JupyterLab Light"
DARK = "JupyterLab Dark"

# Run the cell at `index` of the open notebook (and only that one). The command's promise settles only when
# the cell has finished, so it is not awaited: the test must act while the cell runs (Cancel).
RUN_CELL = """(index) => {
  const panel = window.jupyterapp.shell.currentWidget;
  panel.content.activeCellIndex = index;
  void window.jupyterapp.commands.execute("notebook:run-cell");
}"""

# The theme JupyterLab shows now: the body carries data-jp-theme-name once a theme is loaded.
THEME_NAME = "() => document.body.dataset.jpThemeName"

# Relative luminance (0 dark .. 1 light) of an element's computed text or background colour.
LUMINANCE = """([element, property]) => {
  const [r, g, b] = getComputedStyle(element)[property].match(/[\\d.]+/g).map(Number);
  return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
}"""


@contextmanager
def jupyterlab(root: Path, state: Path, log: Path, *, theme: str = LIGHT) -> Iterator[Any]:
    """Run JupyterLab on 127.0.0.1 serving ``root``, with its own settings (``theme`` first), until the block ends.

    Config, runtime, settings, workspaces and the data folder are all under ``state``, so nothing of the
    user's (a kernelspec in ~/.local, a saved theme) takes part; the venv's data folder stays on the path
    for its python3 kernelspec and the anywidget and ipywidgets lab extensions.
    """
    settings = state / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps(NOTIFICATION_SETTINGS), encoding="utf-8")
    (settings / "themes.jupyterlab-settings").write_text(json.dumps({"theme": theme}), encoding="utf-8")
    environment = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(state / "data"),
        "JUPYTER_CONFIG_DIR": str(state / "config"),
        "JUPYTER_RUNTIME_DIR": str(state / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(state / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(state / "workspaces"),
        "IPYTHONDIR": str(state / "ipython"),
    }
    port = free_port()
    server = LabServer(url=f"http://127.0.0.1:{port}", token=secrets.token_hex(16), root=root, log=log)
    command = [
        *(sys.executable, "-m", "jupyter", "lab", "--no-browser"),
        *("--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}", "--ServerApp.port_retries=0"),
        f"--IdentityProvider.token={server.token}",
        f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True",  # the page's window.jupyterapp, for running cells
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    if os.geteuid() == 0:
        command.append("--ServerApp.allow_root=True")
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=root, env=environment, stdout=output, stderr=subprocess.STDOUT)
    try:
        wait_until_ready(server, process)
        yield server
    finally:
        process.terminate()  # SIGTERM: the server shuts its kernels down first
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def write_notebook(path: Path, cells: list[str]) -> None:
    """Write a notebook of code ``cells`` for the venv's python3 kernel."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    nbformat.write(notebook, path)


@contextmanager
def chromium_page(url: str) -> Iterator[Any]:
    """Open ``url`` in headless Chromium (Debian's, through Playwright) and yield the page."""
    arguments = ["--no-proxy-server", "--disable-gpu", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=arguments, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(url, timeout=RENDER_TIMEOUT_MS)
            page.wait_for_function(KERNEL_IDLE, timeout=RENDER_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def run_cell(page: Any, index: int) -> None:
    """Start one cell of the open notebook, without waiting for it to finish."""
    page.evaluate(RUN_CELL, index)


@contextmanager
def notebook_page(tmp_path: Path, name: str, cells: list[str]) -> Iterator[Any]:
    """Open a notebook of ``cells`` in JupyterLab in Chromium and yield the page.

    The notebook is ``name`` in ``tmp_path / "lab"``; its first cell starts by setting ``JOURNAL`` to a
    journal in that folder, so the kernel and the test read the same file.
    """
    root = tmp_path / "lab"
    root.mkdir()
    journal = f"JOURNAL = {str(root / 'journal.duckdb')!r}\n"
    write_notebook(root / name, [journal + cells[0], *cells[1:]])
    with (
        jupyterlab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log") as server,
        chromium_page(f"{server.url}/lab/tree/{name}?token={server.token}") as page,
    ):
        yield page


def printed_json(page: Any, index: int, prefix: str) -> Any:
    """Run cell ``index`` of the open notebook, wait for its ``<prefix> <JSON>`` line and return the JSON."""
    run_cell(page, index)
    output = page.locator(".jp-Notebook .jp-Cell").nth(index).locator(".jp-OutputArea-output")
    sync_api.expect(output).to_contain_text(prefix, timeout=RENDER_TIMEOUT_MS)
    return json.loads(output.inner_text().split(prefix, 1)[1])


def switch_theme(page: Any, theme: str) -> None:
    """Switch the open JupyterLab to ``theme`` as the Settings menu does, and wait until it shows."""
    page.evaluate("(theme) => window.jupyterapp.commands.execute('apputils:change-theme', { theme })", theme)
    page.wait_for_function(f"() => document.body.dataset.jpThemeName === {json.dumps(theme)}")


def luminance(locator: Any, css_property: str) -> float:
    """Return the relative luminance of an element's computed ``color`` or ``backgroundColor``."""
    return float(locator.evaluate(f"(element) => ({LUMINANCE})([element, {json.dumps(css_property)}])"))


def keep_screenshot(target: Any, path: Path) -> Path:
    """Save a screenshot of a page (all of it) or of one element at ``path``, and a copy in $DSPEX_ARTIFACTS."""
    if isinstance(target, sync_api.Page):
        target.screenshot(path=path, full_page=True)
    else:
        target.screenshot(path=path)
    if ARTIFACTS:
        Path(ARTIFACTS).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(ARTIFACTS) / path.name)
    return path

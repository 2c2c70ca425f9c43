"""RunProgress, ExperimentBrowser and VariableControls in JupyterLab, driven through headless Chromium.

One JupyterLab server on 127.0.0.1 and one notebook: the widgets are used in the light theme, then the
page switches to the dark theme (as the Settings menu does) and they are used again. In each theme a slow
evaluation on the lab LM (latency per call) shows its RunProgress by itself (``progress=True`` in a
kernel), and a click on Cancel must stop it within two seconds with its finished trials journaled; the
browser's headers, filters and rows are clicked through to a trial's trace; the controls are moved with
the keyboard and a dropdown, and the preview must follow. A last cell reports the kernel's view, which
proves the clicks reached Python. Screenshots of both themes stay in the test's temporary directory
(and in $DSPEX_ARTIFACTS when set).
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
    DARK,
    LIGHT,
    RENDER_TIMEOUT_MS,
    chromium_page,
    jupyterlab,
    keep_screenshot,
    luminance,
    run_cell,
    switch_theme,
    sync_api,
    write_notebook,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed"),
]

SLOW_TRIALS = 1200  # 150 s uncancelled (2 threads, 0.25 s a call): a run that ignored Cancel cannot pass

SETUP_CELL = """\
import json
import time

import dspex_lab as dx

problems = dx.Dataset(dx.datasets.arithmetic(8, seed=0), name="arith-8")
cot = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
predict = dx.Program(
    "dspy.Predict",
    signature="question -> answer",
    name="predict",
    variables={
        "temperature": dx.Float(0.0, low=0.0, high=1.0),
        "model": dx.Choice("lab/small", choices=["lab/small", "lab/large"]),
    },
)
# No model variable here: the slow runs' LM (with its latency) comes from their dx.Context.
plain = dx.Program("dspy.Predict", signature="question -> answer", name="plain")
with dx.Context(lm=dx.lab_lm("lab/small", error_rate=0.25, seed=2), journal=JOURNAL, threads=2):
    traced = dx.evaluate(cot, problems, metric=dx.metrics.exact_match, progress=False, trace=True, retries=0)
print("ready:", traced.experiment_id)"""

SLOW_CELL = """\
slow = dx.Dataset(dx.datasets.arithmetic({trials}, seed=1), name="slow")
try:
    with dx.Context(lm=dx.lab_lm("lab/small", latency=0.25), journal=JOURNAL, threads=2):
        dx.evaluate(plain, slow, metric=dx.metrics.exact_match, name="{name}")
except KeyboardInterrupt as error:
    print(f"stopped at {{time.time():.3f}} | {{error}}")"""

BROWSER_CELL = """\
browser = dx.ExperimentBrowser(JOURNAL)
browser"""

CONTROLS_CELL = """\
controls = dx.VariableControls(predict, example=problems[0], metric=dx.metrics.exact_match, preview_delay=0.2)
controls"""

STATE_CELL = """\
summaries = dx.open_journal(JOURNAL).experiment_summaries()
print("kernel state:", json.dumps({
    "selected_experiment": browser.tables.selected_experiment,
    "selected_trial": browser.tables.selected_trial,
    "trace_open": browser.trace_viewer is not None,
    "values": controls.values,
    "preview": controls.preview.get("status"),
    "experiments": {row.name: [row.id, row.status, row.n_trials] for row in summaries},
}))"""

SETUP, SLOW_LIGHT, BROWSER, CONTROLS, SLOW_DARK, STATE = range(6)


def output(cell: sync_api.Locator) -> sync_api.Locator:
    return cell.locator(".jp-OutputArea-output")


def cancel_slow_run(page: sync_api.Page, cell: sync_api.Locator) -> tuple[float, int]:
    """Wait for the run's RunProgress, click Cancel after a few trials; return the stop delay and trials done."""
    progress = cell.locator(".dspex-progress")
    sync_api.expect(progress.locator(".dspex-progress-status")).to_have_text("running", timeout=RENDER_TIMEOUT_MS)
    trials = progress.locator(".dspex-progress-trials")
    trials.evaluate(
        "(element) => new Promise((resolve) => { const check = () => parseInt(element.textContent) >= 4 ?"
        " resolve() : setTimeout(check, 50); check(); })"
    )
    clicked = time.time()
    progress.locator(".dspex-progress-cancel").click()
    sync_api.expect(progress.locator(".dspex-progress-status")).to_have_text("interrupted", timeout=10_000)
    sync_api.expect(output(cell).last).to_contain_text("resume with dx.evaluate")
    stopped = float(re.search(r"stopped at (\d+\.\d+)", output(cell).last.inner_text()).group(1))
    done, total = (int(part) for part in re.findall(r"\d+", trials.inner_text())[:2])
    assert total == SLOW_TRIALS and 4 <= done < SLOW_TRIALS
    sync_api.expect(progress.locator(".dspex-progress-cancel")).to_be_disabled()
    return stopped - clicked, done


def keep_widget_shots(widgets: list[sync_api.Locator], folder: Path, theme: str) -> None:
    """Keep a screenshot of each widget whole (the notebook scrolls inside the page, so a page shot cuts them)."""
    for widget, name in zip(widgets, ("run_progress", "experiment_browser", "variable_controls"), strict=True):
        widget.scroll_into_view_if_needed()
        keep_screenshot(widget, folder / f"{name}_{theme}.png")


def check_theme(widgets: list[sync_api.Locator], *, dark: bool) -> None:
    """Each widget draws with the theme's colours: light text on a dark ground in the dark theme, and back."""
    for widget in widgets:
        text, ground = luminance(widget, "color"), luminance(widget, "backgroundColor")
        assert (text > ground + 0.4) if dark else (ground > text + 0.4), (widget, text, ground)


def test_widgets_render_and_answer_clicks_in_the_light_and_dark_themes(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    journal = f"JOURNAL = {str(root / 'journal.duckdb')!r}\n"
    write_notebook(
        root / "widgets.ipynb",
        [
            journal + SETUP_CELL,
            SLOW_CELL.format(trials=SLOW_TRIALS, name="slow-light"),
            BROWSER_CELL,
            CONTROLS_CELL,
            SLOW_CELL.format(trials=SLOW_TRIALS, name="slow-dark"),
            STATE_CELL,
        ],
    )
    shots = {LIGHT: tmp_path / "widgets_light.png", DARK: tmp_path / "widgets_dark.png"}
    with (
        jupyterlab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log", theme=LIGHT) as server,
        chromium_page(f"{server.url}/lab/tree/widgets.ipynb?token={server.token}") as page,
    ):
        cells = page.locator(".jp-Notebook .jp-Cell")
        try:
            assert page.evaluate("() => document.body.dataset.jpThemeName") == LIGHT
            run_cell(page, SETUP)
            sync_api.expect(output(cells.nth(SETUP))).to_contain_text("ready:", timeout=RENDER_TIMEOUT_MS)

            # -- light theme -------------------------------------------------------------------------
            run_cell(page, SLOW_LIGHT)
            delay, done_light = cancel_slow_run(page, cells.nth(SLOW_LIGHT))
            # A hang guard only: the run stopping (interrupted, trials kept) is what cancel_slow_run checks.
            assert delay < 30.0, f"the run stopped {delay:.2f} s after Cancel"
            print(f"light theme: the run stopped {delay:.2f} s after Cancel, {done_light} trials kept")

            run_cell(page, BROWSER)
            browser = cells.nth(BROWSER).locator(".dspex-browser")
            experiments = browser.locator(".dspex-experiments tbody tr")
            sync_api.expect(experiments).to_have_count(2, timeout=RENDER_TIMEOUT_MS)
            sync_api.expect(experiments.first.locator("td").nth(2)).to_have_text(re.compile("finished|interrupted"))
            browser.locator("th[data-column='mean']").click()
            sync_api.expect(browser.locator("th[data-column='mean']")).to_have_text("mean [95% CI] ▼")
            browser.locator(".dspex-filter-name").fill("cot")
            sync_api.expect(experiments).to_have_count(1)
            experiments.first.click()
            trials = browser.locator(".dspex-trials-table tbody tr")
            sync_api.expect(trials).to_have_count(8)
            browser.locator(".dspex-trial-status").select_option("error")
            sync_api.expect(trials.locator("td:nth-child(2)", has_text=re.compile("^ok$"))).to_have_count(0)
            sync_api.expect(trials.first.locator("td").nth(1)).to_have_text("error")
            trials.first.click()
            trace = cells.nth(BROWSER).locator(".dspex-trace-viewer")
            sync_api.expect(trace.locator(".dspex-span").first).to_be_visible()

            run_cell(page, CONTROLS)
            controls = cells.nth(CONTROLS).locator(".dspex-controls")
            slider = controls.locator("input[name='temperature']")
            sync_api.expect(slider).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("0", "1")
            # A click halfway along the track moves the slider there (its keys: test_controls_jupyterlab.py).
            box = slider.bounding_box()
            slider.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
            value = controls.locator(".dspex-control[data-name='temperature'] .dspex-control-value")
            sync_api.expect(value).to_have_text(re.compile(r"^0\.[3-7]\d*$"))
            middle = value.inner_text()
            controls.locator("select[name='model']").select_option(label="lab/large")
            preview = controls.locator(".dspex-preview")
            # The preview names the values it ran with: it follows the last change, not an earlier one.
            ran_with = preview.locator(".dspex-preview-values")
            sync_api.expect(ran_with).to_have_text(f"with temperature={middle} · model=lab/large")
            sync_api.expect(preview.locator(".dspex-preview-status")).to_have_attribute("data-status", "ok")
            sync_api.expect(preview.locator(".dspex-preview-field[data-field='answer']")).to_be_visible()
            sync_api.expect(preview.locator(".dspex-preview-score")).to_have_text(re.compile(r"score: [01]"))
            # The slider ends at the variable's bound: End puts it at 1, and the kernel gets 1.
            slider.focus()
            page.keyboard.press("End")
            sync_api.expect(value).to_have_text("1")

            widgets = [cells.nth(SLOW_LIGHT).locator(".dspex-progress"), browser, controls]
            check_theme(widgets, dark=False)
            keep_screenshot(page, shots[LIGHT])
            keep_widget_shots(widgets, tmp_path, "light")

            # -- dark theme --------------------------------------------------------------------------
            switch_theme(page, DARK)
            check_theme(widgets, dark=True)
            run_cell(page, SLOW_DARK)
            delay, done_dark = cancel_slow_run(page, cells.nth(SLOW_DARK))
            # A hang guard only: the run stopping (interrupted, trials kept) is what cancel_slow_run checks.
            assert delay < 30.0, f"the run stopped {delay:.2f} s after Cancel (dark theme)"
            print(f"dark theme: the run stopped {delay:.2f} s after Cancel, {done_dark} trials kept")
            check_theme([cells.nth(SLOW_DARK).locator(".dspex-progress")], dark=True)

            browser.locator(".dspex-refresh").click()
            browser.locator(".dspex-filter-name").fill("slow")
            sync_api.expect(experiments).to_have_count(2)
            browser.locator("th[data-column='name']").click()
            sync_api.expect(experiments.first.locator("td").first).to_contain_text("slow-dark")
            experiments.first.click()
            browser.locator(".dspex-trial-status").select_option("")
            sync_api.expect(trials).to_have_count(done_dark)
            trials.first.click()
            sync_api.expect(browser.locator(".dspex-browser-note")).to_contain_text("has no trace")
            sync_api.expect(trace).to_have_count(0)  # the trace of the earlier trial is closed

            controls.locator("select[name='model']").select_option(label="lab/small")
            sync_api.expect(ran_with).to_have_text("with temperature=1 · model=lab/small")
            sync_api.expect(preview.locator(".dspex-preview-status")).to_have_attribute("data-status", "ok")
            keep_screenshot(page, shots[DARK])
            keep_widget_shots(widgets, tmp_path, "dark")

            # -- what the kernel received ------------------------------------------------------------
            run_cell(page, STATE)
            sync_api.expect(output(cells.nth(STATE))).to_contain_text("kernel state:")
            state = json.loads(output(cells.nth(STATE)).inner_text().split("kernel state:", 1)[1])
        except BaseException:
            keep_screenshot(page, tmp_path / "widgets_failure.png")
            raise

    experiments_by_name = state["experiments"]
    assert experiments_by_name["slow-light"][1:] == ["interrupted", done_light]
    assert experiments_by_name["slow-dark"][1:] == ["interrupted", done_dark]
    assert state["selected_experiment"] == experiments_by_name["slow-dark"][0]
    assert state["selected_trial"] and state["trace_open"] is False
    assert state["values"] == {"temperature": 1.0, "model": "lab/small"}
    assert state["preview"] == "ok"
    for shot in [*shots.values(), *tmp_path.glob("*_light.png"), *tmp_path.glob("*_dark.png")]:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000, shot

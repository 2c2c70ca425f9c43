"""The live convergence plot in JupyterLab with no network, driven through headless Chromium.

One JupyterLab server on 127.0.0.1 and one notebook whose cells run ``%dspex optimize ... --live`` (light
theme) and ``dx.optimize(..., live=True)`` (dark theme) on the lab LM (slowed by a latency per call, so
each step takes seconds). Every request the page makes outside 127.0.0.1 is refused and recorded, as on a
cluster without internet: the test fails if there is one. In the light theme, then in the dark one
(switched as the Settings menu does), two screenshots of the plot taken at two steps while the run still
goes must differ; the plot must sit below RunProgress's Cancel button, label its step axis with whole
steps only, and draw with the theme's colours. Between the two, the static holoviews plot of the finished
run is shown, so its bokeh must load from the installed package. Screenshots stay in the test's
temporary directory (printed), and in $DSPEX_ARTIFACTS when set.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

pytest.importorskip("anywidget")
pytest.importorskip("holoviews")
pytest.importorskip("jupyterlab", reason="JupyterLab is not installed (pip install -e '.[test]')")
pytest.importorskip("nbformat")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")

sys.path.insert(0, str(Path(__file__).parent))  # test folders are not packages (importlib import mode)
from jupyterlab_harness import (
    ARTIFACTS,
    CHROMIUM,
    DARK,
    KERNEL_IDLE,
    LIGHT,
    RENDER_TIMEOUT_MS,
    STEP_TIMEOUT_MS,
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

SETUP_CELL = """\
import dspex_lab as dx
%load_ext dspex_lab
qa = dx.Program(
    "dspy.ChainOfThought",
    signature="question -> answer",
    name="qa",
    variables={"temperature": dx.Float(0.3, low=0.0, high=1.0)},
)
problems = list(dx.datasets.arithmetic(48, seed=3))
train, val = problems[:16], problems[16:]
print("ready")"""

# Each step costs a few seconds (0.05 s a call, two threads): time enough for two screenshots mid-run.
LIVE_CELL = """\
with dx.Context(lm=dx.lab_lm("lab/small", latency=0.05), journal=JOURNAL, threads=2):
    %dspex optimize qa --train train --val val --metric exact_match --max-steps 6 --bsize 8 --live --name {name}
print("finished:", _dspex_last.status, list(_dspex_last.steps["step"]))"""

# The same run from Python: dx.optimize(..., live=True) shows the same widget by itself.
LIVE_PYTHON_CELL = """\
with dx.Context(lm=dx.lab_lm("lab/small", latency=0.05), journal=JOURNAL, threads=2):
    simba = dx.SimbaC(max_steps=6, bsize=8)
    run = dx.optimize(qa, train, val, metric=dx.metrics.exact_match, optimizer=simba, live=True, name="{name}")
print("finished:", run.status, list(run.steps["step"]))"""

STATIC_CELL = """\
dx.optimization.convergence_plot(_dspex_last.steps, _dspex_last.candidates, title="static")"""

SETUP, LIVE_LIGHT, STATIC, LIVE_DARK = range(4)

# The step the plot shows (its data-step), once a step has been drawn.
DRAWN_STEP = "(element) => element.dataset.step === '' ? -1 : Number(element.dataset.step)"


def _local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("data", "blob", "about") or parts.hostname == "127.0.0.1"


@contextmanager
def offline_page(url: str, outside: list[str], *, lab: bool = True) -> Iterator[sync_api.Page]:
    """Open ``url`` in headless Chromium with every request outside 127.0.0.1 refused and recorded in ``outside``.

    With ``lab`` (a JupyterLab page), wait until its kernel is idle before handing the page over.
    """
    arguments = ["--no-proxy-server", "--disable-gpu", "--disable-dev-shm-usage"]
    if os.geteuid() == 0:
        arguments.append("--no-sandbox")

    def refuse_outside(route: Any) -> None:
        if _local(route.request.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=arguments, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1000})
            context.route("**/*", refuse_outside)
            page = context.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(url, timeout=RENDER_TIMEOUT_MS)
            if lab:
                page.wait_for_function(KERNEL_IDLE, timeout=RENDER_TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def output(cell: sync_api.Locator) -> sync_api.Locator:
    return cell.locator(".jp-OutputArea-output")


def wait_for_step_after(plot: sync_api.Locator, step: int) -> int:
    """Wait until the plot has drawn a step after ``step``; return the step it shows."""
    plot.evaluate(
        f"(element, step) => new Promise((resolve) => {{ const check = () => ({DRAWN_STEP})(element) > step ?"
        " resolve() : setTimeout(check, 50); check(); })",
        step,
    )
    return int(plot.evaluate(DRAWN_STEP))


def watch_live_run(cell: sync_api.Locator, folder: Path, theme: str) -> dict[str, Any]:
    """Follow one live run: two screenshots of the plot at two steps mid-run, its place, its axis, its colours."""
    progress = cell.locator(".dspex-progress")
    status = progress.locator(".dspex-progress-status")
    sync_api.expect(status).to_have_text("running", timeout=RENDER_TIMEOUT_MS)
    plot = cell.locator(".dspex-convergence")
    sync_api.expect(plot).to_be_visible(timeout=RENDER_TIMEOUT_MS)
    panels = plot.locator(".dspex-conv-grid")
    shots, steps = [], []
    for index in range(2):
        steps.append(wait_for_step_after(plot, steps[-1] if steps else 0))
        panels.scroll_into_view_if_needed()
        shot = keep_screenshot(panels, folder / f"live_convergence_{theme}_{index + 1}.png")
        shots.append(shot.read_bytes())
        # Taken while the run still goes: its progress says so after the shot.
        assert status.inner_text() == "running", (theme, index, status.inner_text())
    assert steps[1] > steps[0] >= 1
    assert shots[0] != shots[1], f"the plot did not change between steps {steps[0]} and {steps[1]} ({theme})"

    cancel = progress.locator(".dspex-progress-cancel").bounding_box()
    placed = plot.bounding_box()
    assert cancel is not None and placed is not None
    assert placed["y"] >= cancel["y"] + cancel["height"], (cancel, placed)

    ticks = plot.locator(".dspex-conv-tick[data-axis='step']").all_text_contents()
    assert ticks and all(re.fullmatch(r"\d+", tick) for tick in ticks), ticks
    colours = {
        "text": luminance(plot, "color"),
        "ground": luminance(plot, "backgroundColor"),
        "plot area": luminance(plot.locator(".dspex-conv-frame").first, "fill"),
    }
    return {"steps": steps, "colours": colours}


def check_colours(colours: dict[str, float], *, dark: bool) -> None:
    """Light text on a dark ground (and plot area) in the dark theme, and the other way round in the light one."""
    if dark:
        assert colours["text"] > colours["ground"] + 0.4 and colours["plot area"] < 0.35, colours
    else:
        assert colours["ground"] > colours["text"] + 0.4 and colours["plot area"] > 0.65, colours


def test_live_convergence_updates_mid_run_offline_in_the_light_and_dark_themes(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    journal = f"JOURNAL = {str(root / 'journal.duckdb')!r}\n"
    write_notebook(
        root / "live.ipynb",
        [
            journal + SETUP_CELL,
            LIVE_CELL.format(name="live-light"),
            STATIC_CELL,
            LIVE_PYTHON_CELL.format(name="live-dark"),
        ],
    )
    print(f"screenshots in {tmp_path}" + (f" and {ARTIFACTS}" if ARTIFACTS else ""))
    outside: list[str] = []
    with (
        jupyterlab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log", theme=LIGHT) as server,
        offline_page(f"{server.url}/lab/tree/live.ipynb?token={server.token}", outside) as page,
    ):
        cells = page.locator(".jp-Notebook .jp-Cell")
        try:
            run_cell(page, SETUP)
            sync_api.expect(output(cells.nth(SETUP))).to_contain_text("ready", timeout=RENDER_TIMEOUT_MS)

            run_cell(page, LIVE_LIGHT)
            light = watch_live_run(cells.nth(LIVE_LIGHT), tmp_path, "light")
            sync_api.expect(output(cells.nth(LIVE_LIGHT)).last).to_contain_text("finished:", timeout=RENDER_TIMEOUT_MS)
            check_colours(light["colours"], dark=False)

            run_cell(page, STATIC)
            # bokeh's JavaScript came inline with holoviews' extension: the plot draws on its canvas.
            sync_api.expect(cells.nth(STATIC).locator("canvas").first).to_be_attached(timeout=RENDER_TIMEOUT_MS)
            keep_screenshot(cells.nth(STATIC), tmp_path / "static_convergence_light.png")

            switch_theme(page, DARK)
            run_cell(page, LIVE_DARK)
            dark = watch_live_run(cells.nth(LIVE_DARK), tmp_path, "dark")
            sync_api.expect(output(cells.nth(LIVE_DARK)).last).to_contain_text("finished:", timeout=RENDER_TIMEOUT_MS)
            check_colours(dark["colours"], dark=True)
            keep_screenshot(page, tmp_path / "live_convergence_page_dark.png")
        except BaseException:
            keep_screenshot(page, tmp_path / "live_convergence_failure.png")
            raise
    print(f"light: shots at steps {light['steps']}, colours {light['colours']}")
    print(f"dark: shots at steps {dark['steps']}, colours {dark['colours']}")
    assert outside == [], f"the page asked for URLs outside 127.0.0.1: {sorted(set(outside))}"

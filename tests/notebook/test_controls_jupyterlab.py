"""VariableControls' keys in JupyterLab, driven through headless Chromium.

JupyterLab binds a focused output's arrow keys, Enter and Escape to moving between cells, so these are the
keys a researcher presses and the test presses them: a focused slider must move by its step (by ten with
Page Up/Down, to its bounds with Home/End) and the kernel must get each value; a one-line text box must
send its value on Enter, a text area on Ctrl+Enter (Enter starts a line there), and, with a typing pause
set, after that pause with the box still focused; Escape must put back the value last sent. The kernel's
side is read twice: from the preview (which names the values the kernel ran with) while the keyboard is
still on the control, and from a last cell. The focus ring must show in the light and the dark theme.
Screenshots stay in the test's temporary directory (and in $DSPEX_ARTIFACTS when set).
"""

from __future__ import annotations

import json
import sys
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

SETUP_CELL = """\
import json

import dspex_lab as dx

program = dx.Program(
    "dspy.Predict",
    signature="question -> answer",
    name="keys",
    variables={
        "temperature": dx.Float(0.0, low=0.0, high=1.0),
        "max_tokens": dx.Int(256, low=16, high=4096),
        "model": dx.Text("lab/small", max_length=40),
        "instructions": dx.Text("Answer with a number."),
    },
)
example = dx.datasets.arithmetic(1, seed=0)[0]
print("ready")"""

# Sends on Enter and when a box is left only: what Enter alone sends can be told apart from a pause.
HELD_CELL = """\
held = dx.VariableControls(program, example=example, preview_delay=0.0, typing_pause=None)
held"""

TYPED_CELL = """\
typed = dx.VariableControls(program, example=example, preview_delay=0.0)
typed"""

STATE_CELL = """\
print("kernel state:", json.dumps({"held": held.values, "typed": typed.values}))"""

SETUP, HELD, TYPED, STATE = range(4)

# The name of the focused element, and the notebook's active cell: an arrow key JupyterLab took would move both.
FOCUS = """() => [document.activeElement.name ?? null,
  window.jupyterapp.shell.currentWidget.content.activeCellIndex]"""


def output(cell: sync_api.Locator) -> sync_api.Locator:
    return cell.locator(".jp-OutputArea-output")


def check_focus_ring(control: sync_api.Locator, widget: sync_api.Locator) -> None:
    """The focused control matches :focus-visible and draws a solid ring that stands out from the widget's ground."""
    assert control.evaluate("(element) => element.matches(':focus-visible')")
    style = control.evaluate(
        "(element) => [getComputedStyle(element).outlineStyle, getComputedStyle(element).outlineWidth]"
    )
    assert style == ["solid", "2px"], style
    ring, ground = luminance(control, "outlineColor"), luminance(widget, "backgroundColor")
    assert abs(ring - ground) > 0.25, (ring, ground)


def press(page: sync_api.Page, key: str, shown: sync_api.Locator, expected: str) -> None:
    page.keyboard.press(key)
    sync_api.expect(shown).to_have_text(expected)


def use_slider_keys(page: sync_api.Page, held: sync_api.Locator) -> None:
    """Move both sliders with their keys; the kernel's preview must name each value sent."""
    slider = held.locator("input[name='temperature']")
    ran_with = held.locator(".dspex-preview-values")
    assert slider.get_attribute("role") == "slider"
    assert (slider.get_attribute("aria-valuemin"), slider.get_attribute("aria-valuemax")) == ("0", "1")
    shown = held.locator(".dspex-control[data-name='temperature'] .dspex-control-value")
    slider.focus()
    before = page.evaluate(FOCUS)
    press(page, "ArrowRight", shown, "0.01")
    sync_api.expect(slider).to_have_attribute("aria-valuenow", "0.01")
    # The kernel ran the preview with the new value: it got it, one step of 0.01 from 0.
    sync_api.expect(ran_with).to_contain_text("temperature=0.01 ·", timeout=RENDER_TIMEOUT_MS)
    assert page.evaluate(FOCUS) == before == ["temperature", HELD]  # JupyterLab did not take the key
    check_focus_ring(slider, held)
    steps = [("ArrowUp", "0.02"), ("ArrowLeft", "0.01"), ("PageUp", "0.11"), ("End", "1")]
    steps += [("ArrowDown", "0.99"), ("Home", "0"), ("PageDown", "0"), ("PageUp", "0.1")]
    for key, expected in steps:
        press(page, key, shown, expected)
    sync_api.expect(ran_with).to_contain_text("temperature=0.1 ·")
    held.locator("input[name='max_tokens']").focus()
    tokens_shown = held.locator(".dspex-control[data-name='max_tokens'] .dspex-control-value")
    press(page, "PageUp", tokens_shown, "266")
    press(page, "ArrowDown", tokens_shown, "265")
    sync_api.expect(ran_with).to_contain_text("max_tokens=265 ·")


def use_text_keys(page: sync_api.Page, held: sync_api.Locator) -> None:
    """Send a one-line box with Enter and a text area with Ctrl+Enter, then type more and drop it with Escape."""
    ran_with = held.locator(".dspex-preview-values")
    model = held.locator("input[name='model']")
    assert model.get_attribute("type") == "text"
    model.select_text()
    model.press_sequentially("lab/large")
    page.wait_for_timeout(1000)  # no pause is set: nothing is sent while the box keeps the focus
    sync_api.expect(ran_with).to_contain_text("model=lab/small ·")
    page.keyboard.press("Enter")
    sync_api.expect(ran_with).to_contain_text("model=lab/large ·")
    assert page.evaluate(FOCUS)[0] == "model"  # sent by Enter, not by leaving the box

    instructions = held.locator("textarea[name='instructions']")
    instructions.select_text()
    instructions.press_sequentially("Think step by step.")
    page.keyboard.press("Enter")  # a new line, which JupyterLab would cancel in a cell
    instructions.press_sequentially("Then answer.")
    assert instructions.input_value() == "Think step by step.\nThen answer."
    sync_api.expect(ran_with).to_contain_text("instructions=Answer with a number.")
    page.keyboard.press("Control+Enter")
    sync_api.expect(ran_with).to_contain_text("instructions=Think step by step.")
    sync_api.expect(ran_with).to_contain_text("Then answer.")
    instructions.press_sequentially(" Or guess.")
    page.keyboard.press("Escape")
    sync_api.expect(instructions).to_have_value("Think step by step.\nThen answer.")
    assert page.evaluate(FOCUS)[0] == "instructions"


def test_sliders_move_with_keys_and_text_sends_on_enter_and_after_a_pause(tmp_path: Path) -> None:
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "controls.ipynb", [SETUP_CELL, HELD_CELL, TYPED_CELL, STATE_CELL])
    with (
        jupyterlab(root, tmp_path / "jupyter", tmp_path / "jupyterlab.log") as server,
        chromium_page(f"{server.url}/lab/tree/controls.ipynb?token={server.token}") as page,
    ):
        cells = page.locator(".jp-Notebook .jp-Cell")
        try:
            run_cell(page, SETUP)
            sync_api.expect(output(cells.nth(SETUP))).to_contain_text("ready", timeout=RENDER_TIMEOUT_MS)
            run_cell(page, HELD)
            held = cells.nth(HELD).locator(".dspex-controls")
            sync_api.expect(held.locator("input[name='temperature']")).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            use_slider_keys(page, held)
            keep_screenshot(held, tmp_path / "variable_controls_keys_light.png")
            use_text_keys(page, held)

            # With a typing pause set, a pause sends what was typed, the box still focused.
            run_cell(page, TYPED)
            typed = cells.nth(TYPED).locator(".dspex-controls")
            typed_instructions = typed.locator("textarea[name='instructions']")
            sync_api.expect(typed_instructions).to_be_visible(timeout=RENDER_TIMEOUT_MS)
            typed_instructions.select_text()
            typed_instructions.press_sequentially("Reply briefly.")
            typed_ran_with = typed.locator(".dspex-preview-values")
            sync_api.expect(typed_ran_with).to_contain_text("instructions=Reply briefly.", timeout=10_000)
            assert typed_instructions.evaluate("(element) => element === document.activeElement")

            # The dark theme: the keys still move the slider and its focus ring still shows.
            switch_theme(page, DARK)
            slider = held.locator("input[name='temperature']")
            slider.focus()
            press(
                page, "ArrowRight", held.locator(".dspex-control[data-name='temperature'] .dspex-control-value"), "0.11"
            )
            check_focus_ring(slider, held)
            sync_api.expect(held.locator(".dspex-preview-values")).to_contain_text("temperature=0.11 ·")
            keep_screenshot(held, tmp_path / "variable_controls_keys_dark.png")

            run_cell(page, STATE)
            sync_api.expect(output(cells.nth(STATE))).to_contain_text("kernel state:", timeout=RENDER_TIMEOUT_MS)
            state = json.loads(output(cells.nth(STATE)).inner_text().split("kernel state:", 1)[1])
        except BaseException:
            keep_screenshot(page, tmp_path / "controls_failure.png")
            raise

    assert state["held"] == {
        "temperature": 0.11,
        "max_tokens": 265,
        "model": "lab/large",
        "instructions": "Think step by step.\nThen answer.",  # not the text Escape dropped
    }
    assert state["typed"]["instructions"] == "Reply briefly."
    shots = sorted(tmp_path.glob("variable_controls_keys_*.png"))
    assert [shot.name for shot in shots] == ["variable_controls_keys_dark.png", "variable_controls_keys_light.png"]
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5_000, shot

"""The optimization page's Importance tab as a user sees it: `dspex dashboard` served, driven in headless Chromium.

The forest plot must hold one point per estimable contrast of ``result.importance()``, the table under it
one row per contrast, and the page must fetch nothing from any host but 127.0.0.1. A screenshot is kept
(see the fixtures in conftest.py).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_the_importance_tab_draws_each_estimable_effect_and_lists_every_contrast(
    optimization_run, serve, browser
) -> None:
    frame = optimization_run["result"].importance()
    estimable = int(frame["estimable"].sum())
    assert estimable > 0
    browser.open_optimization_tab(serve(optimization_run["path"]), "Importance")
    table = browser.page.locator("table.dspex-importance")
    table.wait_for()
    assert table.locator("tr").count() == len(frame) + 1
    assert table.get_by_text("dspy.ChainOfThought vs dspy.Predict").count() == 1
    browser.wait_for_rows("effect", "share", estimable)
    browser.keep("optimization-importance.png")
    assert browser.errors == []
    assert browser.hosts == {"127.0.0.1"}

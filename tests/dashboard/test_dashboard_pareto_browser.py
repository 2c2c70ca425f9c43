"""The optimization page's Pareto tab as a user sees it: `dspex dashboard` served, driven in headless Chromium.

The plot must hold every validated candidate of ``result.pareto()`` (front, dominated, and the best ringed), the
note above it must count the front, and the page must fetch nothing from any host but 127.0.0.1. A screenshot is
kept (see the fixtures in conftest.py).
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_the_pareto_tab_draws_every_candidate_and_counts_the_front(guarded_run, serve, browser) -> None:
    points = guarded_run["result"].pareto()
    front = int(points["on_front"].sum())
    assert front >= 2
    browser.open_optimization_tab(serve(guarded_run["path"]), "Pareto")
    note = browser.page.locator("div.dspex-pareto-note")
    note.wait_for()
    assert note.get_attribute("data-front") == str(front)
    assert note.get_attribute("data-points") == str(len(points))
    assert f"{front} of {len(points)} candidates evaluated on the valset are on the front" in note.inner_text()
    # Every point is drawn once as on the front or dominated, and the best once more, ringed.
    browser.wait_for_rows("cost_ci_low", "latency_p95", len(points) + 1)
    browser.keep("optimization-pareto.png")
    assert browser.errors == []
    assert browser.hosts == {"127.0.0.1"}

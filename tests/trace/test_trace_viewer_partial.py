"""The trace viewer shows spans cut short (status ``timeout`` or ``cancelled``) as such."""

from __future__ import annotations

import duckdb
import pytest

import dspex_lab as dx
from dspex_lab.evaluation import evaluate

pytest.importorskip("anywidget")


def test_spans_cut_short_reach_the_front_end_with_their_status(journal_path) -> None:
    from dspex_lab.notebook._widgets_common import front_end_file

    problems = dx.Dataset(dx.datasets.arithmetic(2, seed=6), name="partial")
    program = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
    with dx.Context(journal=journal_path, threads=1):
        result = evaluate(program, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    trial_id = f"{problems.example_ids[0]}/r0"
    # Stored as TraceCollector.abandon leaves a timed-out trial: the root and the LM call cut short.
    with duckdb.connect(str(journal_path)) as connection:
        connection.execute(
            """UPDATE spans SET status = 'timeout', error = 'trial did not finish within 1 s'
               WHERE experiment_id = ? AND trace_id = ? AND kind IN ('trial', 'lm')""",
            [result.experiment_id, trial_id],
        )
    viewer = dx.widgets.TraceViewer(journal_path, result.experiment_id, trial_id=trial_id)
    viewer.expanded = [node["id"] for node in viewer.nodes]
    statuses = {node["kind"]: node["status"] for node in viewer.nodes}
    assert statuses["trial"] == statuses["lm"] == "timeout"
    assert statuses["module"] == "ok"
    lm = next(node for node in viewer.nodes if node["kind"] == "lm")
    viewer.selected_span = lm["id"]
    assert viewer.detail["status"] == "timeout" and viewer.detail["error"] == "trial did not finish within 1 s"
    # The front end labels such rows and colours them; without a browser, its sources are what can be checked.
    script = front_end_file("trace_viewer.js", widget="TraceViewer").read_text()
    style = front_end_file("trace_viewer.css", widget="TraceViewer").read_text()
    assert 'node.status === "timeout" || node.status === "cancelled"' in script
    assert ".dspex-trace-viewer .dspex-timeout, .dspex-trace-viewer .dspex-cancelled" in style

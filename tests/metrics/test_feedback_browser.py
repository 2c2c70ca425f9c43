"""The trace viewer's front end shows a metric's feedback text under its expected-vs-got table (headless Chromium)."""

import importlib.util
from pathlib import Path

import dspy

import dspex_lab as dx

# The trace viewer's browser harness (tests have no packages: loaded from its file).
_spec = importlib.util.spec_from_file_location(
    "trace_viewer_browser", Path(__file__).parents[1] / "trace" / "test_trace_viewer_browser.py"
)
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)

SHOW_METRIC = """
const isMetric = (element) => element.querySelector(".dspex-kind").textContent === "metric";
Array.from(root.querySelectorAll(".dspex-span")).find(isMetric).click();
const block = root.querySelector(".dspex-detail .dspex-feedback");
return {
  title: block ? block.dataset.title : null,
  text: block ? block.querySelector("pre").textContent : null,
  attributes: root.querySelector(".dspex-detail .dspex-attributes").textContent,
};
"""


def graded(example, prediction):
    right = dx.metrics.exact_match(example, prediction)
    return dspy.Prediction(score=right, feedback=f"compared with the gold answer {example.answer}")


@harness.needs_chromium
def test_the_metric_span_shows_its_feedback(tmp_path):
    journal = tmp_path / "journal.duckdb"
    with dx.Context(journal=journal):
        result = dx.evaluate(
            dx.Program("dspy.Predict", signature="question -> answer"),
            dx.datasets.arithmetic(1, seed=2),
            metric=graded,
            progress=False,
            trace=True,
        )
    viewer = dx.widgets.TraceViewer(journal, result.experiment_id)
    state = harness.viewer_state(viewer, details=[node["id"] for node in viewer.nodes])
    report = harness.run_page(tmp_path, state, SHOW_METRIC)
    gold = dx.datasets.arithmetic(1, seed=2)[0].answer
    assert report["title"] == "the metric's feedback"
    assert report["text"] == f"compared with the gold answer {gold}"
    assert "feedback" not in report["attributes"]  # shown once, as text

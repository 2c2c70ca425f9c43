"""A DSPy compile journaled by dx.autolog() on the optimization page and in the browser widget.

Such a run has nested evaluations (DSPy's own ``Evaluate`` runs, its optimizer's metric calls) but no
steps or candidates, so the page draws its timeline and says why there is nothing more, where it used
to say "Cannot draw run: no finished baseline step"; the browser widget says where its trials are.
"""

from __future__ import annotations

from typing import Any

import dspy
import pytest

pytest.importorskip("panel")
pytest.importorskip("holoviews")

import dspex_lab as dx
from dspex_lab.journal import open_journal
from dspex_lab.notebook._dashboard import RUN_VIEWS, Dashboard
from dspex_lab.notebook._dashboard_optimization import is_compile_run


def exact(example: dspy.Example, prediction: Any, trace: Any = None) -> bool:
    return example.answer == prediction.answer


class EvaluatingOptimizer(dspy.teleprompt.Teleprompter):
    """A compile that scores the program twice with dspy.Evaluate, as MIPROv2's trials do."""

    def __init__(self, metric: Any) -> None:
        super().__init__()
        self.metric = metric

    def compile(self, student: Any, *, trainset: Any, valset: Any = None, **kwargs: Any) -> Any:
        for _ in range(2):
            dspy.Evaluate(devset=valset, metric=self.metric, num_threads=2)(student)
        return student


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A journal holding an autologged BootstrapFewShot compile and one whose compile runs dspy.Evaluate."""
    path = tmp_path_factory.mktemp("autolog-page") / "journal.duckdb"
    saved = dspy.settings.lm
    dspy.configure(lm=dx.lab_lm("lab/small"))
    data = dx.datasets.arithmetic(10)
    dx.autolog(path)
    try:
        dspy.BootstrapFewShot(metric=exact, max_bootstrapped_demos=2, max_labeled_demos=2).compile(
            dspy.Predict("question -> answer"), trainset=data[:6]
        )
        EvaluatingOptimizer(exact).compile(dspy.Predict("question -> answer"), trainset=data[:6], valset=data[6:])
    finally:
        dx.autolog(disable=True)
        dspy.configure(lm=saved)
    runs = open_journal(path).experiments().set_index("name")["id"]
    return {
        "path": path,
        "bootstrap": runs["dspy BootstrapFewShot.compile"],
        "evaluating": runs["dspy EvaluatingOptimizer.compile"],
    }


def test_the_page_draws_a_compiles_timeline_and_says_why_nothing_more(compiled: dict[str, Any]) -> None:
    journal = open_journal(compiled["path"])
    run_id = compiled["evaluating"]
    dashboard = Dashboard(journal)
    dashboard.open_page("optimization")
    dashboard.run_select.value = run_id

    message = dashboard.run_message.object
    assert "Cannot draw" not in message
    assert message.startswith("**dspy EvaluatingOptimizer.compile, journaled by `dx.autolog()`:**")
    assert "2 evaluations nested in it" in message and "no steps or candidates" in message
    best = journal.experiment(run_id)["summary"]["best_evaluation_mean"]
    assert f"its best dspy.Evaluate run scored {best:.3f}" in message
    # Not one of dx.optimize's DSPy optimizers: no optimizer= to point to.
    assert "dx.optimize" not in message
    # The timeline is what the run has: one bar per dspy.Evaluate, named as its experiment, and shown first.
    children = journal.children(run_id)
    assert list(dashboard.timeline["experiment_id"]) == [child.id for child in children]
    assert list(dashboard.timeline["label"]) == ["dspy.Evaluate Predict"] * 2
    assert 'data-bars="2"' in dashboard.timeline_note.object
    assert dashboard.timeline_plot.object is not None
    assert dashboard.run_views.active == RUN_VIEWS.index("timeline")
    assert dashboard.run_plot.object is None and dashboard.history_plot.object is None
    assert dashboard.why_table.value.empty and dashboard.pareto.empty
    assert "the run records no candidates" in dashboard.importance_table.object


def test_a_dspy_optimizer_the_bridge_knows_is_pointed_to_it(compiled: dict[str, Any]) -> None:
    journal = open_journal(compiled["path"])
    dashboard = Dashboard(journal)
    dashboard.open_page("optimization")
    dashboard.run_select.value = compiled["bootstrap"]

    message = dashboard.run_message.object
    assert "1 evaluation nested in it" in message and "dspy.Evaluate run scored" not in message
    assert '`dx.optimize(..., optimizer="bootstrap")` records each candidate and step.' in message
    assert list(dashboard.timeline["label"]) == ["dspy BootstrapFewShot.compile metric calls"]
    # Only autolog's compiles are drawn so: a run of dx.optimize has no "autolog" in its config.
    assert is_compile_run(journal.experiment(compiled["bootstrap"]))
    assert not is_compile_run({"kind": "optimization", "config": {"optimizer": "simba-c"}})


def test_the_browser_widget_says_a_compiles_trials_are_in_its_nested_evaluations(compiled: dict[str, Any]) -> None:
    browser = dx.ExperimentBrowser(compiled["path"])
    browser.select_experiment(compiled["evaluating"])

    assert browser.trials == []
    assert browser.tables.note == (
        "dspy EvaluatingOptimizer.compile has no trials of its own: its 2 nested experiments hold them; "
        "unfold it (▸) and select one"
    )
    browser.expand(compiled["evaluating"])
    child = next(row for row in browser.experiments if row["parent"] == compiled["evaluating"])
    browser.select_experiment(child["id"])
    assert len(browser.trials) == 4 and browser.tables.note == ""


def test_the_cli_trial_list_says_a_compiles_trials_are_in_its_nested_evaluations(
    compiled: dict[str, Any], capsys
) -> None:
    from dspex_lab.cli import main

    run_id = compiled["evaluating"]
    assert main(["journal", "trials", run_id, "--journal", str(compiled["path"])]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    children = open_journal(compiled["path"]).children(run_id)
    assert last.startswith(f"{run_id} has no trials of its own: its 2 nested experiments hold them: {children[0].id} (")
    assert last.endswith("4 trials) (all of them: dspex journal list --all)")

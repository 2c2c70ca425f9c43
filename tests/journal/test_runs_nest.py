"""Runs nest, as a researcher sees it: an optimization's candidate evaluations are folded under the run.

Four short optimizations used to make ~160 evaluations that buried the researcher's own ones (page 5
of the leaderboard). Each candidate evaluation is now the run's child through ``parent_id``, whatever
made it (SIMBA-C, the DSPy bridge, a resumed run), and every list hides them by default, one flag away:
``leaderboard()``, ``experiments()``, ``dspex journal list``, the browser and the dashboard. Their
counts say what is shown under a filter.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import JournalError
from dspex_lab.journal import ExperimentRecord
from dspex_lab.optimization import DspyOptimizer

# The dashboard's experiments table shows this many rows a page.
FIRST_PAGE = 20


def quick_simba(max_steps: int) -> dx.SimbaC:
    return dx.SimbaC(max_steps=max_steps, bsize=6, num_candidates=3, num_sources=2, patience=3, strategies=("mutate",))


def interrupt_at_step_one(event: Any) -> None:
    if event.step == 1:
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A journal with the researcher's four evaluations around three optimizations (one interrupted and resumed)."""
    path = tmp_path_factory.mktemp("nest") / "journal.duckdb"
    data = list(dx.datasets.arithmetic(60, seed=5))
    train, val = data[:24], data[24:]

    def own(name: str, module: str = "dspy.Predict") -> str:
        program = dx.Program(module, signature="question -> answer", name=name)
        return dx.evaluate(program, val, metric=dx.metrics.exact_match, progress=False).experiment_id

    def program(name: str) -> dx.Program:
        return dx.Program("dspy.Predict", signature="question -> answer", name=name)

    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the small valsets are underpowered, and say so
        evaluations = [own("qa-first"), own("qa-cot-first", "dspy.ChainOfThought")]
        simba = dx.optimize(
            program("opt-simba"), train, val, metric=dx.metrics.exact_match, optimizer=quick_simba(3), seed=1,
            progress=False,
        )  # fmt: skip
        bridge = dx.optimize(
            program("opt-bootstrap"), train, val, metric=dx.metrics.exact_match, seed=1, progress=False,
            optimizer=DspyOptimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=2),
        )  # fmt: skip
        with pytest.raises(KeyboardInterrupt, match="resume="):
            dx.optimize(
                program("opt-resumed"), train, val, metric=dx.metrics.exact_match, optimizer=quick_simba(3), seed=3,
                progress=False, subscribers=[interrupt_at_step_one],
            )  # fmt: skip
        journal = dx.current_context().journal
        interrupted = journal.leaderboard(kind="optimization", status="interrupted")["experiment_id"]
        assert len(interrupted) == 1
        resumed = dx.optimize(
            program("opt-resumed"), train, val, metric=dx.metrics.exact_match, optimizer=quick_simba(3), seed=3,
            progress=False, resume=interrupted[0],
        )  # fmt: skip
        assert resumed.run_id == interrupted[0] and resumed.status == "finished"
        evaluations += [own("qa-last"), own("qa-cot-last", "dspy.ChainOfThought")]
    return {
        "path": path,
        "journal": dx.open_journal(path),
        "own": set(evaluations),
        "runs": {simba.run_id, bridge.run_id, resumed.run_id},
    }


def test_every_evaluation_an_optimization_made_is_its_child_through_the_journal(three_runs) -> None:
    journal = three_runs["journal"]
    every = journal.experiment_summaries(children=True)
    made = {}
    for summary in every:
        run = (journal.experiment(summary.id)["config"] or {}).get("optimization")
        if run is not None:
            made[summary.id] = run
    # The stored parent link, not the id, says which run each belongs to: SIMBA-C's, the DSPy bridge's
    # compile configurations, and the resumed run's from both of its processes.
    assert made and all(journal.parent(child) == run for child, run in made.items())
    assert set(made.values()) == three_runs["runs"]
    assert {summary.id for summary in every if summary.parent_id is None} == three_runs["own"] | three_runs["runs"]
    board = journal.leaderboard().set_index("experiment_id")
    for run in three_runs["runs"]:
        assert board.loc[run, "n_children"] == len(journal.children(run)) == sum(made[c] == run for c in made)
    assert {child.role for child in journal.children(min(three_runs["runs"]))} <= set(dx.journal.EXPERIMENT_ROLES)


def test_after_three_optimizations_the_first_page_shows_the_researchers_evaluations_and_the_runs(three_runs) -> None:
    journal = three_runs["journal"]
    wanted = three_runs["own"] | three_runs["runs"]
    everything = journal.leaderboard(children=True)
    # Without folding, the candidates would fill the first page and push the researcher's first evaluations off it.
    assert len(everything) > FIRST_PAGE
    assert not wanted <= set(everything["experiment_id"].head(FIRST_PAGE))

    first_page = journal.leaderboard().head(FIRST_PAGE)
    assert set(first_page["experiment_id"]) == wanted
    assert first_page["parent_id"].isna().all()
    assert set(journal.experiments()["id"]) == wanted
    assert len(journal.experiments(children=True)) == len(everything)
    # With children, each nested experiment sits right after its run: the top level reads as without them.
    listed = everything.to_dict("records")
    for position, row in enumerate(listed):
        if isinstance(row["parent_id"], str):
            before = listed[position - 1]
            assert row["parent_id"] in (before["experiment_id"], before["parent_id"])
    assert [row["experiment_id"] for row in listed if not isinstance(row["parent_id"], str)] == list(
        journal.leaderboard()["experiment_id"]
    )


def test_the_browser_sorted_by_mean_lists_no_candidate_until_a_run_is_unfolded(three_runs) -> None:
    pytest.importorskip("anywidget")
    journal = three_runs["journal"]
    browser = dx.ExperimentBrowser(journal)
    browser.tables.sort_column = "mean"
    wanted = three_runs["own"] | three_runs["runs"]
    assert {row["id"] for row in browser.experiments} == wanted
    nested = len(journal.experiment_summaries(children=True)) - len(wanted)
    assert browser.tables.count_note == f"7 of 7 experiments shown · 0 of {nested} nested in 3 runs shown"

    run = min(three_runs["runs"])
    browser.expand(run)
    rows = browser.experiments
    children = [row for row in rows if row["depth"]]
    assert {row["id"] for row in children} == {child.id for child in journal.children(run)}
    start = [row["id"] for row in rows].index(run)
    assert all(row["parent"] == run for row in rows[start + 1 : start + 1 + len(children)])
    means = [row["mean"] for row in children if row["mean"] is not None]
    assert means == sorted(means, reverse=True)  # sorted by mean within the run, too
    assert f"{len(children)} of {nested} nested in 3 runs shown" in browser.tables.count_note

    browser.tables.name_filter = "qa-cot"
    assert {row["id"] for row in browser.experiments} <= three_runs["own"]
    assert browser.tables.count_note.startswith("2 of 7 experiments shown · 0 of")
    browser.tables.name_filter = ""
    browser.nested = True
    assert len(browser.experiments) == len(journal.leaderboard(children=True))
    with pytest.raises(JournalError, match="has 'qa' nested runs"):
        browser.expand("qa")


def test_dspex_journal_list_folds_the_candidates_and_all_lists_them(three_runs, capsys) -> None:
    path = str(three_runs["path"])
    journal = three_runs["journal"]
    nested = len(journal.experiment_summaries(children=True)) - 7
    assert main(["journal", "list", "--journal", path]) == 0
    listed = capsys.readouterr().out.splitlines()
    ids = {line.split()[0] for line in listed[3:-1]}
    assert ids == three_runs["own"] | three_runs["runs"]
    assert listed[-1].startswith(f"{nested} nested experiments hidden") and "in 3 runs" in listed[-1]
    assert "--all" in listed[-1]

    assert main(["journal", "list", "--all", "--journal", path]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3 + 7 + nested
    run = min(three_runs["runs"])
    at = next(index for index, line in enumerate(listed) if line.startswith(f"{run} "))
    children = [child.id for child in journal.children(run)]
    assert [line.split()[0] for line in listed[at + 1 : at + 1 + len(children)]] == children


def test_the_dashboard_leaderboard_folds_candidates_and_counts_what_a_filter_shows(three_runs) -> None:
    pytest.importorskip("panel")
    from dspex_lab.notebook._dashboard import Dashboard

    journal = three_runs["journal"]
    nested = len(journal.experiment_summaries(children=True)) - 7
    dashboard = Dashboard(journal)
    first_page = dashboard.table.value.head(FIRST_PAGE)
    assert set(first_page["experiment_id"]) == three_runs["own"] | three_runs["runs"]
    assert f"7 of 7 experiments shown · 0 of {nested} nested in 3 runs shown" in dashboard.status.object

    dashboard.name_filter.value = "qa-cot"
    assert len(dashboard.table.value) == 2
    # The count says what the filter shows, in the status line too (it said "N experiments shown" for all).
    assert "2 of 7 experiments shown" in dashboard.board_count.object
    assert "2 of 7 experiments shown" in dashboard.status.object

    dashboard.name_filter.value = ""
    run = min(three_runs["runs"])
    expanded = dashboard._nested_rows(dashboard.table.value.set_index("experiment_id", drop=False).loc[run])
    for child in journal.children(run):
        assert child.id in expanded.object
    dashboard.show_nested.value = True
    shown = dashboard.table.value
    assert len(shown) == 7 + nested
    assert shown.loc[shown["experiment_id"].isin(three_runs["own"]), "name"].str.startswith("↳").sum() == 0
    assert shown.loc[shown["role"] != "", "name"].str.startswith("↳ ").all()
    assert f"{nested} of {nested} nested in 3 runs shown" in dashboard.status.object


# -- the readers ---------------------------------------------------------------------------------------


@pytest.fixture
def small(journal_path: Path) -> dx.journal.DuckDBJournal:
    journal = dx.open_journal(journal_path)
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="mine", id="mine"))
    journal.create_experiment(ExperimentRecord(kind="optimization", name="run", id="run"))
    for index in range(3):
        journal.create_experiment(
            ExperimentRecord(
                kind="evaluation", name=f"cand{index}", id=f"c{index}", parent_id="run", role="candidate-screen"
            )
        )
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="latest", id="latest"))
    return journal


def test_the_leaderboard_counts_children_lists_one_runs_and_refuses_bad_filters(small) -> None:
    board = small.leaderboard()
    assert list(board["experiment_id"]) == ["latest", "run", "mine"]
    assert list(board["n_children"]) == [0, 3, 0] and board["n_children"].dtype == "int64"
    assert list(small.leaderboard(parent="run")["experiment_id"]) == ["c0", "c1", "c2"]
    assert list(small.leaderboard(parent="run", limit=2)["experiment_id"]) == ["c0", "c1"]
    assert small.leaderboard(parent="mine").empty
    assert list(small.leaderboard(children=True)["experiment_id"]) == ["latest", "run", "c0", "c1", "c2", "mine"]
    assert list(small.leaderboard(children=True, limit=3)["experiment_id"]) == ["latest", "run", "c0"]
    assert list(small.leaderboard(children=True, name="cand")["experiment_id"]) == ["c0", "c1", "c2"]
    with pytest.raises(JournalError, match=r"leaderboard\(parent=\.\.\.\) must be text"):
        small.leaderboard(parent=3)
    with pytest.raises(JournalError, match=r"experiments\(children=\.\.\.\) must be True or False"):
        small.experiments(children="yes")
    assert list(small.experiments()["id"]) == ["latest", "run", "mine"]


def test_the_leaderboard_of_a_journal_without_the_relation_still_reads(tmp_path) -> None:
    # A journal written before schema 7 is migrated on open: nothing nested, every count zero.
    journal = dx.open_journal(tmp_path / "fresh.duckdb")
    assert journal.leaderboard().empty and "n_children" in journal.leaderboard().columns

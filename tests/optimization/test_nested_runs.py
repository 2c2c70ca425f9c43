"""An optimization's evaluations are its children: ``parent_id`` is the run and ``role`` says what each is for."""

from __future__ import annotations

import warnings
from pathlib import Path

import dspy
import pandas as pd
import pytest
from oracle import oracle_program

import dspex_lab as dx
from dspex_lab.journal import EXPERIMENT_ROLES
from dspex_lab.optimization import DspyOptimizer


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(140, seed=17))


def children_by_phase(journal: dx.journal.DuckDBJournal, run_id: str) -> dict[tuple[str, str], str]:
    """(candidate, phase) -> role of every child of ``run_id``, read through the relation only."""
    found = {}
    for child in journal.children(run_id):
        assert child.parent_id == run_id and journal.parent(child.id) == run_id
        config = journal.experiment(child.id)["config"]
        assert config["optimization"] == run_id
        found[(config["candidate"], config["phase"])] = child.role
    return found


def test_simba_c_evaluations_are_children_of_their_run_with_their_roles(tmp_path: Path, data) -> None:
    journal_path = tmp_path / "journal.duckdb"
    simba = dx.SimbaC(max_steps=2, bsize=12, num_candidates=3, num_sources=2, patience=3, strategies=("mutate",))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path, threads=2), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.optimize(
            oracle_program(), data[:60], data[60:140], metric=dx.metrics.exact_match, optimizer=simba, seed=1,
            progress=False,
        )  # fmt: skip
    journal = dx.open_journal(journal_path)
    roles = children_by_phase(journal, result.run_id)
    assert roles[("c0", "val")] == "baseline"
    assert roles[("c0", "screen")] == "candidate-screen"
    assert roles[(result.best_id, "val")] == "candidate-validation"
    assert roles[("c0", "confirm")] == roles[(result.best_id, "confirm")] == "confirmation"
    exploration = {phase: role for (_, phase), role in roles.items() if "explore" in phase}
    assert exploration and set(exploration.values()) == {"exploration"}
    assert set(roles.values()) == set(EXPERIMENT_ROLES) - {"compile"}
    # Every experiment the run made is its child, and the run itself is top-level.
    assert len(roles) == len(journal.experiment_summaries()) - 1
    assert journal.parent(result.run_id) is None
    assert list(journal.leaderboard()["experiment_id"]) == [result.run_id]


def test_a_dspy_optimizers_compile_experiments_are_children_of_its_run(tmp_path: Path, data) -> None:
    journal_path = tmp_path / "journal.duckdb"
    bootstrap = DspyOptimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=2)
    program = dx.Program("dspy.Predict", signature="question -> answer", name="arith")
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.optimize(
            program, data[:40], data[40:80], metric=dx.metrics.exact_match, optimizer=bootstrap, seed=1,
            progress=False,
        )  # fmt: skip
    journal = dx.open_journal(journal_path)
    roles = children_by_phase(journal, result.run_id)
    compiled = journal.children(result.run_id, role="compile")
    assert compiled and all(child.kind == "evaluation" for child in compiled)
    assert journal.experiment(compiled[0].id)["config"]["candidate"] == "e1"
    assert roles[("c0", "val")] == "baseline"
    assert {role for role in roles.values()} >= {"baseline", "compile", "candidate-validation"}
    assert list(journal.leaderboard()["experiment_id"]) == [result.run_id]
    assert len(journal.leaderboard(children=True)) == 1 + len(roles)


def test_a_run_without_a_journal_file_is_recorded_in_the_in_memory_journal(data) -> None:
    simba = dx.SimbaC(max_steps=1, bsize=8, num_candidates=2, num_sources=2, patience=1, strategies=("mutate",))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dx.optimize(
            oracle_program(), data[:40], data[40:120], metric=dx.metrics.exact_match, optimizer=simba, seed=2,
            progress=False,
        )  # fmt: skip
        journal = result.journal
        assert not journal.durable and result.run_id is not None
        again = dx.OptimizationResult.from_journal(journal, result.run_id)
    assert journal.experiment(result.run_id)["status"] == result.status == again.status
    assert again.best_id == result.best_id and again.spending == result.spending
    pd.testing.assert_frame_equal(again.steps, result.steps)
    # Its evaluations are the run's children there, and the result's evaluations name them.
    roles = children_by_phase(journal, result.run_id)
    assert roles[("c0", "val")] == "baseline" and result.baseline.experiment_id == f"{result.run_id}/c0/val"
    assert len(journal.trial_rows(result.baseline.experiment_id)) == result.baseline.n_trials == 56

"""Schema version 6: the per-experiment totals the writes keep, and the migration that builds them for old journals."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pytest
from journal_rows import trial_row

import dspex_lab as dx
from dspex_lab.journal import SCHEMA_VERSION, ExperimentRecord
from dspex_lab.journal._schema import STATS_TOTALS

STATS = (
    "n_trials", "n_errors", "n_scored", "score_sum", "ok_n_scored", "ok_score_sum", "ok_score_sum_squares",
)  # fmt: skip


def row(index: int, repeat: int, *, status: str = "ok", score: float | None = 1.0) -> dict:
    return trial_row(f"q{index}", index, repeat=repeat, status=status, score=score)


def stored_and_recomputed(path: Path) -> tuple[dict, dict]:
    """Return (the kept totals, the totals recomputed from the trials) per experiment."""
    connection = duckdb.connect(str(path), read_only=True)
    try:
        kept = {
            row[0]: row[1:]
            for row in connection.execute(f"SELECT experiment_id, {', '.join(STATS)} FROM experiment_stats").fetchall()
        }
        recomputed = {
            row[0]: row[1:]
            for row in connection.execute(
                STATS_TOTALS.format(experiment="experiment_id", source="trials") + " GROUP BY experiment_id"
            ).fetchall()
        }
    finally:
        connection.close()
    return kept, recomputed


def mixed_rows(indexes: range) -> list[dict]:
    """Scored ok trials, an unscored ok trial, failures with and without a score."""
    rows = []
    for index in indexes:
        if index % 5 == 0:
            rows.append(row(index, 0, status="error", score=None))
        elif index % 7 == 0:
            rows.append(row(index, 0, status="error", score=0.0))
        elif index % 11 == 0:
            rows.append(row(index, 0, score=None))
        else:
            rows.append(row(index, 0, score=(index % 4) / 4))
    return rows


def test_totals_follow_the_writes_and_ignore_replayed_trials(journal_path):
    journal = dx.open_journal(journal_path)
    first = journal.create_experiment(ExperimentRecord(kind="evaluation", name="first"))
    second = journal.create_experiment(ExperimentRecord(kind="evaluation", name="second"))
    journal.append_trials(first, mixed_rows(range(0, 40)))
    journal.append_trials(first, mixed_rows(range(30, 60)))  # 30..39 replayed: a flush retried after a crash
    journal.append_trials(first, mixed_rows(range(0, 10)))  # nothing new
    journal.append_trials(second, [*mixed_rows(range(0, 5)), *mixed_rows(range(0, 5))])  # repeated within a batch
    kept, recomputed = stored_and_recomputed(journal_path)
    assert set(kept) == {first, second}
    for experiment_id, totals in recomputed.items():
        assert kept[experiment_id] == pytest.approx(totals)
    assert kept[first][0] == 60 and kept[second][0] == 5
    listing = {summary.id: summary for summary in journal.experiment_summaries()}
    scores = [item["score"] for item in mixed_rows(range(60)) if item["score"] is not None]
    assert listing[first].mean_score == pytest.approx(sum(scores) / len(scores))


def test_an_experiment_without_trials_has_zero_counts_and_no_mean(journal_path):
    journal = dx.open_journal(journal_path)
    empty = journal.create_experiment(ExperimentRecord(kind="evaluation", name="empty"))
    line = journal.leaderboard().set_index("experiment_id").loc[empty]
    assert (line["n_trials"], line["n_errors"]) == (0, 0)
    assert line[["mean", "ci_low", "ci_high"]].isna().all()
    assert journal.experiment_summaries()[0].mean_score is None


def test_identical_scores_give_a_zero_width_interval(journal_path):
    # The spread comes from a sum of squares; rounding must not make it negative (a NaN interval).
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="flat"))
    journal.append_trials(experiment, [row(index, 0, score=0.1) for index in range(1000)])
    line = journal.leaderboard().iloc[0]
    assert line["mean"] == pytest.approx(0.1)
    assert line["ci_low"] == pytest.approx(0.1, abs=1e-6) and line["ci_high"] == pytest.approx(0.1, abs=1e-6)


def test_a_version_5_journal_gets_its_totals_from_its_trials(journal_path):
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="old"))
    journal.append_trials(experiment, mixed_rows(range(25)))
    expected = journal.leaderboard()
    # Make it the file a version-5 dspex_lab wrote: no totals table.
    connection = duckdb.connect(str(journal_path))
    connection.execute("DROP TABLE experiment_stats")
    connection.execute("UPDATE dspex_meta SET value = '5' WHERE key = 'schema_version'")
    connection.close()

    reopened = dx.open_journal(journal_path)
    assert reopened.sql("select value from dspex_meta where key = 'schema_version'")["value"][0] == str(SCHEMA_VERSION)
    kept, recomputed = stored_and_recomputed(journal_path)
    assert kept[experiment] == pytest.approx(recomputed[experiment])
    migrated = reopened.leaderboard()
    for column in ("n_trials", "n_errors", "mean", "ci_low", "ci_high"):
        assert migrated[column].tolist() == pytest.approx(expected[column].tolist())
    reopened.append_trials(experiment, mixed_rows(range(25, 30)))  # the migrated totals keep counting
    assert reopened.leaderboard()["n_trials"].tolist() == [30]


def test_the_version_1_fixture_is_migrated_with_totals(tmp_path):
    old = tmp_path / "old.duckdb"
    shutil.copy(Path(__file__).with_name("fixtures") / "journal_v1.duckdb", old)
    journal = dx.open_journal(old)
    assert journal.leaderboard()["n_trials"].tolist() == [12]
    kept, recomputed = stored_and_recomputed(old)
    assert set(kept) == set(recomputed)
    for experiment_id, totals in recomputed.items():
        assert kept[experiment_id] == pytest.approx(totals)

"""The dashboard's queries (leaderboard, trial_page, paired_scores) checked against pandas on a small journal."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import dspex_lab as dx
from dspex_lab.errors import JournalError
from dspex_lab.journal import LEADERBOARD_COLUMNS, TRIAL_SORTS, ExperimentRecord


def trial(index: int, repeat: int, score: float | None, *, latency: float) -> dict:
    now = time.time()
    failed = score is None
    return dict(
        index=index,
        example_id=f"q{index}",
        repeat=repeat,
        status="error" if failed else "ok",
        score=score,
        prediction="{}",
        error_type="ValueError" if failed else None,
        error_message="bad" if failed else None,
        error_stage=None,
        traceback=None,
        latency=latency,
        input_tokens=10 + index,
        output_tokens=2,
        cost=0.001 * index,
        lm_calls=1,
        attempts=1,
        started_at=now,
        finished_at=now,
        trial_id=f"q{index}/r{repeat}",
    )


@pytest.fixture
def small(journal_path):
    """Three experiments: two evaluations with repeats and failures over overlapping examples, one running."""
    rng = np.random.default_rng(7)
    journal = dx.open_journal(journal_path)
    ids = {}
    plans = {
        "baseline-a": ("evaluation", range(0, 12), "lab/small"),
        "treatment-b": ("evaluation", range(4, 16), "lab/large"),
        "search-c": ("optimization", range(0, 3), None),
    }
    for name, (kind, examples, model) in plans.items():
        config = {"lm": model} if model else {}
        experiment = journal.create_experiment(
            ExperimentRecord(kind=kind, name=name, program_name=f"prog-{name}", config=config)
        )
        rows = []
        for index in examples:
            for repeat in range(2):
                score = None if rng.random() < 0.2 else float(rng.integers(0, 5)) / 4
                rows.append(trial(index, repeat, score, latency=float(rng.random())))
        journal.append_trials(experiment, rows)
        if kind == "evaluation":
            journal.finish_experiment(experiment, status="finished")
        ids[name] = experiment
        time.sleep(0.01)  # distinct created_at, so "newest first" is checkable
    return journal, ids


def test_leaderboard_matches_pandas_with_a_t_interval(small):
    # Repeats of an example are averaged first (they are not independent), then a t interval (non-0/1 scores).
    journal, ids = small
    board = journal.leaderboard()
    assert tuple(board.columns) == LEADERBOARD_COLUMNS
    assert list(board["experiment_id"]) == [ids["search-c"], ids["treatment-b"], ids["baseline-a"]]
    for experiment_id in ids.values():
        trials = journal.trials(experiment_id)
        scores = trials[trials["status"] == "ok"].groupby("example_id")["score"].mean()
        line = board.set_index("experiment_id").loc[experiment_id]
        assert line["n_trials"] == len(trials)
        assert line["n_errors"] == int((trials["status"] == "error").sum())
        assert line["mean"] == pytest.approx(scores.mean())
        low, high = stats.t.interval(0.95, len(scores) - 1, loc=scores.mean(), scale=stats.sem(scores))
        assert (line["ci_low"], line["ci_high"], line["ci_method"]) == (pytest.approx(low), pytest.approx(high), "t")
    by_id = board.set_index("experiment_id")
    assert by_id.loc[ids["baseline-a"], "model"] == "lab/small"
    assert by_id.loc[ids["baseline-a"], "program"] == "prog-baseline-a"
    assert pd.isna(by_id.loc[ids["search-c"], "model"])


def test_leaderboard_filters_and_limit(small):
    journal, ids = small
    assert list(journal.leaderboard(name="-b")["experiment_id"]) == [ids["treatment-b"]]
    assert list(journal.leaderboard(kind="optimization")["experiment_id"]) == [ids["search-c"]]
    assert set(journal.leaderboard(status="finished")["experiment_id"]) == {ids["baseline-a"], ids["treatment-b"]}
    assert list(journal.leaderboard(status="running")["experiment_id"]) == [ids["search-c"]]
    assert list(journal.leaderboard(limit=1)["experiment_id"]) == [ids["search-c"]]
    assert journal.leaderboard(name="no such").empty
    with pytest.raises(JournalError, match="limit"):
        journal.leaderboard(limit=-1)


def test_leaderboard_reports_a_dead_run_as_interrupted(journal_path):
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="orphan"))
    journal.sql("select 1")  # the file exists and is readable
    dead_pid = 2**22 + 12345  # above the default pid_max, so no process has it
    assert not os.path.exists(f"/proc/{dead_pid}")
    import duckdb

    with duckdb.connect(str(journal.path)) as connection:
        connection.execute("UPDATE experiments SET pid = ? WHERE id = ?", [dead_pid, experiment])
    assert journal.leaderboard()["status"].tolist() == ["interrupted"]
    assert list(journal.leaderboard(status="interrupted")["experiment_id"]) == [experiment]
    assert journal.leaderboard(status="running").empty


def test_an_absent_journal_has_an_empty_leaderboard(tmp_path):
    board = dx.open_journal(tmp_path / "absent.duckdb").leaderboard()
    assert board.empty and tuple(board.columns) == LEADERBOARD_COLUMNS


@pytest.mark.parametrize(
    ("filters", "sort", "descending"),
    [
        ({}, "example_id", False),
        ({"status": "ok"}, "score", True),
        ({"min_score": 0.25, "max_score": 0.75}, "latency", False),
        ({"status": "error"}, "input_tokens", True),
    ],
)
def test_trial_page_matches_pandas(small, filters, sort, descending):
    journal, ids = small
    experiment = ids["treatment-b"]
    trials = journal.trials(experiment)
    expected = trials
    if "status" in filters:
        expected = expected[expected["status"] == filters["status"]]
    if "min_score" in filters:
        expected = expected[expected["score"] >= filters["min_score"]]
    if "max_score" in filters:
        expected = expected[expected["score"] <= filters["max_score"]]
    expected = expected.sort_values(
        [sort, "example_index", "repeat", "trial_id"],
        ascending=[not descending, True, True, True],
        na_position="last",
        kind="stable",
    )
    page, total = journal.trial_page(experiment, sort=sort, descending=descending, limit=5, offset=2, **filters)
    assert total == len(expected)
    assert list(page["trial_id"]) == list(expected["trial_id"].iloc[2:7])
    assert list(page.columns) == list(trials.columns)
    every, _ = journal.trial_page(experiment, sort=sort, descending=descending, limit=1000, **filters)
    assert list(every["trial_id"]) == list(expected["trial_id"])


def test_trial_pages_cover_each_trial_once_when_another_experiment_shares_its_trial_ids(small):
    # baseline-a and treatment-b both have trials q4/r0...q11/r1; a page is one experiment's rows only.
    journal, ids = small
    experiment = ids["baseline-a"]
    pages = [journal.trial_page(experiment, sort="score", limit=7, offset=offset) for offset in range(0, 28, 7)]
    walked = [trial_id for page, _ in pages for trial_id in page["trial_id"]]
    whole, total = journal.trial_page(experiment, sort="score", limit=1000)
    assert walked == list(whole["trial_id"]) and len(walked) == total == 24
    assert all(set(page["experiment_id"]) <= {experiment} for page, _ in pages)


def test_trial_page_beyond_the_end_still_counts(small):
    journal, ids = small
    page, total = journal.trial_page(ids["baseline-a"], limit=10, offset=1000)
    assert page.empty and total == 24


def test_trial_page_refuses_a_sort_outside_the_whitelist(small):
    journal, ids = small
    with pytest.raises(JournalError, match="sort by one of") as caught:
        journal.trial_page(ids["baseline-a"], sort="score; drop table trials")
    assert all(name in str(caught.value) for name in TRIAL_SORTS)
    for bad in ({"limit": -1}, {"offset": 1.5}, {"min_score": float("nan")}):
        with pytest.raises(JournalError):
            journal.trial_page(ids["baseline-a"], **bad)


def test_paired_scores_are_per_example_means_of_ok_repeats_in_both(small):
    journal, ids = small
    a, b = ids["baseline-a"], ids["treatment-b"]

    def means(experiment_id: str) -> pd.Series:
        trials = journal.trials(experiment_id)
        ok = trials[(trials["status"] == "ok") & trials["score"].notna()]
        return ok.groupby("example_id")["score"].mean()

    expected = pd.concat({"score_a": means(a), "score_b": means(b)}, axis=1, join="inner")
    index_of = journal.trials(a).groupby("example_id")["example_index"].min()
    expected = expected.loc[sorted(expected.index, key=lambda example: index_of[example])]
    paired = journal.paired_scores(a, b)
    assert list(paired.columns) == ["example_id", "score_a", "score_b"]
    assert list(paired["example_id"]) == list(expected.index)
    np.testing.assert_allclose(paired["score_a"], expected["score_a"])
    np.testing.assert_allclose(paired["score_b"], expected["score_b"])
    assert set(paired["example_id"]) <= {f"q{index}" for index in range(4, 12)}

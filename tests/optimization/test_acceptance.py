"""The acceptance rule SIMBA-C and the DSPy bridge share: one-sided paired tests, Holm-corrected across a step."""

from __future__ import annotations

import math

import pytest
from oracle import oracle_program
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from dspex_lab.optimization._acceptance import judge, mean_and_interval, one_sided
from dspex_lab.optimization._evaluator import Scores
from dspex_lab.optimization._space import Candidate
from dspex_lab.stats import holm, paired_test

IDS = [f"e{index}" for index in range(40)]
INCUMBENT = Scores("inc", {key: 1.0 if index < 20 else 0.0 for index, key in enumerate(IDS)})


def candidate(name: str) -> Candidate:
    return Candidate(name, oracle_program(), "c0", 1, "mutate", "")


def test_a_step_is_judged_on_one_sided_p_values_corrected_together() -> None:
    # c1 fixes 15 of the incumbent's 20 misses; c2 changes nothing.
    better = Scores("c1", {key: 1.0 if index < 35 else 0.0 for index, key in enumerate(IDS)})
    same = Scores("c2", dict(INCUMBENT.by_example))
    verdicts = judge(
        INCUMBENT, [(candidate("c1"), better), (candidate("c2"), same)], ids=IDS, method="auto", alpha=0.05
    )

    tests = [
        paired_test(list(INCUMBENT.by_example.values()), list(scores.by_example.values())) for scores in (better, same)
    ]
    p_values = [one_sided(test) for test in tests]
    assert p_values[0] == pytest.approx(stats.binomtest(15, 15, 0.5, alternative="greater").pvalue)
    adjusted = holm(p_values)
    assert [verdict.outcome["p_adjusted"] for verdict in verdicts] == pytest.approx(list(adjusted))
    assert [verdict.significant for verdict in verdicts] == [True, False]
    first = verdicts[0]
    assert first.difference == pytest.approx(15 / 40) and first.outcome["difference"] == pytest.approx(15 / 40)
    assert first.outcome["p_two_sided"] == pytest.approx(tests[0].p_value)
    assert first.outcome["significant"] is True and first.outcome["candidate"] == "c1"
    mean, low, high = mean_and_interval(better.by_example)
    assert (first.outcome["mean"], first.outcome["ci_low"], first.outcome["ci_high"]) == (mean, low, high)
    assert mean == pytest.approx(35 / 40)
    # 0/1 scores: Wilson's interval, the one the result and every view show for the same trials.
    assert (low, high) == pytest.approx(proportion_confint(35, 40, alpha=0.05, method="wilson"))


def test_a_graded_candidates_interval_is_students_t() -> None:
    scores = {key: (index % 5) / 4 for index, key in enumerate(IDS)}
    mean, low, high = mean_and_interval(scores)
    half = stats.t.ppf(0.975, 39) * stats.tstd(list(scores.values())) / math.sqrt(40)
    assert (low, high) == pytest.approx((mean - half, mean + half))


def test_a_candidate_that_fails_too_often_is_not_accepted_whatever_its_p() -> None:
    # Better on every example it scored, but it failed on 10 of the 40 (25%).
    scored = {key: 1.0 for key in IDS[:30]}
    failing = Scores("c3", scored, errors={key: "RuntimeError" for key in IDS[30:]})
    strict = judge(INCUMBENT, [(candidate("c3"), failing)], ids=IDS, method="auto", alpha=0.05, max_error_rate=0.1)
    lenient = judge(INCUMBENT, [(candidate("c3"), failing)], ids=IDS, method="auto", alpha=0.05)
    assert strict[0].outcome["p_value"] < 0.05 and strict[0].outcome["errors"] == 10
    assert not strict[0].significant and lenient[0].significant


def test_without_two_examples_in_common_there_is_no_test() -> None:
    lonely = Scores("c4", {"e0": 1.0})
    (verdict,) = judge(INCUMBENT, [(candidate("c4"), lonely)], ids=IDS, method="auto", alpha=0.05)
    assert not verdict.significant and math.isnan(verdict.difference)
    assert verdict.outcome["test"] is None and verdict.outcome["p_value"] is None
    assert judge(INCUMBENT, [], ids=IDS, method="auto", alpha=0.05) == []

"""Repeats, clusters, comparisons, hypotheses and budgets, checked against references."""

import warnings

import numpy as np
import pytest
from scipy import stats as scipy_stats

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning, ExecutionError

PREDICT = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


@pytest.fixture(scope="module")
def problems() -> dx.Dataset:
    return dx.Dataset(dx.datasets.arithmetic(90, seed=21), name="science-90")


def run(program, data, **options):
    return dx.evaluate(program, data, metric=dx.metrics.exact_match, progress=False, **options)


def test_repeats_report_within_and_between_variance(problems):
    with dx.Context(lm=dx.lab_lm("lab/small", temperature=0.9), journal=False, threads=8):
        result = run(PREDICT, problems[:40], repeats=3)
    table = result.table()
    assert result.repeats == 3 and len(table) == 120
    groups = [group["score"].to_numpy() for _, group in table.groupby("example_id")]
    within = np.mean([group.var(ddof=1) for group in groups])  # balanced one-way ANOVA, closed form
    between = max(0.0, np.var([group.mean() for group in groups], ddof=1) - within / 3)
    assert result.variance["within"] == pytest.approx(within)
    assert result.variance["between"] == pytest.approx(between)
    assert result.variance["within"] > 0
    assert result.ci_method.startswith("t")  # per-example means are no longer 0/1


def test_clustered_standard_error_matches_statsmodels(problems):
    import statsmodels.api as sm

    with dx.Context(journal=False, threads=8):
        plain = run(COT, problems)
        clustered = run(COT, problems, cluster="topic")
    scores = clustered.scores()
    topics = np.array([example.topic for example in problems])
    fit = sm.OLS(scores, np.ones_like(scores)).fit(
        cov_type="cluster", cov_kwds={"groups": np.unique(topics, return_inverse=True)[1]}
    )
    assert clustered.stderr == pytest.approx(float(fit.bse[0]), rel=1e-6)
    assert clustered.mean == plain.mean and clustered.stderr != plain.stderr
    assert clustered.ci_method == "t (clustered)"
    with pytest.raises(ExecutionError, match="cluster='nope'"), dx.Context(journal=False):
        run(COT, problems, cluster="nope")


def test_compare_refuses_different_example_sets_and_offers_welch(problems):
    with dx.Context(journal=False, threads=8):
        first = run(PREDICT, problems[:50])
        second = run(COT, problems[40:])
        with pytest.raises(ExecutionError, match=r"different example sets.*paired=False"):
            dx.compare(first, second)
        welch = dx.compare(first, second, paired=False)
    reference = scipy_stats.ttest_ind(second.scores(), first.scores(), equal_var=False)
    assert welch.test.lower().startswith("welch")
    assert welch.p_value == pytest.approx(reference.pvalue)
    assert not welch.paired and welch.n == 100


def test_compare_many_adjusts_p_values_like_statsmodels(problems):
    from statsmodels.stats.multitest import multipletests

    hot = PREDICT.with_name("predict-hot")
    with dx.Context(journal=False, threads=8):
        base = run(PREDICT, problems)
        results = [base, run(COT, problems), run(COT.with_name("cot-large"), problems)]
        with dx.Context(lm=dx.lab_lm("lab/small", temperature=1.2), journal=False, threads=8):
            results.append(run(hot, problems))
        holm_set = dx.compare_many(results, baseline="predict")
        bh_set = dx.compare_many(results, baseline=base, correction="bh")
    raw = [comparison.p_value for comparison in holm_set.comparisons]
    assert [c.adjusted_p_value for c in holm_set.comparisons] == pytest.approx(multipletests(raw, method="holm")[1])
    assert [c.adjusted_p_value for c in bh_set.comparisons] == pytest.approx(multipletests(raw, method="fdr_bh")[1])
    frame = holm_set.to_frame()
    assert list(frame["b"]) == ["cot", "cot-large", "predict-hot"]
    assert "adjusted" in holm_set._repr_html_()
    assert holm_set["cot"].difference > 0


def test_hypothesis_is_registered_before_and_decided_after(problems, journal_path):
    with dx.Context(journal=journal_path, threads=8):
        claim = dx.hypothesis(
            "ChainOfThought beats Predict by at least 5 points",
            metric="exact_match",
            baseline=PREDICT,
            treatment=COT,
            direction="greater",
            min_effect=0.05,
        )
        journal = dx.open_journal(journal_path)
        registered = journal.hypotheses()
        assert list(registered["status"]) == ["registered"]
        assert journal.experiments().empty  # registered before any run
        predict, cot = run(PREDICT, problems), run(COT, problems)
        verdict = claim.decide(predict, cot)
    assert verdict.status == "confirmed"
    assert verdict.p_value < 0.05 and verdict.difference > 0
    decided = dx.open_journal(journal_path).hypotheses()
    assert list(decided["status"]) == ["confirmed"]


def test_underpowered_hypothesis_is_inconclusive_and_says_how_many(problems):
    with dx.Context(journal=False, threads=8):
        claim = dx.hypothesis(
            "large is better than small by 2 points",
            metric="exact_match",
            baseline="small",
            treatment="large",
            min_effect=0.02,
        )
        small = run(COT.with_name("small"), problems[:20])
        with dx.Context(lm="lab/large", journal=False, threads=8):
            large = run(COT.with_name("large"), problems[:20])
        verdict = claim.decide(small, large)
    if verdict.status == "inconclusive":
        assert "underpowered" in verdict.message and verdict.n_needed > 20
        assert verdict.power < 0.8
    else:  # a large observed effect can still confirm; the power figures must then exist
        assert verdict.status == "confirmed" and verdict.power == verdict.power


def test_hypothesis_rejected_when_effect_is_ruled_out():
    from dspex_lab.evaluation._hypothesis import Hypothesis

    claim = Hypothesis("x", "x", None, "a", "b", "greater", 0.2, 0.05, None)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    first = rng.normal(0.5, 0.1, size=400)
    second = first + rng.normal(0.0, 0.05, size=400)  # no real effect, measured precisely
    verdict = claim._verdict(first, second, method="t", seed=None, experiments=(None, None))
    assert verdict.status == "rejected"
    assert verdict.ci[1] < 0.2


def test_hypothesis_arguments_are_checked():
    with dx.Context(journal=False):
        with pytest.raises(ExecutionError, match="direction"):
            dx.hypothesis("s", metric=None, baseline="a", treatment="b", direction="up", min_effect=0.1)
        with pytest.raises(ExecutionError, match="min_effect"):
            dx.hypothesis("s", metric=None, baseline="a", treatment="b", min_effect=0)


def test_budget_projects_warns_and_stops_cleanly(problems, journal_path):
    per_trial = None
    with dx.Context(journal=False, threads=1):
        pilot = run(COT, problems[:10])
        per_trial = pilot.cost / 10
    limit = per_trial * 30.5
    with dx.Context(journal=journal_path, threads=1), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(COT, problems, budget=dx.Budget(usd=limit, pilot=10))
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, DspexLabWarning)]
    assert any("projected spending exceeds the budget" in message for message in messages)
    assert any("80%" in message or "of its usd budget" in message for message in messages)
    assert result.status == "stopped" and "budget: usd" in result.status_detail
    assert 29 <= result.n_trials <= 32 and result.cost >= limit * 0.95
    journal = dx.open_journal(journal_path)
    stored = journal.experiment(result.experiment_id)
    assert stored["status"] == "stopped" and stored["status_detail"].startswith("budget")
    assert len(journal.trials(result.experiment_id)) == result.n_trials
    assert result.spending["projection"]["pilot_trials"] == 10


def test_budget_limits_are_validated():
    with pytest.raises(ExecutionError, match="at least one limit"):
        dx.Budget()
    with pytest.raises(ExecutionError, match="positive"):
        dx.Budget(usd=-1)


def test_a_hypothesis_cannot_be_registered_after_its_runs(problems):
    with dx.Context(journal=False, threads=8):
        predict, cot = run(PREDICT, problems[:30]), run(COT, problems[:30])
        late = dx.hypothesis("after the fact", metric="exact_match", baseline=PREDICT, treatment=COT, min_effect=0.05)
        with pytest.raises(ExecutionError, match="after the baseline evaluation 'predict' started"):
            late.decide(predict, cot)

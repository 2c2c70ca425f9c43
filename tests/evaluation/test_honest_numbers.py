"""Issue 19, items 6-8: metric failures apart, power before spending, one interval method in every view."""

from __future__ import annotations

import math
import re
import warnings

import dspy
import pytest
from scipy import stats

import dspex_lab as dx
from dspex_lab.engine import LiveStatistics, TrialFinished
from dspex_lab.errors import DspexLabWarning, UnderpoweredWarning
from dspex_lab.evaluation import power_advice
from dspex_lab.journal import ExperimentRecord

PREDICT = dx.Program("dspy.Predict", signature="question -> answer", name="predict")


def examples(n: int, *, start: int = 0) -> list[dspy.Example]:
    """Examples whose ``flag`` (0/1, alternating) is what the metrics below score."""
    return [
        dspy.Example(question=f"What is {index} + 1?", answer=str(index + 1), flag=index % 2).with_inputs("question")
        for index in range(start, start + n)
    ]


def flag_metric(example, prediction):
    return float(example.flag)


def zero_division_metric(example, prediction):
    if int(example.answer) % 5 == 0:
        return 1 / 0
    return float(example.flag)


def wilson(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Closed-form Wilson score interval (no continuity correction)."""
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center - half, center + half


# -- item 6: metric failures are not program failures ----------------------------------------------


def test_a_metric_that_raises_is_counted_apart_and_warned_about(journal_path):
    data = dx.Dataset(examples(40), name="metric-errors")
    expected_metric_errors = sum(1 for example in data if int(example.answer) % 5 == 0)
    with dx.Context(lm="lab/small", journal=journal_path, threads=4), pytest.warns(DspexLabWarning) as caught:
        result = dx.evaluate(PREDICT, data, metric=zero_division_metric, progress=False, retries=0)
    messages = [str(warning.message) for warning in caught]
    assert any(
        f"the metric raised on {expected_metric_errors} of 40 trials: ZeroDivisionError x{expected_metric_errors}"
        in message
        for message in messages
    ), messages
    assert result.n_metric_errors == expected_metric_errors == result.n_errors
    assert result.n_program_errors == 0 and result.metric_errors == {"ZeroDivisionError": expected_metric_errors}
    assert result.n == 40 - expected_metric_errors and result.status == "finished"
    summary = dx.open_journal(journal_path).experiment(result.experiment_id)["summary"]
    assert (summary["n_metric_errors"], summary["n_program_errors"]) == (expected_metric_errors, 0)
    assert "metric 8, program 0" in repr(result)
    assert "metric raised 8 (ZeroDivisionError x8)" in result._repr_html_()


def test_program_and_metric_errors_are_told_apart_in_one_run():
    data = dx.Dataset(examples(30), name="both")
    lm = dx.lab_lm("lab/small", error_rate=0.3, seed=5)
    with dx.Context(lm=lm, journal=False, threads=4), pytest.warns(DspexLabWarning, match="the metric raised on"):
        result = dx.evaluate(PREDICT, data, metric=zero_division_metric, progress=False, retries=0)
    table = result.table()
    by_stage = table[table["status"] == "error"].groupby("error_stage").size().to_dict()
    assert result.n_metric_errors == by_stage["metric"] > 0
    assert result.n_program_errors == by_stage["program"] > 0
    assert result.n_errors == result.n_metric_errors + result.n_program_errors
    assert "ZeroDivisionError" not in result.errors_line().split(";")[0]  # the program part names program errors


def test_a_run_whose_every_trial_failed_ends_failed_with_no_interval(journal_path):
    def broken(example, prediction):
        raise ZeroDivisionError("division by zero")

    with dx.Context(lm="lab/small", journal=journal_path, threads=4), pytest.warns(DspexLabWarning):
        result = dx.evaluate(PREDICT, examples(12), metric=broken, progress=False)
    assert result.status == "failed"
    journal = dx.open_journal(journal_path)
    assert journal.experiment(result.experiment_id)["status"] == "failed"
    markup = result._repr_html_()
    assert "no trial scored" in markup and "nan" not in markup.lower()
    assert "no trial scored" in repr(result) and "nan" not in repr(result)
    board = journal.leaderboard().set_index("experiment_id").loc[result.experiment_id]
    assert board["status"] == "failed" and math.isnan(board["ci_low"]) and board["ci_method"] == ""


# -- item 7: power before spending ------------------------------------------------------------------


@pytest.mark.parametrize(("n", "alpha", "power"), [(60, 0.05, 0.8), (200, 0.01, 0.9), (25, 0.1, 0.8)])
def test_minimum_detectable_difference_matches_the_closed_form(n, alpha, power):
    # Cohen's h needed by the two-proportion normal test, mapped back to a gain from 0.5 (the far tail,
    # Phi(-2 z - z_power) in power, neglected: it moves the gain by less than 1e-4).
    h = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * math.sqrt(2 / n)
    expected = math.sin(math.asin(math.sqrt(0.5)) + h / 2) ** 2 - 0.5
    detectable = dx.stats.minimum_detectable_difference(n, alpha=alpha, power=power)
    assert detectable == pytest.approx(expected, abs=1e-4)
    # And exactly what it claims: the power at that gain is the target, with both tails counted.
    shift = (2 * math.asin(math.sqrt(0.5 + detectable)) - math.pi / 2) * math.sqrt(n / 2)
    critical = stats.norm.ppf(1 - alpha / 2)
    assert stats.norm.cdf(shift - critical) + stats.norm.cdf(-shift - critical) == pytest.approx(power, abs=1e-9)


def test_the_warning_states_the_detectable_gain_and_the_examples_needed():
    h = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * math.sqrt(2 / 60)
    smallest = math.sin(math.pi / 4 + h / 2) ** 2 - 0.5
    # Examples needed for 0.10 from 0.5: the smallest n whose arcsine power reaches 80%.
    target = 2 * math.asin(math.sqrt(0.6)) - 2 * math.asin(math.sqrt(0.5))
    needed = math.ceil(2 * ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) / target) ** 2)
    advice = power_advice(60, what="valset", alpha=0.05)
    assert f"~{smallest:.2f}" in advice and f"use >= {needed} examples to detect 0.10" in advice
    assert advice.startswith("valset of 60 examples")
    assert power_advice(needed, what="valset", alpha=0.05) is None


def test_optimize_warns_before_spending_on_a_small_valset():
    train, val = dx.Dataset(examples(40), name="train"), dx.Dataset(examples(60, start=100), name="val")
    lm = dx.lab_lm("lab/small")
    calls_before = len(lm.history)
    with dx.Context(lm=lm, journal=False, threads=2), warnings.catch_warnings():
        # The warning made an error stops the run at it: nothing may have been spent before.
        warnings.simplefilter("error", UnderpoweredWarning)
        with pytest.raises(UnderpoweredWarning, match=r"valset of \d+ examples: the smallest gain this run can detect"):
            dx.optimize(PREDICT, trainset=train, valset=val, metric=flag_metric, progress=False)
    assert len(lm.history) == calls_before


def test_compare_says_why_not_significant_may_mean_too_few_examples():
    data = examples(30)
    with dx.Context(lm="lab/small", journal=False, threads=2):
        a = dx.evaluate(PREDICT, data, metric=flag_metric, progress=False, name="a")
        b = dx.evaluate(PREDICT, data, metric=flag_metric, progress=False, name="b")
    with pytest.warns(UnderpoweredWarning, match=r"b vs a is not significant .*a comparison of 30 examples"):
        dx.compare(a, b)


def test_an_evaluation_a_hypothesis_plans_to_compare_warns_up_front(journal_path):
    with dx.Context(lm="lab/small", journal=journal_path, threads=2):
        registered = dx.hypothesis(
            "b beats a", metric="flag_metric", baseline="a", treatment="b", min_effect=0.05, alpha=0.05
        )
        with pytest.warns(UnderpoweredWarning, match=rf"hypothesis {registered.id}.*detect 0.05 \(its min_effect\)"):
            dx.evaluate(PREDICT, examples(40), metric=flag_metric, progress=False, name="a")
        with warnings.catch_warnings():
            warnings.simplefilter("error", UnderpoweredWarning)
            dx.evaluate(PREDICT, examples(40), metric=flag_metric, progress=False, name="unplanned")


def test_a_confirmed_verdict_explains_low_power():
    import numpy as np

    from dspex_lab.evaluation import Hypothesis

    hypothesis = Hypothesis(
        id="h",
        statement="s",
        metric=None,
        baseline="a",
        treatment="b",
        direction="greater",
        min_effect=0.02,
        alpha=0.05,
        registered_at=None,
    )
    rng = np.random.default_rng(1)
    first = rng.normal(0.5, 0.3, 40)
    second = first + 0.2 + rng.normal(0, 0.3, 40)
    verdict = hypothesis._verdict(first, second, method="t", seed=None, experiments=(None, None))
    assert verdict.status == "confirmed" and verdict.power < 0.8 and verdict.n_needed > 40
    assert f"power {verdict.power:.2f} is the chance that n = 40 detects the minimum effect 0.02" in verdict.message
    assert f"replicate with n >= {verdict.n_needed}" in verdict.message


# -- item 8: one interval method per score type, in every view -------------------------------------


def test_the_same_trials_show_the_same_interval_in_every_view(journal_path, capsys):
    anywidget = pytest.importorskip("anywidget")  # noqa: F841 - RunProgress and the browser need the notebook extra
    from dspex_lab.cli import main
    from dspex_lab.notebook._widgets_browser import _experiment_row

    live = LiveStatistics()
    widget = dx.RunProgress()
    with dx.Context(lm="lab/small", journal=journal_path, threads=4):
        result = dx.evaluate(PREDICT, examples(12), metric=flag_metric, progress=widget, subscribers=[live])
    # 12 trials at mean 0.5, 0/1 scores: the Wilson interval, not the t one the issue saw ([0.168, 0.832]).
    expected = wilson(6, 12)
    assert result.mean == 0.5 and result.ci == pytest.approx(expected) and result.ci_method == "wilson"
    journal = dx.open_journal(journal_path)
    board = journal.leaderboard().set_index("experiment_id").loc[result.experiment_id]
    views = {
        "result": result.ci,
        "live statistics": live.ci,
        "RunProgress": (widget.ci_low, widget.ci_high),
        "leaderboard": (board["ci_low"], board["ci_high"]),
        "journal": journal.score_intervals()[result.experiment_id][1:3],
    }
    line = journal.leaderboard()
    browser_row = _experiment_row(line[line["experiment_id"] == result.experiment_id].iloc[0].to_dict(), None)
    views["browser"] = (browser_row["ci_low"], browser_row["ci_high"])
    for view, interval in views.items():
        assert interval == pytest.approx(expected), view
    assert widget.ci_method == board["ci_method"] == browser_row["ci_method"] == "wilson"
    capsys.readouterr()
    assert main(["journal", "list", "--journal", str(journal_path)]) == 0
    listed = capsys.readouterr().out
    assert f"[{expected[0]:.3f}, {expected[1]:.3f}] wilson" in listed
    assert "0.168" not in listed


def test_a_running_experiment_gets_the_same_rule_from_its_trials(journal_path):
    # No stored summary: the journal computes score_interval over per-example means (repeats averaged).
    journal = dx.open_journal(journal_path)
    experiment = journal.create_experiment(ExperimentRecord(kind="evaluation", name="live"))
    rows = []

    def keep(event):
        if isinstance(event, TrialFinished):
            rows.append(event.result.to_row())

    with dx.Context(lm="lab/small", journal=False, threads=2):
        result = dx.evaluate(PREDICT, examples(9), metric=flag_metric, repeats=2, progress=False, subscribers=[keep])
    journal.append_trials(experiment, rows)
    mean, low, high, method = journal.score_intervals()[experiment]
    assert (mean, method) == (pytest.approx(result.mean), result.ci_method)
    assert (low, high) == (pytest.approx(result.ci[0]), pytest.approx(result.ci[1]))
    assert (low, high) == pytest.approx(wilson(4, 9))


def test_graded_scores_get_a_t_interval_everywhere(journal_path):
    def graded(example, prediction):
        return (int(example.answer) % 4) / 4

    live = LiveStatistics()
    with dx.Context(lm="lab/small", journal=journal_path, threads=2):
        result = dx.evaluate(PREDICT, examples(10), metric=graded, progress=False, subscribers=[live])
    scores = result.scores()
    expected = stats.t.interval(0.95, len(scores) - 1, loc=scores.mean(), scale=stats.sem(scores))
    board = dx.open_journal(journal_path).leaderboard().iloc[0]
    for interval in (result.ci, live.ci, (board["ci_low"], board["ci_high"])):
        assert interval == pytest.approx(expected)
    assert result.ci_method == board["ci_method"] == "t"
    assert re.search(r"\bt\b", board["ci_method"])

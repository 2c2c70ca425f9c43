import math

import dspy
import numpy as np
import pytest
from scipy import stats as scipy_stats

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning, ExecutionError


@pytest.fixture(scope="module")
def problems() -> dx.Dataset:
    return dx.Dataset(dx.datasets.arithmetic(120, seed=3), name="arith-120")


PREDICT = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


def test_evaluate_summarises_and_journals(problems, journal_path):
    with dx.Context(lm="lab/small", journal=journal_path, threads=8):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False)
    scores = result.table()["score"].to_numpy()
    assert result.n == 120 and result.n_errors == 0 and result.status == "finished"
    assert result.mean == pytest.approx(scores.mean())
    assert result.stderr == pytest.approx(scipy_stats.sem(scores))
    from statsmodels.stats.proportion import proportion_confint

    # 0/1 scores get a Wilson interval.
    expected = proportion_confint(int(scores.sum()), len(scores), alpha=0.05, method="wilson")
    assert result.ci == pytest.approx(expected)
    assert result.ci_method.lower().startswith("wilson")
    assert 0 < result.mean < 1
    assert result.tokens["input"] > 0 and result.tokens["output"] > 0
    assert result.cost is not None and result.cost > 0
    assert result.lm_calls == 120
    assert set(result.latency) == {"p50", "p95", "p99"}
    journal = dx.open_journal(journal_path)
    experiments = journal.experiments()
    assert list(experiments["id"]) == [result.experiment_id]
    row = experiments.iloc[0]
    assert (row["name"], row["kind"], row["status"], row["n_trials"]) == ("cot", "evaluation", "finished", 120)
    trials = journal.trials(result.experiment_id)
    assert list(trials["example_id"]) == list(problems.example_ids)
    assert trials["score"].mean() == pytest.approx(result.mean)
    stored = journal.experiment(result.experiment_id)
    assert stored["program_spec"] == COT.to_dict()
    assert stored["dataset_fingerprint"] == problems.fingerprint
    assert stored["environment"]["dspy"] == dspy.__version__
    assert stored["summary"]["n"] == 120
    assert "mean score" in result._repr_html_()


def test_compare_is_paired_and_matches_scipy(problems):
    with dx.Context(lm="lab/small", journal=False, threads=8):
        predict = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=False)
        cot = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False)
        comparison = dx.compare(predict, cot, method="t")
        automatic = dx.compare(predict, cot)
    a, b = predict.scores(), cot.scores()
    from statsmodels.stats.contingency_tables import mcnemar

    table = [
        [np.sum((a == 1) & (b == 1)), np.sum((a == 1) & (b == 0))],
        [np.sum((a == 0) & (b == 1)), np.sum((a == 0) & (b == 0))],
    ]
    assert automatic.test == "exact McNemar"  # 0/1 scores pick the exact McNemar test
    assert automatic.p_value == pytest.approx(mcnemar(table, exact=True).pvalue)
    reference = scipy_stats.ttest_rel(b, a)
    assert comparison.n == 120
    assert comparison.difference == pytest.approx((b - a).mean())
    assert comparison.p_value == pytest.approx(reference.pvalue)
    assert comparison.effect_size == pytest.approx((b - a).mean() / (b - a).std(ddof=1))
    assert comparison.test == "paired t-test"
    assert comparison.difference > 0  # the lab LM reasons better with ChainOfThought
    assert "paired" in comparison._repr_html_()


def test_injected_faults_complete_with_every_trial_recorded_and_typed(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(200, seed=11), name="faulty")
    lm = dx.lab_lm("lab/small", error_rate=0.2, rate_limit_rate=0.05, hang_rate=0.02, hang_seconds=20, seed=5)
    with dx.Context(lm=lm, journal=journal_path, threads=16):
        result = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, timeout=1.0, retries=3, progress=False)
    trials = dx.open_journal(journal_path).trials(result.experiment_id)
    assert len(trials) == 200 and trials["example_id"].is_unique
    errors = trials[trials["status"] == "error"]
    assert 0.1 < len(errors) / 200 < 0.35
    assert errors["error_type"].notna().all() and errors["error_message"].str.len().gt(0).all()
    assert errors["score"].isna().all()  # never averaged in as 0
    ok = trials[trials["status"] == "ok"]
    assert result.mean == pytest.approx(ok["score"].mean())
    assert result.n == len(ok) and result.n_errors == len(errors)
    assert sum(result.errors.values()) == len(errors)
    assert (trials["attempts"] > 1).any()  # rate limits and hangs were retried


def test_hangs_without_retries_are_recorded_as_timeouts(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(60, seed=1), name="hangs")
    lm = dx.lab_lm("lab/small", hang_rate=0.1, hang_seconds=20, seed=2)
    with dx.Context(lm=lm, journal=journal_path, threads=8):
        result = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, timeout=0.5, retries=0, progress=False)
    assert result.n_trials == 60
    assert result.errors.get("TrialTimeoutError", 0) >= 1


def test_error_budget_stops_the_run_and_keeps_trials(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(300, seed=2), name="budget")
    lm = dx.lab_lm("lab/small", error_rate=0.5, seed=1)
    with (
        dx.Context(lm=lm, journal=journal_path, threads=4),
        pytest.warns(dx.errors.DspexLabWarning, match="error budget"),
    ):
        result = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, max_errors=10, retries=0, progress=False)
    assert result.status == "stopped"
    assert result.n_errors == 11
    journal = dx.open_journal(journal_path)
    assert len(journal.trials(result.experiment_id)) == result.n_trials
    stored = journal.experiment(result.experiment_id)
    assert stored["status"] == "stopped" and "error budget" in stored["status_detail"]


def test_a_metric_that_raises_is_recorded_per_trial(problems):
    def broken(example, prediction):
        raise RuntimeError("metric exploded")

    with dx.Context(journal=False, threads=4), pytest.warns(DspexLabWarning) as caught:
        result = dx.evaluate(PREDICT, problems[:10], metric=broken, progress=False)
    messages = [str(warning.message) for warning in caught]
    assert any("every trial" in message and "failed" in message for message in messages)
    assert any("the metric raised on 10 of 10 trials: RuntimeError x10" in message for message in messages)
    assert result.n_errors == 10 and result.n == 0 and math.isnan(result.mean)
    assert set(result.table()["error_stage"]) == {"metric"}


def test_repeats_use_distinct_rollouts_and_average_per_example():
    problems = dx.Dataset(dx.datasets.arithmetic(40, seed=4), name="repeats")
    hot = PREDICT
    lm = dx.lab_lm("lab/small", temperature=1.0)
    with dx.Context(lm=lm, journal=False, threads=8):
        result = dx.evaluate(hot, problems, metric=dx.metrics.exact_match, repeats=4, progress=False)
    table = result.table()
    assert len(table) == 160 and result.n == 40
    per_example = table.groupby("example_id")["score"].agg(["mean", "std"])
    assert (per_example["std"] > 0).any()  # rollouts differ at temperature 1.0
    assert result.example_scores.to_numpy() == pytest.approx(
        per_example.loc[list(problems.example_ids), "mean"].to_numpy()
    )


def test_plain_list_of_examples_and_live_module(problems):
    examples = list(problems)[:8]
    with dx.Context(journal=False):
        result = dx.evaluate(
            dspy.Predict("question -> answer"), examples, metric=dx.metrics.numeric_match, progress=False
        )
    assert result.n == 8 and result.program is None


def test_resume_refuses_another_program(problems, journal_path):
    with dx.Context(journal=journal_path):
        first = dx.evaluate(PREDICT, problems[:5], metric=dx.metrics.exact_match, progress=False)
        with pytest.raises(ExecutionError, match="cannot resume"):
            dx.evaluate(COT, problems[:5], metric=dx.metrics.exact_match, resume=first.experiment_id, progress=False)


def test_bad_arguments_are_clear_errors(problems):
    with dx.Context(journal=False):
        with pytest.raises(ExecutionError, match="repeats"):
            dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, repeats=0)
        with pytest.raises(ExecutionError, match="metric must be callable"):
            dx.evaluate(PREDICT, problems, metric=3)
        with pytest.raises(ExecutionError, match=r"no metric 'exact-match' in dx\.metrics"):
            dx.evaluate(PREDICT, problems, metric="exact-match")
        with pytest.raises(ExecutionError, match="dataset must be"):
            dx.evaluate(PREDICT, "problems.jsonl", metric=dx.metrics.exact_match)


def test_progress_events_reach_subscribers(problems):
    events = []
    with dx.Context(journal=False, threads=4):
        dx.evaluate(PREDICT, problems[:12], metric=dx.metrics.exact_match, progress=events.append)
    kinds = [type(event).__name__ for event in events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunFinished" and kinds.count("TrialFinished") == 12
    assert [event.done for event in events[1:-1]] == list(range(1, 13))


def test_default_context_uses_lab_lm_and_working_directory_journal(problems, tmp_path, monkeypatch):
    from dspex_lab.session import _context

    monkeypatch.setattr(_context, "_default", None)
    result = dx.evaluate(PREDICT, problems[:4], metric=dx.metrics.exact_match, progress=False)
    assert result.n == 4
    assert dx.current_context().lm.model == "lab/small"
    assert list(dx.open_journal(tmp_path / "dspex.duckdb").experiments()["id"]) == [result.experiment_id]


def test_environment_variables_configure_the_default_context(tmp_path, monkeypatch):
    monkeypatch.setenv("DSPEX_LM", "lab/large")
    monkeypatch.setenv("DSPEX_THREADS", "3")
    monkeypatch.setenv("DSPEX_JOURNAL", str(tmp_path / "env.duckdb"))
    context = dx.Context()
    assert (context.lm.model, context.threads, context.journal.path) == ("lab/large", 3, tmp_path / "env.duckdb")
    monkeypatch.setenv("DSPEX_THREADS", "many")
    with pytest.raises(dx.errors.DspexLabError, match="DSPEX_THREADS"):
        dx.Context()


def test_metrics_match_closed_forms():
    gold = dspy.Example(question="q", answer="The Red Fox").with_inputs("question")
    assert dx.metrics.exact_match(gold, dspy.Prediction(answer="the red fox.")) == 1.0
    assert dx.metrics.exact_match(gold, dspy.Prediction(answer="red fox")) == 0.0
    assert dx.metrics.contains(gold, dspy.Prediction(answer="I think the red fox did it")) == 1.0
    assert dx.metrics.f1(gold, dspy.Prediction(answer="red dog")) == pytest.approx(2 * 0.5 * 0.5 / 1.0)
    number = dspy.Example(question="q", answer="1,234").with_inputs("question")
    assert dx.metrics.numeric_match(number, dspy.Prediction(answer="so 1234.0")) == 1.0
    assert dx.metrics.numeric_match(number, dspy.Prediction(answer="1235")) == 0.0
    with pytest.raises(ValueError, match="no 'answer' field"):
        dx.metrics.exact_match(gold, dspy.Prediction(reply="x"))
    by_field = dx.metrics.for_field(dx.metrics.exact_match, "label")
    assert by_field(dspy.Example(label="a"), dspy.Prediction(label="A")) == 1.0
    assert np.isclose(dx.metrics.f1(gold, dspy.Prediction(answer="")), 0.0)


def test_a_budget_that_is_not_a_budget_is_refused_before_the_run(problems, journal_path):
    from dspex_lab.engine import BudgetTracker

    with dx.Context(lm="lab/small", journal=journal_path), pytest.raises(ExecutionError, match=r"must be a dx\.Budget"):
        dx.evaluate(
            PREDICT,
            problems,
            metric=dx.metrics.exact_match,
            progress=False,
            budget=BudgetTracker(dx.Budget(lm_calls=5)),
        )
    assert dx.open_journal(journal_path).experiment_summaries() == []

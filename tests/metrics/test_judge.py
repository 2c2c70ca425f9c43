"""The LLM-as-judge metric: its own LM, its calls as spans under the metric, its spending apart, failures as data."""

import json

import dspy
import pytest
from dspy.utils import DummyLM

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import ExecutionError

PROGRAM = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
RUBRIC = "Full marks when the prediction states the same number as the gold answer."


@pytest.fixture(scope="module")
def data() -> dx.Dataset:
    return dx.Dataset(dx.datasets.arithmetic(8, seed=4), name="a8")


def test_a_judge_scores_as_exact_match_on_the_lab_world_with_its_reasoning_as_feedback(data):
    judge = dx.metrics.judge(RUBRIC, scale="pass/fail")
    with dx.Context(lm="lab/small", journal=False):
        judged = dx.evaluate(PROGRAM, data, metric=judge, progress=False)
        exact = dx.evaluate(PROGRAM, data, metric=dx.metrics.exact_match, progress=False)
    assert list(judged.scores()) == list(exact.scores())
    assert 0 < judged.mean < 1
    table = judged.table()
    assert all(text.startswith("the gold number is ") for text in table["feedback"])
    # Two calls per trial: the program's and the judge's; the judge's are counted apart.
    assert list(table["lm_calls"]) == [2] * 8 and list(table["metric_lm_calls"]) == [1] * 8
    assert (table["metric_cost"] > 0).all() and (table["metric_cost"] < table["cost"]).all()
    assert judged.lm_calls == 16


def test_a_judge_on_a_scale_and_with_its_own_lm(data):
    own = dx.lab_lm("lab/large")
    judge = dx.metrics.judge(RUBRIC, lm=own, scale=(1, 5), name="strict")
    with dx.Context(lm="lab/small", journal=False):
        result = dx.evaluate(PROGRAM, data[:4], metric=judge, progress=False, trace=True)
    assert set(result.scores()) <= {1.0, 5.0}
    for trial_id in result.table()["trial_id"]:
        tree = result.trace(trial_id)
        metric_node = next(node for node in tree.walk() if node.span.kind == "metric")
        judged = [node.span.json_attributes.get("model") for node in metric_node.walk() if node.span.kind == "lm"]
        program = [
            node.span.json_attributes.get("model")
            for node in tree.walk()
            if node.span.kind == "lm" and node not in list(metric_node.walk())
        ]
        assert judged == ["lab/large"] and program == ["lab/small"]
    assert result.metric.startswith("dspex_lab.metrics.Judge[strict:")
    other = dx.metrics.judge(RUBRIC + " Be lenient.", lm=own, scale=(1, 5), name="strict")
    assert other.__qualname__ != judge.__qualname__ and other.__name__ == "strict"


def test_the_judges_calls_are_spans_under_the_trials_metric_span(data, journal_path):
    judge = dx.metrics.judge(RUBRIC, scale="pass/fail")
    with dx.Context(lm="lab/small", journal=journal_path):
        result = dx.evaluate(PROGRAM, data[:3], metric=judge, progress=False, trace=True)
    journal = dx.open_journal(journal_path)
    trial_id = result.table()["trial_id"].iloc[0]
    tree = journal.trace(result.experiment_id, trial_id)
    metric_node = next(node for node in tree.walk() if node.span.kind == "metric")
    under_metric = [node for node in metric_node.walk() if node.span.kind == "lm"]
    every_lm = [node for node in tree.walk() if node.span.kind == "lm"]
    assert len(under_metric) == 1 and len(every_lm) == 2
    attributes = metric_node.span.json_attributes
    assert attributes["metric_lm_calls"] == 1 and attributes["metric_cost"] > 0
    assert attributes["feedback"].startswith("the gold number is ")
    rows = journal.trials(result.experiment_id)
    assert list(rows["metric_lm_calls"]) == [1, 1, 1] and rows["feedback"].notna().all()


def test_a_budget_counts_the_judges_calls_and_says_how_many_were_its(data):
    judge = dx.metrics.judge(RUBRIC, scale="pass/fail")
    budget = dx.Budget(lm_calls=6, pilot=1)
    with dx.Context(lm="lab/small", journal=False), pytest.warns(dx.errors.DspexLabWarning) as warned:
        result = dx.evaluate(PROGRAM, data, metric=judge, progress=False, budget=budget)
    # The pilot's projection counts the judge's calls: 8 trials of 2 calls each.
    assert any("lm_calls ≈ 16 > 6" in str(warning.message) for warning in warned)
    spending = result.spending
    assert result.n_trials == 3 and result.status != "finished"
    assert spending["spent"]["lm_calls"] == 6 and spending["metric"]["lm_calls"] == 3
    assert 0 < spending["metric"]["usd"] < spending["spent"]["usd"]


def test_a_failing_judge_is_a_metric_error_never_a_zero(data):
    broken = dx.metrics.judge(RUBRIC, lm=dx.lab_lm("lab/small", error_rate=1.0), scale="pass/fail")
    off_scale = dx.metrics.judge(RUBRIC, lm=DummyLM([{"reasoning": "sure", "score": "9"}] * 8), scale=(0, 5))
    with dx.Context(lm="lab/small", journal=False), pytest.warns(dx.errors.DspexLabWarning) as warned:
        failed = dx.evaluate(PROGRAM, data[:4], metric=broken, progress=False)
        outside = dx.evaluate(PROGRAM, data[:4], metric=off_scale, progress=False)
    assert sum("the metric raised on 4 of 4 trials" in str(warning.message) for warning in warned) == 2
    for result, kind in ((failed, "LMProviderError"), (outside, "InvalidScoreError")):
        table = result.table()
        assert set(table["status"]) == {"error"} and set(table["error_stage"]) == {"metric"}
        assert table["score"].isna().all() and set(table["error_type"]) == {kind}
    assert "outside its scale 0..5" in outside.table()["error_message"].iloc[0]
    # The failed judge's attempt is still the metric's spending (a call was made and refused).
    assert (failed.table()["lm_calls"] >= 1).all()


class RateLimitError(Exception):
    """Named as providers' rate-limit errors are (what the engine counts as transient)."""


class RefusingOnceLM(DummyLM):
    """A judge LM that refuses its first request with a rate limit, then answers every one."""

    def __init__(self) -> None:
        super().__init__([{"reasoning": "the same number", "score": "1"}] * 4)
        self.refused = False

    def forward(self, *args, **kwargs):
        if not self.refused:
            self.refused = True
            raise RateLimitError("429: slow down")
        return super().forward(*args, **kwargs)


def test_a_judge_refused_by_a_rate_limit_scores_the_same_prediction_again(data):
    judge = dx.metrics.judge(RUBRIC, lm=RefusingOnceLM(), scale=(0, 1))
    with dx.Context(lm="lab/small", journal=False):
        result = dx.evaluate(PROGRAM, data[:1], metric=judge, progress=False, retries=2)
    row = result.table().iloc[0]
    assert row["status"] == "ok" and row["score"] == 1.0
    # The program ran once (one attempt, one program call); the judge's second try scored its prediction.
    assert row["attempts"] == 1 and row["lm_calls"] - row["metric_lm_calls"] == 1
    (retry,) = json.loads(row["retries"])
    assert retry["stage"] == "metric" and retry["error_type"] == "RateLimitError" and retry["metric_attempt"] == 1


def test_a_judge_is_checked_when_built():
    with pytest.raises(ExecutionError, match="rubric"):
        dx.metrics.judge("  ")
    with pytest.raises(ExecutionError, match="scale"):
        dx.metrics.judge(RUBRIC, scale=(5, 1))
    with pytest.raises(ExecutionError, match="identifier"):
        dx.metrics.judge(RUBRIC, name="my judge")
    with pytest.raises(ExecutionError, match=r"dspy\.BaseLM"):
        dx.metrics.judge(RUBRIC, lm="lab/small")


def feedback_metric(example, prediction):
    right = dx.metrics.exact_match(example, prediction)
    why = "right" if right else f"expected {example.answer}, token sk-abcdefghijklmnopqrstuvwx1234"
    return dspy.Prediction(score=right, feedback=why + " " + "x" * 5000)


def test_feedback_text_round_trips_to_the_journal_and_shows_in_dspex_trace(data, journal_path, capsys):
    with dx.Context(lm="lab/small", journal=journal_path):
        result = dx.evaluate(PROGRAM, data[:4], metric=feedback_metric, progress=False, trace=True)
    rows = dx.open_journal(journal_path).trials(result.experiment_id)
    assert rows["feedback"].str.len().max() == 4000  # bounded
    wrong = rows[rows["score"] == 0.0]
    assert len(wrong) and all(text.startswith("expected ") for text in wrong["feedback"])
    assert not any("sk-abcdefghijklmnop" in text for text in rows["feedback"])  # masked like predictions
    assert list(rows["metric_lm_calls"]) == [0, 0, 0, 0]
    trial_id = wrong["trial_id"].iloc[0]
    assert main(["trace", result.experiment_id, trial_id, "--journal", str(journal_path)]) == 0
    out = capsys.readouterr().out
    assert "feedback: expected " in out


def test_feedback_shows_in_the_span_detail_html(data):
    from dspex_lab.notebook._trace_data import comparison, detail_html

    compared = comparison(
        {"expected": {"answer": "4"}, "got": {"answer": "5"}, "score": 0.0, "feedback": "off by one"}, {}, None
    )
    html = detail_html({"kind": "metric", "name": "m", "attributes": {}, "comparison": compared})
    assert "the metric&#x27;s feedback" in html and "off by one" in html
    assert json.dumps(compared)  # plain data for the widget


def test_a_judge_travels_to_worker_processes_by_its_arguments_never_with_its_own_lm(data):
    import pickle

    judge = dx.metrics.judge(RUBRIC, scale=(0, 5), name="strict")
    copy = pickle.loads(pickle.dumps(judge))
    assert copy.__qualname__ == judge.__qualname__ and copy.lm is None
    with dspy.context(lm=dx.lab_lm("lab/small")):
        for example in data[:3]:
            prediction = dspy.Prediction(answer=example.answer)
            assert copy(example, prediction).score == judge(example, prediction).score == 5.0
    keyed = dx.metrics.judge(RUBRIC, lm=dspy.LM("openai/gpt-4o-mini", api_key="sk-test-not-a-key"))
    with pytest.raises(TypeError, match="never sent to worker processes"):
        pickle.dumps(keyed)

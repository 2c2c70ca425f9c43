"""DSPy's own metrics by name: each resolves from the allow-list and scores as DSPy's function or module does."""

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.errors import ExecutionError, OptimizerError

CASES = [
    (dspy.Example(answer="Eiffel Tower"), dspy.Prediction(answer="the eiffel tower", context=["Paris"])),
    (dspy.Example(answer=["Eiffel Tower", "Louvre"]), dspy.Prediction(answer="Louvre!", context=["the Louvre"])),
    (dspy.Example(answer="Rome"), dspy.Prediction(answer="Paris", context=["Rome is far", "x"])),
    (dspy.Example(answer="42"), dspy.Prediction(answer="41", context=["no numbers"])),
]


@pytest.mark.parametrize(("example", "prediction"), CASES)
def test_string_metrics_of_dspy_score_as_dspy_does(example, prediction):
    assert dx.metrics.get("answer_exact_match")(example, prediction) == dspy.evaluate.answer_exact_match(
        example, prediction
    )
    assert dx.metrics.answer_exact_match(example, prediction, frac=0.5) == dspy.evaluate.answer_exact_match(
        example, prediction, frac=0.5
    )
    assert dx.metrics.get("answer_passage_match")(example, prediction) == dspy.evaluate.answer_passage_match(
        example, prediction
    )


def test_the_cases_cover_both_outcomes():
    scores = [dx.metrics.answer_exact_match(example, prediction) for example, prediction in CASES]
    passages = [dx.metrics.answer_passage_match(example, prediction) for example, prediction in CASES]
    assert set(scores) == {True, False} and set(passages) == {True, False}


JUDGED = [
    (dspy.Example(question="Ann has 3 pens. How many?", response="3").with_inputs("question"), "3", "five"),
    (dspy.Example(question="Capital of France?", response="Paris").with_inputs("question"), "paris", "Rome"),
]


@pytest.mark.parametrize(("example", "right", "wrong"), JUDGED)
def test_semantic_f1_and_complete_and_grounded_score_as_dspy_modules_do(example, right, wrong):
    dspy.configure(lm=dx.lab_lm("lab/small"))
    semantic, grounded = dspy.evaluate.SemanticF1(), dspy.evaluate.CompleteAndGrounded()
    for text in (right, wrong):
        prediction = dspy.Prediction(response=text, context=[f"it is {text}"])
        assert dx.metrics.get("semantic_f1")(example, prediction).score == semantic(example, prediction).score
        ours = dx.metrics.get("complete_and_grounded")(example, prediction).score
        assert ours == grounded(example, prediction).score
    # The lab judge compares gold and response: full recall and precision for the right one, none for the wrong.
    assert dx.metrics.semantic_f1(example, dspy.Prediction(response=right)).score == 1.0
    assert dx.metrics.semantic_f1(example, dspy.Prediction(response=wrong)).score == 0.0


def test_semantic_f1_reads_answer_where_there_is_no_response():
    dspy.configure(lm=dx.lab_lm("lab/small"))
    example = dspy.Example(question="Ann has 3 pens. How many?", answer="3").with_inputs("question")
    assert dx.metrics.semantic_f1(example, dspy.Prediction(answer="The answer is 3")).score == 1.0
    assert dx.metrics.semantic_f1(example, dspy.Prediction(answer="4")).score == 0.0


def test_names_are_an_allow_list():
    assert dx.metrics.NAMES[:4] == ("exact_match", "numeric_match", "contains", "f1")
    for name in dx.metrics.NAMES:
        assert dx.metrics.get(name).__module__ == "dspex_lab.metrics"
    for name in ("for_field", "judge", "os:system", "dspy.evaluate.answer_exact_match", "get"):
        with pytest.raises(ExecutionError, match="no metric"):
            dx.metrics.get(name)
    assert dx.metrics.resolve(dx.metrics.f1) is dx.metrics.f1
    with pytest.raises(ExecutionError, match="callable"):
        dx.metrics.resolve(3)


def test_evaluate_and_optimize_take_a_metric_name():
    data = dx.Dataset(dx.datasets.arithmetic(6, seed=2), name="a6")
    program = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
    with dx.Context(lm="lab/small", journal=False):
        named = dx.evaluate(program, data, metric="answer_exact_match", progress=False)
        direct = dx.evaluate(program, data, metric=dx.metrics.answer_exact_match, progress=False)
        with pytest.raises(ExecutionError, match="no metric 'nope'"):
            dx.evaluate(program, data, metric="nope", progress=False)
        with pytest.raises(OptimizerError, match="no metric 'nope'"):
            dx.optimize(program, data[:3], data[3:], metric="nope")
    assert list(named.scores()) == list(direct.scores())
    assert named.metric == "dspex_lab.metrics.answer_exact_match"


def test_the_command_line_takes_the_new_names():
    from dspex_lab.cli import _metric

    assert _metric("semantic_f1") is dx.metrics.semantic_f1
    with pytest.raises(ExecutionError, match=r"one of exact_match, .*, semantic_f1"):
        _metric("semantic-f1")

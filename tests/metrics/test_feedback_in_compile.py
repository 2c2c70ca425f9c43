"""A feedback metric's text is kept on the trials a DSPy optimizer scores during its own compile."""

import dspy

import dspex_lab as dx
from dspex_lab.optimization._dspy import DspyOptimizer


def graded(example, prediction, trace=None):
    right = dx.metrics.exact_match(example, prediction)
    return dspy.Prediction(score=right, feedback="right" if right else f"the gold answer is {example.answer}")


def test_compile_trials_keep_the_metrics_feedback(journal_path):
    examples = dx.datasets.arithmetic(24, seed=6)
    program = dx.Program("dspy.Predict", signature="question -> answer", name="arith")
    optimizer = DspyOptimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=2)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal_path):
        result = dx.optimize(
            program,
            examples[:12],
            examples[12:],
            metric=graded,
            optimizer=optimizer,
            progress=False,
            confirm_fraction=0,
        )
    rows = result.journal.sql("SELECT experiment_id, score, feedback FROM trials")
    compiled = rows[rows["experiment_id"].str.contains("/compile")]
    scored = rows[rows["score"].notna()]
    assert len(compiled) and compiled["feedback"].notna().all()
    assert set(scored["feedback"][scored["score"] == 1.0]) == {"right"}
    wrong = scored["feedback"][scored["score"] == 0.0]
    assert len(wrong) and all(text.startswith("the gold answer is ") for text in wrong)

"""``EvaluationResult.table()``: each trial beside its example's input and gold, read from the journal."""

from __future__ import annotations

import json

import dspex_lab as dx


def evaluate(journal) -> dx.EvaluationResult:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal, threads=2):
        return dx.evaluate(
            dx.Program("dspy.Predict", signature="question -> answer"),
            dx.Dataset(dx.datasets.arithmetic(5, seed=4), name="five"),
            metric=dx.metrics.exact_match, progress=False,
        )  # fmt: skip


def test_each_trial_reads_input_score_prediction_gold():
    result = evaluate(False)
    table = result.table()
    columns = list(table.columns)
    assert columns.index("score") < columns.index("input") < columns.index("prediction") < columns.index("gold")
    data = {example["id"]: example for example in dx.datasets.arithmetic(5, seed=4)}
    for row in table.to_dict("records"):
        example = data[row["example_id"]]
        assert row["input"] == {"question": example["question"]}
        # Only the gold fields the program answers (the example's topic and difficulty are not gold).
        assert row["gold"] == {"answer": example["answer"]}
        assert row["score"] == float(json.loads(row["prediction"])["answer"] == example["answer"])
    assert "input" not in result.trials.columns  # the statistics' frame is unchanged


def test_without_the_journal_the_trials_still_show(tmp_path):
    result = evaluate(tmp_path / "gone.duckdb")
    (tmp_path / "gone.duckdb").unlink()
    table = result.table()
    assert len(table) == 5 and table["input"].isna().all() and table["gold"].isna().all()

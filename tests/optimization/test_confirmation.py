"""The headline of an optimization: a held-out test, one p-value convention, typed journal values."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import dspy
import numpy as np
import pytest
from oracle import oracle_program
from scipy import stats as scipy_stats

import dspex_lab as dx
from dspex_lab.errors import OptimizerError
from dspex_lab.journal import open_journal
from dspex_lab.optimization._acceptance import validation_outcome
from dspex_lab.optimization._dspy import DspyOptimizer
from dspex_lab.optimization._spending import BudgetSpent, Spending
from dspex_lab.stats import one_sided_p_value, paired_test
from dspex_lab.trace.spans import encode_attributes

FAST = dict(max_steps=3, bsize=12, num_candidates=3, num_sources=2, patience=3)
# On main, seed 1 of this run ended with a changed program whose headline read "+0.113, p = 0.049":
# a paired test of the winner against the baseline on the validation set that chose it.
NULL_SEEDS = (0, 1, 2, 3, 4, 5)


def claims_a_gain(result: dx.OptimizationResult, alpha: float = 0.05) -> bool:
    """Whether the result's headline comparison says the best is significantly better than the baseline."""
    comparison = result.comparison
    return comparison is not None and comparison.difference > 0 and one_sided_p_value(comparison.result) < alpha


def test_on_the_null_task_the_headline_never_claims_a_gain() -> None:
    program = dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        name="cot",
        variables={"temperature": dx.Float(0.7, low=0.0, high=1.5)},
    )
    for seed in NULL_SEEDS:
        data = list(dx.datasets.null_arithmetic(112, seed=seed))
        with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
            result = dx.optimize(
                program,
                data[:32],
                data[32:],
                metric=dx.metrics.exact_match,
                optimizer=dx.SimbaC(bsize=16, num_candidates=4, max_steps=4, num_sources=2, patience=4),
                seed=seed,
                progress=False,
            )
        assert not claims_a_gain(result), (seed, result.headline)
        assert not result.confirmation.significant
        assert "beats the baseline" not in result._repr_html_()
        if result.best_id == "c0":
            assert result.comparison is None
            assert "nothing is claimed" in result.headline


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(200, seed=17))


def test_the_confirmation_is_a_one_sided_paired_test_on_examples_the_optimizer_never_saw(
    tmp_path: Path, data: list[dspy.Example]
) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2) as context:
        result = dx.optimize(
            oracle_program(), data[:60], data[60:200], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST, strategies=("mutate",)), seed=1, progress=False,
        )  # fmt: skip
        journal = context.journal
    settings = result.config["confirmation"]
    assert settings["source"] == "valset" and settings["fraction"] == 0.3 and settings["n"] == 42
    held_out = set(settings["example_ids"])
    valset_ids = set(dx.Dataset(data[60:200]).example_ids)
    assert held_out < valset_ids and len(held_out) == 42
    # The optimizer never saw them: no selection or screening trial is on a held-out example.
    seen = journal.sql(
        "select distinct example_id from trials where starts_with(experiment_id, ?) "
        "and not ends_with(experiment_id, '/confirm')",
        [result.run_id + "/"],
    )["example_id"]
    assert held_out.isdisjoint(set(seen))
    assert result.best_id != "c0"
    before = journal.trials(f"{result.run_id}/c0/confirm").set_index("example_id")["score"]
    after = journal.trials(f"{result.run_id}/{result.best_id}/confirm").set_index("example_id")["score"]
    assert set(before.index) == set(after.index) == held_out
    after = after.loc[before.index]
    # Exact McNemar, one-sided ("the best is better"): a binomial test on the discordant pairs.
    only_best = int(((before == 0) & (after == 1)).sum())
    only_baseline = int(((before == 1) & (after == 0)).sum())
    expected = scipy_stats.binomtest(only_best, only_best + only_baseline, 0.5, alternative="greater").pvalue
    confirmation = result.confirmation
    assert confirmation.p_value == pytest.approx(expected, rel=1e-9)
    assert confirmation.comparison.difference == pytest.approx(float((after - before).mean()))
    assert confirmation.significant == (expected < 0.05)
    assert result.comparison is confirmation.comparison
    assert ("beats the baseline" in result.headline) == confirmation.significant
    assert "optimistic: measured on the data that chose it" in result.optimistic
    # Rebuilt from the journal alone, in another process or another day: the same verdict.
    again = dx.OptimizationResult.from_journal(open_journal(tmp_path / "j.duckdb"), result.run_id)
    assert again.headline == result.headline and again.confirmation.p_value == confirmation.p_value
    assert again.to_summary()["confirmation"]["significant"] is confirmation.significant


def test_a_testset_is_the_confirmation_and_the_whole_valset_selects(data: list[dspy.Example]) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(
            oracle_program(), data[:60], data[60:140], testset=data[140:200], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST, strategies=("mutate",)), seed=1, progress=False,
        )  # fmt: skip
    assert result.baseline.n == 80  # the whole valset chose
    confirmation = result.confirmation
    assert confirmation.source == "testset" and confirmation.n == 60
    assert set(confirmation.best.trials["example_id"]) == set(dx.Dataset(data[140:200]).example_ids)
    before = confirmation.baseline.example_scores
    after = confirmation.best.example_scores.loc[before.index]
    two_sided = scipy_stats.ttest_rel(after, before).pvalue if not set(np.unique(before)) <= {0, 1} else None
    test = paired_test(before.to_numpy(), after.to_numpy())
    if two_sided is not None:
        assert test.p_value == pytest.approx(two_sided)
    assert confirmation.p_value == pytest.approx(one_sided_p_value(test))
    assert "held-out examples (the testset)" in result.headline


def test_without_held_out_data_or_a_change_nothing_is_claimed(data: list[dspy.Example]) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        improved = dx.optimize(
            oracle_program(), data[:60], data[60:140], confirm_fraction=0, metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST, strategies=("mutate",)), seed=1, progress=False,
        )  # fmt: skip
    # A real gain on the selection data, but nothing held out to test it on: no claim, no comparison.
    assert improved.best_id != "c0" and improved.improvement > 0
    assert improved.comparison is None and not improved.confirmation.significant
    assert "nothing is claimed" in improved.headline and "nothing is claimed" in repr(improved)
    summary = improved.to_summary()
    assert summary["selection"]["note"] == "optimistic: measured on the data that chose it"
    assert "best_mean" not in summary  # no unlabelled selection number at the top


def test_a_changed_program_that_fails_the_held_out_test_reads_so(data: list[dspy.Example]) -> None:
    # BootstrapFewShot always changes the program (it adds demos); on the null task that change cannot help.
    null = list(dx.datasets.null_arithmetic(100, seed=3))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="parity"),
            null[:30], null[30:100], metric=dx.metrics.exact_match,
            optimizer=DspyOptimizer("bootstrap", max_bootstrapped_demos=2, max_labeled_demos=2), seed=0,
            progress=False,
        )  # fmt: skip
    confirmation = result.confirmation
    assert result.best_id != "c0" and confirmation.source == "valset" and confirmation.n == 21
    assert confirmation.status == "not significant", result.headline
    assert "is not significantly better than the baseline" in result.headline
    assert "no gain is claimed" in result.headline and "no gain is claimed" in result._repr_html_()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"testset": "overlap"}, "the testset shares 5 examples with the valset"),
        ({"testset": "train"}, "the testset shares 5 examples with the trainset"),
        ({"confirm_fraction": 1.5}, r"confirm_fraction must be a number in \[0, 1\)"),
        ({"confirm_fraction": 0.05}, "too few to carve a confirmation set"),
        ({"confirm_fraction": 0.3, "testset": "fresh"}, "pass one or the other"),
    ],
)
def test_bad_confirmation_settings_get_one_clear_error(data: list[dspy.Example], options: dict, message: str) -> None:
    sets = {"overlap": data[60:65], "train": data[:5], "fresh": data[150:170]}
    if "testset" in options:
        options = {**options, "testset": sets[options["testset"]]}
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False), pytest.raises(OptimizerError, match=message):
        dx.optimize(
            oracle_program(), data[:60], data[60:140], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**FAST), progress=False, **options,
        )  # fmt: skip


def test_the_search_stops_early_enough_for_the_confirmation_to_run() -> None:
    spending = Spending(budget=dx.Budget(lm_calls=100))
    spending.lm_calls = 70
    assert spending.exhausted() is None
    spending.reserve(lm_calls=30, tokens=0, cost=0.0)
    assert spending.exhausted() == "budget lm_calls=100 spent (70 used, 30 kept for the confirmation)"
    spending.release()
    assert spending.exhausted() is None
    spending.lm_calls += 29
    spending.ensure_left()  # 30 calls were left: one still is
    spending.lm_calls += 1
    with pytest.raises(BudgetSpent, match=r"budget lm_calls=100 spent \(100 used\)"):
        spending.ensure_left()


def test_both_bridges_accept_on_the_one_sided_p() -> None:
    # A candidate worse than the baseline: the two-sided p is small, "it is better" is not supported at all.
    baseline = [1.0] * 30 + [0.0] * 10
    worse = [0.0] * 30 + [0.0] * 10
    test = paired_test(baseline, worse)
    assert test.p_value < 1e-6
    assert one_sided_p_value(test) == pytest.approx(1 - test.p_value / 2)
    better = paired_test(worse, baseline)
    assert one_sided_p_value(better) == pytest.approx(
        scipy_stats.binomtest(30, 30, 0.5, alternative="greater").pvalue, rel=1e-12
    )


def test_a_dspy_optimizer_records_one_sided_p_values_and_dspys_own_simba_settings(tmp_path: Path) -> None:
    signature = dspy.SIMBA.__init__.__kwdefaults__
    simba = DspyOptimizer("simba")
    for name in ("bsize", "num_candidates", "max_steps", "max_demos"):
        assert simba.options[name] == signature[name]
    assert (simba.options["bsize"], simba.options["num_candidates"], simba.options["max_steps"]) == (32, 6, 8)
    assert DspyOptimizer("simba", bsize=8).options["bsize"] == 8  # the user's value wins
    data = list(dx.datasets.arithmetic(100, seed=5))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2) as context:
        result = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="arith"), data[:40], data[40:100],
            metric=dx.metrics.exact_match,
            optimizer=DspyOptimizer("simba", bsize=8, num_candidates=3, max_steps=2, num_threads=2), seed=0,
            progress=False,
        )  # fmt: skip
        journal = context.journal
    assert result.settings["bsize"] == 8 and result.settings["max_demos"] == signature["max_demos"]
    assert result.settings["alpha"] == 0.05
    evaluations = [item for row in journal.step_rows(result.run_id) for item in row["evaluations"] or []]
    assert evaluations
    for item in evaluations:
        if item["p_two_sided"] is None:
            continue
        one_sided = item["p_two_sided"] / 2 if item["difference"] > 0 else 1 - item["p_two_sided"] / 2
        assert item["p_value"] == pytest.approx(one_sided, rel=1e-9, abs=1e-12)
        assert isinstance(item["significant"], bool)


_NOT_TYPED = re.compile(r"^(np\.|numpy\.)|^(True|False|None|nan|-?inf)$|^-?\d+(\.\d+)?(e-?\d+)?$")


def _walk(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _walk(item, f"{where}.{key}")
    elif isinstance(value, list):
        for position, item in enumerate(value):
            _walk(item, f"{where}[{position}]")
    elif isinstance(value, str):
        assert not _NOT_TYPED.match(value), f"{where} holds {value!r}: a boolean or number stored as text"
    else:
        assert value is None or isinstance(value, (bool, int, float)), (where, value)


def test_journal_json_columns_and_span_attributes_are_typed(tmp_path: Path, data: list[dspy.Example]) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2) as context:
        # CoinQA: every configuration scores 0.5, so candidates are evaluated and rejected.
        result = dx.optimize(
            oracle_program("tests.CoinQA"), data[:60], data[60:140], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(**{**FAST, "max_steps": 4, "patience": 4}, strategies=("mutate", "demo")), seed=4,
            progress=False,
        )  # fmt: skip
        journal = context.journal
    raw = journal.sql(
        "select step, minibatch, screening, evaluations from optimization_steps where run_id = ?", [result.run_id]
    )
    rejected = 0
    for row in raw.to_dict("records"):
        for column in ("minibatch", "screening", "evaluations"):
            if row[column] is not None:
                _walk(json.loads(row[column]), f"step {row['step']} {column}")
        for item in json.loads(row["evaluations"] or "[]"):
            assert isinstance(item["significant"], bool)
            assert isinstance(item["n"], int) and isinstance(item["errors"], int)
            rejected += item["significant"] is False
    assert rejected >= 1  # a rejected candidate's verdict is there, and it is false
    candidates = journal.sql(
        'select "values", program_spec from optimization_candidates where run_id = ?', [result.run_id]
    )
    for row in candidates.to_dict("records"):
        values = json.loads(row["values"])
        # Demos and instructions are the user's text (an answer "51" is text); the typed variable is a number.
        assert isinstance(values["skill"], float)
    spans = [span for step in range(1, 5) for span in journal.spans(result.run_id, f"step-{step}")]
    validated = [span for span in spans if span.name.startswith("validate")]
    assert validated
    for span in validated:
        assert isinstance(span.json_attributes["significant"], bool)
        _walk({key: value for key, value in span.json_attributes.items() if key != "test"}, span.name)
    summary = journal.experiment(result.run_id)["summary"]
    assert summary["confirmation"]["status"] in ("unchanged", "evaluated", "stopped")


def test_numpy_scalars_are_stored_as_json_booleans_and_numbers(tmp_path: Path) -> None:
    journal = open_journal(tmp_path / "j.duckdb")
    scores = type("S", (), {"by_example": {"a": 1.0, "b": 0.0}, "experiment_id": "x", "n": 2, "errors": {}})()
    outcome = validation_outcome(
        type("C", (), {"id": "c1"})(), scores, None, p_value=np.float64(0.5), p_adjusted=np.float64(0.7),
        significant=np.False_,
    )  # fmt: skip
    assert outcome["significant"] is False
    row = {
        "step": 1, "status": "finished", "incumbent_id": "c0", "minibatch": ["e1"],
        "screening": [{"n": np.int64(3), "gain": np.float32(0.25), "kept": np.True_}],
        "evaluations": [{"significant": np.False_, "p_value": np.float64(0.5), "n": np.int64(12)}],
    }  # fmt: skip
    journal.record_step("run", row)
    stored = journal.sql("select screening, evaluations from optimization_steps where run_id = 'run'").iloc[0]
    assert json.loads(stored["screening"]) == [{"n": 3, "gain": 0.25, "kept": True}]
    assert json.loads(stored["evaluations"]) == [{"significant": False, "p_value": 0.5, "n": 12}]
    text = encode_attributes({"significant": np.False_, "n": np.int64(3), "gain": np.float32(0.5)})
    assert json.loads(text) == {"significant": False, "n": 3, "gain": 0.5}
    assert not math.isnan(json.loads(text)["gain"])


def test_the_cli_prints_the_held_out_headline_and_labels_selection_numbers(tmp_path: Path, capsys) -> None:
    from dspex_lab.cli import main

    spec = tmp_path / "qa.json"
    spec.write_text(oracle_program().to_json())
    rows = [json.dumps(example.toDict()) for example in dx.datasets.arithmetic(200, seed=17)]
    for name, part in (("train", rows[:60]), ("val", rows[60:140]), ("test", rows[140:])):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(part))
    journal = str(tmp_path / "o.duckdb")
    arguments = ["optimize", str(spec), str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl")]
    arguments += ["--test", str(tmp_path / "test.jsonl"), "--metric", "exact_match", "--inputs", "question"]
    assert main([*arguments, "--journal", journal, "--quiet", "--max-steps", "2", "--bsize", "12", "--json"]) == 0
    output = capsys.readouterr().out.splitlines()
    summary = json.loads(output[-1])
    result = dx.OptimizationResult.from_journal(open_journal(journal), summary["run_id"])
    assert result.confirmation.source == "testset" and result.confirmation.n == 60
    assert result.headline in output and summary["headline"] == result.headline
    assert result.optimistic.capitalize() in output
    assert not any(line.startswith("best ") and " p = " in line for line in output)  # the old validation-set line

"""SIMBA-C: its decisions, its journal, its stopping rules and its errors."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import dspy
import numpy as np
import pytest
from oracle import oracle_program
from statsmodels.stats.multitest import multipletests

import dspex_lab as dx
from dspex_lab.errors import OptimizerError
from dspex_lab.optimization._space import append_rule, clean_rule, lift
from dspex_lab.stats import paired_test

HERE = Path(__file__).parent

# Small and fast: the oracle modules answer without an LM, so only rule proposals call the lab LM.
FAST = dict(max_steps=3, bsize=12, num_candidates=3, num_sources=2, patience=3)


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(140, seed=17))


@pytest.fixture
def context(tmp_path: Path):
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "journal.duckdb", threads=2) as active:
        yield active


def run(program, data, **options):
    optimizer = options.pop("optimizer", None) or dx.SimbaC(**{**FAST, **options.pop("simba", {})})
    return dx.optimize(
        program, data[:60], data[60:140], metric=dx.metrics.exact_match, optimizer=optimizer, progress=False, **options
    )


def test_a_real_improvement_is_found_tested_and_accepted(context, data) -> None:
    result = run(oracle_program(), data, simba={"strategies": ("mutate",)}, seed=1)

    assert result.status == "finished"
    assert result.best.values["skill"] > 0.3
    assert result.best_result.mean > result.baseline.mean
    assert result.comparison is not None and result.comparison.p_value < 0.05
    accepted = result.candidates[result.candidates["accepted"]]
    assert not accepted.empty and (accepted["p_adjusted"] < 0.05).all()
    # The lineage walks from the baseline to the best through accepted candidates only.
    lineage = result.lineage()
    assert lineage[0] == "c0" and lineage[-1] == result.best_id
    assert set(lineage[1:]) <= set(accepted["candidate_id"])
    assert "mutation sets skill" in result.why(result.best_id)


def test_every_decision_can_be_recomputed_from_the_journal(context, data) -> None:
    result = run(oracle_program(), data, simba={"strategies": ("mutate",)}, seed=2)
    journal = context.journal
    again = dx.OptimizationResult.from_journal(journal, result.run_id)

    assert again.steps.equals(result.steps)
    assert again.candidates.drop(columns="values").equals(result.candidates.drop(columns="values"))
    assert again.best == result.best and again.best_id == result.best_id
    for step in journal.step_rows(result.run_id):
        evaluations = step["evaluations"] or []
        if not evaluations:
            continue
        incumbent = journal.trials(f"{result.run_id}/{step_incumbent_before(journal, result.run_id, step)}/val")
        p_values = []
        for item in evaluations:
            candidate = journal.trials(item["experiment_id"])
            merged = incumbent.merge(candidate, on="example_id", suffixes=("_a", "_b"))
            merged = merged[(merged["status_a"] == "ok") & (merged["status_b"] == "ok")]
            test = paired_test(merged["score_a"].to_numpy(), merged["score_b"].to_numpy())
            assert test.p_value == pytest.approx(item["p_two_sided"], rel=1e-9, abs=1e-12)
            assert test.mean_difference == pytest.approx(item["difference"], abs=1e-12)
            # Acceptance asks "is the candidate better?": the one-sided p of the same test.
            one_sided = test.p_value / 2 if test.mean_difference > 0 else 1 - test.p_value / 2
            assert item["p_value"] == pytest.approx(one_sided, rel=1e-9, abs=1e-12)
            p_values.append(one_sided)
        expected = multipletests(p_values, method="holm")[1]
        assert [item["p_adjusted"] for item in evaluations] == pytest.approx(list(expected))
    # The trials journaled are exactly the trials the run counted.
    counted = journal.sql(
        "select count(*) as n from trials where starts_with(experiment_id, ?)", [result.run_id + "/"]
    )["n"].iloc[0]
    assert counted == result.spending["trials"]


def step_incumbent_before(journal, run_id: str, step: dict) -> str:
    previous = [row for row in journal.step_rows(run_id) if row["step"] == step["step"] - 1]
    return previous[0]["incumbent_id"]


def test_each_decision_is_an_orchestration_span_above_the_evaluations_it_caused(context, data) -> None:
    result = run(oracle_program(), data, simba={"strategies": ("mutate",)}, seed=1)
    tree = context.journal.trace(result.run_id, "step-1")
    text = tree.to_text()

    assert "step 1" in text and "propose c1" in text and "screen c1" in text
    spans = context.journal.spans(result.run_id, "step-1")
    proposals = [span for span in spans if span.name.startswith("propose")]
    assert proposals and all(span.kind == "decision" for span in proposals)
    # Timed around their making, and the step's outcome around its tests: none reads "0 µs".
    outcome = next(span for span in spans if span.name.startswith(("accepted", "rejected")))
    assert all(span.end_ns > span.start_ns for span in [*proposals, outcome])
    assert all("rationale" in span.json_attributes for span in proposals)
    screens = [span for span in spans if span.name.startswith("screen")]
    for span in screens:
        experiment = span.json_attributes["experiment_id"]
        trials = context.journal.trials(experiment)
        assert len(trials) >= 1  # the trials the decision caused
        # Timed when it ran: the screening's span encloses the trials it ran (clocks read apart: 5 ms of
        # slack); the experiment may hold more, of later steps that screened the candidate as incumbent.
        slack = 5_000_000
        started = trials["started_at"].map(lambda moment: moment.value)  # nanoseconds since the epoch
        finished = trials["finished_at"].map(lambda moment: moment.value)
        inside = ((started >= span.start_ns - slack) & (finished <= span.end_ns + slack)).sum()
        assert span.end_ns > span.start_ns and inside >= span.json_attributes["n"] > 0
    root = next(span for span in spans if span.parent_id is None)
    assert all(root.start_ns <= span.start_ns <= span.end_ns <= root.end_ns for span in spans)


def test_on_noise_simba_c_accepts_almost_nothing(data) -> None:
    accepted = steps = 0
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        for seed in range(8):
            result = run(
                oracle_program("tests.CoinQA"),
                data,
                simba={"strategies": ("mutate", "demo"), "max_steps": 4, "patience": 4},
                seed=seed,
            )
            steps += len(result.steps) - 1
            accepted += int(result.candidates["accepted"].sum())
    assert steps == 32
    assert accepted / steps <= 0.1


def test_a_budget_stops_the_run_cleanly(context, data) -> None:
    # The baseline (80 validation trials) and one step's trajectories and screening fit; the rest does not.
    budget = dx.Budget(lm_calls=3 * 80 + (2 + 3) * 12)
    result = run(dx.Program("dspy.Predict", signature="question -> answer", name="qa"), data, budget=budget, seed=0)

    assert result.status == "stopped" and "budget" in result.status_detail
    threads, calls_per_trial = 2, 1
    assert result.spending["lm_calls"] <= budget.lm_calls + threads * calls_per_trial + 1
    assert context.journal.experiment(result.run_id)["status"] == "stopped"


def test_a_run_killed_with_sigkill_resumes_without_repeating_finished_evaluations(tmp_path: Path) -> None:
    journal_path = tmp_path / "killed.duckdb"
    worker = HERE / "optimization_worker.py"
    process = subprocess.Popen(
        [sys.executable, str(worker), str(journal_path)], stdout=subprocess.PIPE, text=True, cwd=HERE
    )
    run_id = None
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("run ") and line.split()[3] == "1":
            run_id = line.split()[1]
            break
    assert run_id is not None, "the worker never finished step 1"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    journal = dx.open_journal(journal_path)
    before = journal.sql(
        "select experiment_id, trial_id from trials where starts_with(experiment_id, ?)", [run_id + "/"]
    )
    assert journal.experiment(run_id)["status"] == "interrupted"

    resumed = subprocess.run(
        [sys.executable, str(worker), str(journal_path), run_id],
        capture_output=True,
        text=True,
        cwd=HERE,
        timeout=300,
        check=True,
    )
    assert f"done {run_id} finished" in resumed.stdout
    after = journal.sql(
        "select experiment_id, trial_id, started_at from trials where starts_with(experiment_id, ?)", [run_id + "/"]
    )
    kept = before.merge(after, on=["experiment_id", "trial_id"])
    assert len(kept) == len(before)  # nothing recorded before the kill was lost
    result = dx.OptimizationResult.from_journal(journal, run_id)
    assert result.status == "finished" and list(result.steps["step"]) == list(range(len(result.steps)))
    # The resumed process ran only trials that were not recorded: every key is unique and the run's
    # spending equals the trials in the journal.
    assert not after.duplicated(["experiment_id", "trial_id"]).any()
    assert result.spending["trials"] == len(after)


def test_a_resumed_run_reuses_every_recorded_trial(tmp_path: Path, data) -> None:
    calls = []

    def counting_metric(example, prediction, trace=None):
        calls.append(1)
        return dx.metrics.exact_match(example, prediction)

    journal = tmp_path / "j.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=journal, threads=2) as active:
        first = dx.optimize(
            oracle_program(), data[:60], data[60:140], metric=counting_metric,
            optimizer=dx.SimbaC(**FAST, strategies=("mutate",)), seed=3, progress=False,
        )  # fmt: skip
        ran = len(calls)
        # Pretend the process died at the end: reopen the run and resume it.
        active.journal.finish_experiment(first.run_id, status="interrupted")
        calls.clear()
        again = dx.optimize(
            oracle_program(), data[:60], data[60:140], metric=counting_metric,
            optimizer=dx.SimbaC(**FAST, strategies=("mutate",)), seed=3, progress=False, resume=first.run_id,
        )  # fmt: skip
    assert ran > 0 and calls == []
    assert again.steps.equals(first.steps) and again.best == first.best


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(trainset_size=8), "fewer than the mini-batch"),
        (dict(overlap=True), "shares 10 examples"),
        (dict(budget=dx.Budget(lm_calls=50)), "too small for one SIMBA-C step"),
        (dict(optimizer="annealing"), "unknown optimizer 'annealing'; choose one of simba-c, simba, mipro"),
        (dict(program="dspy.Predict"), "takes a dx.Program"),
        (dict(resume="nosuchrun"), "cannot resume 'nosuchrun'"),
    ],
)
def test_bad_input_gets_one_clear_error(context, data, change, message) -> None:
    program = change.get("program", oracle_program())
    train = data[: change.get("trainset_size", 60)]
    val = data[50:140] if change.get("overlap") else data[60:140]
    with pytest.raises(OptimizerError, match=message.replace("(", r"\(")):
        dx.optimize(
            program,
            train,
            val,
            metric=dx.metrics.exact_match,
            optimizer=change.get("optimizer", dx.SimbaC(**FAST)),
            budget=change.get("budget"),
            resume=change.get("resume"),
            progress=False,
        )


def test_resume_refuses_a_finished_run_or_a_different_program(context, data) -> None:
    result = run(oracle_program(), data, simba={"strategies": ("mutate",), "max_steps": 1}, seed=0)
    with pytest.raises(OptimizerError, match="already finished"):
        run(oracle_program(), data, simba={"strategies": ("mutate",), "max_steps": 1}, seed=0, resume=result.run_id)
    context.journal.finish_experiment(result.run_id, status="interrupted")
    other = oracle_program("tests.CoinQA")
    with pytest.raises(OptimizerError, match="different program"):
        run(other, data, simba={"strategies": ("mutate",), "max_steps": 1}, seed=0, resume=result.run_id)
    with pytest.raises(OptimizerError, match="different seed"):
        run(oracle_program(), data, simba={"strategies": ("mutate",), "max_steps": 1}, seed=9, resume=result.run_id)


def test_simba_c_hyperparameters_are_checked() -> None:
    with pytest.raises(OptimizerError, match="bsize"):
        dx.SimbaC(bsize=0)
    with pytest.raises(OptimizerError, match="alpha"):
        dx.SimbaC(alpha=1.5)
    with pytest.raises(OptimizerError, match="strategies"):
        dx.SimbaC(strategies=("prayer",))


def test_lm_written_rules_stay_bounded_text() -> None:
    hostile = "__import__('os').system('rm -rf /')\x00\x1b[31m" + "x" * 5000 + "\nsecond line"
    rule = clean_rule(hostile)
    assert rule is not None and "\n" not in rule and "\x00" not in rule and len(rule) <= 400
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False):
        program, slots = lift(
            dx.Program("dspy.Predict", signature="question -> answer"), lm=dx.lab_lm("lab/small"), max_demos=4
        )
        changed = append_rule(program, slots, "", rule, max_rules=2)
        module = changed.build()
    # The rule is the instructions' text, nothing else: the module is still a plain Predict.
    assert rule in module.signature.instructions
    assert type(module) is dspy.Predict
    assert clean_rule(None) is None and clean_rule("   ") is None


def test_lab_lm_run_improves_or_keeps_the_baseline_and_spends_what_it_reports(context, data) -> None:
    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
    result = run(program, data, simba={"max_steps": 2}, seed=4)

    assert result.status == "finished"
    assert result.best_result.mean >= result.baseline.mean or result.best_id == "c0"
    trials = context.journal.sql(
        "select sum(lm_calls) as calls from trials where starts_with(experiment_id, ?)", [result.run_id + "/"]
    )["calls"].iloc[0]
    # Rule proposals are LM calls of the run that are not trials.
    assert result.spending["lm_calls"] >= trials
    assert math.isfinite(result.spending["cost"])
    assert "<table>" in result._repr_html_() and result.run_id in result._repr_html_()


def test_values_of_every_candidate_are_a_valid_configuration(context, data) -> None:
    result = run(oracle_program(), data, simba={"strategies": ("mutate", "demo")}, seed=6)
    for values in result.candidates["values"]:
        assert 0.0 <= values["skill"] <= 1.0
        assert len(values["demos"]) <= 4
    assert np.isnan(result.candidates.loc[0, "screen_mean"])  # the baseline is not screened


def test_the_one_sided_p_of_an_exact_mcnemar_is_its_upper_binomial_tail() -> None:
    from scipy import stats

    from dspex_lab.optimization._acceptance import one_sided

    # 14 examples the candidate fixes, 4 it breaks, 82 unchanged.
    before = np.array([0] * 14 + [1] * 4 + [1] * 50 + [0] * 32, dtype=float)
    after = np.array([1] * 14 + [0] * 4 + [1] * 50 + [0] * 32, dtype=float)
    test = paired_test(before, after)
    assert test.test == "exact McNemar"
    assert one_sided(test) == pytest.approx(stats.binomtest(14, 18, 0.5, alternative="greater").pvalue)
    worse = paired_test(after, before)
    assert one_sided(worse) > 0.5


def test_the_full_evaluation_shortlist_takes_each_strategys_best_first() -> None:
    from dspex_lab.optimization._simba_c import _diverse
    from dspex_lab.optimization._space import Candidate

    program = oracle_program()

    def candidate(name: str, strategy: str) -> Candidate:
        return Candidate(name, program, "c0", 1, strategy, "")

    lucky_a, lucky_b, rule, demo = (
        candidate("c1", "mutate"),
        candidate("c2", "mutate"),
        candidate("c3", "rule"),
        candidate("c4", "demo"),
    )
    gains = [(0.4, lucky_a), (0.4, lucky_b), (0.3, rule), (0.1, demo)]
    assert [item.id for item in _diverse(gains, 2)] == ["c1", "c3"]
    assert [item.id for item in _diverse(gains, 4)] == ["c1", "c3", "c4", "c2"]
    assert _diverse([], 2) == []


def test_a_merge_combines_the_changes_that_screened_well_and_is_evaluated_first(context, data) -> None:
    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
    result = run(program, data, simba={"strategies": ("demo", "rule", "merge"), "max_steps": 2, "patience": 2}, seed=3)
    merges = result.candidates[result.candidates["strategy"] == "merge"]
    assert not merges.empty
    for row in merges.itertuples():
        parts = [part.split(" ")[0] for part in row.rationale.removeprefix("merge of ").split(", ")]
        sources = result.candidates.set_index("candidate_id").loc[parts]
        # Made from at least two candidates of its own step that beat the incumbent on the mini-batch.
        assert len(parts) >= 2 and (sources["step"] == row.step).all()
        assert (sources["screen_mean"] > sources["incumbent_screen_mean"]).all()
        # Screened like any candidate, and always among the fully evaluated when it screened positive.
        assert not math.isnan(row.screen_mean)
        if row.screen_mean > row.incumbent_screen_mean:
            assert not math.isnan(row.val_mean)


def test_the_convergence_plot_updates_live_and_renders_again_from_the_journal(context, data) -> None:
    import holoviews as hv

    from dspex_lab.optimization import LiveConvergence, plot_run

    live = LiveConvergence()
    seen: list[int] = []
    result = run(
        oracle_program(),
        data,
        simba={"strategies": ("mutate",)},
        seed=1,
        subscribers=[live, lambda e: seen.append(e.step)],
    )
    # One event per step (the baseline included), and the live plot holds the final tables.
    assert seen == list(range(len(result.steps)))
    assert live.steps["step"].tolist() == result.steps["step"].tolist()
    assert live.candidates["candidate_id"].tolist() == result.candidates["candidate_id"].tolist()
    again = plot_run(context.journal, result.run_id)
    assert isinstance(again, hv.Layout) and isinstance(result.plot(), hv.Layout)
    hv.render(again, backend="bokeh")


def test_mutations_re_instantiate_the_module_type_and_step_the_temperature(data) -> None:
    program = dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="module-and-temperature",
        variables={
            "module": dx.ModuleType("dspy.Predict", choices=("dspy.Predict", "dspy.ChainOfThought")),
            "temperature": dx.Float(0.8, low=0.0, high=1.0),
        },
    )
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = run(program, data, simba={"strategies": ("mutate",), "bsize": 16}, seed=0)
    # Predict -> ChainOfThought is the lab world's largest single effect (docs/lab_world.md, section 2).
    assert result.best.values["module"] == "dspy.ChainOfThought"
    assert result.comparison is not None and result.comparison.difference > 0.2
    moves = result.candidates[result.candidates["strategy"] == "mutate"]["rationale"]
    assert moves.str.contains("re-instantiates the module as module").any()
    assert moves.str.contains("sets temperature").any()


def test_a_resumed_run_keeps_counting_what_rule_proposals_spent(tmp_path: Path, data) -> None:
    program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")
    options = dict(simba={"strategies": ("rule", "demo"), "max_steps": 2, "patience": 2}, seed=2)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2) as active:
        first = run(program, data, **options)
        trial_calls = active.journal.sql(
            "select sum(lm_calls) as calls from trials where starts_with(experiment_id, ?)", [first.run_id + "/"]
        )["calls"].iloc[0]
        assert first.spending["lm_calls"] > trial_calls  # rules were written: calls that are not trials
        active.journal.finish_experiment(first.run_id, status="interrupted")
        again = run(program, data, resume=first.run_id, **options)
    assert again.spending["lm_calls"] == first.spending["lm_calls"]
    assert again.spending["tokens"] == first.spending["tokens"]

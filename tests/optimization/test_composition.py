"""Composition-aware SIMBA-C: per-module trajectories, rules, demo placements, shared and learned moves."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import dspy
import numpy as np
import pytest

import dspex_lab as dx
from dspex_lab.engine import TrialRunner, TrialTask
from dspex_lab.errors import OptimizerError
from dspex_lab.optimization._composition import (
    MAX_FIELD_CHARACTERS,
    MAX_TRAJECTORY_STEPS,
    PLACEMENT_EVIDENCE,
    RETRY_PLACEMENT,
    Composition,
    ModuleFields,
    MoveEffects,
    Trajectories,
    trajectory_of,
)
from dspex_lab.optimization._space import EffectLedger, lift, rules_of, shared_variables
from dspex_lab.tasks.arithmetic import parse_problem

FAST = dict(max_steps=2, bsize=12, num_candidates=4, num_sources=2, patience=2)


def _fraction(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") / 2**64


def _gold(question: str) -> int:
    problem = parse_problem(question)
    assert problem is not None, question
    return problem.solve()


@dx.register("tests.composition.SolveCheck")
class SolveCheck(dspy.Module):
    """Two chain-of-thought stages the lab LM answers: solve, then check the proposed answer."""

    def __init__(self) -> None:
        super().__init__()
        self.solve = dspy.ChainOfThought("question -> answer")
        self.check = dspy.ChainOfThought("question, proposed_answer -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        draft = self.solve(question=question)
        return self.check(question=question, proposed_answer=draft.answer)


class _Oracle(dspy.Predict):
    """A predictor that answers without an LM and leaves DSPy's trace as a Predict call does."""

    def forward(self, **kwargs):  # type: ignore[override]
        prediction = dspy.Prediction(**self.answer(**kwargs))
        if dspy.settings.trace is not None:
            dspy.settings.trace.append((self, dict(kwargs), prediction))
        return prediction


class DemoHungrySolve(_Oracle):
    """Right on more questions with every demo (a demo helps here)."""

    def answer(self, question: str) -> dict[str, str]:
        right = _fraction(question) < 0.3 + 0.2 * len(self.demos)
        return {"answer": str(_gold(question) if right else -1)}


class DemoShyVerify(_Oracle):
    """Passes the proposed answer on, but with demos it 'corrects' a share of right answers into wrong ones."""

    def answer(self, question: str, proposed_answer: str) -> dict[str, str]:
        broken = _fraction(f"verify|{question}") < 0.6 * len(self.demos)
        return {"answer": str(int(proposed_answer) + 1) if broken else proposed_answer}


@dx.register("tests.composition.DemoPlacement")
class DemoPlacement(dspy.Module):
    """The constructed case: a demo helps ``solve`` and hurts ``verify``."""

    def __init__(self) -> None:
        super().__init__()
        self.solve = DemoHungrySolve("question -> answer")
        self.verify = DemoShyVerify("question, proposed_answer -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        draft = self.solve(question=question)
        return self.verify(question=question, proposed_answer=draft.answer)


@dx.register("tests.composition.TwoKnobs")
class TwoKnobs(dspy.Module):
    """Right on more questions as either knob rises: two moves that each help, and help together."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")
        self.knob_a = 0.0
        self.knob_b = 0.0

    def forward(self, question: str) -> dspy.Prediction:
        right = _fraction(question) < 0.1 + 1.2 * self.knob_a + 1.2 * self.knob_b
        return dspy.Prediction(answer=str(_gold(question) if right else -1))


def two_module_program(**variables) -> dx.Program:
    return dx.Program("tests.composition.SolveCheck", name="solve-check", variables=variables or None)


@pytest.fixture
def data() -> list[dspy.Example]:
    return list(dx.datasets.arithmetic(140, seed=17))


@pytest.fixture
def context(tmp_path: Path):
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "journal.duckdb", threads=2) as active:
        yield active


def run(program, data, **options):
    simba = dx.SimbaC(**{**FAST, **options.pop("simba", {})})
    return dx.optimize(
        program, data[:60], data[60:140], metric=dx.metrics.exact_match, optimizer=simba, progress=False, **options
    )


# -- trajectories -------------------------------------------------------------------------------


def test_each_trial_hands_over_every_modules_inputs_and_outputs(data) -> None:
    lm = dx.lab_lm("lab/small")
    program = two_module_program()
    module = program.build(lm=lm)
    kept = Trajectories()
    runner = TrialRunner(module, dx.metrics.exact_match, lm=lm, predictor_trace=kept.hook("evaluation-1"))
    result = runner(TrialTask(index=0, example_id="e0", example=data[0]))

    assert result.ok
    steps = kept.get("evaluation-1", "e0")
    assert steps is not None and [step["module_name"] for step in steps] == ["solve.predict", "check.predict"]
    question = data[0].question
    assert steps[0]["inputs"] == {"question": question}
    assert set(steps[0]["outputs"]) == {"reasoning", "answer"}
    # What check was given is what solve answered: the whole pipeline, not only its final output.
    assert steps[1]["inputs"] == {"question": question, "proposed_answer": steps[0]["outputs"]["answer"]}
    assert json.loads(result.prediction)["answer"] == steps[1]["outputs"]["answer"]
    # Without a hook nothing is captured and the trial is the same.
    plain = TrialRunner(module, dx.metrics.exact_match, lm=lm)(TrialTask(index=0, example_id="e0", example=data[0]))
    assert plain.prediction == result.prediction and plain.score == result.score


def test_trajectories_are_bounded_and_masked() -> None:
    predictor = dspy.Predict("question -> answer")
    module = dspy.Module()
    module.predict = predictor
    huge = "x" * (3 * MAX_FIELD_CHARACTERS)
    secret = "sk-" + "a1B2" * 12
    trace = [
        (predictor, {"question": huge}, dspy.Prediction(answer=secret, api_key="hunter2"))
        for _ in range(MAX_TRAJECTORY_STEPS + 5)
    ]
    trace.append((dspy.Predict("question -> answer"), {"question": "not in the program"}, dspy.Prediction(answer="1")))
    steps = trajectory_of(module, trace)

    assert len(steps) == MAX_TRAJECTORY_STEPS
    assert len(steps[0]["inputs"]["question"]) == MAX_FIELD_CHARACTERS
    assert secret not in json.dumps(steps) and "hunter2" not in json.dumps(steps)
    kept = Trajectories(capacity=3)
    for number in range(5):
        kept.add("evaluation", f"e{number}", steps[:1])
    assert len(kept) == 3 and kept.get("evaluation", "e0") is None and kept.get("evaluation", "e4") is not None


# -- per-module rules ---------------------------------------------------------------------------


def test_per_module_advice_lands_in_each_modules_instructions() -> None:
    lm = dx.lab_lm("lab/small")
    program, slots = lift(two_module_program(), lm=lm, max_demos=4)
    composition = Composition(program, slots, lm=lm, share=True, cross_bootstrap=True, learned_moves=True)
    advice = {"solve.predict": "Multiply the counts of each bag.", "check": "Recheck the sum.", "plan": "ignored"}
    changed, modules = composition.apply_advice(program, advice, max_rules=4)

    assert composition.active and composition.scopes == ["check.predict", "solve.predict"]
    assert modules == ["check.predict", "solve.predict"]
    assert rules_of(changed, slots, "solve.predict") == ["Multiply the counts of each bag."]
    assert rules_of(changed, slots, "check.predict") == ["Recheck the sum."]
    # Advice a module already follows is not added again; nothing new is no candidate.
    assert composition.apply_advice(changed, advice, max_rules=4) is None
    built = dict(changed.build(lm=lm).named_predictors())
    assert "Multiply the counts" in built["solve.predict"].signature.instructions
    assert "Multiply the counts" not in built["check.predict"].signature.instructions


def test_a_modules_advice_is_carried_to_the_modules_that_feed_it() -> None:
    lm = dx.lab_lm("lab/small")
    program, slots = lift(dx.tasks.pipeline_program(), lm=lm, max_demos=4)
    rule, keep = "Multiply the counts of each bag first.", "Keep this module's current approach."
    advice = {"plan": keep, "solve": rule, "verify": keep}
    made = {}
    for upstream_rules in (True, False):
        composition = Composition(
            program, slots, lm=lm, share=True, cross_bootstrap=True, learned_moves=True, upstream_rules=upstream_rules
        )
        made[upstream_rules] = composition.apply_advice(program, advice, max_rules=4)[0]
    # plan's output field (plan) is an input of solve; verify reads no field another stage outputs.
    assert composition.upstream("solve") == {"plan"}
    assert composition.upstream("plan") == set() and composition.upstream("verify") == set()
    assert rules_of(made[True], slots, "plan") == [keep, rule]
    assert rules_of(made[True], slots, "solve") == [rule] and rules_of(made[True], slots, "verify") == [keep]
    assert rules_of(made[False], slots, "plan") == [keep]
    # Upstream is followed through the chain: a stage reading what a stage reading the first wrote.
    composition.fields = {
        "a": ModuleFields(("question",), ("outline",)),
        "b": ModuleFields(("question", "outline"), ("draft",)),
        "c": ModuleFields(("question", "draft"), ("answer",)),
    }
    assert composition.upstream("c") == {"a", "b"} and composition.upstream("b") == {"a"}


def test_a_pipelines_bootstrap_step_carries_whole_pipeline_advice_upstream(data) -> None:
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        result = dx.optimize(
            dx.tasks.pipeline_program(), data[:60], data[60:140], metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=1), budget=dx.Budget(lm_calls=900), seed=12, confirm_fraction=0,
            progress=False,
        )  # fmt: skip
    bootstrap = result.candidates.set_index("candidate_id").loc["c1"]
    assert bootstrap["strategy"] == "bootstrap" and "whole-pipeline contrasts" in bootstrap["rationale"]
    lm = dx.lab_lm("lab/small")
    program, slots = lift(dx.tasks.pipeline_program(), lm=lm, max_demos=4)
    chosen = program.with_values(**{name: bootstrap["values"][name] for name in program.values})
    solve_rules = rules_of(chosen, slots, "solve")
    # Every rule solve was given is in plan too (the stage feeding it); plan's own advice may add more.
    assert solve_rules and set(solve_rules) <= set(rules_of(chosen, slots, "plan"))


def test_rule_proposals_see_the_whole_pipeline_and_advise_each_module(context, data) -> None:
    rule_lm = dx.lab_lm("lab/large")
    result = run(two_module_program(), data, simba={"strategies": ("rule",), "rule_lm": rule_lm}, seed=1)

    rules = result.candidates[result.candidates["strategy"] == "rule"]
    assert not rules.empty and rules["rationale"].str.contains("of the whole pipeline, advice for").all()
    asked = [entry for entry in rule_lm.history if "worse_program_trajectory" in json.dumps(entry["messages"])]
    assert asked
    prompt = json.dumps(asked[0]["messages"])
    assert "solve.predict" in prompt and "check.predict" in prompt and "proposed_answer" in prompt
    # Each module's instructions got advice of its own (the lab LM names the module that slipped).
    advised = [
        (
            values["instructions__solve_predict"].split("\n- ")[1:],
            values["instructions__check_predict"].split("\n- ")[1:],
        )
        for values in rules["values"]
    ]
    assert all(solve and check for solve, check in advised)
    assert any(solve != check for solve, check in advised)


# -- cross-module bootstrap ---------------------------------------------------------------------


def test_cross_module_bootstrap_keeps_a_demo_where_it_helps_and_drops_it_where_it_hurts(context, data) -> None:
    program = dx.Program("tests.composition.DemoPlacement", name="demo-placement")
    result = run(program, data, simba={"strategies": ("demo", "merge"), "max_steps": 3, "patience": 3}, seed=0)

    candidates = result.candidates.set_index("candidate_id")
    placed = candidates[candidates["strategy"] == "demo"]
    gains = placed["screen_mean"] - placed["incumbent_screen_mean"]
    in_solve = placed["rationale"].str.contains("placed in solve")
    in_verify = placed["rationale"].str.contains("placed in verify")
    # Every good trajectory's demo was tried in both modules, and judged on the whole pipeline.
    assert in_solve.sum() >= 2 and in_verify.sum() >= 2
    assert (gains[in_solve] > 0).all() and (gains[in_verify] <= 0).all() and (gains[in_verify] < 0).any()
    best = result.best.values
    assert result.best_id != "c0" and len(best["demos__solve"]) >= 1 and best["demos__verify"] == ()
    assert result.best_result.mean > result.baseline.mean


def test_a_module_where_placed_demos_hurt_is_tried_less_often() -> None:
    lm = dx.lab_lm("lab/small")
    program, slots = lift(two_module_program(), lm=lm, max_demos=4)
    composition = Composition(program, slots, lm=lm, share=True, cross_bootstrap=True, learned_moves=True)
    rng = np.random.default_rng(0)
    for _ in range(PLACEMENT_EVIDENCE - 1):
        composition.record_placement("check.predict", -0.0625)
    assert all(composition.worth_placing("check.predict", rng) for _ in range(50))  # too few screens to judge
    composition.record_placement("check.predict", 0.0)
    for gain in (0.125, -0.0625, 0.0):
        composition.record_placement("solve.predict", gain)
    tried = [composition.worth_placing("check.predict", rng) for _ in range(2000)]
    assert abs(np.mean(tried) - RETRY_PLACEMENT) < 0.03  # still measured, across later settings
    assert all(composition.worth_placing("solve.predict", rng) for _ in range(50))
    with_demo = program.with_values(**{slots.demos["solve.predict"]: [{"question": "q", "answer": "1"}]})
    assert composition.placed_module(program, with_demo) == "solve.predict"
    assert composition.placed_module(program, program) is None


def test_without_cross_bootstrap_each_demo_goes_to_one_module(context, data) -> None:
    program = dx.Program("tests.composition.DemoPlacement", name="demo-placement")
    result = run(program, data, simba={"strategies": ("demo",), "cross_bootstrap": False, "max_steps": 1}, seed=0)

    placed = result.candidates[result.candidates["strategy"] == "demo"]["rationale"]
    assert not placed.empty and not placed.str.contains("placements").any()
    assert placed.str.contains(r"placed in (?:solve|verify):").all()


# -- shared variables ---------------------------------------------------------------------------


def test_a_shared_variable_moves_every_target_as_one_move() -> None:
    lm = dx.lab_lm("lab/small")
    heat = dx.Float(0.3, low=0.0, high=1.0, targets=("temperature:solve.predict", "temperature:check.predict"))
    rigor = dx.Choice(
        "low",
        choices=("low", "high"),
        binding={"low": {"solve.predict": {"suffix": "Be brief."}}, "high": {"check.predict": {"prefix": "Verify."}}},
    )
    own = dx.Float(0.5, low=0.0, high=1.0, target="temperature:check.predict")
    program, slots = lift(two_module_program(heat=heat, rigor=rigor), lm=lm, max_demos=4)
    assert shared_variables(program, ["heat", "rigor"]) == ["heat", "rigor"]
    alone, _ = lift(two_module_program(own=own), lm=lm, max_demos=4)
    assert shared_variables(alone, ["own"]) == []

    sharing = Composition(program, slots, lm=lm, share=True, cross_bootstrap=True, learned_moves=True)
    assert sharing.mutable(program, ["heat", "rigor"]) == ["heat", "rigor"]
    made = sharing.mutation(program, ["heat"], EffectLedger(), np.random.default_rng(0), temperature=0.05)
    assert made is not None
    mutated, moves, rationale = made
    assert moves == (("heat", moves[0][1]),) and "sets heat" in rationale
    temperatures = {
        name: predictor.lm.kwargs["temperature"] for name, predictor in mutated.build(lm=lm).named_predictors()
    }
    assert temperatures["solve.predict"] == temperatures["check.predict"] == mutated.values["heat"] != 0.3

    holding = Composition(program, slots, lm=lm, share=False, cross_bootstrap=True, learned_moves=True)
    assert holding.mutable(program, ["heat", "rigor"]) == []


def test_without_share_a_run_leaves_a_shared_variable_alone(context, data) -> None:
    heat = dx.Float(0.3, low=0.0, high=1.0, targets=("temperature:solve.predict", "temperature:check.predict"))
    program = two_module_program(heat=heat)
    result = run(program, data, simba={"strategies": ("mutate", "demo"), "share": False, "max_steps": 1}, seed=2)
    assert (result.candidates["values"].map(lambda values: values["heat"]) == 0.3).all()
    assert "mutate" not in set(result.candidates["strategy"])
    assert result.config["optimizer_config"]["share"] is False


# -- learned pair moves -------------------------------------------------------------------------


def test_pair_effects_are_learned_per_example_from_measured_gains() -> None:
    effects = MoveEffects()
    ledger = EffectLedger()
    a, b = ("a", "up"), ("b", "up")
    incumbent = {f"e{i}": 0.0 for i in range(8)} | {"e8": 1.0, "e9": 1.0}
    fixed_by_a = incumbent | {"e0": 1.0, "e1": 1.0}
    fixed_by_b = incumbent | {"e1": 1.0, "e2": 1.0, "e3": 1.0}
    effects.record([a], 1, fixed_by_a, incumbent)
    effects.record([b], 1, fixed_by_b, incumbent)
    ledger.record(a, 0.2)
    ledger.record(b, 0.3)
    # Paired: e1 is fixed by both, so together they fix 4 examples (not 5): 0.4, clipped per example.
    assert effects.predicted(a, b, ledger) == pytest.approx(0.4)
    assert effects.interaction(a, b) is None
    # Measured together on the same mini-batch they fixed only e0 and e1: per example, the pair's gain
    # minus both singles' is -1 on e1 (fixed by both), e2 and e3 (fixed by b alone), 0 elsewhere.
    effects.record([a, b], 1, incumbent | {"e0": 1.0, "e1": 1.0}, incumbent)
    value, n = effects.interaction(a, b)
    assert value == pytest.approx(-3 / 10) and n == 10
    # Steps without both singles fall back to the sum of their mean gains.
    other = MoveEffects()
    assert other.predicted(a, b, ledger) == pytest.approx(0.5)


def test_a_pair_is_proposed_only_after_both_singles_gained() -> None:
    program = dx.Program(
        "tests.composition.TwoKnobs",
        variables={
            "knob_a": dx.Float(0.0, low=0.0, high=1.0, target="knob_a"),
            "knob_b": dx.Float(0.0, low=0.0, high=1.0, target="knob_b"),
        },
    )
    lm = dx.lab_lm("lab/small")
    lifted, slots = lift(program, lm=lm, max_demos=4)
    composition = Composition(lifted, slots, lm=lm, share=True, cross_bootstrap=True, learned_moves=True)
    names = ["knob_a", "knob_b"]
    ledger = EffectLedger()
    a, b = ("knob_a", "up"), ("knob_b", "up")
    ledger.record(a, 0.25)
    ledger.record(b, -0.1)
    drawn = [
        composition.mutation(lifted, names, ledger, np.random.default_rng(seed), temperature=0.05) for seed in range(20)
    ]
    assert all(len(moves) == 1 for _, moves, _ in drawn)  # b did not gain: no pair
    ledger.record(b, 0.45)  # b's mean gain is now positive too
    drawn = [
        composition.mutation(lifted, names, ledger, np.random.default_rng(seed), temperature=0.05) for seed in range(20)
    ]
    pairs = [(made, rationale) for made, moves, rationale in drawn if moves == (a, b)]
    assert len(pairs) >= 15
    made, rationale = pairs[0]
    assert made.values["knob_a"] > 0 and made.values["knob_b"] > 0
    assert rationale.startswith("correlated moves: mutation sets knob_a") and "knob_b=up alone +0.175" in rationale
    # Flag off: single moves only, exactly as mutate draws them.
    single = Composition(lifted, slots, lm=lm, share=True, cross_bootstrap=True, learned_moves=False)
    assert all(
        len(single.mutation(lifted, names, ledger, np.random.default_rng(seed), temperature=0.05)[1]) == 1
        for seed in range(20)
    )


def test_a_run_proposes_a_learned_pair_and_reads_it_back_on_resume(tmp_path: Path, data) -> None:
    program = dx.Program(
        "tests.composition.TwoKnobs",
        name="two-knobs",
        variables={
            "knob_a": dx.Float(0.0, low=0.0, high=1.0, target="knob_a"),
            "knob_b": dx.Float(0.0, low=0.0, high=1.0, target="knob_b"),
        },
    )
    options = dict(simba={"strategies": ("mutate",), "max_steps": 4, "patience": 4, "alpha": 0.001}, seed=3)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=tmp_path / "j.duckdb", threads=2) as active:
        first = run(program, data, **options)
        pairs = first.candidates[first.candidates["rationale"].str.startswith("correlated moves")]
        assert not pairs.empty
        assert all(row["knob_a"] != 0.0 or row["knob_b"] != 0.0 for row in pairs["values"])
        active.journal.finish_experiment(first.run_id, status="interrupted")
        again = run(program, data, resume=first.run_id, **options)
    assert again.candidates.drop(columns="values").equals(first.candidates.drop(columns="values"))
    assert again.steps.equals(first.steps)


# -- flags ----------------------------------------------------------------------------------------


def test_flags_are_recorded_and_checked() -> None:
    config = dx.SimbaC(share=False, cross_bootstrap=True, learned_moves=False, upstream_rules=False).config()
    assert (config["share"], config["cross_bootstrap"], config["learned_moves"]) == (False, True, False)
    assert config["upstream_rules"] is False
    with pytest.raises(OptimizerError, match="learned_moves"):
        dx.SimbaC(learned_moves="yes")
    with pytest.raises(OptimizerError, match="upstream_rules"):
        dx.SimbaC(upstream_rules=1)


def test_with_every_flag_off_a_single_module_run_is_the_same_run(data) -> None:
    program = dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        name="cot",
        variables={"temperature": dx.Float(0.3, low=0.0, high=1.0)},
    )
    off = dict(share=False, cross_bootstrap=False, learned_moves=False, upstream_rules=False)
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=False, threads=2):
        plain = run(program, data, simba={"max_steps": 2, **off}, seed=5)
        default = run(program, data, simba={"max_steps": 2}, seed=5)
    columns = ["candidate_id", "strategy", "rationale", "screen_mean", "val_mean"]
    # One predictor, one typed variable: nothing to compose, share or pair, so the flags change nothing.
    assert plain.candidates[columns].equals(default.candidates[columns])
    assert not plain.candidates["rationale"].str.contains("placed in|whole pipeline|correlated").any()

"""Programs to and from DSPy's own format: dx.Program.from_dspy, to_dspy, save_dspy."""

import json
from pathlib import Path

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning, ProgramSpecError
from dspex_lab.optimization._space import lift
from dspex_lab.tasks.pipeline import PlanSolveVerify

LAB = dx.lab_lm("lab/small")
QUESTIONS = [example.question for example in dx.datasets.arithmetic(6, seed=3)]
# How a saved state of each built-in is read back: its class and the signature it was constructed with.
CHAIN = {"module_class": "dspy.ChainOfThought", "signature": "question -> answer"}
PREDICT = {"module_class": "dspy.Predict", "signature": "question -> answer"}
PLAN_DEMO = {
    "question": "Tom has 3 apples and buys 2 more. How many apples does he have now?",
    "plan": "1. buys 2: add",
}


def answers(module: dspy.Module) -> list[str]:
    with dspy.context(lm=LAB):
        return [module(question=question).answer for question in QUESTIONS]


def compiled_pipeline() -> PlanSolveVerify:
    """A PlanSolveVerify as a DSPy user leaves it after compiling: new instructions, demos, one stage's LM."""
    module = PlanSolveVerify()
    module.solve.signature = module.solve.signature.with_instructions("Solve the problem. Check every sum twice.")
    module.plan.demos = [dspy.Example(**PLAN_DEMO).with_inputs("question")]
    module.verify.lm = LAB.copy(temperature=0.0)
    return module


def test_a_saved_pipeline_becomes_a_program_that_predicts_as_it_did(tmp_path: Path):
    module = compiled_pipeline()
    module.save(tmp_path / "psv.json")

    program = dx.Program.from_dspy(tmp_path / "psv.json", module_class="lab.PlanSolveVerify")

    assert program.name == "psv"
    assert program.values["instructions__solve"] == "Solve the problem. Check every sum twice."
    assert program.values["demos__plan"] == (PLAN_DEMO,)
    assert program.values["model__verify"] == "lab/small"
    assert program.values["temperature__verify"] == 0.0
    assert "model__solve" not in program.variables  # solve ran on the context's LM, and still does
    rebuilt = program.to_dspy(lm=LAB)
    assert rebuilt.dump_state() == module.dump_state()
    assert answers(rebuilt) == answers(module)
    # The live module lifts to the same spec as its saved state.
    assert dx.Program.from_dspy(module).with_name("psv") == program


def test_a_program_saved_for_dspy_loads_in_plain_dspy_with_the_same_predictions(tmp_path: Path):
    base = dx.tasks.pipeline_program()
    variables = {
        **base.variables,
        "instructions__solve": dx.Text("Solve it step by step.", target="instructions:solve"),
    }
    program = dx.Program(base.module, name="psv", variables=variables).with_values(
        rigor="strict", demos_plan=[PLAN_DEMO]
    )

    written = program.save_dspy(tmp_path / "psv.json", lm=LAB)

    fresh = PlanSolveVerify()
    # Each stage's LM is the lab LM, a custom LM class: DSPy imports one only when told the file is trusted.
    with pytest.raises(ValueError, match="custom serialized LM class"):
        fresh.load(written)
    fresh.load(written, allow_unsafe_lm_state=True)
    built = program.build(lm=LAB)
    assert fresh.dump_state() == built.dump_state()
    assert fresh.solve.signature.instructions.endswith("Solve it step by step.")
    assert answers(fresh) == answers(built)
    # And back: the saved file lifts to a program predicting the same again.
    assert answers(dx.Program.from_dspy(written, module_class="lab.PlanSolveVerify").build(lm=LAB)) == answers(built)


def test_a_built_in_module_round_trips_through_plain_load(tmp_path: Path):
    program = dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        variables={
            "instructions": dx.Text("Answer with the final number only."),
            "demos": dx.Demos([{"question": "What is 2 plus 3?", "reasoning": "2 + 3 = 5", "answer": "5"}]),
        },
    )
    program.save_dspy(tmp_path / "cot.json")
    fresh = dspy.ChainOfThought("question -> answer")
    fresh.load(tmp_path / "cot.json")  # no LM in the file: DSPy's plain load restores it
    assert fresh.dump_state() == program.to_dspy().dump_state()
    assert answers(fresh) == answers(program.to_dspy())

    again = dx.Program.from_dspy(tmp_path / "cot.json", **CHAIN)
    assert again.values == program.values


def test_a_program_compiled_by_bootstrap_few_shot_round_trips(tmp_path: Path):
    train = [
        dspy.Example(question=example.question, answer=example.answer).with_inputs("question")
        for example in dx.datasets.arithmetic(8, seed=5)
    ]
    with dspy.context(lm=LAB):
        compiled = dspy.BootstrapFewShot(
            metric=lambda gold, prediction, trace=None: gold.answer == prediction.answer,
            max_bootstrapped_demos=3,
            max_labeled_demos=2,
        ).compile(dspy.ChainOfThought("question -> answer"), trainset=train)
    compiled.save(tmp_path / "compiled.json")

    program = dx.Program.from_dspy(tmp_path / "compiled.json", **CHAIN)

    assert any(demo.get("augmented") for demo in program.values["demos"])  # bootstrapped traces, kept whole
    assert program.to_dspy().dump_state() == compiled.dump_state()
    assert answers(program.to_dspy()) == answers(compiled)


def test_a_live_built_in_module_gives_its_signature_with_types():
    chain = dspy.ChainOfThought("question -> answer")
    chain.predict.demos = [dspy.Example(question="What is 1 plus 1?", reasoning="1 + 1 = 2", answer="2")]
    lifted = dx.Program.from_dspy(chain)
    assert (lifted.module, lifted.signature) == ("dspy.ChainOfThought", "question -> answer")
    assert answers(lifted.build()) == answers(chain)

    typed = dx.Program.from_dspy(dspy.Predict("question, hint: list[str] -> answer: int"))
    assert typed.signature == "question, hint: list[str] -> answer: int"
    assert typed.build().signature.fields["answer"].annotation is int


def test_the_variables_are_those_simba_c_tunes():
    program = dx.Program.from_dspy(compiled_pipeline())
    lifted, slots = lift(program, lm=LAB, max_demos=8)
    assert lifted.variables == program.variables  # SIMBA-C adds no variable of its own: it tunes the imported ones
    assert dict(slots.instructions) == {stage: f"instructions__{stage}" for stage in ("plan", "solve", "verify")}
    assert dict(slots.demos) == {stage: f"demos__{stage}" for stage in ("plan", "solve", "verify")}

    single, single_slots = lift(dx.Program.from_dspy(dspy.Predict("question -> answer")), lm=LAB, max_demos=8)
    assert dict(single_slots.instructions) == {"": "instructions"}
    assert dict(single_slots.demos) == {"": "demos"}
    assert sorted(single.variables) == ["demos", "instructions"]


def test_pickles_are_refused_and_never_read(tmp_path: Path):
    chain = dspy.ChainOfThought("question -> answer")
    chain.save(tmp_path / "whole", save_program=True)
    with pytest.raises(ProgramSpecError, match=r"whole is a directory \(program.pkl: saved with save_program=True\)"):
        dx.Program.from_dspy(tmp_path / "whole", **CHAIN)
    # Not a pickle at all: refusing by name, not by reading, is what keeps a real one from running.
    (tmp_path / "state.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ProgramSpecError, match=r"state.pkl: dspex_lab reads only DSPy's JSON state"):
        dx.Program.from_dspy(tmp_path / "state.pkl", **CHAIN)
    with pytest.raises(ProgramSpecError, match=r"must end with \.json"):
        dx.Program.from_dspy(chain).save_dspy(tmp_path / "out.pkl")


def test_a_saved_state_needs_its_class(tmp_path: Path):
    dspy.Predict("question -> answer").save(tmp_path / "qa.json")
    with pytest.raises(ProgramSpecError, match=r"qa.json: a saved DSPy state does not name its module class"):
        dx.Program.from_dspy(tmp_path / "qa.json")
    with pytest.raises(ProgramSpecError, match=r"qa.json: dspy.Predict is constructed with a signature.*signature="):
        dx.Program.from_dspy(tmp_path / "qa.json", module_class="dspy.Predict")
    with pytest.raises(ProgramSpecError, match="saved predictors are not the module's"):
        dx.Program.from_dspy(tmp_path / "qa.json", module_class="lab.PlanSolveVerify")

    class Unregistered(dspy.Module):
        def __init__(self) -> None:
            super().__init__()
            self.answer = dspy.Predict("question -> answer")

    with pytest.raises(ProgramSpecError, match=r"the Unregistered module: .*register it first"):
        dx.Program.from_dspy(Unregistered())


def test_files_over_the_limits_are_refused(tmp_path: Path):
    big = tmp_path / "big.json"
    with big.open("w") as file:
        file.write("{" + " " * dx.program.MAX_DSPY_FILE_BYTES + "}")
    with pytest.raises(
        ProgramSpecError, match=rf"big.json: .* more than the limit of {dx.program.MAX_DSPY_FILE_BYTES:,}"
    ):
        dx.Program.from_dspy(big, **PREDICT)

    predict = dspy.Predict("question -> answer")
    predict.demos = [
        dspy.Example(question=f"q{index}", answer=str(index)) for index in range(dx.program.MAX_DSPY_DEMOS + 1)
    ]
    predict.save(tmp_path / "many.json")
    with pytest.raises(ProgramSpecError, match=r"many.json, predictor 'self': 9 demos, more than the limit of 8"):
        dx.Program.from_dspy(tmp_path / "many.json", **PREDICT)


def test_a_saved_lm_keeps_only_checked_settings_and_never_its_endpoint(tmp_path: Path):
    predict = dspy.Predict("question -> answer")
    predict.lm = dspy.LM(
        "openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="sk-test-0123456789abcdef", max_tokens=300
    )
    predict.save(tmp_path / "qa.json")
    state = json.loads((tmp_path / "qa.json").read_text())
    state["lm"].update(temperature=5.0, top_p=0.5)
    (tmp_path / "qa.json").write_text(json.dumps(state))

    with pytest.warns(DspexLabWarning, match=r"temperature \(.*in \[0, 2\].*top_p \(not a program setting\)") as caught:
        program = dx.Program.from_dspy(tmp_path / "qa.json", **PREDICT)
    assert "api_base (an endpoint or credential never travels" in str(caught[0].message)
    assert program.values == {
        "instructions": "Given the fields `question`, produce the fields `answer`.",
        "demos": (),
        "model": "openai/gpt-4o-mini",
        "max_tokens": 300,
    }
    assert "127.0.0.1" not in program.to_json()
    # The saved model is checked when the program runs, as any spec's model is.
    with pytest.raises(ProgramSpecError, match="selects model 'openai/gpt-4o-mini'"):
        program.build(lm=LAB)


def test_save_dspy_writes_no_endpoint_and_plain_dspy_restores_the_lm(tmp_path: Path):
    run_lm = dspy.LM("openai/gpt-4o-mini", api_base="http://127.0.0.1:9/v1", api_key="sk-test-0123456789abcdef")
    program = dx.Program(
        "dspy.Predict", signature="question -> answer", variables={"temperature": dx.Float(0.4, low=0.0, high=1.0)}
    )
    program.save_dspy(tmp_path / "qa.json", lm=run_lm)
    text = (tmp_path / "qa.json").read_text()
    assert "127.0.0.1" not in text and "sk-test" not in text
    fresh = dspy.Predict("question -> answer")
    fresh.load(tmp_path / "qa.json")
    assert (fresh.lm.model, fresh.lm.kwargs["temperature"]) == ("openai/gpt-4o-mini", 0.4)


def test_state_a_program_cannot_carry_is_refused(tmp_path: Path):
    chain = dspy.ChainOfThought("question -> answer")
    chain.save(tmp_path / "cot.json")
    state = json.loads((tmp_path / "cot.json").read_text())

    changed = json.loads(json.dumps(state))
    changed["predict"]["signature"]["fields"][2]["prefix"] = "Final Answer:"  # as COPRO rewrites it
    (tmp_path / "prefix.json").write_text(json.dumps(changed))
    with pytest.raises(ProgramSpecError, match=r"prefix.json: predictor 'predict''s saved field texts .* not those"):
        dx.Program.from_dspy(tmp_path / "prefix.json", **CHAIN)

    extra = json.loads(json.dumps(state))
    extra["predict"]["callbacks"] = ["os.system"]  # DSPy's load_state would set it as an attribute
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    with pytest.raises(ProgramSpecError, match=r"extra.json: predictor 'predict' has keys \['callbacks'\]"):
        dx.Program.from_dspy(tmp_path / "extra.json", **CHAIN)

    (tmp_path / "broken.json").write_text('{"predict": ')
    with pytest.raises(ProgramSpecError, match=r"broken.json is not valid JSON"):
        dx.Program.from_dspy(tmp_path / "broken.json", **CHAIN)

    configured = dspy.Predict("question -> answer", temperature=0.9)
    with pytest.raises(ProgramSpecError, match=r"constructed with settings \{'temperature': 0.9\}"):
        dx.Program.from_dspy(configured)

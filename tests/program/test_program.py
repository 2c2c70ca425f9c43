import json
import subprocess
import sys

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.errors import ModuleNotAllowedError, ProgramSpecError, VariableError


def full_program() -> dx.Program:
    return dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        name="qa-cot",
        variables={
            "temperature": dx.Float(0.7, low=0.0, high=1.5),
            "max_tokens": dx.Int(256, low=16, high=4096),
            "model": dx.Choice("lab/small", choices=["lab/small", "lab/large"]),
            "instructions": dx.Text("Answer with a number."),
            "demos": dx.Demos(max=4),
            "module": dx.ModuleType("dspy.ChainOfThought", choices=["dspy.Predict", "dspy.ChainOfThought"]),
            "verbose": dx.Bool(False, target="verbose_flag"),
        },
        constraints=["temperature <= 1.0 or model == 'lab/large'"],
    )


def test_json_round_trip_keeps_everything():
    program = full_program().with_values(demos=[{"question": "1+1?", "answer": "2"}])
    again = dx.Program.from_json(program.to_json())
    assert again == program
    assert again.fingerprint == program.fingerprint
    assert again.values == program.values
    assert again.constraints[0].expression == "temperature <= 1.0 or model == 'lab/large'"


def test_fingerprint_is_stable_across_processes():
    program = full_program()
    code = "import dspex_lab as dx, sys; print(dx.Program.from_json(sys.stdin.read()).fingerprint)"
    fingerprints = {
        subprocess.run(
            [sys.executable, "-c", code],
            input=program.to_json(),
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout.strip()
        for seed in (1, 2)
    }
    assert fingerprints == {program.fingerprint}


def test_fingerprint_changes_with_values_but_not_name():
    program = full_program()
    assert program.with_values(temperature=0.2).fingerprint != program.fingerprint
    assert program.with_name("other").fingerprint == program.fingerprint


def test_with_values_is_a_copy_and_validates():
    program = full_program()
    cooler = program.with_values(temperature=0.2)
    assert program.values["temperature"] == 0.7
    assert cooler.values["temperature"] == 0.2
    with pytest.raises(AttributeError):
        program.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"temperature": 3.0}, "variable 'temperature': 3.0 is not allowed; allowed: a float in [0.0, 1.5]"),
        ({"temperature": "hot"}, "expected a number"),
        ({"max_tokens": 8}, "variable 'max_tokens': 8 is not allowed; allowed: an integer in [16, 4096]"),
        ({"max_tokens": 20.5}, "expected an integer"),
        ({"model": "gpt-9"}, "allowed: one of ['lab/small', 'lab/large']"),
        ({"demos": [{"q": 1}] * 5}, "at most 4 demos"),
        ({"verbose": "yes"}, "True or False"),
        ({"colour": "red"}, "unknown variable"),
    ],
)
def test_variable_errors_name_variable_and_allowed_range(values, fragment):
    with pytest.raises(VariableError) as caught:
        full_program().with_values(**values)
    assert fragment in str(caught.value)
    assert caught.value.variable == next(iter(values))


def test_cross_variable_constraint_names_both_variables():
    with pytest.raises(VariableError) as caught:
        full_program().with_values(temperature=1.2)
    assert caught.value.variable == "model, temperature"
    assert "temperature <= 1.0 or model == 'lab/large'" in str(caught.value)
    assert full_program().with_values(temperature=1.2, model="lab/large").values["temperature"] == 1.2


def test_constraint_refuses_unsafe_syntax():
    with pytest.raises(ProgramSpecError, match="only"):
        dx.Constraint("__import__('os').system('true')")
    with pytest.raises(ProgramSpecError):
        dx.Constraint("temperature.real > 0")


def test_seeded_sample_is_deterministic_and_valid():
    program = full_program()
    first = [program.sample(seed=seed).values for seed in range(20)]
    second = [program.sample(seed=seed).values for seed in range(20)]
    assert first == second
    assert len({values["temperature"] for values in first}) == 20
    for values in first:
        assert 0.0 <= values["temperature"] <= 1.5
        assert values["temperature"] <= 1.0 or values["model"] == "lab/large"
        assert values["module"] in ("dspy.Predict", "dspy.ChainOfThought")


def test_build_applies_every_binding():
    program = full_program().with_values(
        temperature=0.3,
        max_tokens=64,
        module="dspy.Predict",
        instructions="Be exact.",
        demos=[{"question": "1+1?", "answer": "2"}],
    )
    with pytest.raises(ProgramSpecError, match="verbose_flag"):
        program.build()
    simple = dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        variables={
            "temperature": dx.Float(0.3, low=0, high=1),
            "model": dx.Choice("lab/large", choices=["lab/small", "lab/large"]),
            "instructions": dx.Text("Be exact."),
            "demos": dx.Demos([{"question": "1+1?", "answer": "2"}], max=2),
            "module": dx.ModuleType("dspy.Predict", choices=["dspy.Predict", "dspy.ChainOfThought"]),
        },
    )
    module = simple.build()
    assert type(module) is dspy.Predict
    assert module.signature.instructions == "Be exact."
    assert [demo.answer for demo in module.demos] == ["2"]
    assert module.lm.model == "lab/large"
    assert module.lm.kwargs["temperature"] == 0.3


def test_build_instructions_per_predictor_and_attribute_paths():
    @dx.register("TwoStep")
    class TwoStep(dspy.Module):
        def __init__(self):
            super().__init__()
            self.draft = dspy.Predict("question -> draft")
            self.final = dspy.Predict("question, draft -> answer")
            self.retrieve = type("Retriever", (), {"k": 3})()

        def forward(self, question):
            draft = self.draft(question=question).draft
            return self.final(question=question, draft=draft)

    program = dx.Program(
        "TwoStep",
        variables={
            "final_instructions": dx.Text("Only the number.", target="instructions:final"),
            "k": dx.Int(5, low=1, high=10, target="retrieve.k"),
        },
    )
    module = program.build()
    assert module.final.signature.instructions == "Only the number."
    assert module.draft.signature.instructions != "Only the number."
    assert module.retrieve.k == 5
    wrong = dx.Program("TwoStep", variables={"x": dx.Text("a", target="instructions:nope")})
    with pytest.raises(ProgramSpecError, match="predictors: \\['draft', 'final'\\]"):
        wrong.build()


@pytest.mark.parametrize("module", ["os.system", "subprocess.Popen", "builtins.eval"])
def test_hydration_refuses_modules_outside_the_allow_list(module):
    with pytest.raises(ModuleNotAllowedError) as caught:
        dx.Program(module, signature="question -> answer")
    assert module in str(caught.value)
    assert "dspy." in str(caught.value)


def test_spec_from_untrusted_json_cannot_import_arbitrary_code():
    spec = json.dumps({"module": "os.system", "signature": "question -> answer"})
    with pytest.raises(ModuleNotAllowedError):
        dx.Program.from_json(spec)
    spec = json.dumps(
        {
            "module": "dspy.Predict",
            "signature": "question -> answer",
            "variables": {"m": {"type": "module_type", "value": "os.system", "choices": ["os.system"]}},
        }
    )
    with pytest.raises(ModuleNotAllowedError):
        dx.Program.from_json(spec)


def test_dspy_names_that_are_not_modules_are_refused():
    with pytest.raises(ProgramSpecError, match=r"not a dspy\.Module"):
        dx.Program("dspy.Example")
    with pytest.raises(ProgramSpecError, match="does not exist"):
        dx.Program("dspy.NoSuchModule")


def test_bad_specs_raise_program_spec_errors():
    with pytest.raises(ProgramSpecError, match="not valid JSON: line 1"):
        dx.Program.from_json("{not json")
    with pytest.raises(ProgramSpecError, match="unknown keys"):
        dx.Program.from_json(json.dumps({"module": "dspy.Predict", "signatur": "a -> b"}))
    with pytest.raises(ProgramSpecError, match="signature"):
        dx.Program("dspy.Predict", signature="question answer")
    with pytest.raises(ProgramSpecError, match="must be a Float"):
        dx.Program("dspy.Predict", signature="a -> b", variables={"temperature": dx.Text("hot")})
    with pytest.raises(ProgramSpecError, match="unknown variables"):
        dx.Program("dspy.Predict", signature="a -> b", constraints=["x > 1"])


def test_register_refuses_non_modules_and_unnamed_classes():
    with pytest.raises(ProgramSpecError):
        dx.register("NotAModule")(dict)

    class Unregistered(dspy.Module):
        pass

    with pytest.raises(ProgramSpecError, match="register it first"):
        dx.Program(Unregistered)


def test_program_accepts_dspy_classes_directly():
    program = dx.Program(dspy.Predict, signature="question -> answer")
    assert program.module == "dspy.Predict"
    assert "dspex-program" in program._repr_html_()


def test_with_values_variants_of_a_named_program_get_a_distinguishable_name():
    program = full_program().with_name("qa")
    cooler = program.with_values(temperature=0.2)
    assert cooler.name == "qa[temperature=0.2]"
    assert cooler.with_values(temperature=0.3, model="lab/large").name == "qa[temperature=0.3,model=lab/large]"
    assert cooler.fingerprint == program.with_name("other").with_values(temperature=0.2).fingerprint
    assert cooler.with_name("cool").name == "cool"
    assert cooler.with_name("cool").with_values(max_tokens=64).name == "cool[max_tokens=64]"
    long = program.with_values(instructions="Think step by step, then answer with one number only.")
    assert long.name == "qa[instructions=Think step by step, the…]"
    unnamed = dx.Program("dspy.Predict", signature="question -> answer", variables={"temperature": dx.Float(0.7)})
    assert unnamed.with_values(temperature=0.2).name == "Predict"

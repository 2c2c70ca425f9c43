"""Multi-module programs: per-predictor LM targets, several targets per variable, semantic bindings."""

import json

import dspy
import pytest

import dspex_lab as dx
from dspex_lab.errors import ProgramSpecError, VariableError
from dspex_lab.program import Binding, BoundSettings, PredictorSettings
from dspex_lab.program._bindings import (
    MAX_BINDING_CASES,
    MAX_BINDING_TEXT_CHARACTERS,
    MAX_BINDING_TOTAL_CHARACTERS,
    MAX_BOUND_PREDICTORS,
)

MODULE = "test.bindings.ThreeStage"


@dx.register(MODULE)
class ThreeStage(dspy.Module):
    """Plan, solve, verify: three predictors, each with its own instructions."""

    def __init__(self):
        super().__init__()
        self.plan = dspy.Predict(dspy.Signature("question -> plan", "Plan the solution."))
        self.solve = dspy.Predict(dspy.Signature("question, plan -> answer", "Solve it."))
        self.verify = dspy.Predict(dspy.Signature("question, answer -> verdict", "Check the answer."))

    def forward(self, question):
        plan = self.plan(question=question).plan
        answer = self.solve(question=question, plan=plan).answer
        return dspy.Prediction(answer=answer, verdict=self.verify(question=question, answer=answer).verdict)


STEP_BY_STEP = "Work step by step."
RIGOR = {
    "high": {
        "solve": {"temperature": 0.0, "prefix": STEP_BY_STEP},
        "verify": {"temperature": 0.0, "model": "lab/large", "suffix": "Reject anything unchecked."},
    },
    "low": {"solve": {"temperature": 0.9, "max_tokens": 64}},
}


def rigor(binding=RIGOR) -> dx.Choice:
    return dx.Choice("high", choices=["low", "high"], binding=binding)


def pipeline(**variables) -> dx.Program:
    return dx.Program(MODULE, name="pipeline", variables={"rigor": rigor(), **variables})


def predictors(module: dspy.Module) -> dict:
    return dict(module.named_predictors())


# -- per-predictor LM targets and several targets -------------------------------------------------


def test_per_predictor_targets_set_that_predictors_lm_only():
    program = dx.Program(
        MODULE,
        variables={
            "solve_temperature": dx.Float(0.1, low=0, high=1.5, target="temperature:solve"),
            "verify_tokens": dx.Int(32, low=1, high=512, target="max_tokens:verify"),
            "verify_model": dx.Choice("lab/large", choices=["lab/small", "lab/large"], target="model:verify"),
        },
    )
    built = predictors(program.build(lm=dx.lab_lm("lab/small")))
    assert built["plan"].lm is None  # left on the context LM
    assert built["solve"].lm.model == "lab/small"
    assert built["solve"].lm.kwargs["temperature"] == 0.1
    assert built["verify"].lm.model == "lab/large"
    assert built["verify"].lm.kwargs["max_tokens"] == 32


def test_module_wide_settings_are_the_default_beneath_per_predictor_ones():
    program = dx.Program(
        MODULE,
        variables={
            "temperature": dx.Float(0.5, low=0, high=1.5),
            "solve_temperature": dx.Float(0.1, low=0, high=1.5, target="temperature:solve"),
        },
    )
    built = predictors(program.build(lm=dx.lab_lm("lab/small")))
    assert {name: predictor.lm.kwargs["temperature"] for name, predictor in built.items()} == {
        "plan": 0.5,
        "solve": 0.1,
        "verify": 0.5,
    }


def test_one_variable_binds_several_targets():
    program = dx.Program(
        MODULE,
        variables={
            "temperature": dx.Float(0.3, low=0, high=1.5, targets=("temperature:plan", "temperature:solve")),
        },
    )
    assert program.bound_targets == {"temperature": ("temperature:plan", "temperature:solve")}
    assert program.targets == {"temperature": "temperature:plan, temperature:solve"}
    built = predictors(program.with_values(temperature=0.7).build(lm=dx.lab_lm("lab/small")))
    assert built["plan"].lm.kwargs["temperature"] == built["solve"].lm.kwargs["temperature"] == 0.7
    assert built["verify"].lm is None


def test_several_instruction_targets_share_one_text():
    program = dx.Program(
        MODULE, variables={"style": dx.Text("Be brief.", targets=["instructions:plan", "instructions:verify"])}
    )
    built = predictors(program.build())
    assert built["plan"].signature.instructions == built["verify"].signature.instructions == "Be brief."
    assert built["solve"].signature.instructions == "Solve it."


def test_per_predictor_model_goes_through_the_allow_list():
    program = dx.Program(
        MODULE, variables={"model": dx.Choice("openai/gpt-4o", choices=["openai/gpt-4o"], target="model:solve")}
    )
    with pytest.raises(ProgramSpecError, match="variable 'model' selects model 'openai/gpt-4o'"):
        program.build(lm=dx.lab_lm("lab/small"))


@pytest.mark.parametrize(
    ("variables", "match"),
    [
        (
            {"t": dx.Float(0.1, low=0, high=1, target="temperature:nope")},
            r"variable 't' targets predictor 'nope', which does not exist; predictors: \['plan', 'solve', 'verify'\]",
        ),
        (
            {"rigor": dx.Choice("a", choices=["a"], binding={"a": {"solver": {"temperature": 0.1}}})},
            r"variable 'rigor' targets predictor 'solver', which does not exist; predictors: \['plan',",
        ),
    ],
)
def test_unknown_predictors_are_named_at_build(variables, match):
    program = dx.Program(MODULE, variables=variables)
    with pytest.raises(ProgramSpecError, match=match):
        program.build(lm=dx.lab_lm("lab/small"))


def test_a_binding_is_checked_for_every_value_not_only_the_current_one():
    binding = {"a": {"solve": {"temperature": 0.1}}, "b": {"nope": {"temperature": 0.1}}}
    program = dx.Program(MODULE, variables={"mode": dx.Choice("a", choices=["a", "b"], binding=binding)})
    with pytest.raises(ProgramSpecError, match="predictor 'nope'"):
        program.build(lm=dx.lab_lm("lab/small"))


# -- construction errors: one clear line each -----------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: dx.Float(0.1, target="temperature", targets=("temperature:plan",)), "give target= or targets="),
        (lambda: dx.Float(0.1, targets="temperature:plan"), "targets must be a list"),
        (lambda: dx.Float(0.1, targets=()), "1 to 32 targets"),
        (lambda: dx.Float(0.1, targets=("temperature:a", "temperature:a")), "lists a target twice"),
        (lambda: dx.Float(0.1, targets=("temperature:a", 3)), "each target is a non-empty string"),
        (lambda: dx.Float(0.1, binding={0.1: {}}), "binding= needs a Choice, Bool or Int"),
        (lambda: dx.Text("x", binding={"x": {}}), "binding= needs a Choice, Bool or Int"),
        (
            lambda: dx.ModuleType("dspy.Predict", choices=["dspy.Predict"], binding={"dspy.Predict": {}}),
            "binding= needs a Choice, Bool or Int",
        ),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {}}, target="x"), "give no target or targets"),
        (lambda: dx.Choice("a", choices=["a", "b"], binding={"a": {}}), r"no case for \['b'\] and no default"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {}, "c": {}}), "case 'c' is not one of"),
        (lambda: dx.Bool(True, binding={True: {}}), r"no case for \[False\]"),
        (lambda: dx.Bool(True, binding={1: {}, False: {}}), "case 1 is not one of"),
        (lambda: dx.Int(1, low=0, high=10_000, binding={1: {}}), "give the binding a default"),
        (lambda: dx.Int(1, binding={1: {}}), "give the binding a default"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": {"temperature": 3}}}), r"in \[0, 2\]"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": {"temperature": "hot"}}}), "must be a number"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": {"temperature": True}}}), "must be a number"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": {"max_tokens": 1.5}}}), "must be an integer"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": {"max_tokens": 0}}}), "max_tokens must be in"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": {"prefix": 3}}}), "prefix must be a string"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": {"colour": 3}}}), "unknown setting 'colour'"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"solve": 0.1}}), "settings are a mapping"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": ["solve"]}), "mapping of predictor"),
        (lambda: dx.Choice("a", choices=["a"], binding="solve"), "cases are a mapping"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"_private": {}}}), "is not a predictor name"),
        (lambda: dx.Choice("a", choices=["a"], binding={"a": {"os.path": {}, "": {}}}), "non-empty string"),
    ],
)
def test_bad_variables_get_one_clear_line(make, match):
    with pytest.raises(ProgramSpecError, match=match) as caught:
        make()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("variables", "match"),
    [
        (
            {
                "rigor": rigor(),
                "solve_temperature": dx.Float(0.1, low=0, high=1, target="temperature:solve"),
            },
            "variables 'rigor' and 'solve_temperature' both set temperature of predictor 'solve'",
        ),
        (
            {
                "a": dx.Float(0.1, low=0, high=1, targets=("temperature:plan", "temperature:solve")),
                "b": dx.Float(0.1, low=0, high=1, target="temperature:plan"),
            },
            "variables 'a' and 'b' both set temperature of predictor 'plan'",
        ),
        (
            {"temperature": dx.Float(0.1, low=0, high=1), "warmth": dx.Float(0.1, low=0, high=1, target="temperature")},
            "both set temperature of the whole module",
        ),
        (
            {"rigor": rigor(), "depth": dx.Bool(True, binding={True: {"verify": {"model": "lab/small"}}, False: {}})},
            "variables 'rigor' and 'depth' both set model of predictor 'verify'",
        ),
        ({"t": dx.Text("x", target="temperature:solve")}, "must be a Float"),
        ({"t": dx.Float(0.1, target="temperature:")}, "a predictor name is a non-empty string"),
        ({"t": dx.Float(0.1, target="temperature:__class__")}, "is not a predictor name"),
        ({"t": dx.Float(0.1, targets=("temperature:plan", "max_tokens:plan"))}, "must be a Int"),
        ({"m": dx.ModuleType("dspy.Predict", choices=["dspy.Predict"], target="module:plan")}, "only target"),
        ({"t": dx.Float(0.1, targets=("temperature:plan", "plan.lm"))}, "would replace 'lm'"),
    ],
)
def test_bad_programs_get_one_clear_line(variables, match):
    with pytest.raises(ProgramSpecError, match=match) as caught:
        dx.Program(MODULE, variables=variables)
    assert "\n" not in str(caught.value)


def test_a_module_wide_setting_and_a_binding_do_not_clash():
    program = pipeline(temperature=dx.Float(0.5, low=0, high=1.5))
    built = predictors(program.build(lm=dx.lab_lm("lab/small")))
    assert built["plan"].lm.kwargs["temperature"] == 0.5
    assert built["solve"].lm.kwargs["temperature"] == 0.0


# -- semantic bindings at build ---------------------------------------------------------------------


def test_a_binding_sets_each_bound_predictors_lm_and_wraps_its_instructions():
    built = predictors(pipeline().build(lm=dx.lab_lm("lab/small")))
    assert built["plan"].lm is None
    assert built["plan"].signature.instructions == "Plan the solution."
    assert built["solve"].lm.model == "lab/small"
    assert built["solve"].lm.kwargs["temperature"] == 0.0
    assert built["solve"].signature.instructions == f"{STEP_BY_STEP}\n\nSolve it."
    assert built["verify"].lm.model == "lab/large"
    assert built["verify"].lm.kwargs["temperature"] == 0.0
    assert built["verify"].signature.instructions == "Check the answer.\n\nReject anything unchecked."

    low = predictors(pipeline().with_values(rigor="low").build(lm=dx.lab_lm("lab/small")))
    assert low["solve"].lm.kwargs["temperature"] == 0.9
    assert low["solve"].lm.kwargs["max_tokens"] == 64
    assert low["solve"].signature.instructions == "Solve it."
    assert low["verify"].lm is None


def test_binding_text_wraps_instruction_variables_in_declaration_order():
    program = pipeline(
        solve_instructions=dx.Text("Answer with a number.", target="instructions:solve"),
        careful=dx.Bool(
            True, binding={True: {"solve": {"prefix": "Be careful.", "suffix": "Double-check."}}, False: {}}
        ),
    )
    built = predictors(program.build(lm=dx.lab_lm("lab/small")))
    assert built["solve"].signature.instructions == (
        f"{STEP_BY_STEP}\n\nBe careful.\n\nAnswer with a number.\n\nDouble-check."
    )


def test_a_default_covers_the_values_without_a_case():
    program = dx.Program(
        MODULE,
        variables={
            "effort": dx.Int(
                3,
                low=1,
                high=5,
                binding=Binding({5: {"solve": {"max_tokens": 512}}}, default={"solve": {"max_tokens": 64}}),
            )
        },
    )
    assert predictors(program.build(lm=dx.lab_lm("lab/small")))["solve"].lm.kwargs["max_tokens"] == 64
    top = program.with_values(effort=5)
    assert predictors(top.build(lm=dx.lab_lm("lab/small")))["solve"].lm.kwargs["max_tokens"] == 512


def test_effective_says_what_each_predictor_gets_and_from_which_variable():
    program = pipeline(plan_temperature=dx.Float(0.4, low=0, high=1, target="temperature:plan"))
    effective = program.effective()
    assert list(effective) == ["plan", "solve", "verify"]
    assert all(isinstance(record, PredictorSettings) for record in effective.values())
    assert effective["plan"].temperature == 0.4
    assert effective["plan"].sources == {"temperature": ("plan_temperature",)}
    assert effective["solve"].temperature == 0.0
    assert effective["solve"].base_instructions == "Solve it."
    assert effective["solve"].instructions == f"{STEP_BY_STEP}\n\nSolve it."
    assert effective["solve"].sources == {"temperature": ("rigor",), "prefix": ("rigor",)}
    assert effective["verify"].model == "lab/large"
    assert effective["verify"].suffixes == ("Reject anything unchecked.",)
    # What effective() reports is what build() configures.
    built = predictors(program.build(lm=dx.lab_lm("lab/small")))
    for name, record in effective.items():
        assert built[name].signature.instructions == record.instructions
        assert built[name].lm.kwargs["temperature"] == record.temperature
    assert json.loads(json.dumps(effective["verify"].to_dict()))["sources"] == {
        "temperature": ["rigor"],
        "model": ["rigor"],
        "suffix": ["rigor"],
    }


def test_an_optimizer_lifts_the_instructions_without_the_bindings_text():
    from dspex_lab.optimization._space import lift

    lifted, slots = lift(pipeline(), lm=dx.lab_lm("lab/small"), max_demos=2)
    assert slots.base_instructions["solve"] == "Solve it."
    rewritten = lifted.with_values(**{slots.instructions["solve"]: "Solve it. Show the sum."})
    solve = predictors(rewritten.build(lm=dx.lab_lm("lab/small")))["solve"]
    assert solve.signature.instructions == f"{STEP_BY_STEP}\n\nSolve it. Show the sum."


def test_the_built_program_runs_end_to_end_on_the_lab_lm():
    module = pipeline().build(lm=dx.lab_lm("lab/small"))
    with dspy.context(lm=dx.lab_lm("lab/small")):
        prediction = module(question="What is 2 + 3?")
    assert isinstance(prediction.answer, str)
    built = predictors(module)
    # Each bound predictor called its own LM, with the binding's prefix in its prompt.
    assert [call["model"] for call in built["solve"].lm.history] == ["lab/small"]
    assert [call["model"] for call in built["verify"].lm.history] == ["lab/large"]
    assert STEP_BY_STEP in built["solve"].lm.history[0]["messages"][0]["content"]


# -- spec: JSON, fingerprint, values, display ------------------------------------------------------


def test_json_round_trip_keeps_targets_and_binding():
    program = pipeline(
        max_tokens=dx.Int(128, low=16, high=512, targets=("max_tokens:plan", "max_tokens:verify")),
        effort=dx.Int(2, low=1, high=3, binding={1: {}, 2: {"plan": {"prefix": "Plan in two steps."}}, 3: {}}),
        careful=dx.Bool(False, binding=Binding({True: {"verify": {"suffix": "Again."}}}, default={})),
    )
    data = json.loads(program.to_json())
    assert data["variables"]["max_tokens"]["targets"] == ["max_tokens:plan", "max_tokens:verify"]
    assert data["variables"]["rigor"]["binding"]["cases"][0] == {
        "value": "high",
        "predictors": {
            "solve": {"temperature": 0.0, "prefix": STEP_BY_STEP},
            "verify": {"temperature": 0.0, "model": "lab/large", "suffix": "Reject anything unchecked."},
        },
    }
    assert data["variables"]["careful"]["binding"]["cases"] == [
        {"value": True, "predictors": {"verify": {"suffix": "Again."}}}
    ]
    again = dx.Program.from_json(program.to_json())
    assert again == program
    assert again.fingerprint == program.fingerprint
    assert again.effective() == program.effective()


def test_fingerprint_changes_with_the_binding_and_the_targets():
    base = pipeline()
    other_text = {**RIGOR, "high": {**RIGOR["high"], "solve": {"temperature": 0.0, "prefix": "Think."}}}
    assert pipeline().fingerprint == base.fingerprint
    assert dx.Program(MODULE, name="pipeline", variables={"rigor": rigor(binding=other_text)}).fingerprint != (
        base.fingerprint
    )
    assert base.with_values(rigor="low").fingerprint != base.fingerprint
    one = dx.Program(MODULE, variables={"t": dx.Float(0.3, low=0, high=1, targets=("temperature:plan",))})
    two = dx.Program(
        MODULE, variables={"t": dx.Float(0.3, low=0, high=1, targets=("temperature:plan", "temperature:solve"))}
    )
    assert one.fingerprint != two.fingerprint


def test_with_values_and_sample_keep_the_binding():
    program = pipeline()
    with pytest.raises(VariableError, match="variable 'rigor'"):
        program.with_values(rigor="extreme")
    drawn = {program.sample(seed=seed).values["rigor"] for seed in range(20)}
    assert drawn == {"low", "high"}
    sampled = program.sample(seed=3)
    assert sampled.variables["rigor"].binding == program.variables["rigor"].binding
    expected = 0.9 if sampled.values["rigor"] == "low" else 0.0
    assert sampled.effective()["solve"].temperature == expected


def test_html_shows_what_each_bound_predictor_gets():
    page = pipeline()._repr_html_()
    assert "<th>predictor</th>" in page
    assert "Work step by step." in page
    assert "lab/large" in page
    assert "<td>binding</td>" in page
    plain = dx.Program("dspy.Predict", signature="q -> a", variables={"temperature": dx.Float(0.1, low=0, high=1)})
    assert "<th>predictor</th>" not in plain._repr_html_()
    broken = dx.Program(MODULE, variables={"t": dx.Float(0.1, low=0, high=1, target="temperature:nope")})
    assert "which does not exist" in broken._repr_html_()


def test_bound_settings_and_binding_have_a_python_api():
    settings = BoundSettings.from_data({"temperature": 1, "max_tokens": 10})
    assert settings == BoundSettings(temperature=1.0, max_tokens=10)
    assert settings.lm_settings() == {"temperature": 1.0, "max_tokens": 10}
    binding = Binding(RIGOR)
    assert binding.predictors() == ["solve", "verify"]
    assert ("model", "verify") in binding.claims()
    assert binding.settings_for("nothing") == {}
    assert dx.Binding is Binding


# -- hostile specs ---------------------------------------------------------------------------------


def spec_with(variable: dict) -> str:
    return json.dumps({"module": MODULE, "variables": {"rigor": variable}})


def choice(binding) -> dict:
    return {"type": "choice", "value": "a", "choices": ["a"], "binding": binding}


def case(predictors: dict) -> dict:
    return {"cases": [{"value": "a", "predictors": predictors}]}


@pytest.mark.parametrize(
    ("variable", "match"),
    [
        (choice(case({"solve": {"api_base": "http://127.0.0.1:1"}})), "'api_base' is refused"),
        (choice(case({"solve": {"api_key": "x"}})), "'api_key' is refused"),
        (choice(case({"solve": {"headers": {"a": "b"}}})), "'headers' is refused"),
        (choice(case({"solve": {"model": "http://127.0.0.1:1/v1"}})), "not an endpoint or a credential"),
        (choice(case({"solve": {"model": "sk-proj-" + "a1" * 20}})), "not an endpoint or a credential"),
        (choice(case({"solve": {"prefix": "use sk-proj-" + "a1" * 20}})), "key-shaped value"),
        (choice(case({"os.system": {"prefix": "x"}})), None),  # a dotted name is syntax-valid: refused at build
        (choice(case({"solve": {"prefix": "x" * (MAX_BINDING_TEXT_CHARACTERS + 1)}})), "more than 4,000"),
        (
            choice(case({f"p{index}": {} for index in range(MAX_BOUND_PREDICTORS + 1)})),
            f"more than {MAX_BOUND_PREDICTORS}",
        ),
        (
            {
                "type": "int",
                "value": 0,
                "low": 0,
                "high": 10**6,
                "binding": {"cases": [{"value": index, "predictors": {}} for index in range(MAX_BINDING_CASES + 1)]},
            },
            f"more than {MAX_BINDING_CASES} cases",
        ),
        (
            {
                "type": "int",
                "value": 0,
                "low": 0,
                "high": 100,
                "binding": {
                    "cases": [
                        {"value": index, "predictors": {"solve": {"prefix": "x" * MAX_BINDING_TEXT_CHARACTERS}}}
                        for index in range(MAX_BINDING_TOTAL_CHARACTERS // MAX_BINDING_TEXT_CHARACTERS + 1)
                    ],
                    "default": {},
                },
            },
            "characters of prompt text in all",
        ),
        (choice({"cases": {"a": {}}}), "binding must be a JSON object"),
        (choice([["a", {}]]), "binding must be a JSON object"),
        (choice({"cases": [], "import": "os"}), "unknown keys"),
        (choice({"cases": [{"value": "a"}]}), "a case is"),
        (choice({"cases": [{"value": "a", "predictors": {"solve": {"temperature": float("inf")}}}]}), None),
        (choice({"cases": [{"value": "a", "predictors": {}}, {"value": "a", "predictors": {}}]}), "given twice"),
        (choice(case({"solve": {"temperature": [0.1]}})), "must be a number"),
        ({"type": "float", "value": 0.1, "targets": "temperature:solve"}, "targets must be a list"),
        ({"type": "float", "value": 0.1, "targets": [{"a": 1}]}, "each target is a non-empty string"),
    ],
)
def test_hostile_specs_get_one_clear_error(variable, match):
    text = spec_with(variable)
    with pytest.raises(ProgramSpecError) as caught:
        program = dx.Program.from_json(text)
        program.build(lm=dx.lab_lm("lab/small"))
    message = str(caught.value)
    assert "\n" not in message
    assert len(message) < 600
    assert message.startswith("variable 'rigor'") or "program spec" in message
    if match is not None:
        assert match in message


def test_a_non_json_binding_value_is_refused():
    with pytest.raises(ProgramSpecError, match="must be a number"):
        dx.Choice("a", choices=["a"], binding={"a": {"solve": {"temperature": object()}}})
    with pytest.raises(ProgramSpecError, match="settings are a mapping"):
        dx.Choice("a", choices=["a"], binding={"a": {"solve": {1, 2}}})


def test_a_worker_rebuilds_the_bound_program_from_its_spec_alone():
    from dspex_lab.engine import RetryPolicy, TrialRunner
    from dspex_lab.engine._remote import plan_for, runner_for

    lm = dx.lab_lm("lab/small")
    program = pipeline(plan_temperature=dx.Float(0.4, low=0, high=1, target="temperature:plan"))
    module = program.with_values(rigor="high").build(lm=lm)
    plan = plan_for(TrialRunner(module, dx.metrics.exact_match, lm=lm, retry=RetryPolicy()), executor="process")
    assert plan.state is None  # the spec carries everything: no predictor state travels beside it
    assert plan.program["variables"]["rigor"]["binding"] == program.variables["rigor"].binding.to_dict()
    runner, _ = runner_for(plan)
    rebuilt = predictors(runner.module)
    for name, predictor in predictors(module).items():
        assert rebuilt[name].signature.instructions == predictor.signature.instructions
        assert (rebuilt[name].lm is None) == (predictor.lm is None)
        if predictor.lm is not None:
            assert rebuilt[name].lm.model == predictor.lm.model
            assert rebuilt[name].lm.kwargs == predictor.lm.kwargs
    assert rebuilt["verify"].lm.model == "lab/large"


def test_predictors_with_the_same_settings_share_one_lm_so_dspy_finds_the_modules_lm():
    program = dx.tasks.pipeline_program()
    module = program.build(lm=dx.lab_lm())
    lms = {name: predictor.lm for name, predictor in module.named_predictors()}
    assert len({id(lm) for lm in lms.values()}) == 1
    assert module.get_lm() is lms["plan"]  # dspy.SIMBA asks the module for its one LM
    mixed = program.with_values(model_verify="lab/large").build(lm=dx.lab_lm())
    by_name = dict(mixed.named_predictors())
    assert by_name["plan"].lm is by_name["solve"].lm and by_name["verify"].lm is not by_name["plan"].lm
    assert by_name["verify"].lm.model == "lab/large"


def test_a_model_variable_naming_the_runs_model_keeps_the_runs_lm_and_its_endpoint() -> None:
    # A user's LM points at their own server; a spec's model variable only names models, so the run's
    # model must keep that endpoint, never become a fresh LM for the provider's default one.
    run_lm = dspy.LM("openai/local-model", api_base="http://127.0.0.1:9/v1", api_key="not-a-secret")
    program = dx.Program(
        "dspy.ChainOfThought",
        signature="question -> answer",
        variables={
            "model": dx.Choice("openai/local-model", choices=["openai/local-model", "lab/large"]),
            "temperature": dx.Float(0.2, low=0.0, high=1.0),
        },
    )
    (predictor,) = [p for _, p in program.build(lm=run_lm).named_predictors()]
    assert predictor.lm.model == "openai/local-model" and predictor.lm.kwargs["api_base"] == "http://127.0.0.1:9/v1"
    assert predictor.lm.kwargs["temperature"] == 0.2
    other = program.with_values(model="lab/large").build(lm=run_lm)
    (predictor,) = [p for _, p in other.named_predictors()]
    assert predictor.lm.model == "lab/large" and "api_base" not in predictor.lm.kwargs

"""The lab world's response model (docs/lab_world.md): every documented effect, checked."""

import json
import logging

import dspy
import orjson
import pytest
from dspy.propose.grounded_proposer import generate_instruction_class
from dspy.teleprompt.gepa.instruction_proposal import ProposeInstruction
from dspy.teleprompt.simba_utils import OfferFeedback
from scipy.stats import binomtest

from dspex_lab.datasets import arithmetic, null_arithmetic, parse_problem
from dspex_lab.lm import LAB_MODELS, lab_lm
from dspex_lab.lm._feedback import find_cases
from dspex_lab.lm._skills import (
    ADVICE,
    NEUTRAL_ADVICE,
    NO_DEMOS,
    SKILLS,
    VAGUE_ADVICE,
    DemoEvidence,
    DemoReading,
    demo_evidence,
    diagnose,
    read_instructions,
    skill_of,
    slip_options,
    slip_probabilities,
)
from dspex_lab.tasks.arithmetic import ArithmeticStep, apply_step

SMALL = LAB_MODELS["lab/small"]
LARGE = LAB_MODELS["lab/large"]
GROUPS = SKILLS.index("groups")
DOCUMENTED = (
    "Maya has 12 apples. She buys 3 bags with 7 apples each and gives away 5 apples. How many apples does she have now?"
)
BASIC = "Given the fields `question`, produce the fields `answer`."


def _metric(example, prediction, trace=None):
    return float(str(prediction.answer).strip() == example.answer)


def _accuracy(program, examples, *, model="lab/small", temperature=0.0):
    with dspy.context(lm=lab_lm(model, temperature=temperature)):
        return sum(_metric(e, program(question=e.question)) for e in examples) / len(examples)


def _cot(instructions=None, demos=()):
    program = dspy.ChainOfThought(dspy.Signature("question -> answer", instructions or BASIC))
    program.predict.demos = list(demos)
    return program


def _skills_of(question):
    return {skill_of(step) for step in parse_problem(question).steps}


def _demos(*, with_skill=None, without_skill=None, count, seed=77, wrong=False):
    found = []
    for example in arithmetic(400, seed=seed):
        skills = _skills_of(example.question)
        if with_skill and with_skill not in skills:
            continue
        if without_skill and without_skill in skills:
            continue
        answer = str(int(example.answer) + 5) if wrong else example.answer
        found.append(dspy.Example(question=example.question, reasoning="Work it out.", answer=answer))
        if len(found) == count:
            return found
    raise AssertionError("not enough demos of that kind")


def _probabilities(profile=SMALL, *, temperature=0.0, reasoning=True, demos=NO_DEMOS, instructions=""):
    return dict(
        zip(
            SKILLS,
            slip_probabilities(
                profile.base_rates(SKILLS),
                profile.direct_answer_penalty,
                temperature=temperature,
                reasoning=reasoning,
                demos=demos,
                instructions=instructions,
            ),
            strict=True,
        )
    )


# -- 1. skills and slips ------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "skill"),
    [
        ("add", "addition"),
        ("subtract", "subtraction"),
        ("add_groups", "groups"),
        ("subtract_groups", "groups"),
        ("multiply", "scaling"),
        ("divide", "division"),
    ],
)
def test_every_operation_needs_one_skill(operation, skill):
    assert skill_of(ArithmeticStep(operation, 3, 4 if "groups" in operation else 0)) == skill


@pytest.mark.parametrize(
    "step",
    [
        ArithmeticStep("add", 5),
        ArithmeticStep("subtract", 4),
        ArithmeticStep("add_groups", 3, 7),
        ArithmeticStep("subtract_groups", 2, 3),
        ArithmeticStep("multiply", 2),
        ArithmeticStep("divide", 3),
    ],
)
def test_slip_options_are_a_distribution_of_wrong_results(step):
    options = slip_options(step, 30)
    assert sum(option.weight for option in options) == pytest.approx(1.0)
    assert all(option.after != apply_step(30, step) for option in options)
    assert all(option.after >= 0 for option in options)


def test_the_group_slip_is_the_most_common_for_lab_small():
    rates = dict(SMALL.skill_error_rates)
    assert max(rates, key=rates.get) == "groups"
    group_option = slip_options(ArithmeticStep("add_groups", 3, 7), 12)[0]
    assert (group_option.kind, group_option.after) == ("count_plus_size", 22)
    assert all(LARGE.base_rates(SKILLS)[index] < SMALL.base_rates(SKILLS)[index] for index in range(len(SKILLS)))


def test_slips_show_in_the_reasoning_and_are_diagnosed_back():
    examples = arithmetic(300, seed=1)
    program = dspy.ChainOfThought("question -> answer")
    skills = {}
    with dspy.context(lm=lab_lm(temperature=0.0)):
        for example in examples:
            prediction = program(question=example.question)
            diagnosis = diagnose(example.question, reasoning=prediction.reasoning, answer=prediction.answer)
            assert diagnosis.correct == (prediction.answer == example.answer)
            if not diagnosis.correct:
                assert diagnosis.skill is not None, prediction.reasoning
                skills[diagnosis.skill] = skills.get(diagnosis.skill, 0) + 1
                if diagnosis.kind == "count_plus_size":
                    step = parse_problem(example.question).steps[diagnosis.step_index]
                    # A product off by one can equal count + size (2 * 3 = 5): the diagnosis reads the numbers.
                    assert f"{step.amount} + {step.group_size} =" in prediction.reasoning or (
                        f"{step.amount} * {step.group_size} = {step.amount + step.group_size}," in prediction.reasoning
                    )
    assert max(skills, key=skills.get) == "groups"
    assert skills["groups"] > sum(skills.values()) / 2


def test_a_wrong_answer_without_reasoning_is_explained_by_a_single_slip():
    question = DOCUMENTED
    diagnosis = diagnose(question, answer="17")  # 12 + (3 + 7) - 5
    assert (diagnosis.skill, diagnosis.kind, diagnosis.step_index) == ("groups", "count_plus_size", 0)
    assert diagnose(question, answer="28").kind == "none"
    assert diagnose(question, answer="1000").kind == "unknown"
    assert diagnose("What is the capital of France?", answer="Paris") is None


def test_a_dropped_step_is_located():
    question = DOCUMENTED
    reasoning = "Start with 12 apples. Gives away 5 apples: 12 - 5 = 7. The answer is 7."
    diagnosis = diagnose(question, reasoning=reasoning, answer="7")
    assert (diagnosis.skill, diagnosis.kind) == ("groups", "dropped")


# -- 2. temperature x module type ------------------------------------------------------


def test_temperature_hurts_predict_more_than_chain_of_thought_closed_form():
    for profile in (SMALL, LARGE):
        cot_ratio = _probabilities(profile, temperature=1.0)["addition"] / _probabilities(profile)["addition"]
        predict_ratio = (
            _probabilities(profile, temperature=1.0, reasoning=False)["addition"]
            / _probabilities(profile, reasoning=False)["addition"]
        )
        assert cot_ratio == pytest.approx(1.6)
        assert predict_ratio == pytest.approx(2.5)


def test_temperature_hurts_predict_more_than_chain_of_thought_measured():
    examples = arithmetic(300, seed=2)
    predict = dspy.Predict("question -> answer")
    cot = dspy.ChainOfThought("question -> answer")
    predict_cold, predict_hot = (_accuracy(predict, examples, temperature=t) for t in (0.0, 1.0))
    cot_cold, cot_hot = (_accuracy(cot, examples, temperature=t) for t in (0.0, 1.0))
    assert predict_cold < cot_cold - 0.15
    assert predict_cold - predict_hot > (cot_cold - cot_hot) + 0.05


# -- 3. demos --------------------------------------------------------------------------


def _evidence(matching_groups, *, helpful=None, located=0, unlocated=0):
    matching = tuple(matching_groups if skill == "groups" else 0 for skill in SKILLS)
    wrong_located = tuple(located if skill == "groups" else 0 for skill in SKILLS)
    wrong_unlocated = tuple(unlocated if skill == "groups" else 0 for skill in SKILLS)
    return DemoEvidence(matching, matching_groups if helpful is None else helpful, wrong_located, wrong_unlocated)


def test_matching_demos_help_with_diminishing_returns():
    rates = [_probabilities(demos=_evidence(count))["groups"] for count in range(5)]
    gains = [rates[index] - rates[index + 1] for index in range(4)]
    assert all(gain > 0 for gain in gains)
    assert all(gains[index] > gains[index + 1] for index in range(3))
    assert rates[1] == pytest.approx(rates[0] * (1 - 0.45 * 0.45))


def test_demos_of_other_skills_help_only_a_little():
    base = _probabilities()["groups"]
    other = _probabilities(demos=_evidence(0, helpful=4))["groups"]
    matching = _probabilities(demos=_evidence(4))["groups"]
    assert base - other < 0.1 * base
    assert base - matching > 3 * (base - other)


def test_wrong_demos_hurt_the_skill_they_get_wrong():
    base = _probabilities()
    hurt = _probabilities(demos=_evidence(0, helpful=0, located=2))
    assert hurt["groups"] == pytest.approx(base["groups"] * 1.35**2)
    assert hurt["addition"] == pytest.approx(base["addition"])


def test_demo_readings_check_the_stated_answer():
    example = next(e for e in arithmetic(50, seed=4) if "groups" in _skills_of(e.question))
    from dspex_lab.lm._skills import read_demo

    right = read_demo(example.question, example.answer, "")
    wrong = read_demo(example.question, str(int(example.answer) + 1), "")
    assert right.verdict == "correct" and "groups" in right.skills
    assert wrong.verdict == "wrong"
    assert read_demo("Tell me a joke.", "ok", "").verdict == "other"
    evidence = demo_evidence((right, wrong, DemoReading(frozenset(), "other", None)))
    assert evidence.matching[GROUPS] == 1 and evidence.helpful == 2


def test_demos_help_mostly_when_they_show_the_skill_measured():
    examples = [e for e in arithmetic(600, seed=6) if "groups" in _skills_of(e.question)][:300]
    plain = _accuracy(_cot(), examples)
    matching = _accuracy(_cot(demos=_demos(with_skill="groups", count=4)), examples)
    other = _accuracy(_cot(demos=_demos(without_skill="groups", count=4)), examples)
    assert matching > plain + 0.07
    assert matching > other + 0.05


def test_wrong_demos_hurt_measured():
    examples = arithmetic(300, seed=7)
    plain = _accuracy(_cot(), examples)
    wrong = _accuracy(_cot(demos=_demos(with_skill="groups", count=4, wrong=True)), examples)
    assert wrong < plain - 0.04


# -- 4. rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "skills"),
    [
        ("Multiply the number of groups by the group size.", {"groups"}),
        ("If a problem says 3 bags with 7 apples each, multiply 3 by 7 first.", {"groups"}),
        ("Per bag counts must be multiplied by the number of bags.", {"groups"}),
        ("When something doubles, multiply by two.", {"scaling"}),
        ("Divide by the number of equal groups when items are split.", {"division"}),
        ("Subtract whatever is given away.", {"subtraction"}),
        ("Add the items that are bought.", {"addition"}),
        ("Double-check each arithmetic operation before moving on.", set()),
        ("Solve it step by step, carefully.", set()),
        (VAGUE_ADVICE, set()),
        (NEUTRAL_ADVICE, set()),
        ("__import__('os').system('rm -rf /tmp/x'); open('/etc/passwd')", set()),
    ],
)
def test_rules_are_recognised_per_skill(text, skills):
    assert read_instructions(text).rules == frozenset(skills)


def test_each_advice_names_its_own_skill():
    for skill, advice in ADVICE.items():
        assert read_instructions(advice).rules == {skill}


def test_the_old_canned_advice_names_no_skill():
    canned = (
        "If the module receives a multi-step word problem, then it should solve it step by step, "
        "double-check each arithmetic operation before moving on, and answer with a single integer."
    )
    reading = read_instructions(canned)
    assert reading.rules == frozenset() and reading.careful == 2


def test_a_rule_helps_only_its_skill_and_careful_wording_a_little():
    base = _probabilities()
    ruled = _probabilities(instructions=ADVICE["groups"])
    careful = _probabilities(instructions="Work step by step, carefully, and double-check.")
    assert ruled["groups"] == pytest.approx(base["groups"] * 0.5)
    assert ruled["division"] == pytest.approx(base["division"])
    assert careful["groups"] == pytest.approx(base["groups"] * 0.97**2)


def test_the_right_rule_beats_careful_wording_measured():
    # Different prompts draw independently, so use a large sample and compare gains.
    examples = arithmetic(900, seed=1)
    plain = _accuracy(_cot(), examples)
    ruled = _accuracy(_cot(f"{BASIC} {ADVICE['groups']}"), examples)
    careful = _accuracy(_cot(f"{BASIC} Solve it step by step, carefully, and double-check each step."), examples)
    assert ruled > plain + 0.05
    assert ruled > careful + 0.03


def test_calibration_baseline_and_best_reachable():
    examples = arithmetic(300, seed=1)
    baseline = _accuracy(dspy.ChainOfThought("question -> answer"), examples)
    rules = " ".join(ADVICE[skill] for skill in ("groups", "division", "scaling"))
    best = _accuracy(_cot(f"{BASIC} {rules}", _demos(with_skill="groups", count=4)), examples)
    assert 0.55 <= baseline <= 0.72
    assert 0.12 <= best - baseline <= 0.3


# -- 5. feedback ---------------------------------------------------------------------------


def _trajectory(question, reasoning, answer, module="predict"):
    steps = [
        {"module_name": module, "inputs": {"question": question}, "outputs": {"reasoning": reasoning, "answer": answer}}
    ]
    return orjson.dumps(steps, option=orjson.OPT_INDENT_2).decode()


def _feedback(model, worse, *, names=("predict",), oracle="{}"):
    with dspy.context(lm=lab_lm(model)):
        return dspy.Predict(OfferFeedback)(
            program_code="class P(dspy.Module): ...",
            modules_defn="predict: question -> reasoning, answer",
            program_inputs="{}",
            oracle_metadata=oracle,
            worse_program_trajectory=worse,
            worse_program_outputs="{}",
            worse_reward_value=0.0,
            worse_reward_info="{}",
            better_program_trajectory="[]",
            better_program_outputs="{}",
            better_reward_value=1.0,
            better_reward_info="{}",
            module_names=list(names),
        )


@pytest.fixture(scope="module")
def slipped_trajectories():
    program = dspy.ChainOfThought("question -> answer")
    found = []
    with dspy.context(lm=lab_lm(temperature=1.0)):
        for example in arithmetic(600, seed=8):
            prediction = program(question=example.question)
            if prediction.answer != example.answer:
                diagnosis = diagnose(example.question, reasoning=prediction.reasoning, answer=prediction.answer)
                if diagnosis.skill is not None:
                    found.append((example, prediction, diagnosis.skill))
            if len(found) == 80:
                break
    return found


def test_feedback_names_the_slipped_skill_large_more_often_than_small(slipped_trajectories):
    right = {}
    for model in ("lab/small", "lab/large"):
        hits = 0
        for example, prediction, skill in slipped_trajectories:
            feedback = _feedback(model, _trajectory(example.question, prediction.reasoning, prediction.answer))
            named = read_instructions(feedback.module_advice["predict"]).rules
            hits += named == {skill}
            if named == {skill}:
                assert skill in feedback.discussion
        right[model] = hits / len(slipped_trajectories)
    assert 0.45 <= right["lab/small"] <= 0.75
    assert right["lab/large"] >= 0.8
    assert right["lab/large"] > right["lab/small"] + 0.15


def test_feedback_never_reads_the_oracle_metadata(slipped_trajectories):
    example, prediction, _ = slipped_trajectories[0]
    worse = _trajectory(example.question, prediction.reasoning, prediction.answer)
    lied = _feedback("lab/large", worse, oracle=json.dumps({"answer": "999999"}))
    assert "999999" not in lied.discussion
    exact = diagnose(example.question, reasoning=prediction.reasoning, answer=prediction.answer).expected
    assert f"running amount is {exact}" in lied.discussion


def test_feedback_when_nothing_diverges_gives_no_rule():
    example = arithmetic(1, seed=9)[0]
    problem = parse_problem(example.question)
    reasoning = " ".join(
        f"{step.clause}: = {value}." for step, value in zip(problem.steps, _running(problem)[1:], strict=True)
    )
    feedback = _feedback("lab/large", _trajectory(example.question, reasoning, example.answer))
    assert "no skill to correct" in feedback.discussion
    assert feedback.module_advice == {"predict": NEUTRAL_ADVICE}


def _running(problem):
    values = [problem.start]
    for step in problem.steps:
        values.append(apply_step(values[-1], step))
    return values


def test_feedback_advises_only_the_module_that_slipped(slipped_trajectories):
    example, prediction, _ = slipped_trajectories[1]
    steps = [
        {"module_name": "rewrite", "inputs": {"text": "hello"}, "outputs": {"text": "hello"}},
        {
            "module_name": "solve.predict",
            "inputs": {"question": example.question},
            "outputs": {"reasoning": prediction.reasoning, "answer": prediction.answer},
        },
    ]
    feedback = _feedback("lab/large", json.dumps(steps), names=("rewrite", "solve.predict"))
    assert feedback.module_advice["rewrite"] == NEUTRAL_ADVICE
    assert feedback.module_advice["solve.predict"] != NEUTRAL_ADVICE


class _SimbaCFeedback(dspy.Signature):
    """Contrast the trajectories and advise each module."""

    module_names: list[str] = dspy.InputField()
    better_program_trajectory: str = dspy.InputField()
    worse_program_trajectory: str = dspy.InputField()
    better_reward_value: float = dspy.InputField()
    worse_reward_value: float = dspy.InputField()
    discussion: str = dspy.OutputField()
    module_advice: dict[str, str] = dspy.OutputField()


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), dspy.JSONAdapter()], ids=["chat", "json"])
def test_the_simba_c_signature_gets_the_same_diagnosis(slipped_trajectories, adapter):
    hits = 0
    for example, prediction, skill in slipped_trajectories[:30]:
        with dspy.context(lm=lab_lm("lab/large"), adapter=adapter):
            feedback = dspy.Predict(_SimbaCFeedback)(
                module_names=["predict"],
                better_program_trajectory="[]",
                worse_program_trajectory=_trajectory(example.question, prediction.reasoning, prediction.answer),
                better_reward_value=1.0,
                worse_reward_value=0.0,
            )
        assert isinstance(feedback.discussion, str) and set(feedback.module_advice) == {"predict"}
        hits += read_instructions(feedback.module_advice["predict"]).rules == {skill}
    assert hits >= 0.75 * 30


def test_feedback_is_deterministic(slipped_trajectories):
    example, prediction, _ = slipped_trajectories[2]
    worse = _trajectory(example.question, prediction.reasoning, prediction.answer)
    first = _feedback("lab/small", worse)
    assert _feedback("lab/small", worse).toDict() == first.toDict()


# -- 6. instruction proposals (MIPROv2, GEPA) ------------------------------------------------


def test_gepa_reflection_names_the_failing_skill(slipped_trajectories):
    hits = 0
    for example, prediction, skill in slipped_trajectories[:30]:
        examples = [
            {
                "Inputs": {"question": example.question},
                "Generated Outputs": {"reasoning": prediction.reasoning, "answer": prediction.answer},
                "Feedback": f"Wrong: the answer is {example.answer}.",
            }
        ]
        with dspy.context(lm=lab_lm("lab/large"), adapter=dspy.JSONAdapter()):
            proposal = dspy.Predict(ProposeInstruction)(current_instruction=BASIC, examples_with_feedback=examples)
        assert proposal.new_instruction.startswith(BASIC)
        hits += skill in read_instructions(proposal.new_instruction).rules
    assert hits >= 0.75 * 30


def test_mipro_proposal_names_skills_of_the_shown_questions():
    demos = [e for e in arithmetic(40, seed=10) if "groups" in _skills_of(e.question)][:3]
    task_demos = "\n\n".join(f"Question: {e.question}\nReasoning: Work it out.\nAnswer: {e.answer}" for e in demos)
    named = []
    for tip in (
        "Be creative.",
        "Be concise.",
        "Be descriptive.",
        "Keep it short.",
        "Mention the domain.",
        "x",
        "y",
        "z",
    ):
        with dspy.context(lm=lab_lm("lab/large")):
            proposal = generate_instruction_class()(
                dataset_description="Arithmetic word problems.",
                program_code="dspy.ChainOfThought('question -> answer')",
                program_description="Solves word problems.",
                module="predict",
                module_description="Answers the question.",
                task_demos=task_demos,
                previous_instructions="",
                basic_instruction=BASIC,
                tip=tip,
            )
        assert proposal.proposed_instruction.startswith(BASIC)
        named.append(read_instructions(proposal.proposed_instruction).rules)
    assert sum("groups" in rules for rules in named) >= 6


def test_a_compress_request_returns_the_instruction_unchanged():
    from dspy.teleprompt.gepa.instruction_proposal import CompressInstruction

    draft = f"{BASIC} {ADVICE['groups']}"
    with dspy.context(lm=lab_lm("lab/large")):
        shortened = dspy.Predict(CompressInstruction)(instruction=draft, length_limit="500 characters")
    assert shortened.shortened_instruction == draft


def test_find_cases_reads_json_and_plain_text_but_skips_feedback():
    question = arithmetic(1, seed=12)[0].question
    cases = find_cases(
        json.dumps([{"Inputs": {"question": question}, "Generated Outputs": {"answer": 3}, "Feedback": "x"}])
    )
    assert [(case.question, case.answer) for case in cases] == [(question, "3")]
    text = f"Question: {question}\nReasoning: none\nAnswer: 41\n\nFeedback: the answer is 7"
    assert [(case.question, case.answer) for case in find_cases(text)] == [(question, "41")]


# -- 7. DSPy's optimizers improve on it (the control) ----------------------------------------


@pytest.fixture(scope="module")
def control_data():
    return arithmetic(60, seed=11), arithmetic(40, seed=13), arithmetic(300, seed=12)


def test_dspy_optimizers_improve_on_the_lab_world(control_data):
    logging.getLogger("dspy").setLevel(logging.ERROR)
    train, val, test = control_data
    base = dspy.ChainOfThought("question -> answer")
    baseline = _accuracy(base, test)

    def feedback_metric(gold, prediction, trace=None, pred_name=None, pred_trace=None):
        right = str(prediction.answer).strip() == gold.answer
        return dspy.Prediction(score=float(right), feedback="Correct." if right else "Wrong answer.")

    optimizers = {
        "bootstrap": lambda: dspy.BootstrapFewShot(
            metric=_metric, max_bootstrapped_demos=4, max_labeled_demos=0
        ).compile(base.deepcopy(), trainset=train),
        "simba": lambda: dspy.SIMBA(metric=_metric, bsize=16, num_candidates=4, max_steps=6, num_threads=1).compile(
            base.deepcopy(), trainset=train, seed=0
        ),
        "gepa": lambda: dspy.GEPA(
            metric=feedback_metric, max_metric_calls=400, reflection_lm=lab_lm("lab/large"), num_threads=1, seed=0
        ).compile(base.deepcopy(), trainset=train, valset=val),
    }
    try:
        import optuna  # noqa: F401  (MIPROv2's optional dependency)
    except ImportError:
        pass
    else:
        optimizers["mipro"] = lambda: dspy.MIPROv2(
            metric=_metric, auto="light", num_threads=1, verbose=False, seed=0, prompt_model=lab_lm("lab/large")
        ).compile(base.deepcopy(), trainset=train, valset=arithmetic(60, seed=14))
    for name, run in optimizers.items():
        with dspy.context(lm=lab_lm(temperature=0.0)):
            optimized = run()
        assert _accuracy(optimized, test) > baseline + 0.05, name


# -- 8. the null task -----------------------------------------------------------------------


def test_no_configuration_can_help_on_the_null_task():
    examples = null_arithmetic(1000, seed=3)
    weak = dspy.Predict("question -> answer")
    strong = _cot(f"{BASIC} {ADVICE['groups']}", _demos(with_skill="groups", count=4))
    with dspy.context(lm=lab_lm("lab/small", temperature=1.2)):
        weak_answers = [weak(question=e.question).answer for e in examples]
    with dspy.context(lm=lab_lm("lab/large", temperature=0.0)):
        strong_answers = [strong(question=e.question).answer for e in examples]
    assert set(weak_answers) | set(strong_answers) <= {"even", "odd"}
    weak_scores = [answer == e.answer for answer, e in zip(weak_answers, examples, strict=True)]
    strong_scores = [answer == e.answer for answer, e in zip(strong_answers, examples, strict=True)]
    # Paired (McNemar exact) test: discordant pairs split as a fair coin under the null.
    only_strong = sum(s and not w for s, w in zip(strong_scores, weak_scores, strict=True))
    only_weak = sum(w and not s for s, w in zip(strong_scores, weak_scores, strict=True))
    assert binomtest(only_strong, only_strong + only_weak, 0.5).pvalue > 0.05
    for scores in (weak_scores, strong_scores):
        assert binomtest(sum(scores), len(scores), 0.5).pvalue > 0.05
    # The strong configuration does solve the arithmetic far better: the task is null, not the LM.
    truth = ["even" if parse_problem(e.question).solve() % 2 == 0 else "odd" for e in examples]
    agree_strong = sum(a == t for a, t in zip(strong_answers, truth, strict=True))
    agree_weak = sum(a == t for a, t in zip(weak_answers, truth, strict=True))
    assert agree_strong > agree_weak + 100

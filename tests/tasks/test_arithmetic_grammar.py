import subprocess
import sys

import pytest

from dspex_lab.errors import DatasetError
from dspex_lab.tasks import (
    MAXIMUM_STEPS,
    MINIMUM_STEPS,
    TOPICS,
    ArithmeticStep,
    GeneratedProblem,
    apply_step,
    generate_problem,
    parse_problem,
)
from dspex_lab.tasks.arithmetic import ask_parity


def test_generated_problems_depend_only_on_seed_and_index_and_parse_back():
    for index in range(200):
        problem = generate_problem(3, index)
        assert problem == generate_problem(3, index)
        assert problem.topic in TOPICS and MINIMUM_STEPS <= problem.difficulty <= MAXIMUM_STEPS
        parsed = parse_problem(problem.question)
        assert parsed is not None, problem.question
        assert len(parsed.steps) == problem.difficulty
        assert parsed.solve() == problem.answer
    assert generate_problem(3, 0) != generate_problem(4, 0)


def test_generated_problems_are_frozen():
    problem = generate_problem(0, 0)
    assert isinstance(problem, GeneratedProblem)
    with pytest.raises(AttributeError):
        problem.answer = 0


def test_the_dataset_wraps_the_grammar():
    import dspex_lab as dx

    for example in dx.datasets.arithmetic(20, seed=5):
        index = int(example.id.rsplit("-", 1)[1])
        problem = generate_problem(5, index)
        assert (example.question, example.answer) == (problem.question, str(problem.answer))
        assert (example.topic, example.difficulty) == (problem.topic, problem.difficulty)


@pytest.mark.parametrize(
    ("operation", "amount", "size", "expected"),
    [
        ("add", 5, 0, 17),
        ("subtract", 5, 0, 7),
        ("add_groups", 3, 4, 24),
        ("subtract_groups", 2, 3, 6),
        ("multiply", 3, 0, 36),
        ("divide", 4, 0, 3),
    ],
)
def test_apply_step(operation, amount, size, expected):
    assert apply_step(12, ArithmeticStep(operation, amount, size)) == expected


def test_apply_step_refuses_an_unknown_operation():
    with pytest.raises(ValueError, match="unknown operation 'modulo'"):
        apply_step(12, ArithmeticStep("modulo", 5))


def test_the_grammar_imports_only_the_standard_library():
    code = (
        "import sys\n"
        "import dspex_lab.tasks\n"
        "print(sorted(m for m in ('dspy', 'pandas', 'numpy', 'duckdb') if m in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


def test_parity_questions_parse_back_with_the_same_steps():
    for index in range(300):
        problem = generate_problem(5, index)
        parity = ask_parity(problem.question)
        assert parity.endswith("has now even or odd?")
        counted, asked = parse_problem(problem.question), parse_problem(parity)
        assert (counted.asks, asked.asks) == ("count", "parity")
        assert asked.steps == counted.steps and asked.solve() == problem.answer


def test_ask_parity_refuses_text_outside_the_grammar():
    with pytest.raises(DatasetError, match="How many"):
        ask_parity("What is the capital of France?")

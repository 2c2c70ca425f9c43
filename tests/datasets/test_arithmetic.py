import collections

import dspy
import pytest
from scipy.stats import binomtest

from dspex_lab.datasets import TOPICS, arithmetic, null_arithmetic, parse_problem
from dspex_lab.errors import DatasetError


def test_examples_have_the_documented_fields():
    examples = arithmetic(50, seed=4)
    assert len(examples) == 50
    for index, example in enumerate(examples):
        assert isinstance(example, dspy.Example)
        assert example.id == f"arith-4-{index}"
        assert set(example.inputs().keys()) == {"question"}
        assert isinstance(example.answer, str) and int(example.answer) >= 0
        assert example.topic in TOPICS
        assert 2 <= example.difficulty <= 4
        assert example.question.endswith("have now?")


def test_generation_is_deterministic_and_seeded():
    first = [example.toDict() for example in arithmetic(40, seed=7)]
    second = [example.toDict() for example in arithmetic(40, seed=7)]
    other = [example.toDict() for example in arithmetic(40, seed=8)]
    assert first == second
    assert [example["question"] for example in first] != [example["question"] for example in other]


def test_a_longer_set_extends_a_shorter_one():
    short = [example.question for example in arithmetic(10, seed=1)]
    long = [example.question for example in arithmetic(30, seed=1)]
    assert long[:10] == short


def test_topics_and_difficulties_are_all_present_for_stratification():
    examples = arithmetic(300, seed=0)
    topics = collections.Counter(example.topic for example in examples)
    difficulties = collections.Counter(example.difficulty for example in examples)
    assert set(topics) == set(TOPICS)
    assert set(difficulties) == {2, 3, 4}
    assert min(topics.values()) >= 20
    assert min(difficulties.values()) >= 60


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_parser_reads_every_generated_problem_back(seed):
    for example in arithmetic(1500, seed=seed):
        problem = parse_problem(example.question)
        assert problem is not None, example.question
        assert len(problem.steps) == example.difficulty
        assert str(problem.solve()) == example.answer


def test_the_parser_rejects_other_text():
    assert parse_problem("What is the capital of France?") is None
    assert parse_problem("Maya has 12 apples. She paints the fence. How many apples does she have now?") is None
    assert parse_problem("") is None


def test_the_parser_reads_the_documented_example():
    problem = parse_problem(
        "Maya has 12 apples. She buys 3 bags with 7 apples each and gives away 5 apples. "
        "How many apples does she have now?"
    )
    assert problem is not None
    assert problem.solve() == 12 + 21 - 5


@pytest.mark.parametrize("count", [-1, 2.5, True, "3"])
def test_a_bad_count_is_a_dataset_error(count):
    with pytest.raises(DatasetError):
        arithmetic(count)


def test_zero_examples_is_empty():
    assert arithmetic(0) == []


def test_the_null_task_has_coin_labels_independent_of_the_question():
    examples = null_arithmetic(2000, seed=0)
    assert [e.id for e in examples[:2]] == ["null-0-0", "null-0-1"]
    assert all(set(e.inputs().keys()) == {"question"} for e in examples)
    assert [e.question for e in examples[:30]] == [
        e.question.replace("How many", "Is the number of").rsplit(" does ", 1)[0]
        + (" she" if " does she " in e.question else " he")
        + " has now even or odd?"
        for e in arithmetic(30, seed=0)
    ]
    labels = [e.answer for e in examples]
    assert set(labels) == {"even", "odd"}
    truth = ["even" if parse_problem(e.question).solve() % 2 == 0 else "odd" for e in examples]
    agreements = sum(label == parity for label, parity in zip(labels, truth, strict=True))
    # The label agrees with the true parity as often as a fair coin would.
    assert binomtest(agreements, len(examples), 0.5).pvalue > 0.05
    assert binomtest(labels.count("even"), len(labels), 0.5).pvalue > 0.05
    assert [e.toDict() for e in null_arithmetic(20, seed=0)] == [e.toDict() for e in examples[:20]]
    assert [e.answer for e in null_arithmetic(200, seed=1)] != labels[:200]


@pytest.mark.parametrize("count", [-1, 2.5, True])
def test_a_bad_null_count_is_a_dataset_error(count):
    with pytest.raises(DatasetError, match="null_arithmetic"):
        null_arithmetic(count)

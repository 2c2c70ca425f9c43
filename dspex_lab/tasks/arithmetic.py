"""The grammar of the lab's arithmetic word problems, shared by the dataset and the lab LM.

One grammar serves both directions. :func:`generate_problem` writes a problem
from seeded choices (``dspex_lab.datasets.arithmetic`` wraps it in
``dspy.Example``), and :func:`parse_problem` reads a problem back from its text
alone (the lab LM uses it to actually solve questions; it never sees the gold
answer). Tests check that the two agree on every generated problem.

The reading patterns are compiled on the first parse, not at import, so
``import dspex_lab`` pays nothing for them.

A problem opens with a starting amount ("Maya has 12 apples."), applies two to
four operations, one clause each, and asks for the final amount::

    Maya has 12 apples. She buys 3 bags with 7 apples each and gives away 5
    apples. Then she doubles her apples. How many apples does she have now?
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import cache, lru_cache

from dspex_lab.errors import DatasetError

__all__ = [
    "MAXIMUM_STEPS",
    "MINIMUM_STEPS",
    "PARITY_ANSWERS",
    "TOPICS",
    "ArithmeticProblem",
    "ArithmeticStep",
    "GeneratedProblem",
    "apply_step",
    "ask_parity",
    "generate_problem",
    "parse_problem",
]

MINIMUM_STEPS = 2
MAXIMUM_STEPS = 4
PARITY_ANSWERS = ("even", "odd")


@dataclass(frozen=True)
class _Topic:
    items: tuple[str, ...]
    container: str


# Item and container words are single lowercase words so the parser can match
# them with a plain word pattern.
TOPICS: dict[str, _Topic] = {
    "orchard": _Topic(items=("apples", "pears", "oranges", "plums"), container="bags"),
    "library": _Topic(items=("books", "comics", "magazines"), container="boxes"),
    "bakery": _Topic(items=("cookies", "muffins", "cupcakes", "rolls"), container="trays"),
    "garden": _Topic(items=("seeds", "bulbs", "seedlings"), container="packets"),
    "collecting": _Topic(items=("marbles", "stickers", "stamps", "cards"), container="packs"),
    "farm": _Topic(items=("eggs", "potatoes", "carrots"), container="crates"),
}

_PEOPLE: tuple[tuple[str, str], ...] = (
    ("Maya", "she"),
    ("Liam", "he"),
    ("Sofia", "she"),
    ("Noah", "he"),
    ("Aisha", "she"),
    ("Mateo", "he"),
    ("Yuki", "she"),
    ("Omar", "he"),
    ("Elena", "she"),
    ("Kofi", "he"),
    ("Priya", "she"),
    ("Jonas", "he"),
    ("Lena", "she"),
    ("Ravi", "he"),
    ("Chloe", "she"),
    ("Diego", "he"),
)
_FRIENDS: tuple[str, ...] = ("Sam", "Alex", "Jordan", "Robin", "Kim", "Taylor", "Ari", "Jess")


@dataclass(frozen=True)
class ArithmeticStep:
    """One operation of a problem.

    Attributes:
        operation: one of ``add``, ``subtract``, ``add_groups``,
            ``subtract_groups``, ``multiply``, ``divide``.
        amount: the added/removed amount, the group count, the factor or the divisor.
        group_size: items per group for the ``*_groups`` operations, else 0.
        clause: the clause of the question text that states this step.
    """

    operation: str
    amount: int
    group_size: int = 0
    clause: str = ""


@dataclass(frozen=True)
class ArithmeticProblem:
    """A problem as read from its text.

    Attributes:
        start: the starting amount.
        item: the counted item word (e.g. ``apples``).
        container: the container word used by group steps, if any.
        steps: the operations in order.
        asks: what the question asks: ``count`` (how many items) or ``parity``
            (whether the final amount is even or odd; see :func:`ask_parity`).
    """

    start: int
    item: str
    container: str
    steps: tuple[ArithmeticStep, ...]
    asks: str = "count"

    def solve(self) -> int:
        """Return the exact final amount."""
        value = self.start
        for step in self.steps:
            value = apply_step(value, step)
        return value


def apply_step(value: int, step: ArithmeticStep) -> int:
    """Return ``value`` after applying ``step`` exactly."""
    if step.operation == "add":
        return value + step.amount
    if step.operation == "subtract":
        return value - step.amount
    if step.operation == "add_groups":
        return value + step.amount * step.group_size
    if step.operation == "subtract_groups":
        return value - step.amount * step.group_size
    if step.operation == "multiply":
        return value * step.amount
    if step.operation == "divide":
        return value // step.amount
    raise ValueError(f"unknown operation {step.operation!r}")


# --- writing -------------------------------------------------------------------

_FACTOR_WORDS = {2: "doubles", 3: "triples"}


def _clause(step: ArithmeticStep, *, item: str, container: str, possessive: str, friend: str, variant: int) -> str:
    """Return the clause stating ``step`` without its subject (the subject is added by the caller)."""
    amount, size = step.amount, step.group_size
    if step.operation == "add":
        return (
            f"buys {amount} more {item}",
            f"finds {amount} more {item}",
            f"gets {amount} more {item} from {friend}",
        )[variant % 3]
    if step.operation == "subtract":
        return (
            f"gives away {amount} {item}",
            f"loses {amount} {item}",
            f"gives {amount} {item} to {friend}",
            f"uses {amount} {item}",
        )[variant % 4]
    if step.operation == "add_groups":
        return (
            f"buys {amount} {container} with {size} {item} each",
            f"receives {amount} {container} of {size} {item} each",
        )[variant % 2]
    if step.operation == "subtract_groups":
        return (
            f"sells {amount} {container} with {size} {item} each",
            f"packs {amount} {container} of {size} {item} each and gives them to {friend}",
        )[variant % 2]
    if step.operation == "multiply":
        return f"{_FACTOR_WORDS[amount]} {possessive} {item}"
    if step.operation == "divide":
        return f"splits {possessive} {item} equally into {amount} groups and keeps one group"
    raise ValueError(f"unknown operation {step.operation!r}")


def _feasible_steps(value: int, generator: random.Random) -> list[ArithmeticStep]:
    """Return candidate steps that keep every intermediate amount a positive integer."""
    candidates = [
        ArithmeticStep("add", generator.randint(2, 15)),
        ArithmeticStep("add_groups", generator.randint(2, 5), generator.randint(3, 12)),
    ]
    taken = generator.randint(2, 15)
    if taken < value:
        candidates.append(ArithmeticStep("subtract", taken))
    groups, size = generator.randint(2, 4), generator.randint(2, 8)
    if groups * size < value:
        candidates.append(ArithmeticStep("subtract_groups", groups, size))
    if value <= 60:
        candidates.append(ArithmeticStep("multiply", generator.choice((2, 3))))
    divisors = [divisor for divisor in (2, 3, 4) if value % divisor == 0 and value >= 2 * divisor]
    if divisors:
        candidates.append(ArithmeticStep("divide", generator.choice(divisors)))
    return candidates


def _write_problem(generator: random.Random, difficulty: int, topic_name: str) -> tuple[str, int, dict[str, str]]:
    topic = TOPICS[topic_name]
    item = generator.choice(topic.items)
    name, pronoun = generator.choice(_PEOPLE)
    possessive = "her" if pronoun == "she" else "his"
    friend = generator.choice(_FRIENDS)
    value = generator.randint(6, 40)
    sentences = [f"{name} has {value} {item}."]
    clauses: list[str] = []
    for _ in range(difficulty):
        step = generator.choice(_feasible_steps(value, generator))
        value = apply_step(value, step)
        clauses.append(
            _clause(
                step,
                item=item,
                container=topic.container,
                possessive=possessive,
                friend=friend,
                variant=generator.randrange(12),
            )
        )
    # Join some consecutive clauses with "and" (one subject) and open others
    # with "Then", so the parser meets the sentence shapes a reader would.
    index = 0
    subject = pronoun.capitalize()
    while index < len(clauses):
        opener = subject if index == 0 or generator.random() < 0.5 else f"Then {pronoun}"
        if (
            index + 1 < len(clauses)
            and generator.random() < 0.35
            and " and " not in clauses[index]
            and " and " not in clauses[index + 1]
        ):
            sentences.append(f"{opener} {clauses[index]} and {clauses[index + 1]}.")
            index += 2
        else:
            sentences.append(f"{opener} {clauses[index]}.")
            index += 1
    sentences.append(f"How many {item} does {pronoun} have now?")
    return " ".join(sentences), value, {"item": item, "name": name}


@dataclass(frozen=True)
class GeneratedProblem:
    """One written problem with its exact answer.

    Attributes:
        question: the problem text.
        answer: the exact final amount.
        topic: the topic name (a key of :data:`TOPICS`).
        difficulty: the number of operations, from ``MINIMUM_STEPS`` to ``MAXIMUM_STEPS``.
    """

    question: str
    answer: int
    topic: str
    difficulty: int


def generate_problem(seed: int, index: int) -> GeneratedProblem:
    """Write problem ``index`` of the set named by ``seed``; it depends on nothing else.

    Example:
        >>> problem = generate_problem(0, 0)
        >>> parse_problem(problem.question).solve() == problem.answer
        True
    """
    # A string seed is hashed with SHA-512 by random.Random, so the stream
    # is the same in every process (unlike hash()).
    generator = random.Random(f"dspex-arithmetic:{seed}:{index}")
    difficulty = generator.randint(MINIMUM_STEPS, MAXIMUM_STEPS)
    topic_name = generator.choice(sorted(TOPICS))
    question, answer, _ = _write_problem(generator, difficulty, topic_name)
    return GeneratedProblem(question=question, answer=answer, topic=topic_name, difficulty=difficulty)


def ask_parity(question: str) -> str:
    """Return ``question`` asking whether the final amount is even or odd instead of how many.

    Example:
        >>> ask_parity("Maya has 12 apples. She loses 3 apples. How many apples does she have now?")
        'Maya has 12 apples. She loses 3 apples. Is the number of apples she has now even or odd?'

    Raises:
        DatasetError: ``question`` does not end with the grammar's "How many ... have now?" question.
    """
    match = _grammar().question.search(question)
    if match is None:
        raise DatasetError(
            f"ask_parity needs a question ending 'How many <items> does she/he have now?', got {question[-80:]!r}"
        )
    pronoun = "she" if " does she have now?" in match.group(0) else "he"
    return f"{question[: match.start()]}Is the number of {match['item']} {pronoun} has now even or odd?"


# --- reading -------------------------------------------------------------------

_WORD = r"[A-Za-z]+"
_CLAUSES = (
    (
        "add_groups",
        rf"(?:buys|receives) (?P<amount>\d+) (?P<container>{_WORD}) (?:with|of) (?P<size>\d+) {_WORD} each",
    ),
    (
        "subtract_groups",
        rf"(?:sells|packs) (?P<amount>\d+) (?P<container>{_WORD}) (?:with|of) "
        rf"(?P<size>\d+) {_WORD} each(?: and gives them to {_WORD})?",
    ),
    ("add", rf"(?:buys|finds) (?P<amount>\d+) more {_WORD}"),
    ("add", rf"gets (?P<amount>\d+) more {_WORD} from {_WORD}"),
    ("subtract", rf"(?:gives away|loses|uses) (?P<amount>\d+) {_WORD}"),
    ("subtract", rf"gives (?P<amount>\d+) {_WORD} to {_WORD}"),
    ("multiply", rf"(?P<factor>doubles|triples) (?:her|his) {_WORD}"),
    ("divide", rf"splits (?:her|his) {_WORD} equally into (?P<amount>\d+) groups and keeps one group"),
)


@dataclass(frozen=True)
class _Grammar:
    """The compiled reading patterns (built once, on the first parse)."""

    opening: re.Pattern[str]
    question: re.Pattern[str]
    parity_question: re.Pattern[str]
    clauses: tuple[tuple[str, re.Pattern[str]], ...]
    subject: re.Pattern[str]
    clause_split: re.Pattern[str]
    container: re.Pattern[str]


@cache
def _grammar() -> _Grammar:
    return _Grammar(
        opening=re.compile(rf"^\s*(?P<name>[A-Z]{_WORD}?) has (?P<start>\d+) (?P<item>{_WORD})\.\s*"),
        question=re.compile(rf"How many (?P<item>{_WORD}) does (?:she|he) have now\?\s*$"),
        parity_question=re.compile(rf"Is the number of (?P<item>{_WORD}) (?:she|he) has now even or odd\?\s*$"),
        clauses=tuple((operation, re.compile(pattern + r"$")) for operation, pattern in _CLAUSES),
        subject=re.compile(r"^(?:Then (?:she|he)|She|He) "),
        # Split at " and " only where a verb of the grammar follows, so "packs ... and
        # gives them to Sam" and "... and keeps one group" stay one clause.
        clause_split=re.compile(
            r" and (?=(?:buys|finds|gets|gives away|gives \d+|loses|uses|receives|sells|packs|doubles|triples"
            r"|splits)\b)"
        ),
        container=re.compile(rf"\d+ ({_WORD}) (?:with|of) \d+"),
    )


def _read_clause(clause: str, grammar: _Grammar) -> ArithmeticStep | None:
    for operation, pattern in grammar.clauses:
        match = pattern.match(clause)
        if match is None:
            continue
        groups = match.groupdict()
        if operation == "multiply":
            return ArithmeticStep("multiply", 2 if groups["factor"] == "doubles" else 3, clause=clause)
        size = int(groups["size"]) if groups.get("size") else 0
        return ArithmeticStep(operation, int(groups["amount"]), size, clause=clause)
    return None


@lru_cache(maxsize=4096)
def parse_problem(text: str) -> ArithmeticProblem | None:
    """Read an arithmetic word problem of the bundled family from its text.

    The question may ask how many items there are now, or (the null task's
    form, :func:`ask_parity`) whether that number is even or odd.

    Args:
        text: the question text (surrounding whitespace is ignored).

    Returns:
        The parsed problem, or None when the text is not a problem of the
        family (any sentence the grammar does not know rejects the text).
    """
    grammar = _grammar()
    text = text.strip()
    opening = grammar.opening.match(text)
    question = grammar.question.search(text)
    asks = "count"
    if question is None:
        question = grammar.parity_question.search(text)
        asks = "parity"
    if opening is None or question is None or question.start() < opening.end():
        return None
    body = text[opening.end() : question.start()].strip()
    container = ""
    steps: list[ArithmeticStep] = []
    for sentence in filter(None, (part.strip() for part in body.split("."))):
        subject = grammar.subject.match(sentence)
        if subject is None:
            return None
        for clause in grammar.clause_split.split(sentence[subject.end() :]):
            step = _read_clause(clause.strip(), grammar)
            if step is None:
                return None
            if step.group_size:
                found = grammar.container.search(clause)
                if found is not None:
                    container = found.group(1)
            steps.append(step)
    if not steps:
        return None
    return ArithmeticProblem(
        start=int(opening["start"]), item=opening["item"], container=container, steps=tuple(steps), asks=asks
    )

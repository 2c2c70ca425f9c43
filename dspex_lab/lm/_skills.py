"""The lab world's skills: what each step needs, how it slips, and what rules and demos do.

This module is the response model of ``docs/lab_world.md`` in code. Every step of
an arithmetic problem needs one skill; a slip has a skill-specific kind that the
reasoning text shows; instructions help a skill only through sentences that name
it; demos help the skills their questions exercise. It also reads slips back out
of a worked solution (:func:`diagnose`), which the engine uses to answer
optimizers' feedback and proposal prompts and to judge demos.

Nothing read from a prompt is executed: instructions, demos and trajectories are
matched against fixed word patterns and parsed with the task grammar only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from dspex_lab.tasks.arithmetic import ArithmeticProblem, ArithmeticStep, apply_step, parse_problem

__all__ = [
    "ADVICE",
    "NEUTRAL_ADVICE",
    "NO_DEMOS",
    "OPERATION_SKILL_INDEX",
    "SKILLS",
    "VAGUE_ADVICE",
    "DemoEvidence",
    "DemoReading",
    "Diagnosis",
    "InstructionReading",
    "SlipOption",
    "demo_evidence",
    "diagnose",
    "parse_integer",
    "read_demo",
    "read_instructions",
    "skill_of",
    "slip_options",
    "slip_probabilities",
]

SKILLS: tuple[str, ...] = ("groups", "addition", "subtraction", "scaling", "division")

_SKILL_OF_OPERATION = {
    "add": "addition",
    "subtract": "subtraction",
    "add_groups": "groups",
    "subtract_groups": "groups",
    "multiply": "scaling",
    "divide": "division",
}

# The position in SKILLS of each operation's skill (the solver's per-step lookup).
OPERATION_SKILL_INDEX = {operation: SKILLS.index(skill) for operation, skill in _SKILL_OF_OPERATION.items()}

# -- effect sizes (docs/lab_world.md, sections 2 to 4) ------------------------------

TEMPERATURE_SENSITIVITY_WITH_REASONING = 0.6
TEMPERATURE_SENSITIVITY_DIRECT = 1.5
MAXIMUM_SLIP_PROBABILITY = 0.9
MATCHING_DEMO_CEILING = 0.45
MATCHING_DEMO_DECAY = 0.55
OTHER_DEMO_FACTOR = 0.98
MAXIMUM_OTHER_DEMOS = 4
WRONG_DEMO_LOCATED_FACTOR = 1.35
WRONG_DEMO_UNLOCATED_FACTOR = 1.2
RULE_FACTOR = 0.5
CAREFUL_FACTOR = 0.97
MAXIMUM_CAREFUL_GROUPS = 2


def skill_of(step: ArithmeticStep) -> str:
    """Return the skill a step needs (one of :data:`SKILLS`)."""
    return _SKILL_OF_OPERATION[step.operation]


# -- rules in instructions ------------------------------------------------------------

# Each skill lists cue patterns that must all occur in one sentence; the first
# skill (in this order) whose cues all occur is the one the sentence names.
_RULE_CUES: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "groups",
        (
            r"\b(?:each|per|every|groups?|containers?|bags?|box(?:es)?|trays?|packs?|packets?|crates?)\b",
            r"(?:\bmultipl\w*|\btimes\b|\bproduct\b|\u00d7|\*|\bx\b)",
        ),
    ),
    ("division", (r"\b(?:divid\w*|split\w*|equally|equal (?:groups?|parts?|shares?)|quotient|one (?:group|share))\b",)),
    ("scaling", (r"\b(?:doubl(?!e[- ]check)\w*|tripl\w*|twice|three times|[23]x)\b",)),
    (
        "subtraction",
        (
            r"\b(?:subtract\w*|minus|takes? away|taken away|gives? away|given away|los(?:e|es|t|ing)|remov\w*"
            r"|decreas\w*|fewer|deduct\w*)\b",
        ),
    ),
    ("addition", (r"\b(?:add|adds|added|adding|addition|plus|sum|increas\w*|gain\w*)\b",)),
)
_CAREFUL_CUES: tuple[str, ...] = (r"step[- ]by[- ]step", r"\bcareful(?:ly)?\b", r"double[- ]check|\bverify|\bre-?check")
_SENTENCE_END = re.compile(r"[.;!?\n]+")


@dataclass(frozen=True)
class InstructionReading:
    """What a set of instructions says to the lab LM.

    Attributes:
        rules: the skills named by at least one sentence.
        careful: how many careful-wording groups occur (capped at two).
    """

    rules: frozenset[str]
    careful: int


@lru_cache(maxsize=1)
def _compiled_cues() -> tuple[tuple[tuple[str, tuple[re.Pattern[str], ...]], ...], tuple[re.Pattern[str], ...]]:
    rules = tuple((skill, tuple(re.compile(cue) for cue in cues)) for skill, cues in _RULE_CUES)
    return rules, tuple(re.compile(cue) for cue in _CAREFUL_CUES)


def _named_skill(sentence: str) -> str | None:
    rules, _ = _compiled_cues()
    for skill, cues in rules:
        if all(cue.search(sentence) for cue in cues):
            return skill
    return None


@lru_cache(maxsize=1024)
def read_instructions(instructions: str) -> InstructionReading:
    """Return the skills the instructions name and how much careful wording they hold.

    Example:
        >>> read_instructions("Multiply the number of bags by the apples per bag. Work carefully.")
        InstructionReading(rules=frozenset({'groups'}), careful=1)
    """
    lowered = instructions.lower()
    named = {_named_skill(sentence) for sentence in _SENTENCE_END.split(lowered) if sentence.strip()}
    named.discard(None)
    _, careful_cues = _compiled_cues()
    careful = sum(1 for cue in careful_cues if cue.search(lowered))
    return InstructionReading(
        frozenset(skill for skill in named if skill is not None), min(careful, MAXIMUM_CAREFUL_GROUPS)
    )


# -- slips ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SlipOption:
    """One way a step can go wrong.

    Attributes:
        weight: its share of the step's skill's slips.
        kind: a short name (``count_plus_size``, ``off_by_one``, ``wrong_operation``,
            ``dropped``, ``added_factor``, ``other_factor``, ``subtracted_divisor``, ``other_share``).
        after: the wrong result.
        expression: the working shown before ``= after`` (None: the step is left out).
    """

    weight: float
    kind: str
    after: int
    expression: str | None


def slip_options(step: ArithmeticStep, before: int) -> tuple[SlipOption, ...]:
    """Return every slip of ``step`` from the running value ``before``, with its share.

    The shares of one step sum to 1. Results are clamped at zero, as a count cannot go negative.
    """
    amount = step.amount
    if step.operation in ("add_groups", "subtract_groups"):
        sign = 1 if step.operation == "add_groups" else -1
        symbol = "+" if sign > 0 else "-"
        size, product = step.group_size, step.amount * step.group_size
        mixed = amount + size
        return (
            SlipOption(
                0.70,
                "count_plus_size",
                max(before + sign * mixed, 0),
                f"{amount} + {size} = {mixed}, so {before} {symbol} {mixed}",
            ),
            SlipOption(
                0.10,
                "off_by_one",
                max(before + sign * (product + 1), 0),
                f"{amount} * {size} = {product + 1}, so {before} {symbol} {product + 1}",
            ),
            SlipOption(
                0.10,
                "off_by_one",
                max(before + sign * (product - 1), 0),
                f"{amount} * {size} = {product - 1}, so {before} {symbol} {product - 1}",
            ),
            SlipOption(0.10, "dropped", before, None),
        )
    if step.operation == "add":
        return (
            SlipOption(0.30, "off_by_one", before + amount + 1, f"{before} + {amount}"),
            SlipOption(0.30, "off_by_one", max(before + amount - 1, 0), f"{before} + {amount}"),
            SlipOption(0.25, "wrong_operation", max(before - amount, 0), f"{before} - {amount}"),
            SlipOption(0.15, "dropped", before, None),
        )
    if step.operation == "subtract":
        return (
            SlipOption(0.25, "off_by_one", max(before - amount + 1, 0), f"{before} - {amount}"),
            SlipOption(0.25, "off_by_one", max(before - amount - 1, 0), f"{before} - {amount}"),
            SlipOption(0.35, "wrong_operation", before + amount, f"{before} + {amount}"),
            SlipOption(0.15, "dropped", before, None),
        )
    if step.operation == "multiply":
        other = 5 - amount  # doubles <-> triples
        return (
            SlipOption(0.55, "added_factor", before + amount, f"{before} + {amount}"),
            SlipOption(0.30, "other_factor", before * other, f"{before} * {other}"),
            SlipOption(0.075, "off_by_one", before * amount + 1, f"{before} * {amount}"),
            SlipOption(0.075, "off_by_one", max(before * amount - 1, 0), f"{before} * {amount}"),
        )
    if step.operation == "divide":
        share = before // amount
        return (
            SlipOption(0.40, "subtracted_divisor", max(before - amount, 0), f"{before} - {amount}"),
            SlipOption(0.175, "off_by_one", share + 1, f"{before} / {amount}"),
            SlipOption(0.175, "off_by_one", max(share - 1, 0), f"{before} / {amount}"),
            SlipOption(0.25, "other_share", before - share, f"{before} - {share}"),
        )
    raise ValueError(f"unknown operation {step.operation!r}")


# -- reading a worked solution back ---------------------------------------------------

_SLIP_WORDS = {
    "count_plus_size": "added the number of containers and the items per container instead of multiplying them",
    "off_by_one": "is off by one",
    "wrong_operation": "applied the opposite operation",
    "dropped": "left the step out",
    "added_factor": "added the factor instead of multiplying by it",
    "other_factor": "multiplied by the wrong factor",
    "subtracted_divisor": "subtracted the divisor instead of dividing",
    "other_share": "kept the wrong share",
    "wrong_result": "computed a wrong result",
}
_ARTICLE = {"groups": "a", "addition": "an", "subtraction": "a", "scaling": "a", "division": "a"}
_RESULT = re.compile(r"=\s*(-?\d+)")
_INTEGER = re.compile(r"^\s*(-?\d+)(?:\.0+)?\s*$")


@dataclass(frozen=True)
class Diagnosis:
    """Where a worked solution of a problem first goes wrong.

    Attributes:
        skill: the skill of the first diverging step; None when nothing diverges or it cannot be located.
        step_index: that step's position (0-based), or None.
        clause: the clause of that step, or ``""``.
        kind: the slip kind (see :class:`SlipOption`), ``wrong_result``, or for no skill:
            ``none`` (nothing diverges), ``answer_only`` (the steps are right but the stated
            answer is not) or ``unknown`` (wrong, but the divergence cannot be located).
        stated: the wrong value the solution states for that step (or its final answer), or None.
        expected: the exact value at that point, or None.
        correct: whether the stated answer is right (None when no answer was given).
    """

    skill: str | None
    step_index: int | None
    clause: str
    kind: str
    stated: int | None
    expected: int | None
    correct: bool | None

    def describe(self) -> str:
        """Return one sentence saying what went wrong, for a discussion."""
        if self.skill is None:
            return {
                "none": "Every step of its worked solution matches an exact solution of the question.",
                "answer_only": "Its steps are right, but the stated answer does not match its own last step.",
            }.get(self.kind, "Its answer is wrong, but the working does not show where it went wrong.")
        return (
            f"It first diverges at step {(self.step_index or 0) + 1} ('{self.clause}'), {_ARTICLE[self.skill]} "
            f"{self.skill} step: it "
            f"{_SLIP_WORDS.get(self.kind, 'computed a wrong result')}, stating {self.stated} where the exact "
            f"running amount is {self.expected}."
        )


def parse_integer(value: object) -> int | None:
    """Return ``value`` as an integer when it states one (``"12"``, ``12``, ``12.0``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        match = _INTEGER.match(value)
        if match:
            return int(match.group(1))
    return None


def _running_values(problem: ArithmeticProblem) -> list[int]:
    values = [problem.start]
    for step in problem.steps:
        values.append(apply_step(values[-1], step))
    return values


def _slip_kind_in(segment: str, step: ArithmeticStep, before: int, stated: int) -> str:
    if step.group_size and f"{step.amount} + {step.group_size} =" in segment:
        return "count_plus_size"
    for option in slip_options(step, before):
        if option.after == stated and option.kind != "dropped":
            return option.kind
    return "wrong_result"


def _dropped(problem: ArithmeticProblem, index: int, values: list[int]) -> Diagnosis:
    step = problem.steps[index]
    return Diagnosis(skill_of(step), index, step.clause, "dropped", values[index], values[index + 1], None)


def _from_reasoning(problem: ArithmeticProblem, reasoning: str, values: list[int]) -> Diagnosis | None:
    """Walk the reasoning clause by clause; None when it does not show the problem's steps."""
    lowered = reasoning.lower()
    position = 0
    found_any = False
    first_missing: int | None = None
    for index, step in enumerate(problem.steps):
        clause = step.clause.lower()
        start = lowered.find(clause, position) if clause else -1
        if start < 0:
            if first_missing is None:
                first_missing = index
            continue
        found_any = True
        if first_missing is not None:
            return _dropped(problem, first_missing, values)
        end = lowered.find(".", start)
        segment = reasoning[start : end if end >= 0 else len(reasoning)]
        results = _RESULT.findall(segment)
        position = start + len(clause)
        if not results:
            continue
        stated = int(results[-1])
        if stated != values[index + 1]:
            kind = _slip_kind_in(segment, step, values[index], stated)
            return Diagnosis(skill_of(step), index, step.clause, kind, stated, values[index + 1], None)
    if not found_any:
        return None
    if first_missing is not None:
        return _dropped(problem, first_missing, values)
    return Diagnosis(None, None, "", "none", None, None, None)


def _from_answer(problem: ArithmeticProblem, stated: int, values: list[int]) -> Diagnosis:
    """Explain a wrong final answer by a single slip, trying steps in order."""
    for index, step in enumerate(problem.steps):
        for option in slip_options(step, values[index]):
            value = option.after
            for later in problem.steps[index + 1 :]:
                value = apply_step(value, later)
            if value == stated and option.after != values[index + 1]:
                return Diagnosis(
                    skill_of(step), index, step.clause, option.kind, option.after, values[index + 1], False
                )
    return Diagnosis(None, None, "", "unknown", stated, values[-1], False)


def _answer_is_right(problem: ArithmeticProblem, answer: object, final: int) -> bool | None:
    if isinstance(answer, str) and answer.strip().lower() in ("even", "odd"):
        return answer.strip().lower() == ("even" if final % 2 == 0 else "odd")
    stated = parse_integer(answer)
    return None if stated is None else stated == final


@lru_cache(maxsize=8192)
def _diagnose(question: str, reasoning: str, answer: str | None) -> Diagnosis | None:
    problem = parse_problem(question)
    if problem is None:
        return None
    values = _running_values(problem)
    correct = _answer_is_right(problem, answer, values[-1]) if answer is not None else None
    from_reasoning = _from_reasoning(problem, reasoning, values) if reasoning else None
    if from_reasoning is not None:
        if from_reasoning.skill is None and correct is False:
            return Diagnosis(None, None, "", "answer_only", parse_integer(answer), values[-1], False)
        return Diagnosis(
            from_reasoning.skill,
            from_reasoning.step_index,
            from_reasoning.clause,
            from_reasoning.kind,
            from_reasoning.stated,
            from_reasoning.expected,
            correct,
        )
    if correct is None:
        return Diagnosis(None, None, "", "unknown", None, values[-1], None)
    if correct:
        return Diagnosis(None, None, "", "none", None, None, True)
    stated = parse_integer(answer)
    if stated is None:
        return Diagnosis(None, None, "", "unknown", None, values[-1], False)
    return _from_answer(problem, stated, values)


def diagnose(question: str, *, reasoning: str = "", answer: object = None) -> Diagnosis | None:
    """Find where a worked solution of ``question`` first goes wrong.

    The question is re-solved exactly (the simulator's privilege, documented in
    ``docs/lab_world.md``). With reasoning that shows the problem's clauses, the
    first step whose stated result differs from the exact running amount (or is
    missing) is the divergence. Without such reasoning, a wrong final answer is
    explained by the first single slip that reproduces it.

    Args:
        question: the problem text.
        reasoning: the worked solution, if any.
        answer: the stated final answer, if any.

    Returns:
        The diagnosis, or None when ``question`` is not a problem of the task family.
    """
    text_answer = None if answer is None else (answer if isinstance(answer, str) else str(answer))
    return _diagnose(question, reasoning or "", text_answer)


# -- demos ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoReading:
    """One demo as the LM reads it.

    Attributes:
        skills: the skills its question exercises (empty when it is not an arithmetic problem).
        verdict: ``correct``, ``wrong`` or ``other`` (not a problem, or no usable answer).
        wrong_skill: for a wrong demo whose divergence can be located, that step's skill.
    """

    skills: frozenset[str]
    verdict: str
    wrong_skill: str | None


@lru_cache(maxsize=4096)
def read_demo(question: str, answer: str | None, reasoning: str) -> DemoReading:
    """Read a demo: the skills it shows and whether its stated answer is right."""
    problem = parse_problem(question)
    if problem is None:
        return DemoReading(frozenset(), "other", None)
    skills = frozenset(skill_of(step) for step in problem.steps)
    diagnosis = diagnose(question, reasoning=reasoning, answer=answer)
    if diagnosis is None or diagnosis.correct is None:
        return DemoReading(skills, "other", None)
    if diagnosis.correct:
        return DemoReading(skills, "correct", None)
    return DemoReading(skills, "wrong", diagnosis.skill)


@dataclass(frozen=True)
class DemoEvidence:
    """What a prompt's demos do, per skill (in :data:`SKILLS` order).

    Attributes:
        matching: correct demos exercising each skill.
        helpful: all demos that help in general (correct ones and non-problem ones).
        wrong_located: wrong demos whose divergence is at a step of each skill.
        wrong_unlocated: wrong demos exercising each skill whose divergence cannot be located.
    """

    matching: tuple[int, ...]
    helpful: int
    wrong_located: tuple[int, ...]
    wrong_unlocated: tuple[int, ...]


NO_DEMOS = DemoEvidence((0,) * len(SKILLS), 0, (0,) * len(SKILLS), (0,) * len(SKILLS))


def demo_evidence(readings: tuple[DemoReading, ...]) -> DemoEvidence:
    """Summarise demo readings into per-skill counts."""
    if not readings:
        return NO_DEMOS
    matching = [0] * len(SKILLS)
    located = [0] * len(SKILLS)
    unlocated = [0] * len(SKILLS)
    helpful = 0
    for reading in readings:
        if reading.verdict == "wrong":
            if reading.wrong_skill is not None:
                located[SKILLS.index(reading.wrong_skill)] += 1
            else:
                for skill in reading.skills:
                    unlocated[SKILLS.index(skill)] += 1
            continue
        helpful += 1
        if reading.verdict == "correct":
            for skill in reading.skills:
                matching[SKILLS.index(skill)] += 1
    return DemoEvidence(tuple(matching), helpful, tuple(located), tuple(unlocated))


# -- the slip probability per skill -------------------------------------------------------


@lru_cache(maxsize=4096)
def slip_probabilities(
    base_rates: tuple[float, ...],
    direct_answer_penalty: float,
    *,
    temperature: float,
    reasoning: bool,
    demos: DemoEvidence,
    instructions: str,
) -> tuple[float, ...]:
    """Return the slip probability of a step of each skill (in :data:`SKILLS` order).

    Args:
        base_rates: the model's slip rates per skill at temperature 0 with a reasoning field.
        direct_answer_penalty: the factor applied without a reasoning field.
        temperature: the sampling temperature.
        reasoning: whether the prompt asks for a reasoning field before the answer.
        demos: what the prompt's demos do.
        instructions: the signature instructions (rules and careful wording are read from them).

    Returns:
        One probability per skill, capped at 0.9.
    """
    sensitivity = TEMPERATURE_SENSITIVITY_WITH_REASONING if reasoning else TEMPERATURE_SENSITIVITY_DIRECT
    common = (1.0 + sensitivity * temperature * temperature) * (1.0 if reasoning else direct_answer_penalty)
    reading = read_instructions(instructions)
    common *= CAREFUL_FACTOR**reading.careful
    probabilities = []
    for index, skill in enumerate(SKILLS):
        matching = demos.matching[index]
        factor = 1.0 - MATCHING_DEMO_CEILING * (1.0 - MATCHING_DEMO_DECAY**matching)
        factor *= OTHER_DEMO_FACTOR ** min(demos.helpful - matching, MAXIMUM_OTHER_DEMOS)
        factor *= WRONG_DEMO_LOCATED_FACTOR ** demos.wrong_located[index]
        factor *= WRONG_DEMO_UNLOCATED_FACTOR ** demos.wrong_unlocated[index]
        if skill in reading.rules:
            factor *= RULE_FACTOR
        probabilities.append(min(base_rates[index] * common * factor, MAXIMUM_SLIP_PROBABILITY))
    return tuple(probabilities)


# -- advice ------------------------------------------------------------------------------

ADVICE: dict[str, str] = {
    "groups": (
        "When a problem gives N containers with M items each, multiply N by M before adding or removing the items."
    ),
    "addition": (
        "When the problem says items are bought, found or received, add exactly that many to the running total."
    ),
    "subtraction": (
        "When items are given away, lost, used or sold, subtract exactly that many from the running total."
    ),
    "scaling": "When the amount doubles or triples, multiply the running total by 2 or 3 instead of adding 2 or 3.",
    "division": (
        "When the items are split equally into K groups and one group is kept, divide the running total by K."
    ),
}
VAGUE_ADVICE = (
    "If the module receives a multi-step word problem, it should work through it step by step and double-check "
    "its arithmetic before answering."
)
NEUTRAL_ADVICE = "Keep this module's current approach; its outputs were not where the trajectories diverged."

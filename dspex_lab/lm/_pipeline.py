"""The lab world's pipeline stages: writing a plan, solving with one, verifying a proposed answer.

A plan → solve → verify program (``dspex_lab.tasks.pipeline``) asks the lab LM three
kinds of request, each recognised from its fields (``docs/lab_world.md``, section 10):

- a **plan request** (an arithmetic question in the inputs, an output field named
  ``plan``) gets one numbered line per step, naming the step's clause and its
  operation; each step is misread (the wrong operation named) at a rate that depends
  on the model, the temperature, the plan demos and the rules in the instructions;
- a **solve request with a plan** (an input whose name holds ``plan``) is solved step
  by step; a correctly planned step slips less (the plan acts as a rule for that
  step), a misplanned one is followed, wrongly, at a model-dependent rate;
- a **verify request** (an input whose name holds ``answer``, a proposed answer) re-checks
  the shown working: it catches a slip with a model-dependent probability and re-works
  the problem from there, and on a right answer raises a false alarm now and then.
  Strict wording raises both; demos that only confirm a proposed answer teach it to
  rubber-stamp.

Nothing is executed: plans are read with the fixed patterns below, questions with the
task grammar. The LM never sees a gold answer; like the feedback answer
(:mod:`dspex_lab.lm._feedback`) it may check shown working against its own exact
solution of the question (the simulator's documented privilege).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from dspex_lab.lm._feedback import REASONING_NAMES
from dspex_lab.lm._skills import (
    RULE_FACTOR,
    SKILLS,
    DemoEvidence,
    DemoReading,
    demo_evidence,
    diagnose,
    skill_of,
    slip_options,
    slip_probabilities,
)
from dspex_lab.lm.profiles import LabModelProfile
from dspex_lab.lm.prompt import DemoTurn, OutputField, PromptView
from dspex_lab.lm.solver import SHARED_LUCK, Draws, Solution, exact_expression, pick_option, solve
from dspex_lab.tasks.arithmetic import ArithmeticProblem, ArithmeticStep, apply_step, parse_problem

__all__ = [
    "PipelineStage",
    "answer_plan",
    "answer_value",
    "answer_verify",
    "pipeline_stage",
    "plan_text",
    "read_plan",
    "read_strictness",
    "solve_with_plan",
]

# -- effect sizes (docs/lab_world.md, section 10) -------------------------------------------

#: Plan misread rate per step of each skill (SKILLS order) with a reasoning field at temperature 0.
PLAN_MISREAD_RATES: dict[str, tuple[float, ...]] = {
    "lab/small": (0.2, 0.012, 0.02, 0.035, 0.04),
    "lab/large": (0.16, 0.01, 0.016, 0.028, 0.032),
}
#: A plan written without a reasoning field (``dspy.Predict``) misreads this many times as often.
PLAN_DIRECT_PENALTY = 1.3
#: A correctly planned step slips at this rate per skill (times the step's modifiers of section 2): only the
#: arithmetic is left to do.
PLANNED_STEP_SLIP_RATES: dict[str, tuple[float, ...]] = {
    "lab/small": (0.05, 0.008, 0.01, 0.015, 0.02),
    "lab/large": (0.04, 0.006, 0.008, 0.012, 0.016),
}
#: The chance that a solver does a misplanned step as the plan says (times the step's modifiers of section 2).
FOLLOW_WRONG_PLAN = {"lab/small": 0.8, "lab/large": 0.7}
MAXIMUM_FOLLOW = 0.95
#: The chance that a verifier catches a located slip in the shown working (standard wording, T=0).
DETECTION = {"lab/small": 0.3, "lab/large": 0.6}
#: The chance that a verifier "corrects" a right answer (standard wording, T=0).
FALSE_ALARM = {"lab/small": 0.04, "lab/large": 0.005}
#: Strict wording: detection and false alarms multiplied by these; lenient wording by the others.
STRICT_DETECTION, STRICT_FALSE_ALARM = 1.5, 5.0
LENIENT_DETECTION, LENIENT_FALSE_ALARM = 0.6, 0.3
#: Each demo that keeps its proposed answer (counted up to four) multiplies detection by this.
CONFIRMING_DEMO_FACTOR = 0.85
MAXIMUM_CONFIRMING_DEMOS = 4
#: Each demo that corrects a wrong proposed answer to the right one (up to two) multiplies detection by this.
CORRECTING_DEMO_FACTOR = 1.25
MAXIMUM_CORRECTING_DEMOS = 2
#: A wrong answer whose working does not show where it went wrong is caught at this share of the rate.
UNLOCATED_DETECTION_SHARE = 0.5
MAXIMUM_DETECTION = 0.95
TEMPERATURE_SENSITIVITY = 0.6

_STRICT_CUES = re.compile(r"\b(?:strict\w*|rigorous\w*|distrust\w*|skeptic\w*|sceptic\w*)\b")
_LENIENT_CUES = re.compile(r"\b(?:lenient\w*|trust (?:the|it|its)|only (?:clear|obvious)|clear errors)\b")


@dataclass(frozen=True)
class PipelineStage:
    """Which pipeline request a prompt is, and the input fields it names.

    Attributes:
        kind: ``plan``, ``solve`` (with a plan) or ``verify``.
        plan: the plan text shown to a solve request.
        working: the shown working of a verify request (its ``solution`` or reasoning input).
        proposed: the proposed answer of a verify request.
    """

    kind: str
    plan: str = ""
    working: str = ""
    proposed: str = ""


def pipeline_stage(view: PromptView, fields: tuple[OutputField, ...]) -> PipelineStage | None:
    """Return the pipeline stage ``view`` asks for, or None for any other request (answered as before).

    The caller has found an arithmetic question among the inputs. A proposed answer among the
    inputs makes it a verify request; an output field named ``plan`` (and none named ``answer``) a
    plan request; an input whose name holds ``plan`` a solve request with that plan.
    """
    names = {field.name for field in fields}
    proposed_key = next((name for name in view.inputs if "answer" in name.lower()), None)
    if proposed_key is not None and "answer" in names:
        working = next(
            (
                value
                for name, value in view.inputs.items()
                if name.lower() in REASONING_NAMES or any(word in name.lower() for word in ("solution", "working"))
            ),
            "",
        )
        return PipelineStage("verify", working=working, proposed=view.inputs[proposed_key])
    if "plan" in names and "answer" not in names:
        return PipelineStage("plan")
    plan_key = next((name for name in view.inputs if "plan" in name.lower()), None)
    if plan_key is not None and read_plan(view.inputs[plan_key]):
        return PipelineStage("solve", plan=view.inputs[plan_key])
    return None


def answer_value(field: OutputField, problem: ArithmeticProblem, answer: int) -> object:
    """Return ``answer`` as ``field`` wants it: a number for numeric fields, parity for the null task."""
    if field.type_name == "float":
        return float(answer)
    if field.type_name == "int":
        return answer
    if problem.asks == "parity":
        return "even" if answer % 2 == 0 else "odd"
    return str(answer)


# -- plans ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedStep:
    """One plan line read back: the operation it names and its numbers.

    Attributes:
        operation: ``add``, ``subtract``, ``multiply``, ``divide``, ``groups_product`` (multiply
            count by size) or ``groups_sum`` (add count and size: the misread group step).
        numbers: the numbers it names.
        sign: for the group operations, +1 (add the result) or -1 (subtract it).
    """

    operation: str
    numbers: tuple[int, ...]
    sign: int = 1

    def value_after(self, before: int) -> int:
        """Return the running amount after doing what this line says."""
        first = self.numbers[0]
        if self.operation == "add":
            return before + first
        if self.operation == "subtract":
            return max(before - first, 0)
        if self.operation == "multiply":
            return before * first
        if self.operation == "divide":
            return before // first if first else before
        amount = first * self.numbers[1] if self.operation == "groups_product" else first + self.numbers[1]
        return max(before + self.sign * amount, 0)

    def expression(self, before: int) -> str:
        """Return the working shown when a solver does what this line says."""
        symbol = "+" if self.sign > 0 else "-"
        if self.operation in ("groups_product", "groups_sum"):
            count, size = self.numbers
            operator, amount = ("*", count * size) if self.operation == "groups_product" else ("+", count + size)
            return f"{count} {operator} {size} = {amount}, so {before} {symbol} {amount}"
        operator = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/"}[self.operation]
        return f"{before} {operator} {self.numbers[0]}"


_PLAN_LINE = re.compile(r"^\s*\d+[.)]\s*(?P<clause>[^:\n]+?)\s*:\s*(?P<operation>[^:\n]+?)\s*\.?\s*$", re.MULTILINE)
_OPERATIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern + r"$"))
    for name, pattern in (
        ("groups_product", r"multiply (\d+) by (\d+) and (add|subtract) the product"),
        ("groups_sum", r"add (\d+) and (\d+) and (add|subtract) the sum"),
        ("add", r"add (\d+)"),
        ("subtract", r"subtract (\d+)"),
        ("multiply", r"multiply by (\d+)"),
        ("divide", r"divide by (\d+)"),
    )
)


def _read_operation(text: str) -> PlannedStep | None:
    for name, pattern in _OPERATIONS:
        match = pattern.match(text.strip().lower())
        if match is None:
            continue
        groups = match.groups()
        if name in ("groups_product", "groups_sum"):
            return PlannedStep(name, (int(groups[0]), int(groups[1])), 1 if groups[2] == "add" else -1)
        return PlannedStep(name, (int(groups[0]),))
    return None


@lru_cache(maxsize=4096)
def read_plan(text: str) -> tuple[tuple[str, PlannedStep], ...]:
    """Return the lines of a plan as ``(clause, planned step)``, in order; lines that do not parse are skipped.

    Example:
        >>> read_plan("1. buys 3 bags with 7 apples each: multiply 3 by 7 and add the product.")[0][1].operation
        'groups_product'
    """
    found = []
    for match in _PLAN_LINE.finditer(text):
        planned = _read_operation(match["operation"])
        if planned is not None:
            found.append((" ".join(match["clause"].lower().split()), planned))
    return tuple(found)


def _planned_steps(problem: ArithmeticProblem, plan: str) -> list[PlannedStep | None]:
    """Match each step of ``problem`` with the plan line naming its clause (None: not planned)."""
    lines = list(read_plan(plan))
    matched: list[PlannedStep | None] = []
    for step in problem.steps:
        clause = " ".join(step.clause.lower().split())
        index = next((position for position, (text, _) in enumerate(lines) if text == clause), None)
        matched.append(lines.pop(index)[1] if index is not None else None)
    return matched


def _correct_line(step: ArithmeticStep) -> str:
    if step.group_size:
        verb = "add" if step.operation == "add_groups" else "subtract"
        return f"multiply {step.amount} by {step.group_size} and {verb} the product"
    return {"add": "add", "subtract": "subtract", "multiply": "multiply by", "divide": "divide by"}[
        step.operation
    ] + f" {step.amount}"


def _misread_line(step: ArithmeticStep) -> str:
    """Return the plan line of a misread step: the step's most common wrong operation (section 1)."""
    if step.group_size:
        verb = "add" if step.operation == "add_groups" else "subtract"
        return f"add {step.amount} and {step.group_size} and {verb} the sum"
    return {"add": "subtract", "subtract": "add", "multiply": "add", "divide": "subtract"}[
        step.operation
    ] + f" {step.amount}"


def plan_text(problem: ArithmeticProblem, misread: tuple[bool, ...]) -> str:
    """Write the plan of ``problem``, misreading the steps flagged in ``misread``."""
    return "\n".join(
        f"{position + 1}. {step.clause}: {_misread_line(step) if wrong else _correct_line(step)}."
        for position, (step, wrong) in enumerate(zip(problem.steps, misread, strict=True))
    )


def _read_plan_demo(question: str, plan: str) -> DemoReading:
    problem = parse_problem(question)
    if problem is None:
        return DemoReading(frozenset(), "other", None)
    skills = frozenset(skill_of(step) for step in problem.steps)
    value = problem.start
    planned = _planned_steps(problem, plan)
    if all(line is None for line in planned):
        return DemoReading(skills, "other", None)
    for step, line in zip(problem.steps, planned, strict=True):
        exact = apply_step(value, step)
        if line is not None and line.value_after(value) != exact:
            return DemoReading(skills, "wrong", skill_of(step))
        value = exact
    return DemoReading(skills, "correct", None)


def _plan_demo_evidence(view: PromptView, plan_name: str) -> DemoEvidence:
    """Read plan demos: a demo whose plan names every step's operation right helps the skills it shows."""
    readings = []
    for demo in view.demos:
        question = next((value for value in demo.inputs.values() if parse_problem(value) is not None), "")
        readings.append(_read_plan_demo(question, demo.outputs.get(plan_name, "")))
    return demo_evidence(tuple(readings))


def answer_plan(
    view: PromptView,
    fields: tuple[OutputField, ...],
    problem: ArithmeticProblem,
    profile: LabModelProfile,
    *,
    temperature: float,
    draws: Draws,
    luck_key: str,
) -> dict[str, object]:
    """Answer a plan request: one line per step, each misread at its skill's plan rate.

    Returns:
        Output values: the plan for the ``plan`` field, a short note for a reasoning field before
        it, None for any other field (the caller fills those generically).
    """
    plan_field = next(field for field in fields if field.name == "plan")
    index = fields.index(plan_field)
    reasoning = any(field.name in REASONING_NAMES for field in fields[:index])
    rates = slip_probabilities(
        PLAN_MISREAD_RATES.get(profile.name, PLAN_MISREAD_RATES["lab/small"]),
        PLAN_DIRECT_PENALTY,
        temperature=temperature,
        reasoning=reasoning,
        demos=_plan_demo_evidence(view, plan_field.name) if view.demos else demo_evidence(()),
        instructions=view.system.instructions,
    )
    misread = []
    for position, step in enumerate(problem.steps):
        stream = Draws(f"plan-{luck_key}|step{position}") if draws.uniform() < SHARED_LUCK else draws
        misread.append(stream.uniform() < rates[SKILLS.index(skill_of(step))])
    values: dict[str, object] = {}
    for field in fields:
        if field is plan_field:
            values[field.name] = plan_text(problem, tuple(misread))
        elif field.name in REASONING_NAMES and reasoning:
            values[field.name] = "Read each clause of the question and name the operation it needs."
        else:
            values[field.name] = None
    return values


# -- solving with a plan ---------------------------------------------------------------------

_OPENING = "Following the plan, start with {start} {item}."


def solve_with_plan(
    problem: ArithmeticProblem,
    plan: str,
    profile: LabModelProfile,
    *,
    slip_probabilities: tuple[float, ...],
    draws: Draws,
    luck_key: str,
) -> Solution:
    """Work ``problem`` step by step with ``plan`` in view.

    Each step's *modifier* is its slip probability over the model's base rate: what temperature,
    demos, rules and careful wording do to it (section 2). A step the plan names correctly slips at
    the model's planned-step rate times its modifier (only the arithmetic is left); a step the plan
    names wrongly is done as the plan says at the model's follow rate times its modifier, else worked
    as usual; a step the plan does not name is worked as usual. Luck is shared across prompts as in
    :func:`dspex_lab.lm.solver.solve`.
    """
    base_rates = profile.base_rates(SKILLS)
    planned_rates = PLANNED_STEP_SLIP_RATES.get(profile.name, PLANNED_STEP_SLIP_RATES["lab/small"])
    follow = FOLLOW_WRONG_PLAN.get(profile.name, FOLLOW_WRONG_PLAN["lab/small"])
    lines = [_OPENING.format(start=problem.start, item=problem.item)]
    value, slips = problem.start, 0
    for position, (step, planned) in enumerate(zip(problem.steps, _planned_steps(problem, plan), strict=True)):
        stream = Draws(f"{luck_key}|step{position}") if draws.uniform() < SHARED_LUCK else draws
        index = SKILLS.index(skill_of(step))
        exact = apply_step(value, step)
        rate = slip_probabilities[index]
        modifier = rate / base_rates[index]
        clause = step.clause[:1].upper() + step.clause[1:]
        if planned is not None and planned.value_after(value) != exact:
            if stream.uniform() < min(follow * modifier, MAXIMUM_FOLLOW):
                after = planned.value_after(value)
                lines.append(f"{clause}: {planned.expression(value)} = {after}.")
                value, slips = after, slips + 1
                continue
        elif planned is not None:
            rate = planned_rates[index] * modifier
        if stream.uniform() < rate:
            options = slip_options(step, value)
            option = pick_option(options, stream.uniform())
            if option.expression is not None:
                lines.append(f"{clause}: {option.expression} = {option.after}.")
            value, slips = option.after, slips + 1
            continue
        lines.append(f"{clause}: {exact_expression(step, value)} = {exact}.")
        value = exact
    lines.append(f"The answer is {value}.")
    return Solution(answer=value, reasoning=" ".join(lines), slips=slips)


# -- verifying a proposed answer ----------------------------------------------------------------


def read_strictness(instructions: str) -> str:
    """Return ``strict``, ``lenient`` or ``standard``: how the instructions ask a verifier to judge.

    Example:
        >>> read_strictness("Be strict: distrust any result you have not checked.")
        'strict'
    """
    lowered = instructions.lower()
    strict, lenient = bool(_STRICT_CUES.search(lowered)), bool(_LENIENT_CUES.search(lowered))
    if strict and not lenient:
        return "strict"
    if lenient and not strict:
        return "lenient"
    return "standard"


def _verify_demo_factor(demos: tuple[DemoTurn, ...], answer_name: str) -> float:
    """Return the detection factor of verify demos: confirming ones lower it, correcting ones raise it."""
    confirming = correcting = 0
    for demo in demos:
        question = next((value for value in demo.inputs.values() if parse_problem(value) is not None), None)
        proposed = next((value for name, value in demo.inputs.items() if "answer" in name.lower()), None)
        given = demo.outputs.get(answer_name)
        if question is None or proposed is None or given is None:
            continue
        if given.strip().lower() == proposed.strip().lower():
            confirming += 1
            continue
        was_right = diagnose(question, answer=proposed)
        now_right = diagnose(question, answer=given)
        if was_right is not None and now_right is not None and was_right.correct is False and now_right.correct:
            correcting += 1
    return CONFIRMING_DEMO_FACTOR ** min(confirming, MAXIMUM_CONFIRMING_DEMOS) * CORRECTING_DEMO_FACTOR ** min(
        correcting, MAXIMUM_CORRECTING_DEMOS
    )


@dataclass(frozen=True)
class Verdict:
    """A verifier's answer: the proposed answer kept, or a re-worked number, and what it says.

    Attributes:
        kept: the proposed answer's text when it is kept, else None.
        answer: the re-worked number when the proposed answer is replaced, else None.
        reasoning: the verifier's own reasoning text.
    """

    kept: str | None
    answer: int | None
    reasoning: str


def _rework(
    problem: ArithmeticProblem, start: int, probabilities: tuple[float, ...], draws: Draws, luck_key: str
) -> tuple[int, str]:
    """Re-work the problem from step ``start`` (the exact amount before it) with the verifier's own slip rates."""
    value = problem.start
    for step in problem.steps[:start]:
        value = apply_step(value, step)
    rest = ArithmeticProblem(value, problem.item, problem.container, problem.steps[start:], problem.asks)
    solution = solve(rest, slip_probabilities=probabilities, draws=draws, luck_key=luck_key)
    return solution.answer, solution.reasoning


def _false_alarm(problem: ArithmeticProblem, draws: Draws) -> tuple[int, str]:
    """Raise a false alarm on a right solution: redo one step wrongly, the rest exactly."""
    position = draws.integer(len(problem.steps))
    value = problem.start
    for index, step in enumerate(problem.steps):
        if index == position:
            option = pick_option(slip_options(step, value), draws.uniform())
            value = option.after
            continue
        value = apply_step(value, step)
    clause = problem.steps[position].clause
    return value, f"Step {position + 1} ('{clause}') looks wrong to me; redoing it gives a final amount of {value}."


def answer_verify(
    view: PromptView,
    stage: PipelineStage,
    problem: ArithmeticProblem,
    profile: LabModelProfile,
    *,
    temperature: float,
    reasoning: bool,
    answer_name: str,
    draws: Draws,
    luck_key: str,
) -> Verdict:
    """Re-check a proposed answer and its working; keep it, or re-work the problem.

    A located slip is caught with the model's detection rate (times the strictness, demo and
    temperature factors; half of it when the working does not show where the slip is), and the
    problem is re-worked from the slipped step with the verifier's own slip rates. A right answer
    is "corrected" with the model's false-alarm rate (times the strictness and temperature factors).
    """
    heat = 1.0 + TEMPERATURE_SENSITIVITY * temperature * temperature
    strictness = read_strictness(view.system.instructions)
    detect_factor = {"strict": STRICT_DETECTION, "lenient": LENIENT_DETECTION}.get(strictness, 1.0)
    alarm_factor = {"strict": STRICT_FALSE_ALARM, "lenient": LENIENT_FALSE_ALARM}.get(strictness, 1.0)
    luck = Draws(f"verify-{luck_key}") if draws.uniform() < SHARED_LUCK else draws
    draw = luck.uniform()
    question = next(value for value in view.inputs.values() if parse_problem(value) is not None)
    diagnosis = diagnose(question, reasoning=stage.working, answer=stage.proposed)
    proposed = stage.proposed.strip()
    if diagnosis is None or diagnosis.correct is None:
        diagnosis = None
    if diagnosis is not None and diagnosis.correct:
        alarm = FALSE_ALARM.get(profile.name, FALSE_ALARM["lab/small"]) * alarm_factor * heat
        if draw < min(alarm, MAXIMUM_DETECTION):
            answer, text = _false_alarm(problem, draws)
            return Verdict(None, answer, f"Re-checking the solution. {text}")
        return Verdict(proposed, None, f"Re-checked each step of the solution; the answer {proposed} stands.")
    detection = DETECTION.get(profile.name, DETECTION["lab/small"]) * detect_factor / heat
    detection *= _verify_demo_factor(view.demos, answer_name) if view.demos else 1.0
    located = diagnosis is not None and diagnosis.step_index is not None
    if not located:
        detection *= UNLOCATED_DETECTION_SHARE
    if diagnosis is not None and draw >= min(detection, MAXIMUM_DETECTION):
        return Verdict(proposed, None, f"Re-checked each step of the solution; the answer {proposed} stands.")
    start = diagnosis.step_index if diagnosis is not None and diagnosis.step_index is not None else 0
    own = slip_probabilities(
        profile.base_rates(SKILLS),
        profile.direct_answer_penalty,
        temperature=temperature,
        reasoning=reasoning,
        demos=demo_evidence(()),
        instructions=view.system.instructions,
    )
    if located and diagnosis is not None and diagnosis.skill is not None:
        # It has just seen that mistake: the slipped skill is re-worked as under a rule for it (section 4).
        alerted = SKILLS.index(diagnosis.skill)
        own = tuple(rate * RULE_FACTOR if index == alerted else rate for index, rate in enumerate(own))
    answer, text = _rework(problem, start, own, draws, f"verify-{luck_key}")
    where = f"step {start + 1}" if located else "the working"
    return Verdict(None, answer, f"Re-checking the solution: {where} is wrong. Redoing it from there: {text}")

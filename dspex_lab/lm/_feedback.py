"""The lab LM's answers to optimizers: SIMBA-style feedback and instruction proposals.

A feedback request (inputs ``module_names`` and a worse trajectory, as in DSPy's
``OfferFeedback`` and SIMBA-C's signature) is answered by diagnosing the slip
visible in the worse trajectory and advising the module that made it with a rule
naming the skill. An instruction proposal (an output field whose name holds
``instruction``, as MIPROv2's ``proposed_instruction`` and GEPA's
``new_instruction``, with arithmetic questions among the inputs) is answered with
the current instruction plus rules for the skills seen failing. The model's
diagnosis accuracy decides how often it names the right skill
(``docs/lab_world.md``, sections 5 and 6).

Everything read here is data: trajectories are parsed as JSON or scanned with
fixed patterns, and questions are read with the task grammar. Gold answers
(``oracle_metadata``, feedback texts) are never read.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from dspex_lab.lm._skills import (
    ADVICE,
    NEUTRAL_ADVICE,
    SKILLS,
    VAGUE_ADVICE,
    Diagnosis,
    diagnose,
    read_instructions,
    skill_of,
)
from dspex_lab.lm.profiles import LabModelProfile
from dspex_lab.lm.prompt import OutputField, PromptView
from dspex_lab.lm.solver import Draws
from dspex_lab.tasks.arithmetic import parse_problem

__all__ = ["Case", "answer_feedback", "answer_proposal", "find_cases"]

REASONING_NAMES = frozenset({"reasoning", "rationale", "thought", "thoughts", "thinking", "explanation", "steps"})
_PROBLEM = re.compile(r"[A-Z][a-z]+ has \d+ [A-Za-z]+\.[^\n]*?(?:have now\?|even or odd\?)")
_TEXT_ANSWER = re.compile(r"answer\W{0,8}(-?\d+|even|odd)", re.IGNORECASE)
_IGNORED_KEYS = frozenset({"oracle_metadata", "feedback", "reward_info"})
_MAXIMUM_RULES = 3


@dataclass(frozen=True)
class Case:
    """One worked question found in a prompt (a trajectory step, a shown example).

    Attributes:
        module: the module name it was found under, or ``""``.
        question: the arithmetic question.
        reasoning: the worked solution shown with it, or ``""``.
        answer: the answer shown with it, or None.
    """

    module: str
    question: str
    reasoning: str
    answer: str | None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _question_in(node: dict[str, Any]) -> str | None:
    for key, value in node.items():
        if str(key).lower() in _IGNORED_KEYS:
            continue
        values = value.values() if isinstance(value, dict) else (value,)
        for candidate in values:
            if isinstance(candidate, str) and parse_problem(candidate) is not None:
                return candidate
    return None


def _outputs_in(node: dict[str, Any]) -> tuple[str, str | None]:
    reasoning, answer = "", None
    scopes = [
        node,
        *(value for key, value in node.items() if isinstance(value, dict) and key.lower() not in _IGNORED_KEYS),
    ]
    for scope in scopes:
        for key, value in scope.items():
            name = str(key).lower()
            if name in REASONING_NAMES and not reasoning and isinstance(value, str):
                reasoning = value
            elif name == "answer" and answer is None and value is not None:
                answer = _text(value)
    return reasoning, answer


def _walk(node: Any, module: str, found: list[Case]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, module, found)
        return
    if not isinstance(node, dict):
        return
    module = str(node.get("module_name", module))
    question = _question_in(node)
    if question is not None:
        reasoning, answer = _outputs_in(node)
        found.append(Case(module, question, reasoning, answer))
        return
    for key, value in node.items():
        if str(key).lower() not in _IGNORED_KEYS:
            _walk(value, module, found)


def find_cases(text: str) -> list[Case]:
    """Return the worked questions in ``text`` (JSON as optimizers render it, or plain text).

    In JSON, a case is an object holding a question (directly or one level down, e.g.
    under ``inputs``) with its ``reasoning`` and ``answer`` (likewise); keys named
    ``oracle_metadata`` or ``feedback`` are skipped. In plain text, each question
    starts a case that runs to the next question, and the first "answer: N" in it is
    its answer.
    """
    stripped = text.strip()
    if stripped[:1] in "[{":
        try:
            loaded = json.loads(stripped)
        except ValueError:
            loaded = None
        if loaded is not None:
            found: list[Case] = []
            _walk(loaded, "", found)
            return found
    matches = list(_PROBLEM.finditer(text))
    cases = []
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        chunk = text[match.end() : end]
        answer = _TEXT_ANSWER.search(chunk)
        cases.append(Case("", match.group(0), chunk, answer.group(1) if answer else None))
    return cases


def _module_names(raw: str) -> list[str]:
    try:
        names = json.loads(raw)
    except ValueError:
        names = [name.strip(" -*'\"[]") for name in raw.replace(",", "\n").splitlines() if name.strip(" -*'\"[]")]
    if not isinstance(names, list):
        names = [names]
    return [str(name) for name in names]


def _report(located: str, profile: LabModelProfile, draws: Draws) -> str | None:
    """Return the skill the model names for a slip located at a ``located`` step: right, another, or None (vague)."""
    if draws.uniform() < profile.diagnosis_accuracy:
        return located
    if draws.uniform() < 0.5:
        return None
    others = [skill for skill in SKILLS if skill != located]
    return others[draws.integer(len(others))]


def _feedback(view: PromptView, profile: LabModelProfile, draws: Draws) -> tuple[str, dict[str, str]]:
    names = _module_names(view.inputs.get("module_names", ""))
    worse_key = next((name for name in view.inputs if "worse" in name and "trajectory" in name), None)
    better = view.inputs.get("better_reward_value", "?")
    worse = view.inputs.get("worse_reward_value", "?")
    cases = find_cases(view.inputs[worse_key]) if worse_key is not None else []
    located: tuple[Case, Diagnosis] | None = None
    unexplained = False
    for case in cases:
        diagnosis = diagnose(case.question, reasoning=case.reasoning, answer=case.answer)
        if diagnosis is None:
            continue
        if diagnosis.skill is not None:
            located = (case, diagnosis)
            break
        unexplained = unexplained or diagnosis.kind in ("answer_only", "unknown")
    if located is None:
        if unexplained:
            discussion = (
                f"The worse trajectory (reward {worse}) ends with a wrong answer, but its working does not show "
                f"which step went wrong, so the advice stays general (the better one scored {better})."
            )
            return discussion, dict.fromkeys(names, VAGUE_ADVICE)
        discussion = (
            f"No step of the worse trajectory (reward {worse}) diverges from a correct solution of its question, "
            f"so there is no skill to correct (the better one scored {better}); no module gets a new rule."
        )
        return discussion, dict.fromkeys(names, NEUTRAL_ADVICE)
    case, diagnosis = located
    if diagnosis.skill is None:
        raise ValueError("a located slip has a skill")
    culprit = case.module if case.module in names else None
    where = f"module '{culprit}'" if culprit else "the program"
    skill = _report(diagnosis.skill, profile, draws)
    if skill is None:
        discussion = (
            f"The worse trajectory (reward {worse}) reaches a wrong answer in {where}; it is hard to say which "
            f"step is at fault, so the advice is general (the better one scored {better})."
        )
        advice = VAGUE_ADVICE
    elif skill == diagnosis.skill:
        discussion = (
            f"The worse trajectory (reward {worse}) goes wrong in {where}. {diagnosis.describe()} The better "
            f"trajectory (reward {better}) does not make this slip, so the advice targets the {skill} step."
        )
        advice = ADVICE[skill]
    else:
        discussion = (
            f"The worse trajectory (reward {worse}) seems to go wrong in {where} at a {skill} step; the better "
            f"trajectory (reward {better}) handles it, so the advice targets the {skill} step."
        )
        advice = ADVICE[skill]
    return discussion, {name: advice if culprit in (None, name) else NEUTRAL_ADVICE for name in names}


def _is_dict_field(field: OutputField) -> bool:
    return field.type_name.replace(" ", "").startswith(("dict[", "Dict[")) or field.type_name.strip() == "dict"


def answer_feedback(
    view: PromptView, fields: tuple[OutputField, ...], profile: LabModelProfile, draws: Draws
) -> dict[str, Any] | None:
    """Answer a SIMBA-style feedback request, or return None when ``view`` is not one.

    Args:
        view: the request.
        fields: its output fields.
        profile: the answering model (its diagnosis accuracy matters).
        draws: the call's random stream.

    Returns:
        Output values: the advice per module name for a dict field, the discussion for
        the first ``str`` field (``discussion`` preferred), None for any other field
        (the caller fills those generically).
    """
    if "module_names" not in view.inputs:
        return None
    discussion, advice = _feedback(view, profile, draws)
    text_field = next((field for field in fields if field.name == "discussion"), None) or next(
        (field for field in fields if field.type_name.strip() == "str"), None
    )
    values: dict[str, Any] = {}
    for field in fields:
        if _is_dict_field(field):
            values[field.name] = advice
        elif field is text_field:
            values[field.name] = discussion
        else:
            values[field.name] = None
    return values


def _proposed_skills(cases: list[Case], profile: LabModelProfile, draws: Draws) -> list[str]:
    failing: Counter[str] = Counter()
    exercised: set[str] = set()
    for case in cases:
        problem = parse_problem(case.question)
        if problem is None:
            continue
        exercised.update(skill_of(step) for step in problem.steps)
        diagnosis = diagnose(case.question, reasoning=case.reasoning, answer=case.answer)
        if diagnosis is not None and diagnosis.skill is not None:
            reported = _report(diagnosis.skill, profile, draws)
            if reported is not None:
                failing[reported] += 1
    if failing:
        return [skill for skill, _ in failing.most_common(_MAXIMUM_RULES)]
    # No failure shown (MIPROv2 shows correct demos): name the shown skills the model finds hardest.
    rates = dict(profile.skill_error_rates)
    hardest = sorted(exercised, key=lambda skill: (-rates[skill], SKILLS.index(skill)))
    chosen = []
    for skill in hardest[: 1 + draws.integer(_MAXIMUM_RULES)]:
        if draws.uniform() >= profile.diagnosis_accuracy:
            others = [other for other in SKILLS if other != skill]
            skill = others[draws.integer(len(others))]
        if skill not in chosen:
            chosen.append(skill)
    return chosen


def answer_proposal(
    view: PromptView, fields: tuple[OutputField, ...], profile: LabModelProfile, draws: Draws
) -> dict[str, Any] | None:
    """Answer an instruction proposal (MIPROv2, GEPA), or return None when ``view`` is not one.

    A proposal request has a ``str`` output field whose name holds ``instruction`` and
    at least one arithmetic question among its inputs. The proposal is the current
    instruction (``current_instruction`` or ``basic_instruction``) followed by a rule
    for each skill the model saw failing (or, with no failure shown, the hardest
    skills the shown questions exercise), skipping skills the instruction already names.

    Returns:
        Output values (None for fields the caller fills generically), or None.
    """
    target = next(
        (field for field in fields if "instruction" in field.name and field.type_name.strip() in ("str", "")), None
    )
    if target is None:
        return None
    cases = [
        case for name, value in view.inputs.items() if name.lower() not in _IGNORED_KEYS for case in find_cases(value)
    ]
    if not cases:
        # A request to shorten or restate an instruction (GEPA's CompressInstruction) gets it back
        # unchanged: the lab LM does not paraphrase, so what an optimizer proposed stays what it is.
        given = view.inputs.get("instruction")
        return {field.name: given if field is target else None for field in fields} if given else None
    current = (view.inputs.get("current_instruction") or view.inputs.get("basic_instruction") or "").strip()
    already = read_instructions(current).rules
    rules = [ADVICE[skill] for skill in _proposed_skills(cases, profile, draws) if skill not in already]
    proposal = " ".join(part for part in (current, *rules) if part) or VAGUE_ADVICE
    return {field.name: proposal if field is target else None for field in fields}

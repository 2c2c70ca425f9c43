"""The configuration space SIMBA-C searches: a program's typed variables plus instructions and demos.

:func:`lift` gives a program the variables an optimizer needs to write: for each
predictor (or for all at once when the module has one, or its type is itself a
variable), a ``Text`` variable for its instructions and a ``Demos`` variable for
its demos, unless the program already has them. A candidate is then nothing but a
:class:`~dspex_lab.Program` with other values, so it is validated, fingerprinted,
journaled and exported like any program.

What an LM proposes (a rule, a demo) is data: it becomes the value of a ``Text`` or
``Demos`` variable, bounded in length and count, and never an import path, a target
or code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from dspex_lab.errors import OptimizerError, ProgramSpecError, VariableError
from dspex_lab.program import Bool, Choice, Demos, Float, Int, ModuleType, Program, Text, Variable

__all__ = [
    "MAX_RULE_CHARACTERS",
    "Candidate",
    "EffectLedger",
    "Slots",
    "append_demo",
    "append_rule",
    "clean_rule",
    "lift",
    "move_between",
    "moved",
    "moves_between",
    "mutable_variables",
    "mutate",
    "possible_moves",
    "rules_of",
    "shared_variables",
]

MAX_RULE_CHARACTERS = 400
_RULE_PREFIX = "- "
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Slots:
    """Where a lifted program keeps its instructions and demos: variable names per predictor scope.

    ``instructions`` and ``demos`` map a scope (``""`` for every predictor, or a predictor
    name) to the variable that holds it; ``base_instructions`` is each scope's starting text,
    after which rules are appended one per line.
    """

    instructions: Mapping[str, str]
    demos: Mapping[str, str]
    base_instructions: Mapping[str, str]


@dataclass(frozen=True)
class Candidate:
    """One configuration SIMBA-C considered, and why it exists.

    Attributes:
        id: ``c0`` (the baseline), ``c1``, ... in the order they were made.
        program: the configuration.
        parent_id: the candidate it was derived from (None for the baseline).
        step: the step that proposed it (0 for the baseline).
        strategy: ``baseline``, ``demo``, ``rule`` or ``mutate`` (``dspy`` for DSPy's optimizers).
        rationale: why, in words (the source trajectories, the LM's diagnosis, the mutation).
    """

    id: str
    program: Program
    parent_id: str | None
    step: int
    strategy: str
    rationale: str

    def to_record(self) -> dict[str, Any]:
        """Return the journal row of this candidate."""
        return {
            "candidate_id": self.id,
            "step": self.step,
            "parent_id": self.parent_id,
            "strategy": self.strategy,
            "rationale": self.rationale,
            "values": {name: _json_value(value) for name, value in self.program.values.items()},
            "program_spec": self.program.to_dict(),
            "fingerprint": self.program.fingerprint,
        }


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(item) for item in value]
    return value


def _predictor_names(program: Program, lm: Any) -> list[str]:
    try:
        module = program.build(lm=lm)
    except ProgramSpecError as error:
        raise OptimizerError(f"cannot build program {program.name!r} to find its predictors: {error}") from error
    return [name for name, _ in module.named_predictors()]


def _signature_instructions(program: Program) -> dict[str, str]:
    # Before any semantic binding's prefix or suffix: the build wraps whatever text the lifted variable holds.
    return {name: settings.base_instructions for name, settings in program.effective().items()}


def lift(program: Program, *, lm: Any, max_demos: int) -> tuple[Program, Slots]:
    """Return ``program`` with instruction and demo variables for every predictor, and where they are.

    Args:
        program: the program to optimize.
        lm: the run's LM (only used to build the module and read its predictors).
        max_demos: the most demos a candidate may hold per predictor.

    Raises:
        OptimizerError: the program cannot be built, or has no predictor to optimize.
    """
    names = _predictor_names(program, lm)
    if not names:
        raise OptimizerError(f"program {program.name!r} has no predictor: there are no instructions or demos to tune")
    has_module_variable = any(target == "module" for target in program.targets.values())
    scopes = [""] if len(names) == 1 or has_module_variable else names
    instructions = _signature_instructions(program)
    variables = dict(program.variables)
    instruction_slots: dict[str, str] = {}
    demo_slots: dict[str, str] = {}
    base: dict[str, str] = {}
    for scope in scopes:
        suffix = f":{scope}" if scope else ""
        for target, slots in ((f"instructions{suffix}", instruction_slots), (f"demos{suffix}", demo_slots)):
            existing = next((name for name, bound in program.targets.items() if bound == target), None)
            if existing is not None:
                slots[scope] = existing
                continue
            name = _free_name(variables, target.replace(":", "__").replace(".", "_"))
            if target.startswith("instructions"):
                text = instructions[scope] if scope else instructions[names[0]]
                variables[name] = Text(text, target=target, description="written by the optimizer")
            else:
                variables[name] = Demos((), max=max_demos, target=target, description="chosen by the optimizer")
            slots[scope] = name
        base[scope] = str(variables[instruction_slots[scope]].value)
    lifted = Program(
        program.module,
        signature=program.signature,
        variables=variables,
        name=program.name,
        init=dict(program.init),
        constraints=program.constraints,
    )
    return lifted, Slots(instruction_slots, demo_slots, base)


def _free_name(taken: Mapping[str, Any], name: str) -> str:
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name}_{number}", number + 1
    return candidate


def clean_rule(text: Any) -> str | None:
    """Return an LM-written rule as one bounded line of plain text, or None when nothing is left."""
    if not isinstance(text, str):
        return None
    line = " ".join(_CONTROL.sub(" ", text).split())
    if not line:
        return None
    if len(line) > MAX_RULE_CHARACTERS:
        line = line[: MAX_RULE_CHARACTERS - 1].rstrip() + "…"
    return line


def rules_of(program: Program, slots: Slots, scope: str) -> list[str]:
    """Return the rules appended so far to a scope's instructions."""
    text = str(program.values[slots.instructions[scope]])
    base = slots.base_instructions[scope]
    extra = text[len(base) :] if text.startswith(base) else text
    return [line[len(_RULE_PREFIX) :] for line in extra.splitlines() if line.startswith(_RULE_PREFIX)]


def append_rule(program: Program, slots: Slots, scope: str, rule: str, *, max_rules: int) -> Program:
    """Return ``program`` with ``rule`` appended to a scope's instructions (the oldest dropped past ``max_rules``)."""
    rules = [*rules_of(program, slots, scope), rule][-max_rules:]
    text = slots.base_instructions[scope] + "".join(f"\n{_RULE_PREFIX}{item}" for item in rules)
    variable = program.variables[slots.instructions[scope]]
    if isinstance(variable, Text) and variable.max_length is not None and len(text) > variable.max_length:
        raise OptimizerError(
            f"instructions variable {slots.instructions[scope]!r} allows {variable.max_length} characters; "
            f"with the new rule they would be {len(text)}"
        )
    return program.with_values(**{slots.instructions[scope]: text})


def append_demo(program: Program, slots: Slots, scope: str, demo: Mapping[str, Any]) -> Program:
    """Return ``program`` with ``demo`` appended to a scope's demos (the oldest dropped when full)."""
    name = slots.demos[scope]
    variable = program.variables[name]
    limit = variable.max if isinstance(variable, Demos) else 8
    demos = [*program.values[name], dict(demo)]
    return program.with_values(**{name: demos[-limit:]})


def mutable_variables(program: Program, slots: Slots) -> list[str]:
    """Return the typed variables SIMBA-C mutates (everything but instructions, demos and free text)."""
    reserved = set(slots.instructions.values()) | set(slots.demos.values())
    return [
        name
        for name, variable in program.variables.items()
        if name not in reserved and isinstance(variable, (Float, Int, Choice, Bool))
    ]


class EffectLedger:
    """Measured effects of variable moves: the screening gain (child minus parent) of each move.

    A move is ``(variable, "up"|"down")`` for numbers and ``(variable, repr(value))`` for
    choices and booleans. Moves are drawn by a softmax over their mean gain, an untried move
    counting as a small optimistic gain so everything is tried once.
    """

    OPTIMISM = 0.05

    def __init__(self) -> None:
        self.gains: dict[tuple[str, str], list[float]] = {}

    def record(self, move: tuple[str, str], gain: float) -> None:
        """Add one measured gain."""
        if math.isfinite(gain):
            self.gains.setdefault(move, []).append(gain)

    def value(self, move: tuple[str, str]) -> float:
        """Return a move's mean gain (the optimistic prior when untried)."""
        gains = self.gains.get(move)
        return float(np.mean(gains)) if gains else self.OPTIMISM

    def pick(self, moves: list[tuple[str, str]], rng: np.random.Generator, *, temperature: float) -> tuple[str, str]:
        """Draw one of ``moves`` by a softmax over their values."""
        values = np.array([self.value(move) for move in moves])
        weights = np.exp((values - values.max()) / max(temperature, 1e-6))
        return moves[int(rng.choice(len(moves), p=weights / weights.sum()))]

    def to_summary(self) -> dict[str, dict[str, float]]:
        """Return each move's mean gain and count (JSON)."""
        return {
            f"{name}={direction}": {"mean_gain": float(np.mean(gains)), "n": len(gains)}
            for (name, direction), gains in sorted(self.gains.items())
        }


def possible_moves(program: Program, names: list[str]) -> list[tuple[str, str]]:
    """Return every move of the variables ``names`` from ``program``'s values (up/down, each other choice, a flip)."""
    moves: list[tuple[str, str]] = []
    for name in names:
        variable = program.variables[name]
        if isinstance(variable, (Float, Int)):
            moves.extend(((name, "up"), (name, "down")))
        elif isinstance(variable, Bool):
            moves.append((name, repr(not variable.value)))
        elif isinstance(variable, Choice):
            moves.extend((name, repr(choice)) for choice in variable.choices if choice != variable.value)
    return moves


def _stepped(variable: Float | Int, direction: str, rng: np.random.Generator) -> float | int:
    low = variable.low if variable.low is not None and math.isfinite(variable.low) else None
    high = variable.high if variable.high is not None and math.isfinite(variable.high) else None
    value = variable.value
    sign = 1 if direction == "up" else -1
    if isinstance(variable, Float):
        if variable.step:
            size = variable.step
        elif low is not None and high is not None:
            size = (high - low) * 0.15
        else:
            size = max(abs(value) * 0.25, 0.1)
        size *= float(rng.uniform(0.5, 1.5)) if not variable.step else 1
        moved = float(value * math.exp(sign * 0.4) if variable.log and value > 0 else value + sign * size)
        if variable.step:
            moved = round(moved / variable.step) * variable.step
        moved = round(moved, 6)
    else:
        span = (high - low) if low is not None and high is not None else max(abs(value), 4)
        moved = int(value + sign * max(1, round(span * 0.1)))
    if low is not None:
        moved = max(moved, low)
    if high is not None:
        moved = min(moved, high)
    return moved


def move_between(parent: Program, child: Program, names: list[str]) -> tuple[str, str] | None:
    """Return the move that makes ``child`` from ``parent`` (as :func:`mutate` names it), or None.

    The move is read off the two programs: the one variable of ``names`` whose value differs,
    ``"up"``/``"down"`` for numbers, the new value's ``repr`` for choices and booleans. None when
    no variable or more than one differs.
    """
    moves = moves_between(parent, child, names)
    return moves[0] if len(moves) == 1 else None


def moves_between(parent: Program, child: Program, names: list[str]) -> tuple[tuple[str, str], ...]:
    """Return every move that makes ``child`` from ``parent``, in the order of ``names`` (see :func:`move_between`)."""
    moves: list[tuple[str, str]] = []
    for name in names:
        before, after = parent.values.get(name), child.values.get(name)
        if before == after:
            continue
        if isinstance(parent.variables[name], (Float, Int)):
            moves.append((name, "up" if after > before else "down"))
        else:
            moves.append((name, repr(after)))
    return tuple(moves)


def shared_variables(program: Program, names: list[str]) -> list[str]:
    """Return the variables of ``names`` that configure several places at once.

    A variable bound to several targets (``targets=("temperature:plan", "temperature:solve")``)
    or through a semantic binding (``binding=``, a value mapped to settings and prompt text of
    several predictors) is one variable, moved as one move; these are what SIMBA-C's ``share``
    flag lets it mutate.
    """
    shared = []
    for name in names:
        variable = program.variables[name]
        if len(variable.targets or ()) > 1 or variable.binding is not None:
            shared.append(name)
    return shared


def moved(program: Program, move: tuple[str, str], rng: np.random.Generator) -> Any:
    """Return the value ``move`` gives its variable in ``program`` (a step, a jump or a flip, see :func:`mutate`)."""
    name, direction = move
    variable: Variable = program.variables[name]
    if isinstance(variable, (Float, Int)):
        return _stepped(variable, direction, rng)
    if isinstance(variable, Bool):
        return not variable.value
    if not isinstance(variable, Choice):
        raise OptimizerError(
            f"variable {name!r} is a {type(variable).__name__}: only numbers, choices and booleans move"
        )
    return next(choice for choice in variable.choices if repr(choice) == direction)


def mutate(
    program: Program, names: list[str], ledger: EffectLedger, rng: np.random.Generator, *, temperature: float
) -> tuple[Program, tuple[str, str], str] | None:
    """Move one typed variable of ``program`` by its type, guided by the measured effects.

    Floats take a small step, integers a step of about a tenth of their range, choices (the
    model, the module type) jump to another value, booleans flip. A move that breaks a
    constraint or goes nowhere (a bound) is dropped and another drawn.

    Returns:
        The mutated program, the move, and a one-line rationale; None when no move is possible.
    """
    moves = possible_moves(program, names)
    for _ in range(2 * len(moves)):
        if not moves:
            return None
        move = ledger.pick(moves, rng, temperature=temperature)
        name, _ = move
        variable: Variable = program.variables[name]
        before = variable.value
        after = moved(program, move, rng)
        if after == before:
            moves.remove(move)
            continue
        try:
            mutated = program.with_values(**{name: after})
        except VariableError:
            moves.remove(move)
            continue
        kind = "re-instantiates the module as" if isinstance(variable, ModuleType) else "sets"
        measured = ledger.gains.get(move)
        evidence = (
            f"measured gain of this move so far {np.mean(measured):+.3f} over {len(measured)} tries"
            if measured
            else "an untried move"
        )
        return mutated, move, f"mutation {kind} {name}: {before!r} -> {after!r} ({evidence})"
    return None

"""SIMBA-C on a program of several modules: whole-pipeline trajectories, per-module proposals, learned pair moves.

A DSPy program that people ship is a pipeline: a ``plan`` predictor feeds ``solve``, whose
answer ``verify`` checks. Seen as one module, a trajectory is its final output, a rule is
advice for "the program" and a demo is its question and final answer. This module lets
SIMBA-C see the modules:

* **Trajectories.** While SIMBA-C samples and screens, each trial hands over DSPy's own
  per-predictor trace (``dspy.settings.trace`` in a fresh ``dspy.context(trace=[])``, see
  :class:`~dspex_lab.engine.TrialRunner`'s ``predictor_trace``): every predictor call's
  inputs and outputs, named as ``named_predictors()`` names them. :class:`Trajectories` keeps
  them bounded (:data:`MAX_TRAJECTORY_STEPS` calls, :data:`MAX_FIELD_CHARACTERS` per text,
  :data:`MAX_TRAJECTORIES` in all, the oldest dropped first) and masked as predictions are
  (:func:`~dspex_lab.trace.redact`), in memory beside the run's scores. The journal keeps a
  trial's final prediction only: a trial served from it (a resumed run's) has no trajectory, and
  a proposal made from it falls back to the final outputs, as for a single module. Trials run in
  another process (the process and Dask executors) have none either.
* **Per-module rules** (:meth:`Composition.apply_advice`): ``ProposeRule`` sees every module's
  name and the whole pipeline's better and worse trajectories; each module's advice goes to that
  module's instructions.
* **Rules carried upstream** (``upstream_rules``, :meth:`Composition.upstream`): a module's
  slip may start in a module that feeds it (``solve`` follows a misread ``plan``), and the
  feedback names the module where the working went wrong, not where the mistake began. So a
  module's advice is also appended to every module upstream of it: one whose output fields are
  among its input fields, directly or through others. Judged on the whole pipeline like any rule.
* **Cross-module bootstrap** (``cross_bootstrap``, :meth:`Composition.placements`): a good
  trajectory's module steps are demos; each is tried, as its own candidate, in every module whose
  fields it fills, and judged on the whole pipeline's screening score. The step's merge then keeps
  the placements that screened well and drops the others: a demo that helps ``solve`` and hurts
  ``verify`` ends up in ``solve`` only.
* **Shared variables** (``share``, :func:`~dspex_lab.optimization._space.shared_variables`): a
  variable bound to several targets, or through a semantic binding, is mutated as one move; without
  ``share`` it keeps its value.
* **Learned pair moves** (``learned_moves``, :class:`MoveEffects`): every screened mutation's
  per-example gains are kept. Two moves that each screened positive, or a pair whose measured
  interaction is positive, are proposed together, valued by what the measurements say the pair
  gains: the paired per-example sum of the two singles' gains (clipped to the metric's range) where
  both were screened on the same mini-batch, plus the interaction measured once the pair itself was
  (its per-example gain minus both singles').
"""

from __future__ import annotations

import json
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import dspy
import numpy as np

from dspex_lab.engine import PredictorTraceHook, TrialTask, to_json_value
from dspex_lab.errors import OptimizerError, ProgramSpecError, VariableError
from dspex_lab.optimization._space import (
    EffectLedger,
    Slots,
    append_demo,
    append_rule,
    clean_rule,
    moved,
    mutate,
    possible_moves,
    rules_of,
    shared_variables,
)
from dspex_lab.program import ModuleType, Program
from dspex_lab.trace import redact

__all__ = [
    "MAX_FIELD_CHARACTERS",
    "MAX_TRAJECTORIES",
    "MAX_TRAJECTORY_STEPS",
    "PLACEMENT_EVIDENCE",
    "RETRY_PLACEMENT",
    "Composition",
    "MoveEffects",
    "Trajectories",
    "trajectory_of",
]

# A pipeline calls a handful of predictors per example; a loop that calls one a hundred times is cut here.
MAX_TRAJECTORY_STEPS = 16
# A reasoning text is a few hundred characters; a retrieved document may be far longer.
MAX_FIELD_CHARACTERS = 4_000
# A step samples num_sources x bsize trajectories (4 x 32 by default) and screens a few candidates more.
MAX_TRAJECTORIES = 4_096
# Placements screened in a module before their mean gain decides, and how often a module whose
# placements hurt is tried again (see Composition.worth_placing).
PLACEMENT_EVIDENCE = 3
RETRY_PLACEMENT = 0.25

Move = tuple[str, str]
TrajectoryStep = dict[str, Any]  # {"module_name": str, "inputs": {...}, "outputs": {...}}


def _bounded(value: Any) -> Any:
    """Return a JSON value with every text cut to :data:`MAX_FIELD_CHARACTERS` characters."""
    if isinstance(value, str):
        return value if len(value) <= MAX_FIELD_CHARACTERS else value[: MAX_FIELD_CHARACTERS - 1] + "…"
    if isinstance(value, dict):
        return {key: _bounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_bounded(item) for item in value]
    return value


def _fields(value: Any) -> dict[str, Any]:
    data = to_json_value(value)
    return data if isinstance(data, dict) else {"output": data}


def trajectory_of(module: dspy.Module, trace: Sequence[Any]) -> list[TrajectoryStep]:
    """Return one program call's trajectory: each predictor call's name, inputs and outputs, bounded and masked.

    Args:
        module: the module that ran (its ``named_predictors()`` name the predictors in ``trace``).
        trace: DSPy's trace of the call, ``(predictor, inputs, prediction)`` tuples in call order.
    """
    names = {id(predictor): name for name, predictor in module.named_predictors()}
    steps: list[TrajectoryStep] = []
    for entry in trace:
        if len(steps) >= MAX_TRAJECTORY_STEPS:
            break
        try:
            predictor, inputs, prediction = entry
        except (TypeError, ValueError):
            continue
        name = names.get(id(predictor))
        if name is None:  # a predictor outside the program (one the program built on the fly)
            continue
        steps.append(
            {"module_name": name, "inputs": _bounded(_fields(inputs)), "outputs": _bounded(_fields(prediction))}
        )
    masked = redact(steps)
    return masked if isinstance(masked, list) else []


class Trajectories:
    """Per-module trajectories of the trials SIMBA-C samples and screens, by evaluation and example.

    Thread-safe: the hooks it hands out are called from the engine's worker threads. Bounded: at
    most ``capacity`` trajectories, the oldest dropped first. In memory only (see the module
    docstring for what that means on resume).
    """

    def __init__(self, *, capacity: int = MAX_TRAJECTORIES) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[tuple[str, str], list[TrajectoryStep]] = OrderedDict()
        self._lock = threading.Lock()

    def hook(self, experiment_id: str) -> PredictorTraceHook:
        """Return the engine hook that keeps each trial's trajectory of the evaluation ``experiment_id``."""

        def keep(task: TrialTask, module: Any, trace: list[Any]) -> None:
            try:
                steps = trajectory_of(module, trace)
            except Exception:  # a trajectory is a help to proposals: never a reason for a trial to fail
                return
            if steps:
                self.add(experiment_id, task.example_id, steps)

        return keep

    def add(self, experiment_id: str, example_id: str, steps: list[TrajectoryStep]) -> None:
        """Keep one trial's trajectory (the latest for that evaluation and example)."""
        with self._lock:
            self._kept[(experiment_id, example_id)] = steps
            self._kept.move_to_end((experiment_id, example_id))
            while len(self._kept) > self.capacity:
                self._kept.popitem(last=False)

    def get(self, experiment_id: str, example_id: str) -> list[TrajectoryStep] | None:
        """Return the trajectory of one example in one evaluation, or None when it was not captured."""
        with self._lock:
            return self._kept.get((experiment_id, example_id))

    def __len__(self) -> int:
        with self._lock:
            return len(self._kept)


@dataclass(frozen=True)
class ModuleFields:
    """The input and output fields of one predictor's signature (what a demo for it must hold)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def demo_from(self, step: Mapping[str, Any]) -> dict[str, Any] | None:
        """Return ``step`` (a trajectory step) as a demo for this predictor, or None when it lacks a field."""
        values = {**(step.get("inputs") or {}), **(step.get("outputs") or {})}
        if not all(name in values for name in (*self.inputs, *self.outputs)):
            return None
        return {name: values[name] for name in (*self.inputs, *self.outputs)}


def module_fields(program: Program, lm: Any) -> dict[str, ModuleFields]:
    """Return each predictor's fields, by the name ``named_predictors()`` gives it."""
    try:
        module = program.build(lm=lm)
    except ProgramSpecError as error:
        raise OptimizerError(f"cannot build program {program.name!r} to read its predictors: {error}") from error
    return {
        name: ModuleFields(tuple(predictor.signature.input_fields), tuple(predictor.signature.output_fields))
        for name, predictor in module.named_predictors()
    }


class MoveEffects:
    """Per-example screening gains of mutations, and what they say about moving two variables together.

    Each screened mutation is kept as its moves, its step and its per-example scores beside the
    incumbent's on the same mini-batch. From these, paired per example:

    * :meth:`predicted`: what a pair of moves gains if their effects add, example by example
      (clipped to the scores seen), from steps that screened both singles; the sum of their mean
      gains when no step did;
    * :meth:`interaction`: how far a screened pair's per-example gain is from the sum of its two
      singles' on the same mini-batch (positive: they help each other).
    """

    def __init__(self) -> None:
        # (moves, step) -> (candidate scores, incumbent scores), per example.
        self._measured: dict[tuple[tuple[Move, ...], int], tuple[dict[str, float], dict[str, float]]] = {}
        self._low = math.inf
        self._high = -math.inf

    def record(
        self, moves: Sequence[Move], step: int, scores: Mapping[str, float], incumbent: Mapping[str, float]
    ) -> None:
        """Keep one screened mutation's per-example scores and the incumbent's on the same mini-batch."""
        key = (tuple(sorted(moves)), step)
        self._measured[key] = (dict(scores), dict(incumbent))
        values = [*scores.values(), *incumbent.values()]
        if values:
            self._low, self._high = min(self._low, *values), max(self._high, *values)

    def _gains(self, moves: Sequence[Move], step: int) -> dict[str, float] | None:
        found = self._measured.get((tuple(sorted(moves)), step))
        if found is None:
            return None
        scores, incumbent = found
        return {key: scores[key] - incumbent[key] for key in scores if key in incumbent}

    def _steps(self, moves: Sequence[Move]) -> list[int]:
        wanted = tuple(sorted(moves))
        return sorted(step for key, step in self._measured if key == wanted)

    def predicted(self, a: Move, b: Move, ledger: EffectLedger) -> float:
        """Return the gain expected of moves ``a`` and ``b`` together if their effects add example by example."""
        paired: list[float] = []
        for step in sorted(set(self._steps([a])) & set(self._steps([b]))):
            gains_a, gains_b = self._gains([a], step), self._gains([b], step)
            incumbent = self._measured[((a,), step)][1]
            assert gains_a is not None and gains_b is not None
            for key in sorted(set(gains_a) & set(gains_b)):
                base = incumbent[key]
                combined = min(max(base + gains_a[key] + gains_b[key], self._low), self._high)
                paired.append(combined - base)
        if paired:
            return float(np.mean(paired))
        return ledger.value(a) + ledger.value(b)

    def interaction(self, a: Move, b: Move) -> tuple[float, int] | None:
        """Return the mean per-example interaction of ``a`` and ``b`` and the examples it rests on, or None."""
        values: list[float] = []
        for step in self._steps([a, b]):
            together, gains_a, gains_b = self._gains([a, b], step), self._gains([a], step), self._gains([b], step)
            if together is None or gains_a is None or gains_b is None:
                continue
            values.extend(
                together[key] - gains_a[key] - gains_b[key]
                for key in sorted(set(together) & set(gains_a) & set(gains_b))
            )
        return (float(np.mean(values)), len(values)) if values else None

    def pairs(self, program: Program, names: list[str], ledger: EffectLedger) -> list[tuple[float, Move, Move]]:
        """Return the pairs of moves worth proposing together now, each with its expected gain.

        A pair qualifies when both moves are possible from ``program``, move different variables,
        and either each screened positive on its own (mean gain > 0) or the pair was screened and
        showed a positive interaction.
        """
        possible = possible_moves(program, names)
        positive = {move for move in possible if ledger.gains.get(move) and ledger.value(move) > 0}
        found: list[tuple[float, Move, Move]] = []
        for a, b in combinations(sorted(possible), 2):
            if a[0] == b[0]:
                continue
            interaction = self.interaction(a, b)
            if not ({a, b} <= positive or (interaction is not None and interaction[0] > 0)):
                continue
            value = self.predicted(a, b, ledger) + (interaction[0] if interaction is not None else 0.0)
            found.append((value, a, b))
        return found


class Composition:
    """What SIMBA-C knows of a program as modules: their fields, their trajectories, measured pair effects.

    Args:
        program: the lifted program (the baseline).
        slots: its instruction and demo variables per predictor.
        lm: the run's LM (to build the program once and read its predictors' fields).
        share: mutate variables bound to several targets or through a binding (as one move each).
        cross_bootstrap: try each demo in every module that can take it.
        learned_moves: propose pairs of moves from their measured effects.
        upstream_rules: append a module's advice to the modules upstream of it too.
    """

    def __init__(
        self,
        program: Program,
        slots: Slots,
        *,
        lm: Any,
        share: bool,
        cross_bootstrap: bool,
        learned_moves: bool,
        upstream_rules: bool = True,
    ) -> None:
        self.slots = slots
        self.share = share
        self.cross_bootstrap = cross_bootstrap
        self.learned_moves = learned_moves
        self.upstream_rules = upstream_rules
        # Per-module proposals need one instruction and demo slot per predictor (see _space.lift).
        self.scopes = sorted(scope for scope in slots.instructions if scope)
        self.active = len(self.scopes) > 1
        self.fields = module_fields(program, lm) if self.active else {}
        self.trajectories = Trajectories()
        self.effects = MoveEffects()
        # Module -> the screening gains of demos placed in it alone, across steps and incumbents.
        self.placement_gains: dict[str, list[float]] = {}

    # -- trajectories ---------------------------------------------------------------------------

    def capture(self, experiment_id: str) -> PredictorTraceHook | None:
        """Return the hook an evaluation's trials hand their trajectories to (None for a single module)."""
        return self.trajectories.hook(experiment_id) if self.active else None

    def trajectory(self, experiment_id: str, example_id: str) -> list[TrajectoryStep] | None:
        """Return a sampled trial's per-module trajectory, or None (a single module, or not captured)."""
        return self.trajectories.get(experiment_id, example_id) if self.active else None

    # -- rules ----------------------------------------------------------------------------------

    def apply_advice(
        self, program: Program, advice: Mapping[str, Any], *, max_rules: int
    ) -> tuple[Program, list[str]] | None:
        """Return ``program`` with each module's advice appended to its instructions, and the modules changed.

        Advice is matched to a module by its full predictor name (``solve.predict``) or, failing
        that, by its first part (``solve``); advice a module already follows is not added again.
        None when no advice could be applied.
        """
        applied: list[str] = []
        own = {scope: clean_rule(self._advice_for(scope, advice)) for scope in self.scopes}
        for scope in self.scopes:
            # Its own advice first, then (with upstream_rules) what the modules it feeds were advised.
            carried = [own[later] for later in self.scopes if self.upstream_rules and scope in self.upstream(later)]
            changed = False
            for rule in dict.fromkeys([own[scope], *carried]):
                if rule is None or rule in rules_of(program, self.slots, scope):
                    continue
                try:
                    program = append_rule(program, self.slots, scope, rule, max_rules=max_rules)
                except (OptimizerError, VariableError):
                    continue
                changed = True
            if changed:
                applied.append(scope)
        return (program, applied) if applied else None

    @staticmethod
    def _advice_for(scope: str, advice: Mapping[str, Any]) -> Any:
        text = advice.get(scope)
        return advice.get(scope.split(".")[0]) if text is None else text

    def upstream(self, scope: str) -> set[str]:
        """Return the modules upstream of ``scope``: those whose outputs it reads, directly or through others.

        Read from the predictors' field names (an output named as another predictor's input feeds it).
        Inputs every module reads from the example itself (``question``) do not link modules, since no
        module outputs them.
        """
        found: set[str] = set()
        frontier = [scope]
        while frontier:
            reader = self.fields.get(frontier.pop())
            if reader is None:
                continue
            for other, fields in self.fields.items():
                if other != scope and other not in found and set(fields.outputs) & set(reader.inputs):
                    found.add(other)
                    frontier.append(other)
        return found

    # -- demos ----------------------------------------------------------------------------------

    def demo_for(self, scope: str, steps: Sequence[TrajectoryStep]) -> dict[str, Any] | None:
        """Return a demo for one module from a trajectory: its own step first, else any step that fills its fields."""
        fields = self.fields.get(scope)
        if fields is None:
            return None
        own = [step for step in steps if step.get("module_name") == scope]
        others = [step for step in steps if step.get("module_name") != scope]
        for step in (*own, *others):
            demo = fields.demo_from(step)
            if demo is not None:
                return demo
        return None

    def placements(self, steps: Sequence[TrajectoryStep]) -> list[tuple[str, dict[str, Any]]]:
        """Return each module that can take a demo from this trajectory, with that demo (cross-module bootstrap)."""
        found = []
        for scope in self.scopes:
            demo = self.demo_for(scope, steps)
            if demo is not None:
                found.append((scope, demo))
        return found

    def place(
        self, program: Program, steps: Sequence[TrajectoryStep], *, scope: str, rng: np.random.Generator
    ) -> list[tuple[Program, str, str]]:
        """Return the demo candidates of one good trajectory: ``(program, module, why)``.

        With ``cross_bootstrap`` one per module that can take a demo from it, each placed in that
        module only (the screening judges each placement on the whole pipeline), except that a
        module whose placements have not helped so far (:meth:`worth_placing`) is tried only now and
        then; without, one, in ``scope``.
        """
        if self.cross_bootstrap:
            chosen = [(module, demo) for module, demo in self.placements(steps) if self.worth_placing(module, rng)]
            # The least measured modules first, then those whose placements helped most: a step that
            # keeps only some of these (SimbaCRun._propose's share per strategy) measures every module in turn.
            chosen.sort(key=lambda item: self._placement_order(item[0]))
        else:
            demo = self.demo_for(scope, steps)
            chosen = [(scope, demo)] if demo is not None else []
        made = []
        for module, demo in chosen:
            where = f"placed in {module}" + (f" (1 of {len(chosen)} placements)" if self.cross_bootstrap else "")
            made.append((append_demo(program, self.slots, module, demo), module, where))
        return made

    def placed_module(self, parent: Program, child: Program) -> str | None:
        """Return the one module whose demos differ between ``parent`` and ``child`` (a single placement), or None."""
        changed = [
            scope
            for scope in self.scopes
            if parent.values[self.slots.demos[scope]] != child.values[self.slots.demos[scope]]
        ]
        return changed[0] if len(changed) == 1 else None

    def _placement_order(self, module: str) -> tuple[int, float, str]:
        gains = self.placement_gains.get(module) or []
        return (len(gains), -float(np.mean(gains)) if gains else 0.0, module)

    def record_placement(self, module: str, gain: float) -> None:
        """Keep the screening gain of a demo placed in ``module`` alone."""
        if math.isfinite(gain):
            self.placement_gains.setdefault(module, []).append(gain)

    def worth_placing(self, module: str, rng: np.random.Generator) -> bool:
        """Tell whether to try a demo in ``module``: always until :data:`PLACEMENT_EVIDENCE` were screened there.

        After that, unless their mean screening gain is negative; then with probability
        :data:`RETRY_PLACEMENT`, since the incumbent's settings change (a demo that hurt a module under
        one model or rigor may help it under another), so the module is still measured, less often.
        A mini-batch screen is noisy (one example of 16 is 0.0625), hence several before judging.
        """
        gains = self.placement_gains.get(module) or []
        if len(gains) < PLACEMENT_EVIDENCE or float(np.mean(gains)) >= 0:
            return True
        return bool(rng.random() < RETRY_PLACEMENT)

    # -- mutations ------------------------------------------------------------------------------

    def mutable(self, program: Program, names: list[str]) -> list[str]:
        """Return the variables SIMBA-C may mutate: without ``share``, one bound to several places keeps its value."""
        if self.share:
            return names
        shared = set(shared_variables(program, names))
        return [name for name in names if name not in shared]

    def mutation(
        self, program: Program, names: list[str], ledger: EffectLedger, rng: np.random.Generator, *, temperature: float
    ) -> tuple[Program, tuple[Move, ...], str] | None:
        """Move one variable (:func:`~dspex_lab.optimization._space.mutate`), or with ``learned_moves`` a learned pair.

        The pairs :meth:`MoveEffects.pairs` finds compete with the single moves in one softmax over
        their expected gains (a single's is its mean measured gain); with no pair to offer, this is
        exactly :func:`mutate`.
        """
        pairs = self.effects.pairs(program, names, ledger) if self.learned_moves else []
        if pairs:
            singles = possible_moves(program, names)
            values = np.array([ledger.value(move) for move in singles] + [value for value, _, _ in pairs])
            weights = np.exp((values - values.max()) / max(temperature, 1e-6))
            pick = int(rng.choice(len(values), p=weights / weights.sum()))
            if pick >= len(singles):
                made = self._pair(program, pairs[pick - len(singles)], ledger, rng)
                if made is not None:
                    return made
        single = mutate(program, names, ledger, rng, temperature=temperature)
        if single is None:
            return None
        mutated, move, rationale = single
        return mutated, (move,), rationale

    def _pair(
        self, program: Program, pair: tuple[float, Move, Move], ledger: EffectLedger, rng: np.random.Generator
    ) -> tuple[Program, tuple[Move, ...], str] | None:
        value, a, b = pair
        changes = {}
        for move in (a, b):
            after = moved(program, move, rng)
            if after == program.values[move[0]]:
                return None  # a bound: the pair would be one move
            changes[move[0]] = after
        try:
            mutated = program.with_values(**changes)
        except VariableError:
            return None
        parts = []
        for name, after in changes.items():
            kind = "re-instantiates the module as" if isinstance(program.variables[name], ModuleType) else "sets"
            parts.append(f"{kind} {name}: {program.values[name]!r} -> {after!r}")
        evidence = [self._single_evidence(move, ledger) for move in (a, b)]
        interaction = self.effects.interaction(a, b)
        if interaction is not None:
            evidence.append(f"measured interaction {interaction[0]:+.3f} over {interaction[1]} examples")
        return (
            mutated,
            (a, b),
            f"correlated moves: mutation {' and '.join(parts)} (expected gain {value:+.3f}: {'; '.join(evidence)})",
        )

    @staticmethod
    def _single_evidence(move: Move, ledger: EffectLedger) -> str:
        gains = ledger.gains.get(move) or []
        if not gains:
            return f"{move[0]}={move[1]} untried alone"
        return f"{move[0]}={move[1]} alone {np.mean(gains):+.3f} over {len(gains)} tries"


def render(steps: Sequence[TrajectoryStep]) -> str:
    """Return a trajectory as ``ProposeRule`` reads it: JSON, a list of ``{module_name, inputs, outputs}``."""
    return json.dumps(list(steps), ensure_ascii=False, indent=1)

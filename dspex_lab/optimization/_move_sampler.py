"""SIMBA-C's ``mutate`` moves drawn from an Optuna sampler fitted on the run's own evidence.

With ``SimbaC(move_sampler="tpe")`` the ``mutate`` strategy does not move one variable by the
ledger's rule (:func:`~dspex_lab.optimization._space.mutate`): it asks a sampler for a whole
configuration of the mutable typed variables and jumps there, changing as many variables as the
suggestion differs in. The sampler is fitted, afresh at every proposal, on what the run has
measured so far (:class:`Observation`), so it can find a corner two or more single moves away
that no single move shows (a verify model that only pays with strict rigor).

The space is Optuna's, as ``optimizer="optuna"`` builds it
(:func:`~dspex_lab.optimization._optuna.typed_space`), restricted to the variables SIMBA-C may
mutate. Every draw is seeded from the step's proposal generator: a study is rebuilt from the
observations in candidate order and asked once per try, so the same evidence and seed give the
same suggestion in every process, and a resumed run (which reads a journaled step's candidates
back instead of proposing) never depends on it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dspex_lab.errors import OptimizerError, VariableError
from dspex_lab.optimization._optuna import _optuna, _quiet_optuna, typed_space
from dspex_lab.program import ModuleType, Program

__all__ = ["MOVE_SAMPLERS", "MoveSampler", "Observation"]

#: The samplers ``SimbaC(move_sampler=...)`` takes (None: the ledger's one-variable rule).
MOVE_SAMPLERS = ("tpe", "random")
# Draws per proposal before giving up: a suggestion equal to the incumbent, to a configuration already
# proposed from it, or breaking the program's constraints is drawn again with the next seed.
_TRIES = 8
# Observations TPE takes as random start-up trials: few, since a run makes only a handful of jumps.
_STARTUP = 2


@dataclass(frozen=True)
class Observation:
    """What the run has measured of one typed configuration: its values and an estimate of its valset mean.

    Attributes:
        candidate_id: the candidate measured.
        values: its mutable typed variables' values.
        score: its estimated validation mean (see :meth:`SimbaCRun._move_evidence`).
    """

    candidate_id: str
    values: Mapping[str, Any]
    score: float


class MoveSampler:
    """Suggest jumps of a program's mutable typed variables with an Optuna sampler over the run's observations.

    Args:
        kind: ``"tpe"`` (Optuna's ``TPESampler``, multivariate) or ``"random"`` (``RandomSampler``,
            the control: a jump to a uniformly drawn configuration).
        program: the lifted baseline (its variables' types and bounds make the space).
        names: the variables SIMBA-C may mutate.

    Raises:
        OptimizerError: a number variable among ``names`` has no bounds (a sampler draws within them).
        MissingDependencyError: optuna is not installed.
    """

    def __init__(self, kind: str, program: Program, names: Sequence[str]) -> None:
        if kind not in MOVE_SAMPLERS:
            raise OptimizerError(f"SimbaC(move_sampler={kind!r}): one of {', '.join(map(repr, MOVE_SAMPLERS))} or None")
        self.kind = kind
        self.optuna = _optuna()
        # typed_space refuses a program without typed variables: with none to mutate there is nothing to ask it
        searched, wanted = (typed_space(program) if names else {}), set(names)
        self.space = {name: distribution for name, distribution in searched.items() if name in wanted}

    def jump(
        self, program: Program, observations: Sequence[Observation], rng: np.random.Generator, *, seen: set[str]
    ) -> tuple[Program, str] | None:
        """Return ``program`` moved to the sampler's suggested configuration, and why; None when none is new.

        ``seen`` holds the fingerprints of every candidate so far: a suggestion that makes one of them
        again (the incumbent itself included) is drawn again.
        """
        if not self.space:
            return None
        fitted = [item for item in observations if all(name in item.values for name in self.space)]
        for _ in range(_TRIES):
            suggested = self._suggest(fitted, int(rng.integers(2**31)))
            changes = {name: value for name, value in suggested.items() if program.values[name] != value}
            if not changes:
                continue
            try:
                moved = program.with_values(**changes)
            except VariableError:
                continue
            if moved.fingerprint in seen:
                continue
            return moved, self._rationale(program, changes, len(fitted))
        return None

    def _suggest(self, observations: Sequence[Observation], seed: int) -> dict[str, Any]:
        """Return one configuration from a study of ``observations`` whose sampler is seeded with ``seed``."""
        optuna = self.optuna
        with _quiet_optuna(optuna), warnings.catch_warnings():
            # multivariate TPE is marked experimental in Optuna; the warning would repeat at every proposal
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if self.kind == "random":
                sampler = optuna.samplers.RandomSampler(seed=seed)
            else:
                sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=_STARTUP, multivariate=True)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            for item in observations:
                # a configuration outside the space (a baseline off a Float's step) tells the study nothing
                with contextlib.suppress(ValueError):
                    study.add_trial(
                        optuna.trial.create_trial(
                            params={name: item.values[name] for name in self.space},
                            distributions=self.space,
                            value=item.score,
                        )
                    )
            return dict(study.ask(self.space).params)

    def _rationale(self, program: Program, changes: Mapping[str, Any], fitted: int) -> str:
        parts = []
        for name, after in changes.items():
            kind = "re-instantiates the module as" if isinstance(program.variables[name], ModuleType) else "sets"
            parts.append(f"{kind} {name}: {program.values[name]!r} -> {after!r}")
        if self.kind == "random":
            source = "a uniformly drawn configuration (move_sampler='random')"
        else:
            source = f"TPE's suggestion from {fitted} measured configurations (move_sampler='tpe')"
        moves = "one variable" if len(changes) == 1 else f"{len(changes)} variables at once"
        return f"sampled jump of {moves}: mutation {' and '.join(parts)} ({source})"

"""SIMBA-C's schedule: how large its steps are and how it validates, sized to the run's LM-call budget.

DSPy SIMBA's sizes (mini-batches of 32, 6 candidates, every trajectory source on every
example) suit a search that may spend thousands of LM calls. Under ``Budget(lm_calls=500)``
with a valset of 200, SIMBA-C spent 200 calls validating the baseline and about 320 per step
before it validated anything, so it barely ran one step. The schedule sizes the run to what
the budget buys:

* **The budget in validation sets.** ``level`` is the trials the budget leaves for the search
  (its LM calls, less what the confirmation is expected to take, over the calls per trial)
  divided by the valset's size. From ``level >= LARGE_LEVEL`` up the steps have DSPy SIMBA's
  sizes (:data:`DEFAULTS`). Below it, the mini-batch, the trajectory sources, the candidates per
  step and the full evaluations shrink with the level (:func:`plan_schedule`), so a step costs a
  fraction of the budget. Without an LM-call budget nothing is derived from one: the run is
  SIMBA-C as it was (:data:`DEFAULTS`, no bootstrap step).
* **A validation subset** (``validation_size``). A budget that cannot pay for
  :data:`SUBSET_LEVEL` validation sets of search (a pipeline of three modules at 500 calls with a
  valset of 200: its baseline alone would cost 600) validates on a seeded random subset of the
  valset of the size it can pay for, the same examples for the baseline and every candidate, so
  each paired test is as valid as on the whole valset, with less power. The level and the sizes
  below are then planned on that subset, and every step says it judged on n of N examples.
* **Sequential validation** (``validation_looks``). Below ``LARGE_LEVEL`` a candidate is
  validated block by block (two halves of the valset), and the incumbent only on the blocks a
  candidate needs, so the baseline costs half a valset. Error control, per step: **Bonferroni
  alpha spending** across the looks (look ``k`` tests at ``alpha x`` its share of the valset, the
  shares summing to 1, so the chance of any false acceptance in a step is at most ``alpha`` by
  the union bound, whatever the dependence between looks) with Holm's correction across the
  step's candidates at each look (a candidate stopped earlier keeps its place in the family), and
  a **futility stop**: a candidate whose difference is not positive at a look is evaluated no
  further. Stopping for futility only ever removes chances to accept, so it cannot raise the
  type I error. With one look this is exactly the single test at ``alpha``.
* **A bootstrap first step** (``bootstrap``, with any LM-call budget). The first step samples its
  sources on the mini-batch as any step does and proposes one candidate: the incumbent with demos
  made from its own best trajectories there (the program's own outputs, never a gold label) and
  rules written from the examples where the sources disagreed, validated without screening (demos
  drawn from the mini-batch would flatter it there). On a program of several modules each
  module's demo is its own step of those trajectories, and its rules are each module's advice from
  the whole pipeline's contrasts (carried to the modules upstream of it, ``upstream_rules``). Matching
  demos and rules for the failing skill are the largest gains in the lab world
  (``docs/lab_world.md`` sections 3 and 4); judged together they are one test, where single
  changes are too small to see at a few hundred examples.

Explicit values win: a hyperparameter the user sets on :class:`~dspex_lab.SimbaC` is kept as
given, the others are derived. The resolved schedule is part of the optimizer's config, which
``dx.optimize`` records with the run, so a resume (same budget, same sets) resolves the same one
and the identity check compares it. The budget is planned in LM calls: at first at one call per
predictor of the program a trial (``dx.optimize`` passes its predictor count; at least
:data:`PLANNED_CALLS_PER_TRIAL`); once the baseline's first look has measured the calls a trial
really takes, SIMBA-C plans again with the measured figure (a deterministic function of journaled
trials, so a replay plans the same), keeping the validation subset the baseline was judged on, and
says so in step 0's row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULTS",
    "LARGE_LEVEL",
    "PLANNED_CALLS_PER_TRIAL",
    "SCHEDULED",
    "SUBSET_LEVEL",
    "Schedule",
    "look_alpha",
    "look_ends",
    "plan_schedule",
    "validation_subset",
]

#: The hyperparameters the schedule derives when the user leaves them unset.
SCHEDULED = ("bsize", "num_candidates", "num_sources", "full_evals", "validation_looks", "bootstrap")

#: The sizes without an LM-call budget (SIMBA-C as it was) and, with a bootstrap step, with a large one.
DEFAULTS: Mapping[str, Any] = {
    "bsize": 32,
    "num_candidates": 6,
    "num_sources": 4,
    "full_evals": 2,
    "validation_looks": 1,
    "bootstrap": False,
}

#: From this many validation sets' worth of search trials up, the run keeps :data:`DEFAULTS`.
#: (With a valset of 200 that is 4,000 trials: the budget SIMBA-C had in ``bench/bench_optimize.py``'s
#: quality table, where today's sizes reached 0.839 on the test split, bench/README.md.)
LARGE_LEVEL = 20.0

#: The calls per trial a budget is first planned at, before the baseline has measured them.
PLANNED_CALLS_PER_TRIAL = 1.0

#: The fewest validation examples a look may add (fewer: the whole valset is one look).
MINIMUM_BLOCK = 20

#: Below this many validation sets' worth of search trials, candidates are validated on a seeded subset
#: of the valset of the size the budget affords at this level. (The single task at 500 calls, a valset
#: of 200, is at exactly 2.5 and keeps its whole valset: bench/README.md, the curve.)
SUBSET_LEVEL = 2.5

#: The fewest examples a validation subset holds (two looks of :data:`MINIMUM_BLOCK`).
MINIMUM_SUBSET = 2 * MINIMUM_BLOCK

#: The confirmation's share of the budget: both programs on the confirmation set, with the margin
#: the run holds back for it (``RunSession.reserve_confirmation``).
_CONFIRMATION_PROGRAMS = 2 * 1.25


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule: SIMBA-C's sizes for one run, and what they were derived from.

    Attributes:
        bsize: mini-batch size.
        num_candidates: candidates proposed per step.
        num_sources: programs whose trajectories are sampled per step.
        full_evals: candidates per step evaluated on the validation set.
        validation_looks: looks of the sequential validation (1: the whole valset at once).
        bootstrap: the first step bootstraps demos from the incumbent's own best trajectories.
        lm_calls: the budget's LM calls (None: no LM-call budget).
        calls_per_trial: the calls a trial was planned at.
        level: the search's trials over the validation examples used (None without an LM-call budget).
        explicit: the hyperparameters the user set, kept as given.
        validation_size: the validation examples candidates are judged on (a seeded subset when
            fewer than ``valset_size``).
        valset_size: the examples in the valset (its selection part).
    """

    bsize: int
    num_candidates: int
    num_sources: int
    full_evals: int
    validation_looks: int
    bootstrap: bool
    lm_calls: int | None
    calls_per_trial: float
    level: float | None
    explicit: tuple[str, ...]
    validation_size: int = 0
    valset_size: int = 0

    @property
    def subset(self) -> bool:
        """Whether candidates are judged on a subset of the valset."""
        return 0 < self.validation_size < self.valset_size

    def values(self) -> dict[str, Any]:
        """Return the hyperparameters it sets, by name."""
        return {name: getattr(self, name) for name in SCHEDULED}

    def to_dict(self) -> dict[str, Any]:
        """Return it as JSON (recorded in the run's config, with the optimizer's settings)."""
        return {
            **self.values(),
            "lm_calls": self.lm_calls,
            "calls_per_trial": self.calls_per_trial,
            "level": None if self.level is None else round(self.level, 6),
            "explicit": list(self.explicit),
            "validation_size": self.validation_size,
            "valset_size": self.valset_size,
        }

    def describe(self) -> str:
        """Return one line saying what the run was sized to, and how."""
        sizes = ", ".join(f"{name}={value}" for name, value in self.values().items())
        if self.level is None:
            return f"schedule: {sizes} (no LM-call budget)"
        subset = (
            f", judged on a seeded subset of {self.validation_size} of the {self.valset_size} validation examples"
            if self.subset
            else ""
        )
        return (
            f"schedule: {sizes} for {self.lm_calls:,} LM calls at {self.calls_per_trial:.3g} calls per trial "
            f"({self.level:.1f} validation sets of search{subset})"
        )


def plan_schedule(
    explicit: Mapping[str, Any],
    *,
    lm_calls: int | None,
    train_size: int,
    val_size: int,
    confirm_size: int = 0,
    calls_per_trial: float = PLANNED_CALLS_PER_TRIAL,
    validation_size: int | None = None,
) -> Schedule:
    """Return the schedule of a run: ``explicit`` values as given, the others derived from the budget.

    Args:
        explicit: the hyperparameters of :data:`SCHEDULED` the user set (others are ignored).
        lm_calls: the budget's LM calls (None: no LM-call budget, so :data:`DEFAULTS`).
        train_size: examples in the trainset (a derived mini-batch is never larger).
        val_size: examples the candidates are validated on (the selection part of the valset).
        confirm_size: examples in the confirmation set (their trials are held back from the search).
        calls_per_trial: LM calls a trial takes (planned, or measured by the baseline).
        validation_size: the validation subset to keep (a replan after the baseline was judged on it);
            None: the whole valset, or the subset the budget affords below :data:`SUBSET_LEVEL`.
    """
    given = {name: explicit[name] for name in SCHEDULED if explicit.get(name) is not None}
    chosen = dict(DEFAULTS)
    level = None
    size = val_size if validation_size is None else max(min(validation_size, val_size), 1)
    if lm_calls is not None:
        per_trial = max(float(calls_per_trial), 1e-9)
        search = max(lm_calls - _CONFIRMATION_PROGRAMS * confirm_size * per_trial, 0.0) / per_trial
        if validation_size is None and search < SUBSET_LEVEL * val_size:
            size = min(val_size, max(math.floor(search / SUBSET_LEVEL), MINIMUM_SUBSET))
        level = search / max(size, 1)
        chosen["bootstrap"] = True
        if level < LARGE_LEVEL:
            chosen.update(_small_budget(level, size))
        if size < val_size:
            # The subset already is what the budget affords the baseline: looks would halve each test's power.
            chosen["validation_looks"] = 1
    if "bsize" not in given:
        chosen["bsize"] = max(min(chosen["bsize"], train_size), 1)
    chosen.update(given)
    return Schedule(
        **chosen,
        lm_calls=lm_calls,
        calls_per_trial=float(calls_per_trial),
        level=level,
        explicit=tuple(name for name in SCHEDULED if name in given),
        validation_size=size,
        valset_size=val_size,
    )


def _small_budget(level: float, val_size: int) -> dict[str, Any]:
    """Return the sizes below :data:`LARGE_LEVEL`, growing with the level up to :data:`DEFAULTS` at it.

    Each step's trajectories and screening cost about ``(num_sources + num_candidates + 1) x bsize``
    trials and its validation ``full_evals`` half-valsets or more: at level 2.5 (500 calls, a valset of
    200) a step costs about 0.8 of a valset, at level 10 about 2, so the budget pays for the bootstrap
    step and a few more.
    """
    return {
        "bsize": int(min(max(round(8 + 1.2 * level), 12), 32)),
        "num_sources": int(min(2 + level // 10, 4)),
        "num_candidates": int(min(3 + level // 5, 6)),
        "full_evals": 1 if level < 8 else 2,
        "validation_looks": 2 if val_size >= 2 * MINIMUM_BLOCK else 1,
    }


def look_ends(val_size: int, looks: int) -> tuple[int, ...]:
    """Return how many validation examples each look has seen: ``looks`` near-equal blocks, the last all of them.

    Looks whose block would hold fewer than :data:`MINIMUM_BLOCK` examples are merged away.

    >>> look_ends(200, 2), look_ends(200, 1), look_ends(30, 2)
    ((100, 200), (200,), (30,))
    """
    count = max(1, min(int(looks), val_size // MINIMUM_BLOCK))
    return tuple(math.ceil(val_size * (index + 1) / count) for index in range(count))


def look_alpha(alpha: float, ends: tuple[int, ...], look: int) -> float:
    """Return the significance level of look ``look`` (0-based): ``alpha`` times the share of the valset it adds.

    Bonferroni alpha spending: the levels of all looks sum to ``alpha``, so a step accepts a
    candidate that is no better with probability at most ``alpha`` (union bound over the looks).

    >>> [round(look_alpha(0.05, (100, 200), look), 6) for look in (0, 1)]
    [0.025, 0.025]
    """
    start = ends[look - 1] if look else 0
    return alpha * (ends[look] - start) / ends[-1]


def validation_subset(val_size: int, size: int, *, seed: int) -> list[int]:
    """Return the positions in the valset of a seeded random subset of ``size`` examples, in valset order.

    One draw per run (from its seed), used for the baseline and every candidate, so their scores stay
    paired. The whole valset (every position) when ``size`` is not smaller.

    >>> validation_subset(5, 9, seed=0), len(validation_subset(200, 66, seed=3))
    ([0, 1, 2, 3, 4], 66)
    """
    if size >= val_size:
        return list(range(val_size))
    # Its own stream ("validation subset" as the purpose): no other decision of the run draws from it.
    picks = np.random.default_rng([seed, 0, 0x5B5E7]).choice(val_size, size=size, replace=False)
    return sorted(int(position) for position in picks)

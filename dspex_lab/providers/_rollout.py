"""Rollouts: how repeat r of a trial becomes a distinct request to any LM, through DSPy's ``rollout_id``.

DSPy caches a response under the request and its ``rollout_id`` (``dspy.LM(..., rollout_id=)``,
``lm.copy(rollout_id=...)``); the id is stripped before the request reaches the provider. Two
repeats of one example send the same prompt, so without distinct ids every repeat after the
first is a cache hit and the within-example variance is zero by construction.

The rule (:func:`for_repeat`):

- repeat 0 runs the program and the LM as they are: a ``repeats=1`` run sends exactly the
  requests ``dspy.Evaluate`` sends and shares its cache entries;
- repeat r >= 1 runs with every LM that samples copied to rollout
  ``base + r * ROLLOUT_STRIDE``, where ``base`` is the LM's own ``rollout_id`` (0 when it has
  none). The stride leaves room for DSPy's modules that count rollouts up from the LM's own
  (``dspy.BestOfN``, ``dspy.Refine``: ``start + i``), so their attempts in one repeat never
  reuse another repeat's;
- an LM that cannot sample (temperature 0, or the lab LM with no temperature) keeps its plain
  requests: a rollout id could not make its answers differ (DSPy warns as much), so repeats of
  it are identical requests, answered from the cache, and :func:`repeats_can_differ` says so.

"Every LM" is the run's LM (what ``dspy.settings.lm`` is during the trial) and every LM a
sub-module holds as an attribute (a predictor's ``lm``, set by ``module.set_lm`` or by a
program's temperature/model variables; a custom module's ``self.judge_lm``). An LM reached any
other way (a global, a closure, a ``dspy.context`` opened inside the program) keeps its plain
requests.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import dspy

from dspex_lab.lm import LabLM

__all__ = ["ROLLOUT_STRIDE", "for_repeat", "lm_samples", "repeat_rollout_id", "repeats_can_differ"]

# Rollout ids of consecutive repeats are this far apart (see the module docstring).
ROLLOUT_STRIDE = 1 << 20


def repeat_rollout_id(base: Any, repeat: int) -> Any:
    """Return the rollout id that repeat ``repeat`` of an LM whose own rollout id is ``base`` runs with.

    Examples:
        >>> repeat_rollout_id(None, 0), repeat_rollout_id(None, 2), repeat_rollout_id(5, 1)
        (None, 2097152, 1048581)
    """
    if repeat == 0:
        return base
    if base is None:
        return repeat * ROLLOUT_STRIDE
    if isinstance(base, int) and not isinstance(base, bool):
        return base + repeat * ROLLOUT_STRIDE
    # DSPy documents an integer; any other id a user chose still gets a distinct one per repeat.
    return f"{base}/r{repeat}"


def _temperature_samples(temperature: Any) -> bool | None:
    if temperature is None:
        return None
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        return True  # not a number DSPy would send as is: assume the provider samples
    return not math.isfinite(temperature) or temperature > 0


def lm_samples(lm: Any, *, temperature: Any = None) -> bool:
    """Return whether distinct rollouts of ``lm`` can give distinct completions.

    Args:
        lm: the LM.
        temperature: a per-call temperature that overrides the LM's (a predictor's ``config``).

    Returns:
        False at temperature 0, and for the lab LM with no temperature (it is greedy then); True
        otherwise, including a provider's LM with no temperature set, which samples at the
        provider's default (OpenAI's is 1).
    """
    verdict = _temperature_samples(temperature)
    if verdict is None:
        verdict = _temperature_samples((getattr(lm, "kwargs", None) or {}).get("temperature"))
    if verdict is None:
        return not isinstance(lm, LabLM)
    return verdict


def _held_lms(module: Any) -> list[tuple[str, Any, str, Any]]:
    """Return (sub-module name, sub-module, attribute, LM) for every LM a sub-module holds as an attribute."""
    held = []
    for name, sub_module in module.named_sub_modules():
        for attribute, value in vars(sub_module).items():
            if isinstance(value, dspy.BaseLM):
                held.append((name, sub_module, attribute, value))
    return held


def _sampling(module: Any, lm: Any) -> set[int]:
    """Return the ids of the LMs (``lm`` and those ``module`` holds) whose requests can differ across rollouts."""
    sampling = set()
    if lm is not None and lm_samples(lm):
        sampling.add(id(lm))
    for *_, held in _held_lms(module):
        if lm_samples(held):
            sampling.add(id(held))
    for _, sub_module in module.named_sub_modules():
        # A predictor's own config (dspy.Predict(..., temperature=1.0)) overrides its LM's temperature.
        config = getattr(sub_module, "config", None)
        if not isinstance(config, dict) or "temperature" not in config:
            continue
        target = getattr(sub_module, "lm", None) or lm
        if target is not None and lm_samples(target, temperature=config["temperature"]):
            sampling.add(id(target))
    return sampling


def repeats_can_differ(module: Any, lm: Any) -> bool:
    """Return whether repeats of ``module`` run on ``lm`` can give different completions (see :func:`for_repeat`)."""
    return bool(_sampling(module, lm))


def for_repeat(module: Any, lm: Any, repeat: int) -> tuple[Any, Any]:
    """Return the module and run LM that repeat ``repeat`` of a trial runs with (see the module docstring).

    ``module`` is never changed: when it holds LMs that sample, the repeat gets a copy of it whose
    LM attributes are rollout copies (the other sub-module state is copied, the LMs that do not
    sample are shared). Build it once per repeat and reuse it: it is as thread-safe as ``module``.

    Args:
        module: the hydrated program.
        lm: the run's LM (None: the context's, left as it is).
        repeat: the repeat index.

    Returns:
        (module, lm) for the repeat; ``module`` and ``lm`` themselves for repeat 0 or when nothing samples.
    """
    if repeat == 0:
        return module, lm
    sampling = _sampling(module, lm)
    copies: dict[int, Any] = {}

    def rollout(original: Any) -> Any:
        if id(original) not in sampling:
            return original
        if id(original) not in copies:
            base = (getattr(original, "kwargs", None) or {}).get("rollout_id")
            copies[id(original)] = original.copy(rollout_id=repeat_rollout_id(base, repeat))
        return copies[id(original)]

    run_lm = rollout(lm) if lm is not None else None
    held = _held_lms(module)
    if not any(id(value) in sampling for *_, value in held):
        return module, run_lm
    # LMs are not deep-copied (they hold engines, locks and connections): the memo hands back each
    # original, and the attributes that sample are then pointed at their rollout copies.
    memo: dict[int, Any] = {id(value): value for *_, value in held}
    try:
        variant = copy.deepcopy(module, memo)
    except Exception:  # a module that cannot be deep-copied: DSPy's own tolerant copy
        variant = module.deepcopy()
    sub_modules = dict(variant.named_sub_modules())
    for name, _, attribute, value in held:
        if id(value) in sampling:
            setattr(sub_modules[name], attribute, rollout(value))
    return variant, run_lm

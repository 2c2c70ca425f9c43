"""``LabLM`` (a ``dspy.LM`` on the lab engine) and its factory."""

from __future__ import annotations

from typing import Any

import dspy

from dspex_lab.errors import ProgramSpecError
from dspex_lab.lm.profiles import LAB_MODELS
from dspex_lab.lm.simulator import AsyncLabEngine, LabEngine

__all__ = ["DEFAULT_LM", "LM_ENVIRONMENT_VARIABLE", "LabLM", "lab_lm"]

DEFAULT_LM = "lab/small"
LM_ENVIRONMENT_VARIABLE = "DSPEX_LM"
# The dspy.LM settings its HTTP client takes the endpoint from.


class LabLM(dspy.LM):
    """A ``dspy.LM`` backed by the offline :class:`LabEngine` simulator.

    Everything DSPy does around an LM call (caching, retries, history, usage,
    callbacks) is DSPy's own; only the completion is simulated. Build one with
    :func:`lab_lm`.

    Args:
        model: ``"lab/small"`` or ``"lab/large"``.
        engine: the sync engine; a fresh :class:`LabEngine` when omitted.
        async_engine: the async engine; wraps ``engine`` when omitted.
        **kwargs: the usual ``dspy.LM`` arguments (temperature, max_tokens, cache, num_retries...).
    """

    def __init__(self, model: str = DEFAULT_LM, *, engine: Any = None, async_engine: Any = None, **kwargs: Any) -> None:
        if engine is None:
            engine = LabEngine()
        if async_engine is None and isinstance(engine, LabEngine):
            async_engine = AsyncLabEngine(engine)
        super().__init__(model, engine=engine, async_engine=async_engine, **kwargs)

    def copy(self, **kwargs: Any) -> LabLM:
        """Return a copy; ``rollout_id=`` also binds the copy's engines to that rollout.

        DSPy strips ``rollout_id`` from what an engine receives, so binding it to
        the engine is how ``lm.copy(rollout_id=r, temperature=1.0)`` (SIMBA's
        sampling) produces varied completions.
        """
        copied = super().copy(**kwargs)
        if "rollout_id" in kwargs and "engine" not in kwargs:
            rollout_id = kwargs["rollout_id"]
            if hasattr(copied._engine_spec, "with_rollout"):
                copied._engine_spec = copied._engine_spec.with_rollout(rollout_id)
            if hasattr(copied._async_engine_spec, "with_rollout"):
                copied._async_engine_spec = copied._async_engine_spec.with_rollout(rollout_id)
        return copied


def lab_lm(
    model: str = DEFAULT_LM,
    *,
    latency: float = 0.0,
    error_rate: float = 0.0,
    rate_limit_rate: float = 0.0,
    hang_rate: float = 0.0,
    hang_seconds: float = 30.0,
    seed: int = 0,
    temperature: float | None = None,
    max_tokens: int | None = None,
    cache: bool = False,
    num_retries: int = 0,
) -> LabLM:
    """Build an offline simulated LM.

    It answers any DSPy signature in the adapter's format, and actually solves
    (with configuration-dependent slips) the bundled arithmetic problems of
    :func:`dspex_lab.datasets.arithmetic`. ``temperature=None`` behaves as 0.

    Args:
        model: ``"lab/small"`` or ``"lab/large"`` (see ``LAB_MODELS``).
        latency: extra seconds slept per call.
        error_rate: probability per call of a non-retryable simulated provider error.
        rate_limit_rate: probability per call of a simulated rate limit (retryable).
        hang_rate: probability per call of sleeping ``hang_seconds`` first.
        hang_seconds: the length of a hang.
        seed: seeds the fault draws.
        temperature: sampling temperature (higher means more slips, and
            rollouts differ only when it is above 0).
        max_tokens: truncate completions beyond this many tokens.
        cache: whether DSPy caches responses (off by default so repeats are real calls).
        num_retries: DSPy's own retries of retryable errors (0: the trial runner retries).

    Returns:
        The LM.

    Raises:
        ProgramSpecError: an unknown model or an argument out of range.
    """
    if model not in LAB_MODELS:
        raise ProgramSpecError(f"unknown lab model {model!r}; choose one of {sorted(LAB_MODELS)}")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0.0 <= temperature <= 2.0
    ):
        raise ProgramSpecError(f"temperature must be a number in [0, 2] or None, got {temperature!r}")
    try:
        engine = LabEngine(
            latency=latency,
            error_rate=error_rate,
            rate_limit_rate=rate_limit_rate,
            hang_rate=hang_rate,
            hang_seconds=hang_seconds,
            seed=seed,
        )
        return LabLM(
            model, engine=engine, temperature=temperature, max_tokens=max_tokens, cache=cache, num_retries=num_retries
        )
    except ValueError as error:
        raise ProgramSpecError(f"lab_lm({model!r}): {error}") from error

"""``LabLM`` (a ``dspy.LM`` on the lab engine), its factory and LM resolution."""

from __future__ import annotations

import os
from typing import Any

import dspy

from dspex_lab.errors import ProgramSpecError
from dspex_lab.lm.engine import AsyncLabEngine, LabEngine
from dspex_lab.lm.profiles import LAB_MODELS

__all__ = [
    "DEFAULT_LM",
    "ENDPOINT_FIELDS",
    "LM_ENVIRONMENT_VARIABLE",
    "LabLM",
    "credentials_in_url",
    "lab_lm",
    "resolve_lm",
]

DEFAULT_LM = "lab/small"
LM_ENVIRONMENT_VARIABLE = "DSPEX_LM"
_LAB_PREFIX = "lab/"
# The dspy.LM settings its HTTP client takes the endpoint from.
ENDPOINT_FIELDS = ("api_base", "base_url")


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


def credentials_in_url(lm: Any) -> str | None:
    """Tell what is wrong when ``lm``'s endpoint URL carries credentials (``http://user:password@host/v1``).

    DSPy's HTTP client does not take credentials from a URL: it treats ``user:password@host`` as the
    host name, so every request fails to connect (``Name or service not known``) and the error text,
    recorded with each trial, quotes the password. Such an LM is refused before any request.

    Args:
        lm: any LM; only the endpoint settings (:data:`ENDPOINT_FIELDS`) of its ``kwargs`` are read.

    Returns:
        One sentence naming the setting and saying how to pass the credentials instead, quoting the
        URL without its user information; None when no endpoint carries any.
    """
    kwargs = getattr(lm, "kwargs", None)
    if not isinstance(kwargs, dict):
        return None
    for field in ENDPOINT_FIELDS:
        url = kwargs.get(field)
        if not isinstance(url, str):
            continue
        text = url.strip()
        scheme, separator, rest = text.partition("://")
        if not separator:
            scheme, rest = "", text
        authority_end = min((index for index in map(rest.find, "/?#") if index != -1), default=len(rest))
        _, at, host = rest[:authority_end].rpartition("@")
        if not at:
            continue
        # The query is left out too: it is where a URL carries a key when it carries one.
        path = rest[authority_end:].partition("?")[0].partition("#")[0]
        shown = f"{scheme}{separator}[REDACTED]@{host}{path}"
        return (
            f"the LM's {field} {shown!r} carries credentials in its URL, which DSPy's HTTP client does not "
            f"use: every request would fail to connect and the error text would quote them; remove them from "
            f"the URL and pass them as api_key=... (sent as 'Authorization: Bearer ...') or as "
            f"extra_headers={{'Authorization': 'Basic ' + base64 of 'user:password'}}"
        )
    return None


def resolve_lm(spec: str | dspy.BaseLM | None = None) -> dspy.BaseLM:
    """Turn an LM spec into an LM.

    Args:
        spec: None for the default (the ``DSPEX_LM`` environment variable if set,
            else ``"lab/small"``); a ``"lab/..."`` string for a lab LM; any other
            string for ``dspy.LM(spec)``; or a ``dspy.BaseLM``, returned as is.

    Returns:
        The LM.

    Raises:
        ProgramSpecError: the spec has another type, is empty or names an unknown lab model, or the
            LM's endpoint URL carries credentials (see :func:`credentials_in_url`).
    """
    if spec is None:
        spec = os.environ.get(LM_ENVIRONMENT_VARIABLE) or DEFAULT_LM
    if isinstance(spec, dspy.BaseLM):
        problem = credentials_in_url(spec)
        if problem is not None:
            raise ProgramSpecError(problem)
        return spec
    if not isinstance(spec, str):
        raise ProgramSpecError(
            f"an LM spec must be None, a model string (e.g. 'lab/small' or 'openai/gpt-4o-mini') or a dspy.BaseLM, "
            f"not {type(spec).__name__}"
        )
    spec = spec.strip()
    if not spec:
        raise ProgramSpecError("an LM spec string must not be empty")
    if spec.startswith(_LAB_PREFIX):
        return lab_lm(spec)
    try:
        return dspy.LM(spec)
    except (ValueError, TypeError) as error:
        raise ProgramSpecError(f"cannot build dspy.LM({spec!r}): {error}") from error

"""What LM calls cost: prices per model and a per-trial meter of tokens, calls and dollars.

Contract of a call's cost, in order of preference:

1. the cost DSPy reported for the call (``dspy.LM`` prices each completed call from
   its bundled provider price map and puts it in the history entry as ``"cost"``);
2. otherwise tokens times a price from :func:`model_price`: the lab models, then the small
   :data:`HOSTED_PRICES` table, then DSPy's bundled provider price map;
3. otherwise the call is *unpriced*: the meter's total cost becomes None and the model
   is listed in :attr:`Usage.unpriced_models`. An unknown price is never counted as 0.

How calls are seen (DSPy 3.4.1): :func:`metering` installs a ``UsageTracker`` (DSPy's
usage-tracking hook, called on the caller's thread for every billed call, cache hits
excluded) and, to read the cost DSPy computed, a history listener among DSPy's caller
modules (DSPy appends every call's history entry to each of them); both are made by
:class:`dspex_lab._dspy_compat.MeteringHooks`, which says why the public
``dspy.track_usage()`` does not suffice. Both travel in DSPy's context overrides, so worker threads started with
``contextvars.copy_context()`` (and ``dspy.Parallel``) count into the same meter, and
calls made by other threads' trials never do. If DSPy stops delivering history entries
(``disable_history``, ``max_history_size=0``, or a future change), calls are still
counted and priced from step 2; tests in ``tests/lm/test_cost.py`` fail loudly if that
path silently stops working.
"""

from __future__ import annotations

import contextvars
import functools
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from dspex_lab._dspy_compat import METERING_SETTING_NAMES, MeteringHooks, provider_map_rates
from dspex_lab.errors import ProgramSpecError
from dspex_lab.lm.profiles import LAB_MODELS

__all__ = [
    "HOSTED_PRICES",
    "HOSTED_PRICES_AS_OF",
    "Meter",
    "MeteredCall",
    "ModelPrice",
    "Usage",
    "call_cost",
    "current_meter",
    "is_priced",
    "metering",
    "model_price",
]

CostSource = Literal["reported", "price_table", "unpriced"]
PriceSource = Literal["lab", "table", "provider_map"]


@dataclass(frozen=True)
class ModelPrice:
    """A model's list price per token kind.

    Attributes:
        model: the model string as priced (``"openai/gpt-4o-mini"``).
        input_per_million: US dollars per million input (prompt) tokens.
        output_per_million: US dollars per million output (completion) tokens.
        source: ``"lab"`` (the simulated lab models), ``"table"`` (:data:`HOSTED_PRICES`)
            or ``"provider_map"`` (DSPy's bundled provider price map).
    """

    model: str
    input_per_million: float
    output_per_million: float
    source: PriceSource

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        """Return the dollars for one call with these token counts."""
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1e6


#: The date the prices in :data:`HOSTED_PRICES` were the vendors' published list prices.
HOSTED_PRICES_AS_OF = "2025-07-01"

# Standard tier, per million tokens, no batch or cached-input discounts, prompts under any
# long-context threshold. Used only when DSPy reports no cost for a call (history disabled,
# a custom engine); tests check these against DSPy's bundled map where it has the model.
_HOSTED: dict[str, tuple[float, float]] = {
    "openai/gpt-4o": (2.50, 10.00),
    "openai/gpt-4o-mini": (0.15, 0.60),
    "openai/gpt-4.1": (2.00, 8.00),
    "openai/gpt-4.1-mini": (0.40, 1.60),
    "openai/gpt-4.1-nano": (0.10, 0.40),
    "openai/o3-mini": (1.10, 4.40),
    "anthropic/claude-3-5-haiku-20241022": (0.80, 4.00),
    "anthropic/claude-sonnet-4-20250514": (3.00, 15.00),
    "anthropic/claude-opus-4-20250514": (15.00, 75.00),
    "gemini/gemini-2.5-flash": (0.30, 2.50),
    "gemini/gemini-2.5-pro": (1.25, 10.00),
}

#: Well-known hosted models' list prices (US dollars per million input and output tokens)
#: as of :data:`HOSTED_PRICES_AS_OF`, keyed by ``provider/model``.
HOSTED_PRICES: Mapping[str, ModelPrice] = MappingProxyType(
    {name: ModelPrice(name, prices[0], prices[1], "table") for name, prices in _HOSTED.items()}
)

# A bare model name goes to OpenAI, as it does in dspy.LM.
_DEFAULT_PROVIDER = "openai"


def _qualified(model: str) -> str:
    return model if "/" in model else f"{_DEFAULT_PROVIDER}/{model}"


@functools.lru_cache(maxsize=512)
def _provider_map_price(model: str) -> ModelPrice | None:
    """Price ``model`` from DSPy's bundled provider map, or None when DSPy has no entry.

    The map is not public API (:func:`dspex_lab._dspy_compat.provider_map_rates`): a
    missing module reads as "no price" with a warning, and ``tests/lm/test_cost.py`` fails
    if that starts happening for a model the map is known to price.
    """
    namespace, _, name = _qualified(model).partition("/")
    rates = provider_map_rates(namespace, name)
    if rates is None:
        return None
    input_rate, output_rate = rates
    return ModelPrice(model, input_rate * 1e6, output_rate * 1e6, "provider_map")


def model_price(model: str) -> ModelPrice | None:
    """Return the price of ``model``, or None when no source knows it.

    Sources, first match wins: the lab models (``"lab/small"``), :data:`HOSTED_PRICES`
    (a bare name such as ``"gpt-4o-mini"`` is read as ``"openai/gpt-4o-mini"``), then
    DSPy's bundled provider price map. Reading that map may, once per process, make DSPy
    try to refresh it over the network unless ``LITELLM_LOCAL_MODEL_COST_MAP=True``.

    Args:
        model: a model string as given to ``dspy.LM``.

    Raises:
        ProgramSpecError: ``model`` is not a non-empty string.
    """
    if not isinstance(model, str) or not model.strip():
        raise ProgramSpecError(f"a model name must be a non-empty string, not {model!r}")
    lab = LAB_MODELS.get(model)
    if lab is not None:
        return ModelPrice(model, lab.input_price_per_million, lab.output_price_per_million, "lab")
    hosted = HOSTED_PRICES.get(_qualified(model))
    if hosted is not None:
        return ModelPrice(model, hosted.input_per_million, hosted.output_per_million, "table")
    return _provider_map_price(model)


def call_cost(model: str, input_tokens: int, output_tokens: int) -> float | None:
    """Return the price-table cost in US dollars of one call, or None when ``model`` is unpriced.

    This is step 2 of the contract in the module docstring; a meter prefers the cost
    DSPy reported for the call.

    Raises:
        ProgramSpecError: a token count is negative or not an integer.
    """
    for name, count in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ProgramSpecError(f"{name} must be a non-negative integer, got {count!r}")
    price = model_price(model)
    return None if price is None else price.cost(input_tokens, output_tokens)


def is_priced(lm: Any) -> bool:
    """Whether a call's cost can be known before the first call, from the model name alone.

    True for the lab models, :data:`HOSTED_PRICES` and models in DSPy's bundled provider
    price map. ``Budget(usd=...)`` uses it to refuse or warn before spending anything.

    Args:
        lm: a ``dspy.BaseLM`` (its ``model`` is read) or a model string.

    Raises:
        ProgramSpecError: ``lm`` is neither.
    """
    model = lm if isinstance(lm, str) else getattr(lm, "model", None)
    if not isinstance(model, str):
        raise ProgramSpecError(f"is_priced() needs a dspy.BaseLM or a model string, not {type(lm).__name__}")
    return model_price(model) is not None


@dataclass(frozen=True)
class MeteredCall:
    """One billed LM call seen by a meter.

    Attributes:
        model: the LM's model string.
        input_tokens: prompt tokens, or None when the provider reported none.
        output_tokens: completion tokens, or None when the provider reported none.
        cost: US dollars, or None when unpriced.
        cost_source: ``"reported"`` (DSPy's cost), ``"price_table"`` (tokens times :func:`model_price`)
            or ``"unpriced"``.
    """

    model: str
    input_tokens: int | None
    output_tokens: int | None
    cost: float | None
    cost_source: CostSource


@dataclass(frozen=True)
class Usage:
    """What a meter counted.

    Attributes:
        input_tokens: prompt tokens over the calls that reported them.
        output_tokens: completion tokens over the calls that reported them.
        lm_calls: billed calls (a response-cache hit is not one).
        cost: US dollars, or None when any call was unpriced (never a partial sum).
        unpriced_models: the sorted model names of the unpriced calls.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    lm_calls: int = 0
    cost: float | None = 0.0
    unpriced_models: tuple[str, ...] = ()

    def __add__(self, other: Usage) -> Usage:
        """Combine two usages (e.g. several trials); the cost stays None if either is None."""
        if not isinstance(other, Usage):
            return NotImplemented
        cost = None if self.cost is None or other.cost is None else self.cost + other.cost
        return Usage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.lm_calls + other.lm_calls,
            cost,
            tuple(sorted({*self.unpriced_models, *other.unpriced_models})),
        )


class _Call:
    """A call being metered; its reported cost may arrive just after its usage."""

    __slots__ = ("input_tokens", "model", "output_tokens", "reported_cost")

    def __init__(self, model: str, input_tokens: int | None, output_tokens: int | None) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.reported_cost: float | None = None

    def priced(self) -> tuple[float | None, CostSource]:
        """Return the call's cost and where it came from (the module docstring's contract, in order)."""
        if self.reported_cost is not None:
            return self.reported_cost, "reported"
        if self.input_tokens is not None and self.output_tokens is not None:
            price = model_price(self.model)
            if price is not None:
                return price.cost(self.input_tokens, self.output_tokens), "price_table"
        return None, "unpriced"

    def freeze(self) -> MeteredCall:
        cost, source = self.priced()
        return MeteredCall(self.model, self.input_tokens, self.output_tokens, cost, source)


class Meter:
    """Counts the LM calls made inside :func:`metering` blocks bound to it.

    Thread safety: calls may be recorded from any number of threads at once; ``usage()``
    and ``calls()`` return consistent snapshots and may be read while calls continue (a
    call read from another thread in the instant between its usage and its history entry
    shows its table price, then DSPy's). A meter bound inside another meter's block also
    counts into the outer one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[_Call] = []
        self._parent: Meter | None = None
        self._hooks: MeteringHooks | None = None  # DSPy usage tracker and history tap, made on first use

    def calls(self) -> tuple[MeteredCall, ...]:
        """Return every call counted so far, in the order they finished, with its cost."""
        with self._lock:
            pending = list(self._calls)
        return tuple(call.freeze() for call in pending)

    def mark(self) -> int:
        """Return how many calls were counted so far: ``usage(since=mark)`` is then what came after."""
        with self._lock:
            return len(self._calls)

    def usage(self, *, since: int = 0) -> Usage:
        """Return the totals so far (see :class:`Usage` and the module docstring's contract).

        Args:
            since: count only the calls after the first ``since`` (a :meth:`mark`): a trial's metric
                runs after its program, so the calls after the mark taken before it are the metric's.
        """
        with self._lock:
            calls = self._calls[since:] if since else list(self._calls)
        input_tokens = output_tokens = 0
        costs: list[float] = []
        unpriced: set[str] = set()
        for call in calls:  # one pass over the calls as counted (no MeteredCall built): this runs once per trial
            input_tokens += call.input_tokens or 0
            output_tokens += call.output_tokens or 0
            cost, _ = call.priced()
            if cost is None:
                unpriced.add(call.model)
            else:
                costs.append(cost)
        return Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            lm_calls=len(calls),
            cost=None if unpriced else math.fsum(costs),
            unpriced_models=tuple(sorted(unpriced)),
        )

    def _add(self, call: _Call) -> None:
        meter: Meter | None = self
        while meter is not None:
            with meter._lock:
                meter._calls.append(call)
            meter = meter._parent


_CURRENT_METER: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("dspex_lab_meter", default=None)


def current_meter() -> Meter | None:
    """Return the meter of the innermost :func:`metering` block in this context, if any."""
    return _CURRENT_METER.get()


def _token_count(usage: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def _new_call(model: Any, usage: Any) -> _Call:
    usage = usage if isinstance(usage, Mapping) else {}
    return _Call(
        str(model),
        _token_count(usage, "prompt_tokens", "input_tokens"),
        _token_count(usage, "completion_tokens", "output_tokens"),
    )


def _count_call(meter: Meter, model: Any, usage: Any) -> _Call:
    """Count one call DSPy reported into ``meter``; the call may learn its reported cost later."""
    call = _new_call(model, usage)
    meter._add(call)
    return call


def _take_reported_cost(call: _Call, cost: float) -> None:
    call.reported_cost = cost


def _is_ancestor(meter: Meter, of: Meter) -> bool:
    current: Meter | None = of
    while current is not None:
        if current is meter:
            return True
        current = current._parent
    return False


def metering(meter: Meter | None = None, *, overrides: Mapping[str, Any] | None = None) -> _MeteringBlock:
    """Count every LM call made in this block (and in threads that copy its context) into a meter.

    Example::

        with metering() as meter:
            program(question="...")
        meter.usage()  # Usage(input_tokens=..., output_tokens=..., lm_calls=..., cost=..., unpriced_models=())

    A block nested in another counts into both meters. Inside the block DSPy's
    ``settings.usage_tracker`` is the meter's, so DSPy modules do not attach their own
    ``get_lm_usage()`` to predictions; a ``dspy.track_usage()`` opened inside still works
    and its calls are counted (priced from the table, as DSPy's cost is not passed on).

    Args:
        meter: the meter to count into; a new one when omitted (reuse one to accumulate
            several blocks, e.g. the attempts of one trial).
        overrides: more DSPy settings for the same block (``lm=``, ``callbacks=``, ...), applied
            in the one ``dspy.context`` the meter opens anyway: a trial runner pays for one
            context per attempt, not two. The settings the meter uses itself
            (``METERING_SETTING_NAMES`` in :mod:`dspex_lab._dspy_compat`) cannot be
            overridden here.

    Returns:
        The block; entering it gives the meter.

    Raises:
        ProgramSpecError: ``meter`` is not a :class:`Meter` (raised when the block is entered).
    """
    return _MeteringBlock(meter, overrides)


class _MeteringBlock:
    """One :func:`metering` block: binds the meter and opens its ``dspy.context`` on entry, undoes both on exit.

    A class rather than a generator-based context manager: every trial enters two of these (its
    program and its metric), and this spares each the generator frame and ``contextlib``
    wrapper around the block's own work.
    """

    __slots__ = ("_context", "_meter", "_overrides", "_token")

    def __init__(self, meter: Meter | None, overrides: Mapping[str, Any] | None) -> None:
        self._meter = meter
        self._overrides = overrides
        self._context: Any = None
        self._token: contextvars.Token[Meter | None] | None = None

    def __enter__(self) -> Meter:
        import dspy

        meter, overrides = self._meter, self._overrides
        if meter is None:
            meter = self._meter = Meter()
        elif not isinstance(meter, Meter):
            raise ProgramSpecError(f"metering() needs a dspex_lab.providers.Meter, not {type(meter).__name__}")
        parent = _CURRENT_METER.get()
        if parent is not None and meter._parent is None and not _is_ancestor(meter, parent):
            meter._parent = parent
        if overrides and not METERING_SETTING_NAMES.isdisjoint(overrides):
            names = " or ".join(sorted(METERING_SETTING_NAMES))
            raise ProgramSpecError(f"metering(overrides=...) cannot replace {names}")
        hooks = meter._hooks
        if hooks is None:
            # Built once per meter: the attempts of a trial (and its metric) reuse them.
            hooks = meter._hooks = MeteringHooks(functools.partial(_count_call, meter), _take_reported_cost)
        settings = hooks.settings()
        context = dspy.context(**settings, **overrides) if overrides else dspy.context(**settings)
        token = _CURRENT_METER.set(meter)
        try:
            context.__enter__()
        except BaseException:
            _CURRENT_METER.reset(token)
            raise
        self._context, self._token = context, token
        return meter

    def __exit__(self, *exc_info: Any) -> bool | None:
        context, token = self._context, self._token
        self._context = self._token = None
        try:
            return context.__exit__(*exc_info)  # type: ignore[no-any-return]
        finally:
            if token is not None:
                _CURRENT_METER.reset(token)

"""What LM calls cost: prices per model and a per-trial meter of tokens, calls and dollars.

Contract of a call's cost, in order of preference:

1. the cost DSPy reported for the call (``dspy.LM`` prices each completed call from
   its bundled provider price map and puts it in the history entry as ``"cost"``);
2. otherwise tokens times a price from :func:`model_price`: the lab models, then the small
   :data:`HOSTED_PRICES` table, then DSPy's bundled provider price map;
3. otherwise the call is *unpriced*: the meter's total cost becomes None and the model
   is listed in :attr:`Usage.unpriced_models`. An unknown price is never counted as 0.

How calls are seen (DSPy 3.4.1): :func:`metering` installs a ``UsageTracker`` (DSPy's
public usage-tracking hook, called on the caller's thread for every billed call, cache
hits excluded) and, to read the cost DSPy computed, a history listener placed in
``dspy.settings.caller_modules`` (DSPy appends every call's history entry to each module
listed there). Both travel in DSPy's context overrides, so worker threads started with
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

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

    ``dspy.clients.model_metadata`` is not public API: a missing module or function reads
    as "no price" here, and ``tests/lm/test_cost.py`` fails if that starts happening for
    a model the map is known to price.
    """
    try:
        from dspy.clients.model_metadata import model_info, rate
    except ImportError:
        return None
    namespace, _, name = _qualified(model).partition("/")
    try:
        info = model_info(namespace, name)
        input_rate = rate(info, "input_cost_per_token")
        output_rate = rate(info, "output_cost_per_token")
    except Exception:
        return None
    if input_rate is None or output_rate is None:
        return None
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

    def freeze(self) -> MeteredCall:
        if self.reported_cost is not None:
            return MeteredCall(self.model, self.input_tokens, self.output_tokens, self.reported_cost, "reported")
        if self.input_tokens is not None and self.output_tokens is not None:
            price = model_price(self.model)
            if price is not None:
                cost = price.cost(self.input_tokens, self.output_tokens)
                return MeteredCall(self.model, self.input_tokens, self.output_tokens, cost, "price_table")
        return MeteredCall(self.model, self.input_tokens, self.output_tokens, None, "unpriced")


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
        self._hooks: tuple[Any, Any] | None = None  # DSPy usage tracker and history tap, made on first use

    def calls(self) -> tuple[MeteredCall, ...]:
        """Return every call counted so far, in the order they finished, with its cost."""
        with self._lock:
            pending = list(self._calls)
        return tuple(call.freeze() for call in pending)

    def usage(self) -> Usage:
        """Return the totals so far (see :class:`Usage` and the module docstring's contract)."""
        calls = self.calls()
        input_tokens = output_tokens = 0
        costs: list[float] = []
        unpriced: set[str] = set()
        for call in calls:  # one pass: this runs once per trial
            input_tokens += call.input_tokens or 0
            output_tokens += call.output_tokens or 0
            if call.cost is None:
                unpriced.add(call.model)
            else:
                costs.append(call.cost)
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


class _HistoryListener(list):  # type: ignore[type-arg]
    """Receives DSPy's history entries (as a caller module's ``history``) and keeps none of them."""

    def __init__(self, on_entry: Any) -> None:
        super().__init__()
        self._on_entry = on_entry

    def append(self, entry: Any) -> None:
        self._on_entry(entry)


class _HistoryTap:
    """Stands in ``settings.caller_modules`` so DSPy hands it every call's history entry."""

    def __init__(self, on_entry: Any) -> None:
        self.history = _HistoryListener(on_entry)


@functools.cache
def _tracker_class() -> type:
    from dspy.utils.usage_tracker import UsageTracker

    class _Rollup(list):  # type: ignore[type-arg]
        """A model's usage entries; entries a nested ``dspy.track_usage()`` rolls up are counted too."""

        def __init__(self, tracker: Any, model: str) -> None:
            super().__init__()
            self._tracker = tracker
            self._model = model

        def extend(self, entries: Any) -> None:
            entries = list(entries)
            super().extend(entries)
            for entry in entries:
                self._tracker.meter._add(_new_call(self._model, entry))

    class _UsageData(dict):  # type: ignore[type-arg]
        def __init__(self, tracker: Any) -> None:
            super().__init__()
            self._tracker = tracker

        def __missing__(self, model: str) -> _Rollup:
            value = self[model] = _Rollup(self._tracker, model)
            return value

    class MeteringTracker(UsageTracker):  # type: ignore[misc]
        """DSPy's usage tracker that also counts each call into a meter, priced from its history entry."""

        def __init__(self, meter: Meter) -> None:
            super().__init__()
            self.meter = meter
            self.usage_data = _UsageData(self)
            self._pending = threading.local()

        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            # dspy.Parallel deep-copies the tracker into each worker; sharing keeps one meter.
            return self

        def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
            call = _new_call(lm, usage_entry)
            # DSPy then records the call's history entry, on this thread, with this same usage object.
            self._pending.value = (usage_entry, call)
            self.meter._add(call)
            if usage_entry:
                super().add_usage(lm, usage_entry)

        def take_cost(self, entry: Any) -> None:
            pending = getattr(self._pending, "value", None)
            if pending is None or not isinstance(entry, Mapping) or entry.get("usage") is not pending[0]:
                return  # a cache hit, or an entry of a call this tracker did not count
            self._pending.value = None
            cost = entry.get("cost")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost) and cost >= 0:
                pending[1].reported_cost = float(cost)

    return MeteringTracker


def _is_ancestor(meter: Meter, of: Meter) -> bool:
    current: Meter | None = of
    while current is not None:
        if current is meter:
            return True
        current = current._parent
    return False


@contextmanager
def metering(meter: Meter | None = None, *, overrides: Mapping[str, Any] | None = None) -> Iterator[Meter]:
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
            context per attempt, not two. ``usage_tracker`` and ``caller_modules`` are the
            meter's and cannot be overridden here.

    Yields:
        The meter.

    Raises:
        ProgramSpecError: ``meter`` is not a :class:`Meter`.
    """
    import dspy

    if meter is None:
        meter = Meter()
    elif not isinstance(meter, Meter):
        raise ProgramSpecError(f"metering() needs a dspex_lab.lm.Meter, not {type(meter).__name__}")
    parent = _CURRENT_METER.get()
    if parent is not None and meter._parent is None and not _is_ancestor(meter, parent):
        meter._parent = parent
    if overrides and ("usage_tracker" in overrides or "caller_modules" in overrides):
        raise ProgramSpecError("metering(overrides=...) cannot replace usage_tracker or caller_modules")
    hooks = meter._hooks
    if hooks is None:
        # Built once per meter: the attempts of a trial (and its metric) reuse them.
        tracker = _tracker_class()(meter)
        hooks = meter._hooks = (tracker, _HistoryTap(tracker.take_cost))
    callers = dspy.settings.caller_modules
    token = _CURRENT_METER.set(meter)
    try:
        with dspy.context(
            usage_tracker=hooks[0],
            caller_modules=[*callers, hooks[1]] if callers else [hooks[1]],
            **(overrides or {}),
        ):
            yield meter
    finally:
        _CURRENT_METER.reset(token)

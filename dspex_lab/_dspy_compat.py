"""The one door to DSPy's private names and undocumented layouts.

dspex_lab uses DSPy's public surface wherever it can do the job (``dspy.context``,
``dspy.settings.callbacks``, ``dspy.utils.BaseCallback``, ``dspy.track_usage``,
``rollout_id``). A few things cannot be done through it; each of them is here, as a
named function or constant whose docstring says what it relies on, the DSPy version it
was written against (:data:`WRITTEN_FOR`), why the public surface does not suffice, and
what happens when the name is gone. No other module of dspex_lab touches a DSPy
private name (``tests/test_dspy_compat.py`` scans the package for it), and every entry
has a probe test there that fails, naming the entry, when DSPy changes what it relies on.

Fallbacks never produce silently wrong numbers: an entry either degrades to a slower or
less detailed path and logs a warning saying which name is missing, or raises
:class:`DspyInternalsChangedError`.

Every class patch this module applies to DSPy is listed by :func:`active_patches`.

Imports: ``dspy`` and the standard library only, so every layer may import it.
See ``docs/dspy_compat.md`` for the list and the reasons in prose.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = [
    "CURRENT_CALL_ID",
    "CURRENT_CALL_ID_FOUND",
    "METERING_SETTING_NAMES",
    "WRITTEN_FOR",
    "DspyInternalsChangedError",
    "MeteringHooks",
    "active_patches",
    "gated_lm_copy",
    "keep_inherited_callback_wrappers",
    "lm_call_usage",
    "lm_takes_request_timeout",
    "provider_map_rates",
    "quiet_parallel_progress",
    "replace_class_attribute",
    "restore_class_attribute",
    "wrap_lm_entry_points",
]

logger = logging.getLogger(__name__)

#: The DSPy version every entry below was written and probed against.
WRITTEN_FOR = "3.4.1"


class DspyInternalsChangedError(RuntimeError):
    """A DSPy private name or layout this module relies on is not what it was written against."""


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(entry: str, message: str) -> None:
    with _warned_lock:
        if entry in _warned:
            return
        _warned.add(entry)
    logger.warning("dspex_lab._dspy_compat.%s: %s (written against DSPy %s)", entry, message, WRITTEN_FOR)


# --- class patches ------------------------------------------------------------------------------------------------

# (class, attribute) -> why dspex_lab replaced it; read by active_patches().
_patches: dict[tuple[type, str], str] = {}
_patches_lock = threading.Lock()


def replace_class_attribute(owner: type, name: str, value: Any, *, reason: str) -> Any:
    """Replace ``owner.name`` (a DSPy class's method) with ``value``; return what was there.

    The one place dspex_lab monkeypatches DSPy classes, so that :func:`active_patches`
    can list every patch in force. Patching is never public API; each caller's docstring
    says why it needs one.

    Args:
        owner: the DSPy class (or a subclass of one).
        name: the attribute to replace.
        value: the new attribute.
        reason: why, shown by :func:`active_patches`.

    Returns:
        The class's own attribute before the call (None when it had none of its own).
    """
    previous = vars(owner).get(name)
    setattr(owner, name, value)
    with _patches_lock:
        _patches[(owner, name)] = reason
    return previous


def restore_class_attribute(owner: type, name: str, original: Any) -> None:
    """Put back what :func:`replace_class_attribute` returned for ``owner.name``."""
    setattr(owner, name, original)
    with _patches_lock:
        _patches.pop((owner, name), None)


def active_patches() -> dict[str, str]:
    """Return every DSPy class attribute dspex_lab has replaced in this process, with why.

    Returns:
        ``{"module.Class.attribute": reason}``.
    """
    with _patches_lock:
        items = list(_patches.items())
    return {f"{owner.__module__}.{owner.__qualname__}.{name}": reason for (owner, name), reason in items}


# --- the active call id (trace/recorder.py) ------------------------------------------------------------------------


def _find_current_call_id() -> tuple[contextvars.ContextVar[Any], bool]:
    try:  # where DSPy 3.x keeps the id of the call being run; with_callbacks sets it around every decorated call
        from dspy.utils.callback_context import ACTIVE_CALL_ID
    except ImportError:  # pragma: no cover - depends on the DSPy version
        try:
            from dspy.utils.callback import ACTIVE_CALL_ID  # type: ignore[attr-defined, no-redef]
        except ImportError:
            _warn_once(
                "CURRENT_CALL_ID",
                "dspy.utils.callback_context.ACTIVE_CALL_ID is gone: spans nest under dspex scopes only, and calls "
                "in dspy.Parallel's workers are not attributed to their trial",
            )
            return contextvars.ContextVar("dspex_lab_active_call_id", default=None), False
    return ACTIVE_CALL_ID, True


#: DSPy's ``dspy.utils.callback_context.ACTIVE_CALL_ID`` context variable (DSPy 3.4.1).
#:
#: Relies on: ``with_callbacks`` sets it to the call id it hands ``on_*_start`` around every
#: decorated call (after the start handler, so the handler reads its caller's id), and
#: ``dspy.Parallel`` binds it into its worker threads. Why private: DSPy's callbacks receive
#: the call's own id but never its parent's, and a span tree needs the parent.
#: Fallback: a context variable of dspex_lab's own (a warning is logged); spans then nest
#: under dspex scopes only, and the calls of ``dspy.Parallel``'s workers are not attributed.
CURRENT_CALL_ID, CURRENT_CALL_ID_FOUND = _find_current_call_id()


# --- adapter subclasses (engine/_adapter.py) ----------------------------------------------------------------------


def keep_inherited_callback_wrappers(cls: type, names: tuple[str, ...] = ("format", "parse")) -> None:
    """Undo ``Adapter.__init_subclass__``'s second callback wrapper on ``cls``'s ``format``/``parse``.

    Relies on (DSPy 3.4.1): ``dspy.Adapter.__init_subclass__`` wrapping ``format`` and
    ``parse`` with ``with_callbacks`` in every subclass, even when the subclass does not
    define them, so a subclass of ``ChatAdapter`` has a wrapper around ChatAdapter's
    wrapper and a callback (a trace) sees each call twice. Deleting the subclass's own
    attribute leaves the inherited, once-wrapped method. Why private: DSPy offers no way to
    subclass an adapter without the second wrapper. Fallback: an attribute that is not
    there is left alone (the subclass then behaves as DSPy made it).

    Args:
        cls: the adapter subclass, which must not define the methods itself.
        names: the methods to leave to the parent class.
    """
    for name in names:
        if name in vars(cls):
            delattr(cls, name)


# --- the LM call guard (engine/_cancel.py) --------------------------------------------------------------------------


def wrap_lm_entry_points(
    wrap_sync: Callable[[Callable[..., Any]], Callable[..., Any]],
    wrap_async: Callable[[Callable[..., Any]], Callable[..., Any]],
    mark: str,
) -> bool:
    """Replace ``dspy.BaseLM.__call__`` and ``acall`` by ``wrap_sync(call)`` and ``wrap_async(acall)``.

    Relies on (DSPy 3.4.1): every adapter and module reaching an LM through
    ``BaseLM.__call__`` or ``BaseLM.acall`` (the class's own attributes, which subclasses
    such as ``dspy.LM`` inherit). Why a patch: the trial's cancel check must run before the
    request and may refuse it or give it a timeout; DSPy's callbacks cannot (``with_callbacks``
    logs and swallows a callback's exception, and cannot change the call's arguments).
    Fallback: when the methods are missing, nothing is patched, a warning is logged, and
    False is returned (cancellation then abandons the trial's thread).

    Args:
        wrap_sync: makes the guarded ``__call__`` from DSPy's.
        wrap_async: makes the guarded ``acall`` from DSPy's.
        mark: an attribute the wrappers carry, so that an already wrapped method is left alone.

    Returns:
        Whether both entry points are guarded.
    """
    try:
        import dspy
    except ImportError:
        return False
    base = getattr(dspy, "BaseLM", None)
    call = vars(base).get("__call__") if isinstance(base, type) else None
    acall = vars(base).get("acall") if isinstance(base, type) else None
    if call is None or acall is None or not callable(call) or not callable(acall):
        _warn_once(
            "wrap_lm_entry_points",
            "dspy.BaseLM has no __call__/acall of its own: LM calls are not checked against the trial's cancel "
            "token, and a cancelled trial's thread is abandoned instead",
        )
        return False
    reason = "check the trial's cancel token and deadline before every LM request (engine/_cancel.py)"
    if not hasattr(call, mark):
        replace_class_attribute(base, "__call__", wrap_sync(call), reason=reason)
    if not hasattr(acall, mark):
        replace_class_attribute(base, "acall", wrap_async(acall), reason=reason)
    return True


def lm_takes_request_timeout(lm: Any) -> bool:
    """Tell whether DSPy passes a ``timeout`` keyword of an LM call on to its provider client.

    Relies on (DSPy 3.4.1): ``dspy.LM.engine`` being a string (``"auto"``, ``"litellm"``)
    for DSPy's own clients, which accept client settings, and an object for a custom engine
    (the lab LM), for which DSPy refuses them. Why private: ``engine`` is a constructor
    argument, not a documented attribute. Fallback: an LM without a string ``engine`` gets
    no request timeout (the cancel check before the call still applies).
    """
    return isinstance(getattr(lm, "engine", None), str)


# --- the LM history layout (trace/recorder.py) ----------------------------------------------------------------------


def lm_call_usage(lm: Any, outputs: Any, lookback: int = 64) -> dict[str, Any] | None:
    """Return token usage, cost, cache hit and response model of the LM call that returned ``outputs``.

    Relies on (DSPy 3.4.1): ``BaseLM.history`` entries being dicts whose ``"outputs"`` is
    the very list the call returned, with ``"usage"`` (empty on a cache hit), ``"response"``
    (whose ``usage`` has ``total_tokens``/``input_tokens``/``output_tokens``), ``"cost"`` and
    ``"response_model"``. The history list is shared by every thread using the LM, so the
    entry is found by the identity of ``outputs`` among the last ``lookback`` entries. Why
    private: DSPy's ``on_lm_end`` callback gets the outputs only, and the entry layout is
    not documented. Fallback: None (the span carries no usage) when no entry matches; when
    entries exist but none has an ``"outputs"`` key a warning is logged once.

    Returns:
        ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` (those reported), ``cost``
        (when reported), ``cache_hit`` and ``response_model`` (when reported), in that order;
        or None.
    """
    history = getattr(lm, "history", None)
    if not history:
        return None
    entry = None
    recent = history[-lookback:]
    for candidate in reversed(recent):
        if isinstance(candidate, dict) and candidate.get("outputs") is outputs:
            entry = candidate
            break
    if entry is None:
        if not any(isinstance(item, dict) and "outputs" in item for item in recent):
            _warn_once("lm_call_usage", "LM history entries no longer carry 'outputs': spans show no token usage")
        return None
    usage = entry.get("usage") or {}
    cache_hit = False
    if not usage:
        # A cache hit records empty usage, yet its stored response still reports the tokens it represents.
        response_usage = getattr(entry.get("response"), "usage", None)
        total = getattr(response_usage, "total_tokens", None)
        if total:
            cache_hit = True
            usage = {
                "prompt_tokens": getattr(response_usage, "input_tokens", None),
                "completion_tokens": getattr(response_usage, "output_tokens", None),
                "total_tokens": total,
            }
    found: dict[str, Any] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if usage.get(key) is not None:
            found[key] = usage[key]
    if entry.get("cost") is not None:
        found["cost"] = entry["cost"]
    found["cache_hit"] = cache_hit
    if entry.get("response_model"):
        found["response_model"] = entry["response_model"]
    return found


# --- metering (providers/_metering.py) ---------------------------------------------------------------------


def provider_map_rates(namespace: str, name: str) -> tuple[float, float] | None:
    """Return DSPy's bundled provider price (US dollars per input and output token) for a model.

    Relies on (DSPy 3.4.1): ``dspy.clients.model_metadata.model_info(namespace, name)`` and
    ``rate(info, "input_cost_per_token" | "output_cost_per_token")``. Why private: DSPy
    prices calls from this map itself but exposes no lookup before a call, and
    ``Budget(usd=...)`` must know a price before spending. Fallback: None ("no price") for a
    model the map lacks; a missing module logs a warning once and reads as no price, so the
    model is unpriced (never counted as 0).
    """
    try:
        from dspy.clients.model_metadata import model_info, rate
    except ImportError:
        _warn_once("provider_map_rates", "dspy.clients.model_metadata is gone: DSPy's provider price map is not read")
        return None
    try:
        info = model_info(namespace, name)
        input_rate = rate(info, "input_cost_per_token")
        output_rate = rate(info, "output_cost_per_token")
    except Exception:
        return None
    if input_rate is None or output_rate is None:
        return None
    return input_rate, output_rate


#: The DSPy settings :class:`MeteringHooks` sets; a caller may not override them in the same context.
METERING_SETTING_NAMES = frozenset({"usage_tracker", "caller_modules"})


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
                self._tracker.on_call(self._model, entry)

    class _UsageData(dict):  # type: ignore[type-arg]
        def __init__(self, tracker: Any) -> None:
            super().__init__()
            self._tracker = tracker

        def __missing__(self, model: str) -> _Rollup:
            value = self[model] = _Rollup(self._tracker, model)
            return value

    class CountingTracker(UsageTracker):  # type: ignore[misc]
        """DSPy's usage tracker that also reports each call, and its cost from the call's history entry."""

        def __init__(self, on_call: Callable[[str, Any], Any], on_cost: Callable[[Any, float], None]) -> None:
            super().__init__()
            self.on_call = on_call
            self.on_cost = on_cost
            self.usage_data = _UsageData(self)
            # The call each thread is waiting to see the history entry of, by thread id. Not a threading.local:
            # the tracker lives in reference cycles (it and its meter), so a local would be freed by the garbage
            # collector, and on CPython before 3.11.9 a collection that frees a threading.local inside
            # sys._current_frames() (which Dask's worker profiler calls every 10 ms) deadlocks the whole process
            # (python/cpython#106883): a Dask worker froze mid-run, holding its trials forever.
            self._pending: dict[int, tuple[Any, Any]] = {}

        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            # dspy.Parallel deep-copies the tracker into each worker; sharing keeps one meter.
            return self

        def add_usage(self, lm: str, usage_entry: dict[str, Any]) -> None:
            call = self.on_call(lm, usage_entry)
            # DSPy then records the call's history entry, on this thread, with this same usage object.
            self._pending[threading.get_ident()] = (usage_entry, call)
            if usage_entry:
                super().add_usage(lm, usage_entry)

        def take_cost(self, entry: Any) -> None:
            thread = threading.get_ident()
            pending = self._pending.get(thread)
            if pending is None or not isinstance(entry, Mapping) or entry.get("usage") is not pending[0]:
                return  # a cache hit, or an entry of a call this tracker did not count
            del self._pending[thread]
            cost = entry.get("cost")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool) and math.isfinite(cost) and cost >= 0:
                self.on_cost(pending[1], float(cost))

    return CountingTracker


class MeteringHooks:
    """The DSPy settings that report every billed LM call made in a ``dspy.context``, with DSPy's cost.

    Relies on (DSPy 3.4.1): ``settings.usage_tracker.add_usage(model, usage)`` being called
    on the caller's thread for every billed call (cache hits excluded), before the call's
    history entry is recorded with the same ``usage`` object and a ``"cost"``; DSPy
    appending that entry to the ``history`` of every module listed in the undocumented
    ``settings.caller_modules``; ``UsageTracker.usage_data`` mapping a model to a list that
    a nested ``dspy.track_usage()`` extends when it closes; ``dspy.Parallel`` deep-copying
    the tracker into its workers. Why private: the public ``dspy.track_usage()`` yields
    totals per model when its block ends, not each call with its cost, and a trial's meter
    needs each call (and the price DSPy computed) as it happens. Fallback: if DSPy stops
    delivering history entries, calls are still counted (``on_call``) and priced from
    dspex_lab's price table; if ``UsageTracker`` is gone, :class:`DspyInternalsChangedError`
    is raised when the hooks are made.

    Thread safety: one instance serves every thread of its context.

    Args:
        on_call: called as ``on_call(model, usage_mapping)`` for every call; its result is
            handed back to ``on_cost`` for the same call.
        on_cost: called as ``on_cost(handle, dollars)`` when DSPy reported the call's cost.

    Raises:
        DspyInternalsChangedError: ``dspy.utils.usage_tracker.UsageTracker`` is gone.
    """

    def __init__(self, on_call: Callable[[str, Any], Any], on_cost: Callable[[Any, float], None]) -> None:
        try:
            tracker_class = _tracker_class()
        except ImportError as error:
            raise DspyInternalsChangedError(
                f"metering needs dspy.utils.usage_tracker.UsageTracker (DSPy {WRITTEN_FOR}): {error}"
            ) from error
        self.tracker = tracker_class(on_call, on_cost)
        self._tap = _HistoryTap(self.tracker.take_cost)

    def settings(self) -> dict[str, Any]:
        """Return the settings to pass to ``dspy.context`` (the tracker, and the tap after the current callers)."""
        import dspy

        callers = dspy.settings.caller_modules
        return {"usage_tracker": self.tracker, "caller_modules": [*callers, self._tap] if callers else [self._tap]}


# --- DSPy's compile (optimize/_dspy.py) -----------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_parallel_progress() -> Iterator[None]:
    """Turn off the progress bars of every ``ParallelExecutor`` made inside the block (process-wide).

    Relies on (DSPy 3.4.1): ``dspy.utils.parallelizer.ParallelExecutor`` reading its
    ``disable_progress_bar`` attribute when it runs (``dspy.Parallel``, ``dspy.Evaluate``
    and the optimizers all go through it). Why a patch: optimizers make their executors
    themselves, and DSPy has no setting for their bars. Fallback: a DSPy without the class
    shows its bars (a warning is logged once); nothing else changes.
    """
    try:
        from dspy.utils.parallelizer import ParallelExecutor
    except ImportError:  # pragma: no cover - a DSPy without the class: bars show, nothing breaks
        _warn_once("quiet_parallel_progress", "dspy.utils.parallelizer.ParallelExecutor is gone: progress bars show")
        yield
        return
    original = ParallelExecutor.__init__

    def quiet_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.disable_progress_bar = True

    replace_class_attribute(
        ParallelExecutor, "__init__", quiet_init, reason="no progress bars during a journaled compile"
    )
    try:
        yield
    finally:
        restore_class_attribute(ParallelExecutor, "__init__", original)


def gated_lm_copy(lm: Any, before_call: Callable[[], None], *, name_prefix: str = "Budgeted") -> Any:
    """Return a copy of ``lm`` that calls ``before_call()`` before every call; its own copies do too.

    Relies on (DSPy 3.4.1): ``BaseLM.copy()`` making a shallow copy whose class may be
    swapped for a subclass (no ``__slots__``), and DSPy copying LMs with ``copy.deepcopy``
    (SIMBA's rollouts), which the subclass answers with itself. Why not public: the gate
    must refuse a call (raise) before it is sent, which a callback cannot do (DSPy logs and
    swallows callback exceptions); and the copy must stay an instance of the user's LM class
    (its model, kwargs and ``isinstance`` checks), so a wrapper object will not do.
    Fallback: a class DSPy will not let be swapped raises :class:`DspyInternalsChangedError`.

    Args:
        lm: the ``dspy.BaseLM`` to copy.
        before_call: called before each ``__call__``/``acall``; raise to refuse the call.
        name_prefix: put before the class name of the copy's class.

    Raises:
        DspyInternalsChangedError: the copy's class cannot be replaced.
    """
    base = type(lm)

    class Gated(base):  # type: ignore[misc, valid-type]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            before_call()
            return super().__call__(*args, **kwargs)

        async def acall(self, *args: Any, **kwargs: Any) -> Any:
            before_call()
            return await super().acall(*args, **kwargs)

        def __deepcopy__(self, memo: dict[int, Any]) -> Any:
            # An LM is a shared client: DSPy deep-copies programs (SIMBA), and the copies must keep this gate.
            return self

    Gated.__name__ = Gated.__qualname__ = f"{name_prefix}{base.__name__}"
    copied = lm.copy()
    try:
        copied.__class__ = Gated
    except TypeError as error:
        raise DspyInternalsChangedError(f"cannot gate calls of a {base.__name__} copy: {error}") from error
    return copied

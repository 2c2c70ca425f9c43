"""Hand DSPy calls to a span recorder without DSPy's per-call callback machinery.

DSPy wraps the methods a program goes through in ``with_callbacks``: module,
LM, tool and retriever calls, adapters' ``format``/``parse``, ``Evaluate``,
code interpreters' operations, and (through a wrapper of its own) optimizers'
``compile``. Once any callback is registered, each of those calls pays for
``inspect.getcallargs``, a ``uuid4`` (a system call for randomness) and a handler
lookup whose ``isinstance`` checks include a runtime-checkable Protocol. On a
zero-latency LM that costs about as much as the call itself
(``bench/bench_trace_capture.py``), so a traced evaluation would run at half
speed for reasons that have nothing to do with recording.

:func:`direct` binds a :class:`~dspex_lab.trace.recorder.SpanRecorder` to the
current context instead of registering it with DSPy. While it is bound, the
decorated methods call the recorder's ``on_*_start``/``on_*_end`` handlers
themselves, with what DSPy would pass: the same ``inputs`` mapping, a fresh call
id, and ``ACTIVE_CALL_ID`` set to that id around the call (so ``dspy.Parallel``,
which binds the active id into its workers, keeps working). When some other
callback is active for a call (``dspy.settings.callbacks`` or the instance's
own), that call and everything below it go through DSPy with the recorder
appended, so both see every call, in DSPy's order. An optimizer's ``compile``
always goes through DSPy that way: it is rare, and DSPy reports only the
outermost of nested ``compile`` calls.

:func:`install` finds the decorated methods by enumeration (every class of the
loaded ``dspy`` modules, and their subclasses, whose own attribute is a
``with_callbacks`` wrapper or a function closing over one; see
:func:`decorated_methods`) and replaces them, once per process, with thin
wrappers: with no recorder bound they call DSPy's own decorated method after one
context-variable read.

Direct dispatch imitates DSPy's private surface: its per-context settings
(``dspy.dsp.utils.settings.thread_local_overrides`` and ``main_thread_config``),
the code of ``with_callbacks``'s wrappers, and the ``ACTIVE_CALL_ID`` context
variable; every one of those names is read in :mod:`dspex_lab._dspy_compat`
(``callback_surface``, ``callback_handler_kind``, ``other_callbacks_active``), and
every class patch goes through its ``replace_class_attribute``. Nothing of it is
read when this module is imported. :func:`install` checks it first
(:func:`unsupported_reason`) and, when it is not what this module expects,
returns False with one warning; callers then register the recorder in
``dspy.settings.callbacks`` (DSPy's ordinary dispatch), which records the same
spans more slowly.

Thread safety: installing is serialised by a lock and idempotent. A binding is
kept in DSPy's per-context settings (``dspy.context``), so it follows the context
into threads started with ``contextvars.copy_context()``, asyncio tasks, and the
workers of ``dspy.Parallel`` and ``asyncify``, which copy DSPy's settings.

Usage (what :class:`~dspex_lab.engine.TrialRunner` does for ``dx.evaluate(..., trace=True)``)::

    if dispatch.install():
        with dispatch.direct(recorder), recorder.trial("trial-1") as collector:
            program(question="...")
    else:
        with dspy.context(callbacks=[recorder]), recorder.trial("trial-1") as collector:
            program(question="...")
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import sys
import threading
import types
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from dspex_lab._dspy_compat import (
    CURRENT_CALL_ID,
    CallbackSurface,
    callback_handler_kind,
    callback_surface,
    callback_wrapped_function,
    callback_wrapper_target,
    other_callbacks_active,
    replace_class_attribute,
    restore_class_attribute,
)
from dspex_lab.trace.recorder import new_span_id

if TYPE_CHECKING:
    import contextvars

    from dspex_lab.trace.recorder import SpanRecorder

__all__ = [
    "DecoratedMethod",
    "decorated_methods",
    "direct",
    "install",
    "installed",
    "settings",
    "uninstall",
    "unsupported_reason",
]

logger = logging.getLogger(__name__)

# The handler kinds of DSPy's callback interface (BaseCallback.on_<kind>_start / on_<kind>_end).
_KINDS = (
    "module",
    "lm",
    "adapter_format",
    "adapter_parse",
    "tool",
    "evaluate",
    "interpreter_execute",
    "interpreter_tool_call",
    "interpreter_startup",
    "interpreter_shutdown",
    "compile",
)
# Kinds always left to DSPy's own dispatch (with the recorder appended), never dispatched directly.
_THROUGH_DSPY = frozenset({"compile"})


class _Bound:
    """A recorder and its handlers, looked up once per binding rather than once per call."""

    __slots__ = ("handlers", "recorder")

    def __init__(self, recorder: SpanRecorder) -> None:
        self.recorder = recorder
        self.handlers = {
            kind: (getattr(recorder, f"on_{kind}_start"), getattr(recorder, f"on_{kind}_end")) for kind in _KINDS
        }


@dataclasses.dataclass(frozen=True)
class DecoratedMethod:
    """A method DSPy dispatches to callbacks, found by :func:`decorated_methods`.

    Attributes:
        owner: the class whose own attribute the method is.
        name: the attribute's name (``"__call__"``, ``"format"``, ``"compile"``...).
        kind: the callback handler DSPy calls for it (``"module"``, ``"lm"``, ``"interpreter_execute"``...).
        indirect: True when the attribute is a wrapper of DSPy's own that closes over the
            ``with_callbacks`` wrapper (an optimizer's ``compile``).
    """

    owner: type
    name: str
    kind: str
    indirect: bool = False


# The binding lives in DSPy's own per-context settings, which dspy.Parallel and asyncify carry into their
# worker threads (plain context variables do not reach dspy.Parallel's workers).
_SETTING = "dspex_lab_direct_recorder"

_MARK = "__dspex_direct__"
_lock = threading.Lock()
# (class, attribute) -> the attribute's value before it was wrapped, to restore on uninstall.
_originals: dict[tuple[type, str], Any] = {}
_state: dict[str, Any] = {"installed": False, "surface": None, "warned": False}
# Each recorder's handlers, looked up once.
_bindings: weakref.WeakKeyDictionary[SpanRecorder, _Bound] = weakref.WeakKeyDictionary()
# Classes of dspy modules found so far, the names of the modules already scanned for them, and the roots to
# search below: the classes owning a decorated method and their dspy base classes.
_dspy_classes: set[type] = set()
_scanned_modules: set[str] = set()
_roots: set[type] = set()


def _surface() -> CallbackSurface | str:
    # Resolved once per process, on first use: never when this module is imported.
    if _state["surface"] is None:
        try:
            # Every private name it reads is resolved in dspex_lab._dspy_compat (see callback_surface there).
            _state["surface"] = callback_surface(_SETTING + "_probe")
        except Exception as error:  # anything unexpected in DSPy's internals means: use its ordinary dispatch
            _state["surface"] = f"checking DSPy's private surface failed: {type(error).__name__}: {error}"
    return _state["surface"]  # type: ignore[no-any-return]


def unsupported_reason() -> str | None:
    """Tell why direct dispatch cannot work with the installed DSPy, or None when it can.

    The check runs once per process. When it fails, :func:`install` returns False
    and traced runs register the recorder as an ordinary DSPy callback instead.

    Returns:
        None, or a sentence naming the private part of DSPy that is not as expected.
    """
    surface = _surface()
    return surface if isinstance(surface, str) else None


def _decorated(value: Any, codes: frozenset[types.CodeType]) -> bool:
    return bool(getattr(value, _MARK, False)) or callback_wrapper_target(value, codes) is not None


def _scan_dspy_classes(codes: frozenset[types.CodeType]) -> None:
    # Only modules loaded since the last scan are read (nothing is imported here), so that install() stays cheap
    # when called for every run.
    new: set[type] = set()
    for name, module in list(sys.modules.items()):
        if name in _scanned_modules or not (name == "dspy" or name.startswith("dspy.")):
            continue
        _scanned_modules.add(name)
        for value in list(vars(module).values()) if module is not None else ():
            if isinstance(value, type) and value.__module__.startswith("dspy") and value not in _dspy_classes:
                new.add(value)
    _dspy_classes.update(new)
    owners = {cls for cls in new if any(_decorated(value, codes) for value in vars(cls).values())}
    # Their dspy base classes too: adapters and optimizers are wrapped by an __init_subclass__ of a base that owns
    # no decorated method itself, and a user's subclass of any of them may add its own.
    _roots.update(base for cls in owners for base in cls.__mro__ if base in _dspy_classes or base in owners)


def _subclasses(roots: set[type]) -> Iterator[type]:
    seen: set[type] = set()
    pending = list(roots)
    while pending:
        cls = pending.pop()
        if cls in seen:
            continue
        seen.add(cls)
        yield cls
        try:
            pending.extend(cls.__subclasses__())
        except TypeError:  # type.__subclasses__ needs an argument
            continue


def _find(codes: frozenset[types.CodeType], *, include_wrapped: bool) -> Iterator[DecoratedMethod]:
    _scan_dspy_classes(codes)
    for owner in _subclasses(_roots):
        for name, value in list(vars(owner).items()):
            if getattr(value, _MARK, False):
                if include_wrapped:
                    original = _originals.get((owner, name))
                    indirect = bool(original is not None and callback_wrapper_target(original, codes))
                    yield DecoratedMethod(owner, name, callback_handler_kind(owner, name, indirect=indirect), indirect)
                continue
            indirect = callback_wrapper_target(value, codes)
            if indirect is None:
                continue
            yield DecoratedMethod(owner, name, callback_handler_kind(owner, name, indirect=indirect), indirect)


def decorated_methods() -> list[DecoratedMethod]:
    """Return every method DSPy dispatches to callbacks, among the classes of the loaded ``dspy`` modules.

    A method counts when the class's own attribute is a function made by
    ``dspy.utils.callback.with_callbacks`` (recognised by its code object) or a
    function closing over one (an optimizer's ``compile``), or when it is such a
    method already wrapped by :func:`install`. Subclasses of those classes, a
    user's adapter for one, are included. Only modules already imported are read.

    Returns:
        The methods, sorted by class and name; empty when :func:`unsupported_reason` is not None.
    """
    surface = _surface()
    if isinstance(surface, str):
        return []
    found = _find(surface.wrapper_codes, include_wrapped=True)
    return sorted(found, key=lambda item: (item.owner.__module__, item.owner.__qualname__, item.name))


def install() -> bool:
    """Wrap DSPy's callback-decorated methods so that :func:`direct` can dispatch to a recorder.

    Safe to call repeatedly: classes defined since the last call (a user's adapter
    or LM subclass) are wrapped, wrapped ones are left alone. Nothing is wrapped
    when DSPy's private surface is not as expected (:func:`unsupported_reason`):
    a warning is logged once, and the caller should register the recorder as an
    ordinary DSPy callback.

    Returns:
        True when direct dispatch is available (the core methods are wrapped).
    """
    with _lock:
        surface = _surface()
        if isinstance(surface, str):
            _warn_once(surface)
            return False
        try:
            import dspy

            for target in list(_find(surface.wrapper_codes, include_wrapped=False)):
                decorated = target.owner.__dict__[target.name]
                _originals[(target.owner, target.name)] = decorated
                replace_class_attribute(
                    target.owner,
                    target.name,
                    _wrap(decorated, target.kind, surface),
                    reason="direct dispatch of traced calls to a span recorder (trace/dispatch.py)",
                )
            core = ((dspy.Module, "__call__"), (dspy.BaseLM, "__call__"), (dspy.ChatAdapter, "format"))
            _state["installed"] = all(getattr(vars(owner).get(method), _MARK, False) for owner, method in core)
        except Exception as error:  # a DSPy shaped unlike this module expects: put everything back
            _restore()
            _state["surface"] = f"wrapping DSPy's decorated methods failed: {type(error).__name__}: {error}"
            _warn_once(_state["surface"])
            return False
        return bool(_state["installed"])


def _warn_once(reason: str) -> None:
    if not _state["warned"]:
        _state["warned"] = True
        logger.warning("traces use DSPy's callback dispatch (slower) because %s", reason)


def installed() -> bool:
    """Tell whether the methods every traced program goes through are wrapped."""
    return bool(_state["installed"])


def uninstall() -> None:
    """Put DSPy's methods back as they were before :func:`install`."""
    with _lock:
        _restore()


def _restore() -> None:
    for (owner, method), original in _originals.items():
        restore_class_attribute(owner, method, original)
    _originals.clear()
    _state["installed"] = False


def settings(recorder: SpanRecorder) -> dict[str, Any]:
    """Return the DSPy settings that bind ``recorder`` for direct dispatch, to merge into a ``dspy.context``.

    ``with dspy.context(lm=lm, **dispatch.settings(recorder))`` is :func:`direct`
    without a second ``dspy.context`` (each copies every setting), which is how
    the trial runner binds it once per trial.

    Args:
        recorder: the recorder whose handlers receive the calls.

    Returns:
        A one-entry mapping of DSPy setting names to values.

    Raises:
        RuntimeError: when :func:`install` has not succeeded, since the calls would then go unrecorded.
    """
    if not _state["installed"]:
        raise RuntimeError("direct dispatch is not installed for this DSPy version; register the recorder instead")
    bound = _bindings.get(recorder)
    if bound is None:
        bound = _bindings[recorder] = _Bound(recorder)
    return {_SETTING: bound}


def direct(recorder: SpanRecorder) -> contextlib.AbstractContextManager[None]:
    """Dispatch DSPy calls made in this context straight to ``recorder`` (see the module docstring).

    Args:
        recorder: the recorder whose handlers receive the calls; it is not added to
            ``dspy.settings.callbacks``.

    Returns:
        The ``with`` block inside which calls are dispatched to ``recorder``.

    Raises:
        RuntimeError: when :func:`install` has not succeeded, since the calls would then go unrecorded.
    """
    import dspy

    return dspy.context(**settings(recorder))


def _through_dspy(recorder: SpanRecorder) -> contextlib.AbstractContextManager[None]:
    # Another callback is active: let DSPy dispatch this subtree, to it and to the recorder, in its own order.
    import dspy

    callbacks = [*(dspy.settings.get("callbacks") or []), recorder]
    return dspy.context(**{_SETTING: None, "callbacks": callbacks})


def _start(bound: _Bound, kind: str, instance: Any, inputs: dict[str, Any]) -> tuple[str, str | None]:
    """Hand a call's start to the recorder and make it the active call; return its id and the previous one."""
    call_id = new_span_id()
    try:
        bound.handlers[kind][0](call_id=call_id, instance=instance, inputs=inputs)
    except Exception as error:  # as in DSPy: a failing callback is logged, never fails the call
        logger.warning("span recorder failed on the start of a %s call: %s", kind, error)
    # Set after the start handler, as DSPy does: the handler reads the caller's id as the parent.
    parent = CURRENT_CALL_ID.get()
    CURRENT_CALL_ID.set(call_id)
    return call_id, parent


def _end(bound: _Bound, kind: str, call: tuple[str, str | None], outputs: Any, exception: BaseException | None) -> None:
    call_id, parent = call
    CURRENT_CALL_ID.set(parent)
    try:
        bound.handlers[kind][1](call_id=call_id, outputs=outputs, exception=exception)
    except Exception as error:
        logger.warning("span recorder failed on the end of a %s call: %s", kind, error)


def _wrap_through_dspy(decorated: Callable[..., Any], overrides: contextvars.ContextVar[dict[str, Any]]) -> Any:
    # DSPy dispatches these calls itself (with the recorder appended) and keeps its own bookkeeping around them.
    if inspect.iscoroutinefunction(decorated):

        @functools.wraps(decorated)
        async def through_async(instance: Any, *args: Any, **kwargs: Any) -> Any:
            bound = overrides.get().get(_SETTING)
            if bound is None:
                return await decorated(instance, *args, **kwargs)
            with _through_dspy(bound.recorder):
                return await decorated(instance, *args, **kwargs)

        setattr(through_async, _MARK, True)
        return through_async

    @functools.wraps(decorated)
    def through(instance: Any, *args: Any, **kwargs: Any) -> Any:
        bound = overrides.get().get(_SETTING)
        if bound is None:
            return decorated(instance, *args, **kwargs)
        with _through_dspy(bound.recorder):
            return decorated(instance, *args, **kwargs)

    setattr(through, _MARK, True)
    return through


def _wrap(decorated: Callable[..., Any], kind: str, surface: CallbackSurface) -> Callable[..., Any]:
    # The async wrapper goes through the helpers above; the sync one, on every traced call, has them inlined.
    overrides_variable, main_config = surface.overrides, surface.main_config
    if kind in _THROUGH_DSPY:
        return _wrap_through_dspy(decorated, overrides_variable)
    codes = surface.wrapper_codes
    raw = callback_wrapped_function(decorated, codes)
    bind = _binder(raw)

    if inspect.iscoroutinefunction(raw):

        @functools.wraps(decorated)
        async def dispatch_async(instance: Any, *args: Any, **kwargs: Any) -> Any:
            overrides = overrides_variable.get()
            bound = overrides.get(_SETTING)
            if bound is None:
                return await decorated(instance, *args, **kwargs)
            if other_callbacks_active(overrides, main_config, instance):
                with _through_dspy(bound.recorder):
                    return await decorated(instance, *args, **kwargs)
            call = _start(bound, kind, instance, bind(raw, instance, args, kwargs))
            outputs = exception = None
            try:
                outputs = await raw(instance, *args, **kwargs)
                return outputs
            except BaseException as error:
                exception = error
                raise
            finally:
                _end(bound, kind, call, outputs, exception)

        setattr(dispatch_async, _MARK, True)
        return dispatch_async

    @functools.wraps(decorated)
    def dispatch(instance: Any, *args: Any, **kwargs: Any) -> Any:
        # _start and _end inlined: this wrapper runs for every module, adapter and LM call of a traced trial, and
        # on a zero-latency LM three extra calls per DSPy call are a measurable share of the trial.
        overrides = overrides_variable.get()
        bound = overrides.get(_SETTING)
        if bound is None:
            return decorated(instance, *args, **kwargs)
        if other_callbacks_active(overrides, main_config, instance):
            with _through_dspy(bound.recorder):
                return decorated(instance, *args, **kwargs)
        start, end = bound.handlers[kind]
        inputs = bind(raw, instance, args, kwargs)  # arguments that do not fit raise DSPy's TypeError here
        call_id = new_span_id()
        try:
            start(call_id, instance, inputs)
        except Exception as error:  # as in DSPy: a failing callback is logged, never fails the call
            logger.warning("span recorder failed on the start of a %s call: %s", kind, error)
        # Set after the start handler, as DSPy does: the handler reads the caller's id as the parent.
        parent = CURRENT_CALL_ID.get()
        CURRENT_CALL_ID.set(call_id)
        outputs = exception = None
        try:
            outputs = raw(instance, *args, **kwargs)
            return outputs
        except BaseException as error:
            exception = error
            raise
        finally:
            CURRENT_CALL_ID.set(parent)
            try:
                end(call_id, outputs, exception)
            except Exception as error:
                logger.warning("span recorder failed on the end of a %s call: %s", kind, error)

    setattr(dispatch, _MARK, True)
    return dispatch


_Binder = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], dict[str, Any]]


def _getcallargs(raw: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
    # What DSPy passes as ``inputs``; raises TypeError for a call that does not fit, as DSPy's dispatch does.
    inputs = inspect.getcallargs(raw, instance, *args, **kwargs)
    inputs.pop(next(iter(inspect.signature(raw).parameters)), None)
    return inputs


def _binder(raw: Callable[..., Any]) -> _Binder:
    """Return a function computing ``inspect.getcallargs`` minus ``self`` for ``raw``, fast for simple calls.

    Binding is planned once per method from its signature; a call that does not
    fit the plan (a missing or duplicated argument) falls back to
    ``inspect.getcallargs`` itself, so errors are DSPy's.
    """
    parameters = list(inspect.signature(raw).parameters.values())[1:]
    kinds = inspect.Parameter
    positional = [p.name for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    by_keyword = {p.name for p in parameters if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    defaults = {p.name: p.default for p in parameters if p.default is not p.empty and p.kind != kinds.VAR_KEYWORD}
    keyword_only = [p.name for p in parameters if p.kind == kinds.KEYWORD_ONLY]
    variadic = (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
    required = [p.name for p in parameters if p.default is p.empty and p.kind not in variadic]
    var_positional = next((p.name for p in parameters if p.kind == kinds.VAR_POSITIONAL), None)
    var_keyword = next((p.name for p in parameters if p.kind == kinds.VAR_KEYWORD), None)

    if not positional and not by_keyword and var_positional and var_keyword:
        # ``(self, *args, **kwargs)``: Module.__call__ and acall.
        def bind_any(raw: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
            return {var_positional: args, var_keyword: dict(kwargs)}

        return bind_any

    def bind(raw: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
        if not kwargs and len(args) == len(positional) and not keyword_only:
            # Every parameter given by position, as DSPy calls adapters' format and parse.
            inputs = dict(zip(positional, args, strict=True))
            if var_positional is not None:
                inputs[var_positional] = ()
            if var_keyword is not None:
                inputs[var_keyword] = {}
            return inputs
        if len(args) > len(positional) and var_positional is None:
            return _getcallargs(raw, instance, args, kwargs)
        inputs = dict(zip(positional, args, strict=False))
        rest: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in by_keyword and key not in inputs:
                inputs[key] = value
            elif var_keyword is not None and key not in inputs and key not in by_keyword:
                rest[key] = value
            else:
                return _getcallargs(raw, instance, args, kwargs)
        for name in required:
            if name not in inputs:
                return _getcallargs(raw, instance, args, kwargs)
        for name, default in defaults.items():
            inputs.setdefault(name, default)
        if var_positional is not None:
            inputs[var_positional] = args[len(positional) :]
        if var_keyword is not None:
            inputs[var_keyword] = rest
        return inputs

    return bind

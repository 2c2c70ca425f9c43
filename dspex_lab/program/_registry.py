"""Which module classes a program spec may name, and how names become classes.

A spec comes from JSON that may have been written by someone else, so a module
name is never imported blindly: it must be registered with :func:`register` or
sit under an allowed prefix (``dspy.`` by default), and it must resolve to a
``dspy.Module`` subclass.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import dspy

from dspex_lab.errors import ModuleNotAllowedError, ProgramSpecError

__all__ = [
    "allowed_prefixes",
    "module_name",
    "register",
    "registered_modules",
    "resolve_module",
    "set_allowed_prefixes",
]

ModuleClass = TypeVar("ModuleClass", bound=type)

_lock = threading.Lock()
_registry: dict[str, type[dspy.Module]] = {}
_allowed_prefixes: tuple[str, ...] = ("dspy.",)
# Modules dspex_lab registers itself, imported when a spec first names one: a process or Dask worker
# that rebuilds a program imports dspex_lab, not the module's file.
_BUILT_IN_MODULES = {"lab.PlanSolveVerify": "dspex_lab.tasks.pipeline"}


def register(name: str) -> Callable[[ModuleClass], ModuleClass]:
    """Register a custom ``dspy.Module`` class under ``name`` for use in specs.

    Examples:
        >>> import dspy
        >>> @register("EchoQA")
        ... class EchoQA(dspy.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.answer = dspy.Predict("question -> answer")
        ...     def forward(self, question):
        ...         return self.answer(question=question)
        >>> resolve_module("EchoQA") is EchoQA
        True
    """
    if not isinstance(name, str) or not name:
        raise ProgramSpecError("register() needs a non-empty module name, e.g. @dx.register('MyQA')")

    def decorate(cls: ModuleClass) -> ModuleClass:
        if not (isinstance(cls, type) and issubclass(cls, dspy.Module)):
            raise ProgramSpecError(f"register({name!r}): {cls!r} is not a dspy.Module subclass")
        with _lock:
            existing = _registry.get(name)
            if existing is not None and existing.__qualname__ != cls.__qualname__:
                raise ProgramSpecError(
                    f"register({name!r}): the name is already taken by {existing.__module__}.{existing.__qualname__}"
                )
            # Re-registering the same class name replaces it, so re-running a notebook cell works.
            _registry[name] = cls
        return cls

    return decorate


def registered_modules() -> dict[str, type[dspy.Module]]:
    """Return a snapshot of the registry."""
    with _lock:
        return dict(_registry)


def allowed_prefixes() -> tuple[str, ...]:
    """Return the module-path prefixes hydration accepts without registration."""
    return _allowed_prefixes


def set_allowed_prefixes(prefixes: Iterable[str]) -> None:
    """Replace the allow-list of module-path prefixes (default ``("dspy.",)``)."""
    global _allowed_prefixes
    cleaned = tuple(prefixes)
    if not all(isinstance(prefix, str) and prefix.endswith(".") for prefix in cleaned):
        raise ProgramSpecError("allowed prefixes are package paths ending with '.', e.g. 'dspy.' or 'myproject.'")
    _allowed_prefixes = cleaned


@contextlib.contextmanager
def allowing_prefixes(prefixes: Iterable[str]) -> Iterator[None]:
    """Add ``prefixes`` to the module-path allow-list for the block, then restore it (see set_allowed_prefixes)."""
    own = allowed_prefixes()
    set_allowed_prefixes(list(dict.fromkeys([*own, *prefixes])))
    try:
        yield
    finally:
        set_allowed_prefixes(own)


def resolve_module(name: str) -> type[dspy.Module]:
    """Return the module class a spec names, refusing anything not allowed."""
    if not isinstance(name, str) or not name:
        raise ProgramSpecError(f"a module name must be a non-empty string, got {name!r}")
    with _lock:
        registered = _registry.get(name)
    if registered is None and name in _BUILT_IN_MODULES:
        importlib.import_module(_BUILT_IN_MODULES[name])
        with _lock:
            registered = _registry.get(name)
    if registered is not None:
        return registered
    if not any(name.startswith(prefix) for prefix in _allowed_prefixes):
        raise ModuleNotAllowedError(name, _allowed_prefixes)
    module_path, _, attribute = name.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_path), attribute)
    except (ImportError, AttributeError):
        raise ProgramSpecError(f"module {name!r} does not exist (no {attribute!r} in {module_path!r})") from None
    if not (isinstance(found, type) and issubclass(found, dspy.Module)):
        raise ProgramSpecError(f"{name!r} is not a dspy.Module class")
    return found


def module_name(cls: type) -> str:
    """Return the spec name of a module class: its registered name or its public dspy path."""
    with _lock:
        for name, registered in _registry.items():
            if registered is cls:
                return name
    if isinstance(cls, type) and issubclass(cls, dspy.Module) and getattr(dspy, cls.__name__, None) is cls:
        return f"dspy.{cls.__name__}"
    raise ProgramSpecError(f"{cls!r} cannot be named in a spec: register it first with @dx.register({cls.__name__!r})")

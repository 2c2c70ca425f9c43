"""What an untrusted program spec may not do: carry credentials, reach private attributes, pick a hosted LM.

A spec is data that may come from someone else (a JSON file given to ``dspex
evaluate``, a package given to ``dspex rerun``), so three rules hold for every
program, whoever wrote it:

* ``init`` (the module's constructor arguments) carries no endpoint or
  credential: no key naming one (:data:`FORBIDDEN_INIT_KEYS`, or any key the
  redaction policy calls secret), no URL and no key-shaped string, at any depth;
* a variable's attribute ``target`` is a dotted path of public names through the
  module's own tree: no dunder or private name, only attributes the instance
  owns on the way (never a class, a Python module, a function or an LM), and
  only plain data (numbers, strings, lists...) may be replaced, never a method;
* a ``model`` variable resolves only a model the user allowed: a lab model
  (``lab/...``), the run's own LM model (so a spec may retune the LM it is given,
  not switch it), or a model on the allow-list set with :func:`set_allowed_models`
  or the ``DSPEX_ALLOWED_MODELS`` environment variable (comma-separated).
"""

from __future__ import annotations

import contextlib
import functools
import keyword
import os
import re
import threading
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from dspex_lab.errors import ProgramSpecError
from dspex_lab.trace.redaction import is_secret_key, mask_text

__all__ = [
    "ALLOWED_MODELS_ENVIRONMENT_VARIABLE",
    "FORBIDDEN_INIT_KEYS",
    "allowed_models",
    "check_attribute_target",
    "check_init",
    "check_model_allowed",
    "set_allowed_models",
]

ALLOWED_MODELS_ENVIRONMENT_VARIABLE = "DSPEX_ALLOWED_MODELS"
LAB_MODEL_PREFIX = "lab/"

# Compared after lowercasing and turning "-" into "_". Secret-named keys are refused through is_secret_key as well.
FORBIDDEN_INIT_KEYS = frozenset(
    {
        "api_base",
        "api_key",
        "api_version",
        "base_url",
        "callbacks",
        "credentials",
        "default_headers",
        "endpoint",
        "extra_headers",
        "headers",
        "host",
        "http_client",
        "lm",
        "model",
        "organization",
        "proxy",
        "proxies",
        "url",
    }
)
# Attributes a target may never replace even though they look like data: they choose what is called.
_FORBIDDEN_ATTRIBUTES = frozenset({"callbacks", "lm", "adapter", "tools"})
_URL = re.compile(r"^\s*[A-Za-z][A-Za-z0-9+.\-]*://")
_PLAIN_DATA = (type(None), bool, int, float, str, list, tuple, dict)
# Objects shared by the whole process: setting an attribute on one changes every program.
_OUTSIDE_THE_TREE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    functools.partial,
)
_MAXIMUM_DEPTH = 16

_lock = threading.Lock()
_allowed_models: frozenset[str] = frozenset()


def check_init(init: Mapping[str, Any]) -> None:
    """Refuse constructor arguments that carry an endpoint or a credential.

    Args:
        init: the spec's ``init`` mapping.

    Raises:
        ProgramSpecError: naming the offending key (as a dotted path for nested values).
    """
    _check_init_value(init, "init", 0)


def _check_init_value(value: Any, path: str, depth: int) -> None:
    if depth > _MAXIMUM_DEPTH:
        raise ProgramSpecError(f"{path}: nested more than {_MAXIMUM_DEPTH} levels deep")
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}"
            normalised = str(key).lower().replace("-", "_")
            if normalised in FORBIDDEN_INIT_KEYS or is_secret_key(str(key)):
                raise ProgramSpecError(
                    f"{where}: a program spec cannot carry endpoints or credentials in init "
                    f"({key!r} is refused); configure the LM with dx.Context(lm=...) or DSPEX_LM instead"
                )
            _check_init_value(item, where, depth + 1)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_init_value(item, f"{path}[{index}]", depth + 1)
    elif isinstance(value, str):
        if _URL.match(value):
            raise ProgramSpecError(
                f"{path}: a program spec cannot carry endpoints in init (a URL was given); "
                "configure the LM with dx.Context(lm=...) instead"
            )
        if mask_text(value) != value:
            raise ProgramSpecError(f"{path}: a program spec cannot carry credentials in init (a key-shaped value)")


def check_attribute_target(variable: str, target: str) -> tuple[str, ...]:
    """Check a dotted attribute target's syntax and return its parts.

    Args:
        variable: the variable's name, for the error message.
        target: the dotted path, e.g. ``"retrieve.k"``.

    Raises:
        ProgramSpecError: a part is empty, not an identifier, private (``_x``), a dunder,
            or one of the attributes that choose what is called (``lm``, ``callbacks``...).
    """
    parts = tuple(target.split("."))
    for part in parts:
        if not part.isidentifier() or keyword.iskeyword(part):
            raise ProgramSpecError(f"variable {variable!r}: target {target!r} is not a dotted attribute path")
        if part.startswith("_"):
            raise ProgramSpecError(
                f"variable {variable!r}: target {target!r} reaches {part!r}; private and dunder attributes "
                "cannot be set from a program spec"
            )
        if part in _FORBIDDEN_ATTRIBUTES:
            raise ProgramSpecError(
                f"variable {variable!r}: target {target!r} would replace {part!r}, which a program spec cannot set"
            )
    return parts


def set_attribute_in_tree(
    module: Any, target: str, value: Any, *, variable: str, shared_types: tuple[type, ...]
) -> None:
    """Set a plain-data attribute of a module or of an object the module owns.

    Every step of the path must be an attribute of the instance itself (not of its class,
    which every instance shares), and lead to an object: never a class, a Python module,
    a function or method, nor an instance of ``shared_types`` (LMs, which the whole run uses).
    The attribute finally replaced must hold plain data.

    Args:
        module: the live root module.
        target: the dotted path, e.g. ``"retrieve.k"``.
        value: the variable's value.
        variable: the variable's name, for error messages.
        shared_types: object types a path may not go through (``dspy.BaseLM``).

    Raises:
        ProgramSpecError: the path leaves the module tree, does not exist, or the attribute
            holds something other than plain data (a method, class, module or LM).
    """
    *parents, attribute = check_attribute_target(variable, target)
    owner = module
    for part in parents:
        owned = vars(owner) if hasattr(owner, "__dict__") else {}
        if part not in owned:
            raise ProgramSpecError(
                f"variable {variable!r} targets {target!r}, but {type(owner).__name__} has no attribute {part!r} "
                "of its own; targets stay inside the program's module tree"
            )
        child = owned[part]
        if isinstance(child, (*_OUTSIDE_THE_TREE, *shared_types)):
            raise ProgramSpecError(
                f"variable {variable!r} targets {target!r}, but {part!r} is a {type(child).__name__}, shared "
                "beyond this program; targets stay inside the program's module tree"
            )
        owner = child
    if not hasattr(owner, attribute):
        raise ProgramSpecError(
            f"variable {variable!r} targets {target!r}, but {type(owner).__name__} has no attribute {attribute!r}"
        )
    current = getattr(owner, attribute)
    if not isinstance(current, _PLAIN_DATA) or isinstance(current, type):
        raise ProgramSpecError(
            f"variable {variable!r} targets {target!r}, which holds a {type(current).__name__}; "
            "only plain data attributes (numbers, strings, lists, dicts) can be set from a program spec"
        )
    setattr(owner, attribute, value)


def allowed_models() -> frozenset[str]:
    """Return the hosted models a ``model`` variable may resolve besides lab models and the run's own LM.

    The union of :func:`set_allowed_models` and the comma-separated ``DSPEX_ALLOWED_MODELS``
    environment variable.
    """
    from_environment = os.environ.get(ALLOWED_MODELS_ENVIRONMENT_VARIABLE, "")
    listed = {item.strip() for item in from_environment.split(",") if item.strip()}
    with _lock:
        return _allowed_models | listed


@contextlib.contextmanager
def allowing_models(models: Iterable[str]) -> Iterator[None]:
    """Add ``models`` to the allow-list set by :func:`set_allowed_models` for the block, then restore it.

    For a worker building a program the driver allowed: the driver's list joins the worker's own
    (the environment variable's models are read at each check, so they are not copied in). Callers
    that may overlap serialise the block themselves.
    """
    global _allowed_models
    with _lock:
        own = _allowed_models
        _allowed_models = own | _checked_models(models)
    try:
        yield
    finally:
        with _lock:
            _allowed_models = own


def set_allowed_models(models: Iterable[str]) -> None:
    """Replace the allow-list of hosted models that ``model`` variables may resolve.

    Args:
        models: exact model strings, e.g. ``["openai/gpt-4o-mini"]``.

    Raises:
        ProgramSpecError: an entry is not a non-empty string.
    """
    global _allowed_models
    checked = _checked_models(models)
    with _lock:
        _allowed_models = checked


def _checked_models(models: Iterable[str]) -> frozenset[str]:
    cleaned = tuple(models) if not isinstance(models, str) else (models,)
    if not all(isinstance(model, str) and model.strip() for model in cleaned):
        raise ProgramSpecError(f"allowed models are model strings such as 'openai/gpt-4o-mini', got {cleaned!r}")
    return frozenset(model.strip() for model in cleaned)


def check_model_allowed(variable: str, model: Any, *, run_model: str | None) -> None:
    """Refuse a ``model`` variable value that would switch the run to an LM the user did not allow.

    Args:
        variable: the variable's name, for the error message.
        model: the value about to be resolved into an LM.
        run_model: the model string of the run's own LM, if any.

    Raises:
        ProgramSpecError: the model is neither a lab model, the run's model nor allowed.
    """
    if not isinstance(model, str) or not model.strip():
        raise ProgramSpecError(f"variable {variable!r}: a model must be a non-empty string, got {model!r}")
    model = model.strip()
    if model.startswith(LAB_MODEL_PREFIX) or model == run_model or model in allowed_models():
        return
    raise ProgramSpecError(
        f"variable {variable!r} selects model {model!r}, which is neither a lab model, the run's own LM "
        f"({run_model!r}) nor an allowed model; a program spec cannot switch the run to another hosted LM. "
        f"Allow it with dspex_lab.program.set_allowed_models([{model!r}]) "
        f"or {ALLOWED_MODELS_ENVIRONMENT_VARIABLE}={model}"
    )

"""Lazy re-exports for package ``__init__`` modules (PEP 562), so importing a package stays cheap.

A package lists which of its public names live in which module; the module is
imported the first time one of its names is read, and the value is cached in
the package namespace, so later reads cost nothing. ``dir()`` still lists every
public name. This module imports nothing from the rest of dspex_lab.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a package's ``__getattr__`` and ``__dir__`` serving ``exports`` lazily.

    Args:
        package: the package's ``__name__``.
        namespace: the package's ``globals()``, where loaded values are cached.
        exports: public name -> module that defines it; a module equal to ``f"{package}.{name}"``
            means the name is that sub-module itself.

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """

    def get_attribute(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(module_name)
        value = module if module_name == f"{package}.{name}" else getattr(module, name)
        namespace[name] = value
        return value

    def list_names() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return get_attribute, list_names

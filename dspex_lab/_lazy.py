"""Lazy re-exports for package ``__init__`` modules (PEP 562), so importing a package stays cheap.

A package lists which of its public names live in which module; the module is
imported the first time one of its names is read, and the value is cached in
the package namespace, so later reads cost nothing. ``dir()`` still lists every
public name. This module imports nothing from the rest of dspex_lab.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: Mapping[str, str], *, modules: Collection[str] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a package's ``__getattr__`` and ``__dir__`` serving ``exports`` lazily.

    Args:
        package: the package's ``__name__``.
        namespace: the package's ``globals()``, where loaded values are cached.
        exports: public name -> module that defines it.
        modules: public names that are sub-modules of the package themselves (``dx.stats``).

    Returns:
        ``(__getattr__, __dir__)`` to assign in the package.
    """

    def get_attribute(name: str) -> Any:
        if name in modules:
            value = importlib.import_module(f"{package}.{name}")
        elif name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
        else:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        namespace[name] = value
        return value

    def list_names() -> list[str]:
        return sorted(set(namespace) | set(exports) | set(modules))

    return get_attribute, list_names

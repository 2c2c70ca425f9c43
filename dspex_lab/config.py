"""Settings from ``DSPEX_*`` environment variables, ``dspex.toml`` or ``[tool.dspex]`` in pyproject.toml.

Precedence, highest first: environment variables, ``dspex.toml`` in the working
directory, ``[tool.dspex]`` in the working directory's pyproject.toml, built-in
defaults (the embedded lab LM and ``dspex.duckdb``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dspex_lab.errors import DspexLabError

__all__ = ["Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    """Process-wide defaults for contexts created without explicit arguments."""

    lm: str = "lab/small"
    journal: str = "dspex.duckdb"
    threads: int = 8
    executor: str = "thread"


def _from_file(directory: Path) -> dict[str, Any]:
    own = directory / "dspex.toml"
    if own.is_file():
        with own.open("rb") as handle:
            return tomllib.load(handle)
    project = directory / "pyproject.toml"
    if project.is_file():
        with project.open("rb") as handle:
            return tomllib.load(handle).get("tool", {}).get("dspex", {})
    return {}


def load_settings(directory: str | os.PathLike[str] | None = None) -> Settings:
    """Return the settings in force for ``directory`` (default: the working directory)."""
    values: dict[str, Any] = {}
    try:
        values.update(_from_file(Path(directory or os.getcwd())))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise DspexLabError(f"cannot read dspex settings: {error}") from None
    for key in ("lm", "journal", "threads", "executor"):
        variable = f"DSPEX_{key.upper()}"
        if os.environ.get(variable):
            values[key] = os.environ[variable]
    known = {key: values[key] for key in ("lm", "journal", "threads", "executor") if key in values}
    if "threads" in known:
        try:
            known["threads"] = int(known["threads"])
        except ValueError:
            raise DspexLabError(f"threads must be an integer, got {known['threads']!r} (DSPEX_THREADS)") from None
        if known["threads"] < 1:
            raise DspexLabError(f"threads must be at least 1, got {known['threads']}")
    return Settings(**known)

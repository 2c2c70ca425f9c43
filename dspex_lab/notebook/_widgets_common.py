"""What the notebook widgets share: finding their front-end files, and JSON-safe numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dspex_lab.errors import DspexLabError

__all__ = ["front_end_file", "json_number"]

# The front ends live in the repository's top-level widgets/ folder (DESIGN §1). A wheel ships them as the
# data package dspex_lab.notebook.widgets (pyproject maps it onto widgets/ and packs every .js and .css
# there); a source checkout or an editable install reads them where they are.
_FRONT_END_FOLDERS = (
    Path(__file__).resolve().parent / "widgets",
    Path(__file__).resolve().parents[2] / "widgets",
)


def front_end_file(name: str, *, widget: str) -> Path:
    """Return the path of a widget's front-end file, packaged or in a source checkout.

    Args:
        name: the file's name in ``widgets/`` (``run_progress.js``).
        widget: the widget's name, for the error message.

    Raises:
        DspexLabError: the file is in neither place (a broken install).
    """
    for folder in _FRONT_END_FOLDERS:
        if (folder / name).is_file():
            return folder / name
    searched = ", ".join(str(folder / name) for folder in _FRONT_END_FOLDERS)
    raise DspexLabError(
        f"the {widget} widget's front end {name} is missing (looked in {searched}); reinstall dspex_lab, "
        "or in a source checkout restore the top-level widgets/ folder"
    )


def json_number(value: Any) -> float | None:
    """Return ``value`` as a float for a synced trait, or None for a missing, NaN or infinite one.

    JSON has no NaN: a NaN sent to the front end would arrive as null anyway, but only after breaking
    strict parsers on the way.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None

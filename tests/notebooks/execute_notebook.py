"""Re-execute tutorial notebooks in place and store their outputs, ready for nbval.

Usage (from the repository root)::

    python tests/notebooks/execute_notebook.py notebooks/01_quickstart.ipynb

Each notebook runs top to bottom in a fresh kernel whose working directory is the
notebook's own, like ``jupyter nbconvert --execute --inplace``. Unlike that command,
this script also removes nbclient's per-cell timing metadata, including any left by
earlier runs, so a re-execution changes only the outputs that really changed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, *, timeout: int = 600) -> None:
    """Execute ``path`` in place; raise if a cell fails (the file is then left untouched)."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=timeout,
        kernel_name="python3",
        record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
    nbformat.validate(notebook)
    nbformat.write(notebook, path)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for name in argv:
        execute(Path(name).resolve())
        print(f"executed {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

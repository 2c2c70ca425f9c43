"""Fast checks on the stored tutorial notebooks (no kernel needed).

The notebooks run for real in CI with
``pytest --nbval-lax notebooks/01_quickstart.ipynb -p no:cacheprovider``. That run
compares only the cells tagged ``nbval-check-output``. These tests keep that check
meaningful: the tagged cells must hold stored outputs, and the stored notebook must be
a clean top-to-bottom run with nothing machine-specific in it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CHECK_TAG = "nbval-check-output"
KNOWN_TAGS = {CHECK_TAG, "nbval-ignore-output", "nbval-skip", "nbval-raises-exception"}


def _notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def _code_cells(path: Path) -> list:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _text(output) -> str:
    if output.output_type == "stream":
        return output.text
    return "\n".join(str(value) for value in output.get("data", {}).values())


@pytest.fixture(params=_notebooks(), ids=lambda path: path.name)
def notebook_path(request: pytest.FixtureRequest) -> Path:
    return request.param


def test_there_is_a_quickstart() -> None:
    assert (NOTEBOOKS / "01_quickstart.ipynb").is_file()


def test_executed_top_to_bottom(notebook_path: Path) -> None:
    counts = [cell.execution_count for cell in _code_cells(notebook_path)]
    assert counts == list(range(1, len(counts) + 1)), "re-execute the whole notebook (see notebooks/README.md)"


def test_checked_cells_have_stored_outputs(notebook_path: Path) -> None:
    cells = _code_cells(notebook_path)
    checked = [cell for cell in cells if CHECK_TAG in cell.metadata.get("tags", [])]
    assert len(checked) >= 5, "nbval --nbval-lax compares only tagged cells: tag the deterministic ones"
    for cell in checked:
        assert cell.outputs, f"checked cell has no stored output:\n{cell.source[:200]}"
        for output in cell.outputs:
            # stderr (warnings, logs) depends on library versions: keep it out of compared cells.
            assert not (output.output_type == "stream" and output.name == "stderr"), cell.source[:200]


def test_no_errors_or_unknown_tags(notebook_path: Path) -> None:
    for cell in _code_cells(notebook_path):
        assert set(cell.metadata.get("tags", [])) <= KNOWN_TAGS, cell.metadata.get("tags")
        for output in cell.outputs:
            assert output.output_type != "error", f"stored error output in:\n{cell.source[:200]}"


def test_nothing_machine_specific_is_stored(notebook_path: Path) -> None:
    for cell in _code_cells(notebook_path):
        # nbclient's per-cell timestamps churn the diff on every re-execution.
        assert "execution" not in cell.metadata, "execute with --ExecutePreprocessor.record_timing=False"
        for output in cell.outputs:
            text = _text(output)
            assert "/tmp/" not in text and "/home/" not in text and "\\Users\\" not in text, text[:200]


def test_leaves_no_journal_in_the_repository() -> None:
    leftovers = [path.name for path in NOTEBOOKS.iterdir() if path.suffix in {".duckdb", ".wal"}]
    assert not leftovers, f"a notebook left journal files behind: {leftovers}"

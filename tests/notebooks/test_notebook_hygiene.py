"""Fast checks on the stored tutorial notebooks (no kernel needed).

Every notebook in ``notebooks/`` runs for real in CI with nbval in lax mode
(``pytest notebooks/ -p no:cacheprovider``; ``--nbval-lax`` is in ``addopts``). That run
compares only the cells tagged ``nbval-check-output``. These tests keep that check
meaningful for every notebook: the tagged cells must hold stored, deterministic plain-text
outputs, and each stored notebook must be a clean top-to-bottom run with nothing
machine-specific in it, listed in ``notebooks/README.md``, that cleans up after itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
CHECK_TAG = "nbval-check-output"
KNOWN_TAGS = {CHECK_TAG, "nbval-ignore-output", "nbval-skip", "nbval-raises-exception"}
# Tutorials that must exist; any other notebook in notebooks/ is checked the same way.
EXPECTED = (
    "01_quickstart.ipynb",
    "02_evaluation_science.ipynb",
    "03_traces.ipynb",
    "04_optimize.ipynb",
    "05_interactive.ipynb",
    "06_dashboard.ipynb",
    "07_composition.ipynb",
)
# Things that change on every run and so must never be in a compared output.
RUN_SPECIFIC = {
    "an experiment or hypothesis id": re.compile(r"\b[0-9a-f]{12}\b"),
    "a timestamp": re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}"),
    "a memory address": re.compile(r"\bat 0x[0-9a-f]+"),
}


# The temporary directory a tutorial makes with tempfile.mkdtemp(prefix="dspex-<name>-").
OWN_TEMPORARY_DIRECTORY = re.compile(r"/tmp/dspex-[a-z]+-[A-Za-z0-9_]+/")


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


def _checked_cells(path: Path) -> list:
    return [cell for cell in _code_cells(path) if CHECK_TAG in cell.metadata.get("tags", [])]


@pytest.mark.parametrize("name", EXPECTED)
def test_expected_tutorials_exist(name: str) -> None:
    assert (NOTEBOOKS / name).is_file()


def test_every_notebook_is_listed_in_the_readme() -> None:
    readme = (NOTEBOOKS / "README.md").read_text(encoding="utf-8")
    missing = [path.name for path in _notebooks() if f"`{path.name}`" not in readme]
    assert not missing, f"add these notebooks to the table in notebooks/README.md: {missing}"


def test_runs_on_the_python3_kernel(notebook_path: Path) -> None:
    # execute_notebook.py and nbval --nbval-current-env both run a "python3" kernel.
    notebook = nbformat.read(notebook_path, as_version=4)
    assert notebook.metadata.get("kernelspec", {}).get("name") == "python3"


def test_executed_top_to_bottom(notebook_path: Path) -> None:
    counts = [cell.execution_count for cell in _code_cells(notebook_path)]
    assert counts == list(range(1, len(counts) + 1)), "re-execute the whole notebook (see notebooks/README.md)"


def test_checked_cells_have_stored_outputs(notebook_path: Path) -> None:
    checked = _checked_cells(notebook_path)
    assert len(checked) >= 5, "nbval --nbval-lax compares only tagged cells: tag the deterministic ones"
    for cell in checked:
        assert cell.outputs, f"checked cell has no stored output:\n{cell.source[:200]}"
        for output in cell.outputs:
            # stderr (warnings, logs) depends on library versions: keep it out of compared cells.
            assert not (output.output_type == "stream" and output.name == "stderr"), cell.source[:200]


def test_checked_outputs_are_deterministic_plain_text(notebook_path: Path) -> None:
    for cell in _checked_cells(notebook_path):
        for output in cell.outputs:
            # Rich HTML (DataFrames, result displays) depends on library versions and holds ids.
            html = "text/html" in output.get("data", {})
            assert not html, f"print plain text in a checked cell:\n{cell.source[:200]}"
            text = _text(output)
            for what, pattern in RUN_SPECIFIC.items():
                found = pattern.search(text)
                assert found is None, f"checked output holds {what} ({found.group()!r}):\n{cell.source[:200]}"


def test_no_stderr_anywhere(notebook_path: Path) -> None:
    # Warnings and logs belong in a captured display (see 02's budget section), not in stray stderr.
    for cell in _code_cells(notebook_path):
        for output in cell.outputs:
            assert not (output.output_type == "stream" and output.name == "stderr"), (
                f"stderr output ({output.text[:120]!r}) in:\n{cell.source[:200]}"
            )


def test_temporary_files_are_removed_at_the_end(notebook_path: Path) -> None:
    cells = _code_cells(notebook_path)
    if any("mkdtemp" in cell.source or "TemporaryDirectory" in cell.source for cell in cells):
        assert "rmtree" in cells[-1].source or "cleanup()" in cells[-1].source, (
            "a notebook that makes a temporary directory must delete it in its last code cell"
        )


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
            # A result's rich HTML names its journal in the commands it suggests; in a tutorial that is the
            # notebook's own temporary directory (deleted by its last cell), not a path of this machine.
            text = OWN_TEMPORARY_DIRECTORY.sub("<workdir>/", _text(output))
            assert "/tmp/" not in text and "/home/" not in text and "\\Users\\" not in text, text[:200]


# Any address in a stored output; only this machine's own servers may be named (and XML namespaces, which
# name a vocabulary and are never fetched).
_ADDRESS = re.compile(r"(?:https?:)?//([A-Za-z0-9.-]+\.[A-Za-z]{2,}|127\.0\.0\.1|localhost)")
_LOCAL_OR_NAMESPACE = {"127.0.0.1", "localhost", "www.w3.org"}


def test_outputs_fetch_nothing_from_outside(notebook_path: Path) -> None:
    # Opened offline (a cluster, a train), a stored output that loads a script or stylesheet from a CDN shows
    # blank; the tutorials draw with the project's own widgets or with scripts from the installed packages.
    for cell in _code_cells(notebook_path):
        for output in cell.outputs:
            hosts = {match.group(1) for match in _ADDRESS.finditer(_text(output))} - _LOCAL_OR_NAMESPACE
            assert not hosts, f"an output of this cell names {sorted(hosts)}:\n{cell.source[:200]}"


def test_the_outside_address_check_finds_a_cdn() -> None:
    script = '<script src="https://cdn.example.org/bokeh.min.js"></script> <a href="http://127.0.0.1:5006/">'
    assert {match.group(1) for match in _ADDRESS.finditer(script)} - _LOCAL_OR_NAMESPACE == {"cdn.example.org"}


def test_leaves_no_files_in_the_repository() -> None:
    # Journals, packages and anything else a notebook writes go to a temporary directory.
    allowed = {".ipynb", ".md"}
    leftovers = [
        str(path.relative_to(NOTEBOOKS))
        for path in NOTEBOOKS.rglob("*")
        if path.is_file() and ".ipynb_checkpoints" not in path.parts and path.suffix not in allowed
    ]
    assert not leftovers, f"a notebook left files behind in notebooks/: {leftovers}"

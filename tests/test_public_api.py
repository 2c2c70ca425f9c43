import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import dspex_lab as dx


def isort_order(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then functions and modules."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_resolvable():
    assert dx.__all__ == sorted(dx.__all__, key=isort_order)
    for name in dx.__all__:
        assert hasattr(dx, name), name


def test_subpackage_all_lists_are_sorted_and_resolvable():
    for package in (
        "program",
        "data",
        "datasets",
        "tasks",
        "lm",
        "providers",
        "engine",
        "session",
        "trace",
        "stats",
        "evaluation",
        "optimization",
        "journal",
    ):
        module = importlib.import_module(f"dspex_lab.{package}")
        assert module.__doc__, package
        assert list(module.__all__) == sorted(module.__all__, key=isort_order), package
        for name in module.__all__:
            assert hasattr(module, name), f"{package}.{name}"


UI_MODULES = ("IPython", "ipywidgets", "anywidget", "panel", "holoviews", "bokeh", "tqdm")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(','.join(m for m in {UI_MODULES!r} if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(filter(None, completed.stdout.strip().split(",")))


def test_import_is_light():
    assert loaded_after("import dspex_lab") == set()
    # dspy itself imports IPython.display when IPython is installed; dspex_lab's layers must add nothing to that.
    assert loaded_after("import dspex_lab; dspex_lab.evaluation; dspex_lab.stats") == loaded_after("import dspy")
    assert not loaded_after("import dspex_lab; dspex_lab.evaluation") & {
        "ipywidgets",
        "anywidget",
        "panel",
        "holoviews",
    }


HEAVY = ("dspy", "pandas", "scipy", "duckdb", "pyarrow", "litellm")


def loaded_names(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("LOADED:"))
    return [name for name in line.removeprefix("LOADED:").split(",") if name]


def heavy_loaded(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter and return which heavy libraries it left in sys.modules."""
    script = f"{code}\nimport sys\nprint('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    return loaded_names(completed.stdout)


def test_import_loads_no_dspy_pandas_or_scipy():
    assert heavy_loaded("import dspex_lab") == []
    assert heavy_loaded("import dspex_lab as dx\ndx.errors.JournalError; dx.datasets.TOPICS; dx.__version__") == []


def test_names_load_their_layers_on_first_use():
    assert "scipy" in heavy_loaded("import dspex_lab as dx\ndx.stats.holm")
    assert "dspy" in heavy_loaded("import dspex_lab as dx\ndx.Program")
    names = dir(dx)
    assert set(dx.__all__) <= set(names) and "widgets" in names
    assert callable(dx.evaluate) and callable(dx.compare) and callable(dx.open_journal)
    importlib.import_module("dspex_lab.evaluation._export")  # loading the sub-package does not hide the function

    assert dx.evaluate.__module__ == "dspex_lab.evaluation._evaluate"
    # The layers stay reachable as attributes, as when the package imported them eagerly.
    assert dx.program.Program is dx.Program and dx.journal.open_journal is dx.open_journal
    assert {"program", "trace", "journal", "tasks"} <= set(names)
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        dx.not_a_name  # noqa: B018


@pytest.mark.parametrize(
    "load", ["import dspex_lab as dx\ndx.Program", "from dspex_lab.program import Program", "import dspex_lab.engine"]
)
def test_model_variables_resolve_lab_models_however_the_program_layer_loads(load):
    # The package root hands the program layer the lab LM resolver when that layer loads, by any route.
    code = f"{load}\nfrom dspex_lab.program import _program\nprint(type(_program._lm_resolver('lab/large')).__name__)"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "LabLM"


def test_the_arithmetic_grammar_is_built_on_first_parse():
    code = (
        "import dspex_lab as dx\n"
        "from dspex_lab.tasks import arithmetic\n"
        "sizes = [arithmetic._grammar.cache_info().currsize]\n"
        "problems = dx.datasets.arithmetic(3)\n"
        "sizes.append(arithmetic._grammar.cache_info().currsize)\n"
        "assert arithmetic.parse_problem(problems[0].question).solve() == int(problems[0].answer)\n"
        "sizes.append(arithmetic._grammar.cache_info().currsize)\n"
        "print(sizes)"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[0, 0, 1]"


CLI = """
import sys
from dspex_lab.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
assert code == 0, code
"""


def cli_loads(tmp_path, *arguments: str) -> list[str]:
    script = tmp_path / "run_cli.py"
    script.write_text(CLI + f"print('LOADED:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n")
    completed = subprocess.run(
        [sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert completed.returncode == 0, completed.stderr
    return loaded_names(completed.stdout)


def test_cli_help_and_journal_list_load_neither_dspy_nor_scipy(tmp_path):
    from dspex_lab.journal import ExperimentRecord

    journal = dx.open_journal(tmp_path / "j.duckdb")
    journal.create_experiment(ExperimentRecord(kind="evaluation", name="listed"))
    assert cli_loads(tmp_path, "--help") == []
    loaded = cli_loads(tmp_path, "journal", "list", "--journal", str(tmp_path / "j.duckdb"))
    assert "duckdb" in loaded  # it did read the journal
    assert not {"dspy", "scipy", "litellm"} & set(loaded)


def test_errors_form_one_tree():
    from dspex_lab import errors

    for name in errors.__all__:
        error_class = getattr(errors, name)
        if name in ("DspexLabError", "DspexLabWarning"):
            continue
        if issubclass(error_class, Warning):  # the warnings' own small tree
            assert issubclass(error_class, errors.DspexLabWarning), name
            continue
        assert issubclass(error_class, errors.DspexLabError), name
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.ModuleNotAllowedError, errors.ProgramSpecError)


# -- the import graph: DESIGN.md §1's layer table, checked on every import statement ---------------

PACKAGE = Path(dx.__file__).parent

# What each layer may import directly, as DESIGN.md §1 lists it ("may import"); a layer may also import
# what those layers may (imports point downward). Layers the table does not list: `tasks` (the task
# grammar, stdlib only) under both `datasets` (bundled datasets) and `lm`.
MAY_IMPORT: dict[str, set[str]] = {
    "program": set(),
    "data": set(),
    "tasks": set(),
    "datasets": {"tasks", "data"},
    "lm": {"tasks"},
    # Real LMs through DSPy (names, metering, rollouts); the lab LM is one more provider.
    "providers": {"lm"},
    "trace": set(),
    "stats": set(),
    "journal": set(),
    "engine": {"program", "providers", "trace"},
    # Context (LM, executor, journal) and the experiments runs leave, under evaluation and optimization.
    "session": {"engine", "journal", "providers", "data"},
    # evaluation also takes a Dataset: `data` sits above it in the table.
    "evaluation": {"session", "engine", "stats", "journal", "data"},
    "optimization": {"evaluation"},
    "notebook": {
        "program",
        "data",
        "datasets",
        "lm",
        "providers",
        "engine",
        "session",
        "trace",
        "stats",
        "evaluation",
        "optimization",
        "journal",
    },
    "dashboard": {"journal", "trace", "stats"},
    # dx.autolog(): DSPy's own Evaluate and compile calls journaled as evaluations (issue 24, item 1).
    "integrations": {"evaluation"},
}
# Single modules a layer may use outside its column, each for a stated reason.
MAY_IMPORT_MODULES: dict[str, set[str]] = {
    # One redaction policy for everything persisted or displayed, program specs included (issue 9, item 5).
    "program": {"dspex_lab.trace.redaction"},
    # One interval rule for a mean score in every view (Wilson for 0/1, t otherwise: issue 19, item 8): the
    # journal's leaderboard and the engine's live statistics compute it with dx.stats, a leaf layer.
    "journal": {"dspex_lab.stats"},
    "engine": {"dspex_lab.stats"},
    # The plan -> solve -> verify task registers its module and builds its dx.Program (issue 23, item 2).
    "tasks": {"dspex_lab.program"},
}
# Modules of the package root that every layer may import; they import only each other.
BASE = {"errors", "config", "_records", "_lazy", "_hooks", "metrics", "_dspy_compat"}
# The composition roots: they may import every layer.
ROOTS = {"__init__", "cli"}


def node_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "dspex_lab":
        return None
    return "__init__" if len(parts) == 1 else parts[1]


def imports_of(path: Path) -> list[str]:
    """Every dspex_lab module ``path`` imports, at module level or inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "dspex_lab":
                found += [
                    f"dspex_lab.{alias.name}"
                    if (PACKAGE / alias.name).is_dir() or (PACKAGE / f"{alias.name}.py").is_file()
                    else "dspex_lab"
                    for alias in node.names
                ]
            else:
                found.append(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; dspex_lab uses absolute imports")
    return [module for module in found if node_of(module) is not None]


def import_graph() -> dict[str, dict[str, set[str]]]:
    """Layer (or root module) -> imported layer -> the modules imported from it."""
    graph: dict[str, dict[str, set[str]]] = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE)
        source = relative.parts[0] if len(relative.parts) > 1 else relative.stem
        for module in imports_of(path):
            target = node_of(module)
            if target != source:
                graph.setdefault(source, {}).setdefault(target, set()).add(module)
    return graph


def allowed(layer: str) -> set[str]:
    reachable, stack = set(), list(MAY_IMPORT[layer])
    while stack:
        below = stack.pop()
        if below not in reachable:
            reachable.add(below)
            stack += MAY_IMPORT[below]
    return reachable


def test_layers_import_only_downward():
    graph = import_graph()
    layers = {name for name in graph if name not in BASE | ROOTS} | {
        target for edges in graph.values() for target in edges if target not in BASE | ROOTS
    }
    assert layers <= set(MAY_IMPORT), f"layers missing from the table: {layers - set(MAY_IMPORT)}"
    wrong = []
    for source, edges in graph.items():
        for target, modules in edges.items():
            if source in ROOTS:
                ok = target != "cli"
            elif source in BASE:
                ok = target in BASE
            elif target in BASE:
                ok = True
            else:
                ok = target in allowed(source) or modules <= MAY_IMPORT_MODULES.get(source, set())
            if not ok:
                wrong.append(f"{source} -> {sorted(modules)}")
    assert not wrong, "imports against DESIGN.md §1: " + "; ".join(sorted(wrong))


def test_the_journal_does_not_import_trace_and_the_lab_lm_does_not_import_datasets():
    graph = import_graph()
    assert "trace" not in graph["journal"]
    assert "datasets" not in graph["lm"]


def test_import_graph_is_acyclic():
    graph = import_graph()
    # The package root imports its layers lazily, and every submodule import runs it first: it is left out.
    edges = {source: set(targets) - {"__init__"} for source, targets in graph.items() if source != "__init__"}
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, node, target]))
            if target not in state:
                visit(target, [*path, node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])


def test_the_layer_check_catches_a_violation(tmp_path):
    # The checker itself: a journal module importing the trace layer inside a function is found.
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from dspex_lab.trace import TraceTree\n    import dspex_lab.lm.simulator\n")
    assert imports_of(module) == ["dspex_lab.trace", "dspex_lab.lm.simulator"]
    assert "trace" not in allowed("journal") and "datasets" not in allowed("lm")
    assert {"program", "lm", "trace", "tasks"} <= allowed("evaluation")

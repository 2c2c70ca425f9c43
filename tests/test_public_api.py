import subprocess
import sys

import dspex_lab as dx


def isort_order(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then functions and modules."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_resolvable():
    assert dx.__all__ == sorted(dx.__all__, key=isort_order)
    for name in dx.__all__:
        assert hasattr(dx, name), name


def test_subpackage_all_lists_are_sorted_and_resolvable():
    import importlib

    for package in ("program", "data", "lm", "engine", "stats", "evaluate", "journal"):
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
    # dspy itself imports IPython.display when IPython is installed; dspex_lab must add nothing to that.
    assert loaded_after("import dspex_lab") == loaded_after("import dspy")
    assert not loaded_after("import dspex_lab") & {"ipywidgets", "anywidget", "panel", "holoviews", "bokeh"}


def test_errors_form_one_tree():
    from dspex_lab import errors

    for name in errors.__all__:
        error_class = getattr(errors, name)
        if name in ("DspexLabError", "DspexLabWarning"):
            continue
        assert issubclass(error_class, errors.DspexLabError), name
    assert issubclass(errors.MissingDependencyError, ImportError)
    assert issubclass(errors.ModuleNotAllowedError, errors.ProgramSpecError)

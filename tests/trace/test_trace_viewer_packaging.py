"""The trace viewer's front end ships in the wheel, where the installed package looks for it."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dspex_lab as dx

pytest.importorskip("anywidget")
setuptools = pytest.importorskip("setuptools")
REPOSITORY = Path(dx.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"pyproject.toml needs setuptools>=77 to build, this environment has {setuptools.__version__}")
    # Built from a copy, so the build leaves no build/ or egg-info behind in the repository.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPOSITORY / name, source)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("dspex_lab", "widgets"):
        shutil.copytree(REPOSITORY / folder, source / folder, ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.glob("dspex_lab-*.whl")
    return path


@pytest.mark.slow
def test_wheel_holds_the_front_end_where_the_package_looks(wheel):
    from dspex_lab.notebook import _widgets_common

    packaged = _widgets_common._FRONT_END_FOLDERS[0].relative_to(REPOSITORY).as_posix()
    assert packaged == "dspex_lab/notebook/widgets"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in ("trace_viewer.js", "trace_viewer.css"):
            assert archive.read(f"{packaged}/{name}") == (REPOSITORY / "widgets" / name).read_bytes()
    # pyproject lists the packages (the widget's data package needs a package-dir mapping): none may be missing.
    for init in REPOSITORY.glob("dspex_lab/**/__init__.py"):
        assert init.relative_to(REPOSITORY).as_posix() in names


@pytest.mark.slow
def test_installed_wheel_finds_its_front_end(wheel, tmp_path):
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    probe = (
        "import dspex_lab, dspex_lab.notebook._trace_viewer as viewer; "
        "from dspex_lab.notebook._widgets_common import front_end_file as find; "
        "print(dspex_lab.__file__); print(find('trace_viewer.js', widget='TraceViewer')); "
        "print(str(viewer.TraceViewer._esm) == find('trace_viewer.js', widget='TraceViewer').read_text())"
    )
    # The wheel's copy comes first on the path, ahead of the editable install of the repository.
    ran = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    package, script, loaded = ran.stdout.splitlines()[:3]
    assert Path(package).is_relative_to(site)
    assert Path(script) == site / "dspex_lab" / "notebook" / "widgets" / "trace_viewer.js"
    assert loaded == "True"  # what the widget sends to the browser

"""Examples in docstrings run as doctests (STYLE.md): every module of the package that has any."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dspex_lab


def _examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = []
    for info in pkgutil.walk_packages(dspex_lab.__path__, "dspex_lab."):
        tests.extend(test for test in finder.find(importlib.import_module(info.name), info.name) if test.examples)
    return sorted(tests, key=lambda test: test.name)


EXAMPLES = _examples()


def test_the_package_has_docstring_examples() -> None:
    assert len(EXAMPLES) >= 20  # 41 when this was written: a finder that stops seeing them fails here


@pytest.mark.parametrize("test", EXAMPLES, ids=[test.name for test in EXAMPLES])
def test_docstring_examples(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {test.name} failed (see above)"

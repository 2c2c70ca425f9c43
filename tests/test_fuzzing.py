"""Property-based fuzzing of what dspex_lab reads from others: program specs, dataset files, journals.

Each reader gets arbitrary input and must either succeed or raise one error of dspex_lab's error
tree (``DspexLabError``), quickly: never a raw ``KeyError``/``TypeError`` traceback, never a hang.
Hypothesis shrinks any failure to a small input, which then says exactly what to fix.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import dspex_lab as dx  # noqa: E402
from dspex_lab.errors import DspexLabError  # noqa: E402

# Deterministic, bounded runs: CI time is shared, and a failure must reproduce.
FUZZ = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SECONDS = 5.0  # any single input taking longer is a hang as far as a user can tell

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
variable_kinds = st.sampled_from(["float", "int", "choice", "bool", "text", "demos", "module_type", "nonsense", None])


@st.composite
def binding_dicts(draw: st.DrawFn) -> dict:
    """A semantic binding's JSON shape with fuzzed predictors, settings and values inside."""
    keys = st.sampled_from(["temperature", "max_tokens", "model", "prefix", "suffix", "api_base", "x"])
    predictors = st.dictionaries(st.text(max_size=8), st.dictionaries(keys, json_values, max_size=3), max_size=3)
    cases = st.lists(st.fixed_dictionaries({"value": json_values, "predictors": predictors}), max_size=3)
    return {"cases": draw(cases), **({"default": draw(predictors)} if draw(st.booleans()) else {})}


@st.composite
def variable_dicts(draw: st.DrawFn) -> dict:
    data = {"type": draw(variable_kinds), "value": draw(json_values)}
    keys = ("low", "high", "choices", "max", "max_length", "target", "targets", "binding", "step", "log", "description")
    for key in keys:
        if draw(st.booleans()):
            data[key] = draw(binding_dicts() | json_values) if key == "binding" else draw(json_values)
    return data


@st.composite
def program_specs(draw: st.DrawFn) -> dict:
    spec: dict = {}
    if draw(st.booleans()):
        spec["dspex_program"] = draw(st.one_of(st.just(1), json_values))
    if draw(st.integers(0, 9)):
        spec["module"] = draw(
            st.one_of(
                st.sampled_from(["dspy.Predict", "dspy.ChainOfThought", "os.system", "dspy.", "", "dspy.LM"]),
                json_values,
            )
        )
    if draw(st.booleans()):
        spec["signature"] = draw(
            st.one_of(st.sampled_from(["question -> answer", "q ->", "-> a", "a, b -> c"]), json_values)
        )
    if draw(st.booleans()):
        spec["variables"] = draw(
            st.one_of(st.dictionaries(st.text(max_size=10), variable_dicts(), max_size=3), json_values)
        )
    if draw(st.booleans()):
        spec["init"] = draw(json_values)
    if draw(st.booleans()):
        spec["constraints"] = draw(st.one_of(st.lists(st.text(max_size=40), max_size=2), json_values))
    if draw(st.booleans()):
        spec["name"] = draw(json_values)
    return spec


def _must_be_clean(call) -> object:
    started = time.perf_counter()
    try:
        return call()
    except DspexLabError as error:
        assert str(error), "an error of the tree must say what is wrong"
        return error
    finally:
        assert time.perf_counter() - started < SECONDS


@FUZZ
@given(spec=program_specs())
def test_a_program_spec_either_loads_or_gets_one_clear_error(spec: dict) -> None:
    loaded = _must_be_clean(lambda: dx.Program.from_dict(spec))
    if isinstance(loaded, dx.Program):
        # What loads round-trips exactly, so a stored spec means one program.
        assert dx.Program.from_json(loaded.to_json()) == loaded


@FUZZ
@given(text=st.text(max_size=300))
def test_program_json_text_either_loads_or_gets_one_clear_error(text: str) -> None:
    _must_be_clean(lambda: dx.Program.from_json(text))


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.builds(
                json.dumps, st.dictionaries(st.sampled_from(["question", "answer", "x"]), json_scalars, max_size=3)
            ),
            st.text(max_size=40),
            st.just(""),
        ),
        max_size=8,
    ),
    suffix=st.sampled_from([".jsonl", ".json", ".csv", ".tsv"]),
)
def test_a_dataset_file_either_loads_or_gets_one_clear_error(tmp_path_factory, lines: list[str], suffix: str) -> None:
    path = tmp_path_factory.mktemp("data") / f"fuzz{suffix}"
    path.write_text("\n".join(lines), encoding="utf-8")
    loaded = _must_be_clean(lambda: dx.load_dataset(path, inputs="question"))
    if isinstance(loaded, dx.Dataset):
        assert all("question" in example for example in loaded)


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]))
def test_a_binary_dataset_file_gets_one_clear_error(tmp_path_factory, data: bytes, suffix: str) -> None:
    path = tmp_path_factory.mktemp("binary") / f"fuzz{suffix}"
    path.write_bytes(data)
    _must_be_clean(lambda: dx.load_dataset(path, inputs="question"))


_GOOD_JOURNAL: list[bytes] = []


def good_journal_bytes(folder: Path) -> bytes:
    """The bytes of a small, valid journal (made once per test session)."""
    if not _GOOD_JOURNAL:
        path = folder / "good.duckdb"
        data = dx.datasets.arithmetic(6, seed=0)
        program = dx.Program("dspy.Predict", signature="question -> answer")
        with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
            dx.evaluate(program, data, metric=dx.metrics.exact_match, progress=False)
        _GOOD_JOURNAL.append(path.read_bytes())
    return _GOOD_JOURNAL[0]


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10**6), flips=st.integers(1, 64), truncate=st.booleans())
def test_a_corrupted_journal_gives_one_clear_error_not_a_hang(tmp_path_factory, seed, flips, truncate) -> None:
    generator = random.Random(seed)
    damaged = bytearray(good_journal_bytes(tmp_path_factory.mktemp("good")))
    if truncate:
        damaged = damaged[: generator.randrange(0, len(damaged))]
    for _ in range(flips if damaged else 0):
        damaged[generator.randrange(len(damaged))] = generator.randrange(256)
    path: Path = tmp_path_factory.mktemp("corrupt") / "journal.duckdb"
    path.write_bytes(bytes(damaged))

    def read_everything() -> None:
        journal = dx.open_journal(path, lock_timeout=2.0)
        for summary in journal.experiment_summaries():
            journal.trials(summary.id)

    _must_be_clean(read_everything)
    os.remove(path)


# -- the %%dspex program cell: a YAML body typed (or pasted) by someone ------------------------------

VALID_BODY = """\
module: dspy.ChainOfThought
signature: "question -> answer"
name: qa
variables:
  temperature:
    type: float
    value: 0.5
    low: 0.0
    high: 1.0
  style:
    type: choice
    value: terse
    choices: [terse, verbose]
"""


@pytest.fixture(scope="module")
def magic_shell():
    pytest.importorskip("yaml")
    interactive = pytest.importorskip("IPython.core.interactiveshell")
    shell = interactive.InteractiveShell.instance()
    shell.run_line_magic("load_ext", "dspex_lab")
    return shell


def _program_cell(shell, body: str) -> None:
    """Run the cell magic: it binds a Program or raises one UsageError line, quickly."""
    from IPython.core.error import UsageError

    started = time.monotonic()
    try:
        program = shell.run_cell_magic("dspex", "program fuzzed", body)
    except UsageError as error:
        message = str(error)
        assert message and "Traceback" not in message, message
    else:
        assert isinstance(program, dx.Program)
    assert time.monotonic() - started < SECONDS, f"a {len(body)}-character body took too long"


@FUZZ
@given(spec=program_specs())
def test_a_program_cell_from_any_spec_gets_a_program_or_one_usage_line(magic_shell, spec: dict) -> None:
    import yaml

    _program_cell(magic_shell, yaml.safe_dump(spec, allow_unicode=True))


@FUZZ
@given(text=st.text(max_size=300))
def test_a_program_cell_of_any_text_gets_a_program_or_one_usage_line(magic_shell, text: str) -> None:
    _program_cell(magic_shell, text)


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID_BODY)), st.sampled_from(list(":-[]{}&*!|>'\"#\t\n ?,%@`")), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_a_mistyped_program_cell_gets_a_program_or_one_usage_line(magic_shell, edits) -> None:
    body = VALID_BODY
    for position, character, delete in edits:
        position = min(position, len(body))
        body = body[:position] + body[position + 1 :] if delete else body[:position] + character + body[position:]
    _program_cell(magic_shell, body)


@pytest.mark.parametrize(
    "body",
    [
        "module: &m [*m]\n",  # a self-referencing alias
        "variables: &v {t: *v}\nmodule: dspy.Predict\n",
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{b}: &{b} [*{a}, *{a}, *{a}]\n"
            for a, b in zip("abcdefghijklmnopqrst", "bcdefghijklmnopqrstu", strict=True)
        )
        + "module: dspy.Predict\n",  # the billion-laughs shape: aliases of aliases
        "module: !!python/object/apply:os.system ['true']\n",  # a YAML tag that would run code if not safe-loaded
        "signature: '" + "x" * 2_000_000 + "'\nmodule: dspy.Predict\n",
    ],
    ids=["self-alias", "recursive-variables", "alias-bomb", "python-tag", "two-megabytes"],
)
def test_hostile_program_cells_get_one_usage_line(magic_shell, body: str) -> None:
    _program_cell(magic_shell, body)

"""Malformed program specs (JSON and YAML) get one ProgramSpecError saying what and where, never a raw error.

Deep nesting (Python's parsers recurse), integers past Python's digit limit, constraint expressions
that fail when evaluated, domain fields of the wrong type, and values too large to print: each used
to escape as a RecursionError, ValueError, TypeError, ZeroDivisionError or AttributeError, or to put
a megabyte into an error message.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import DspexLabError, ProgramSpecError, VariableError, bounded_repr
from dspex_lab.program import check_spec_value, parse_json_spec, parse_yaml_spec
from dspex_lab.program._bounded import MAX_DEPTH

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

BASE = {
    "module": "dspy.Predict",
    "signature": "question -> answer",
    "variables": {
        "temperature": {"type": "float", "value": 0.5, "low": 0.0, "high": 1.0},
        "style": {"type": "text", "value": "terse"},
    },
}


def spec_with(**changes: object) -> dict:
    return {**BASE, **changes}


# -- JSON: nesting and integers -------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 5_000, 200_000])
def test_deeply_nested_json_is_one_spec_error_naming_the_line(depth):
    text = '{"module": "dspy.Predict",\n "init": {"x": ' + "[" * depth + "]" * depth + "}}"
    with pytest.raises(ProgramSpecError, match=rf"program spec(, line 2)?: .*nested more than {MAX_DEPTH} levels"):
        dx.Program.from_json(text)


def test_a_five_thousand_digit_integer_in_json_is_one_spec_error():
    text = '{"module": "dspy.Predict",\n "name": ' + "9" * 5000 + "}"
    with pytest.raises(ProgramSpecError, match=r"program spec, line 2: an integer of 5,000 digits"):
        dx.Program.from_json(text)


def test_an_integer_too_long_to_print_given_from_python_is_one_spec_error():
    with pytest.raises(ProgramSpecError, match=r"variables\.temperature\.value is an integer of more than 100"):
        dx.Program.from_dict(
            spec_with(variables={"temperature": {"type": "int", "value": 10**5000}}),
        )


def test_spec_data_that_contains_itself_is_refused_not_walked_forever():
    init: dict = {"nested": []}
    init["nested"].append(init)
    with pytest.raises(ProgramSpecError, match="nested more than"):
        check_spec_value(init)


def test_a_spec_file_nested_too_deeply_gets_one_line_from_dspex_evaluate(tmp_path: Path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text('{"module": "dspy.Predict", "init": {"x": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    arguments = ["evaluate", str(spec), str(data), "--inputs", "question", "--metric", "exact_match", "--quiet"]
    assert main([*arguments, "--journal", str(tmp_path / "j.duckdb")]) == 2
    error = capsys.readouterr().err
    assert f"spec.json, line 1: nested more than {MAX_DEPTH} levels deep" in error
    assert "Traceback" not in error


def test_a_spec_file_that_is_not_utf8_gets_one_line_from_dspex_evaluate(tmp_path: Path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_bytes(b'{"module": "dspy.Predict", "name": "\xff"}')
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    arguments = ["evaluate", str(spec), str(data), "--inputs", "question", "--metric", "exact_match", "--quiet"]
    assert main(arguments) == 2
    assert "spec.json: not UTF-8 text (byte 36)" in capsys.readouterr().err


# -- YAML: the same bounds, and no aliases ----------------------------------------------------------------


def test_yaml_aliases_and_anchors_are_refused_with_their_line():
    with pytest.raises(ProgramSpecError, match=r"line 2 of the cell: YAML anchors and aliases"):
        parse_yaml_spec("module: dspy.Predict\ninit: &shared {k: 1}\n", source="cell")
    with pytest.raises(ProgramSpecError, match=r"line 3 of the cell: YAML anchors and aliases"):
        parse_yaml_spec("module: dspy.Predict\nname: x\ninit: *missing\n", source="cell")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("module: dspy.Predict\ninit: {x: " + "[" * 3000 + "]" * 3000 + "}\n", "nested more than 64 levels deep"),
        ("module: dspy.Predict\nname: " + "9" * 5000 + "\n", "an integer literal of 5,000 characters"),
        ("module: dspy.Predict\nname: 0x" + "f" * 20_000 + "\n", "an integer literal of 20,002 characters"),
        ("module: dspy.Predict\nname: 0x" + "f" * 90 + "\n", "an integer of more than 100 digits"),
    ],
    ids=["deep", "decimal", "hexadecimal", "hexadecimal-value"],
)
def test_yaml_nesting_and_long_integers_are_one_spec_error_with_the_line(body, problem):
    with pytest.raises(ProgramSpecError, match=rf"line 2 of the cell: {problem}"):
        parse_yaml_spec(body, source="cell")


def test_a_yaml_syntax_error_names_the_line_and_the_expected_shape():
    with pytest.raises(ProgramSpecError) as caught:
        parse_yaml_spec("module: dspy.Predict\nname: q: r\n", source="cell")
    assert "line 2 of the cell" in str(caught.value) and "module: dspy.Predict" in str(caught.value)


def test_json_and_yaml_refuse_text_past_the_size_limit(monkeypatch):
    from dspex_lab.program import _bounded

    monkeypatch.setattr(_bounded, "MAX_SPEC_CHARACTERS", 100)
    with pytest.raises(ProgramSpecError, match="more than a program spec's limit of 100"):
        parse_json_spec(json.dumps(spec_with(name="x" * 200)))
    with pytest.raises(ProgramSpecError, match="more than a program spec's limit of 100"):
        parse_yaml_spec("module: dspy.Predict\nname: " + "x" * 200)


# -- constraints that cannot be evaluated --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        ("max() > 0", "max() takes at least 1 argument, got 0"),
        ("len() == 0", "len() takes 1 argument, got 0"),
        ("abs(temperature, 1) > 0", "abs() takes 1 argument, got 2"),
        ("max(1) > 0", "TypeError: 'int' object is not iterable"),
        ("1/0 > temperature", "ZeroDivisionError: division by zero"),
        ("temperature % 0 == 0", "ZeroDivisionError"),
        ("temperature < style", "TypeError: '<' not supported between instances of 'float' and 'str'"),
        ("len(temperature) > 0", "TypeError: object of type 'float' has no len()"),
        ("abs(style) > 0", "TypeError: bad operand type for abs()"),
        ("min(1, 'a') < 2", "TypeError"),
        ("min([]) == 1", "ValueError: min() arg is an empty sequence"),
        ("-style == 1", "TypeError: bad operand type for unary -"),
        ("style * 1.5 == style", "TypeError: can't multiply sequence"),
        ("(style,) + 1 == 2", "TypeError: can only concatenate tuple"),
    ],
)
def test_a_constraint_that_cannot_be_evaluated_is_one_spec_error(expression, problem):
    with pytest.raises(ProgramSpecError) as caught:
        dx.Program.from_json(json.dumps(spec_with(constraints=[expression])))
    message = str(caught.value)
    assert message.startswith("constraint ") and problem in message


def test_a_constraint_evaluated_on_incompatible_values_later_is_a_spec_error_too():
    program = dx.Program.from_dict(spec_with(constraints=["temperature < 1 or style == 'x'"]))
    rule = program.constraints[0]
    with pytest.raises(ProgramSpecError, match="needs a value for"):
        rule.holds({"temperature": 0.5})
    with pytest.raises(ProgramSpecError, match="cannot be evaluated"):
        dx.Constraint("len(temperature) > 0").holds({"temperature": 0.5})


# -- variable domains of the wrong type ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "problem"),
    [
        ({"type": "float", "value": 0.5, "target": 5}, "target must be a string"),
        ({"type": "float", "value": 0.5, "target": "a." * 200}, "target must be a string of at most 200"),
        ({"type": "float", "value": 0.5, "description": [1]}, "description must be a string"),
        ({"type": "float", "value": 0.5, "low": [1], "high": [2]}, "low must be a number"),
        ({"type": "float", "value": 0.5, "step": "s"}, "step must be a number"),
        ({"type": "float", "value": 0.5, "step": -1.0}, "step must be a positive finite number"),
        ({"type": "float", "value": 0.5, "log": "yes", "low": 0.1}, "log must be true or false"),
        ({"type": "int", "value": 1, "low": 0.5}, "low must be an integer"),
        ({"type": "text", "value": "a", "max_length": "x"}, "max_length must be an integer"),
        ({"type": "demos", "value": [], "max": "y"}, "max must be an integer"),
        ({"type": ["float"], "value": 0.5}, "unknown type"),
    ],
)
def test_a_variable_domain_of_the_wrong_type_is_one_spec_error_naming_the_variable(variable, problem):
    with pytest.raises(ProgramSpecError) as caught:
        dx.Program.from_dict(spec_with(variables={"knob": variable}))
    assert "variable 'knob'" in str(caught.value) and problem in str(caught.value)


# -- error messages show bounded data ------------------------------------------------------------------------


def test_error_messages_never_carry_a_huge_value():
    huge = "x" * 1_000_000
    cases = [
        spec_with(variables={"model": {"type": "choice", "value": huge, "choices": ["a", "b"]}}),
        spec_with(variables={"model": {"type": "choice", "value": "c", "choices": [huge, huge]}}),
        spec_with(variables={huge: {"type": "float", "value": 3.0, "high": 1.0}}),
        spec_with(variables={"t": {"type": huge, "value": 3.0}}),
        spec_with(constraints=[{"expression": "x" * 1_500 + " > 1"}]),
        {**spec_with(), **{f"extra{index}" * 100: 1 for index in range(1000)}},
    ]
    for spec in cases:
        with pytest.raises(DspexLabError) as caught:
            dx.Program.from_dict(spec)
        assert len(str(caught.value)) < 1_500, str(caught.value)[:200]


def test_bounded_repr_elides_nesting_long_strings_and_huge_integers():
    shared = ["lol"] * 9
    for _ in range(9):
        shared = [shared] * 9  # 9**10 items if expanded
    assert len(bounded_repr(shared)) <= 80
    assert bounded_repr(10**5000) == "<an integer of 16,610 bits>"
    assert len(str(VariableError("x", shared, "anything"))) < 200


# -- fuzzing: whatever the text, only ProgramSpecError escapes -----------------------------------------------

_SPEC_PIECES = st.sampled_from(
    [
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        '"module"',
        '"dspy.Predict"',
        '"init"',
        '"variables"',
        '"constraints"',
        '"x"',
        '"type"',
        '"value"',
        '"float"',
        '"max() > 0"',
        '"1/0 > 1"',
        "9" * 5000,
        "0",
        "-1",
        "1e999",
        "null",
        "true",
        "[" * 3000,
        "]" * 3000,
        "&a",
        "*a",
        "- ",
        "\n",
        "  ",
        "!!python/object:os.system",
    ]
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(pieces=st.lists(_SPEC_PIECES, max_size=40))
def test_only_program_spec_errors_escape_from_any_spec_text(pieces):
    text = "".join(pieces)
    for parse in (parse_json_spec, parse_yaml_spec):
        try:
            data = parse(text)
            dx.Program.from_dict(data)
        except ProgramSpecError as error:
            assert str(error) and len(str(error)) < 2_000
        except VariableError:
            pass  # a well-formed spec with a value out of its range: the variable's own clear error


def test_the_fuzz_pieces_compose_a_valid_spec_too():
    text = '{"module": "dspy.Predict", "init": {"x": [0, -1, null, true]}}'
    assert dx.Program.from_dict(parse_json_spec(text)).init == {"x": [0, -1, None, True]}
    assert dx.Program.from_dict(parse_yaml_spec(text)).init == {"x": [0, -1, None, True]}

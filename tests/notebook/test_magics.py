"""The %dspex magics, driven through an in-process IPython shell on the lab LM."""

import subprocess
import sys

import dspy
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import dspex_lab as dx

PROGRAM = """\
module: dspy.Predict
signature: "question -> answer"
variables:
  temperature:
    type: float
    value: 0.5
    low: 0.0
    high: 1.0
"""


@pytest.fixture
def shell(tmp_path):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "dspex_lab")
    with dx.Context(lm=dx.lab_lm(), journal=tmp_path / "j.duckdb"):
        yield ip
    ip.user_ns.clear()


def test_import_does_not_load_ipython():
    code = "import sys, dspex_lab; print('IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_program_cell_binds_a_program(shell):
    result = shell.run_cell_magic("dspex", "program qa", PROGRAM)
    assert isinstance(shell.user_ns["qa"], dx.Program)
    assert result is shell.user_ns["qa"]


def test_yaml_error_names_the_line(shell):
    with pytest.raises(UsageError, match="line 3"):
        shell.run_cell_magic("dspex", "program qa", 'module: dspy.Predict\nsignature: "q -> a"\nname: q: r\n')


def test_bad_variable_value_names_line_and_range(shell):
    body = PROGRAM.replace("value: 0.5", "value: 3.0")
    with pytest.raises(UsageError) as info:
        shell.run_cell_magic("dspex", "program qa", body)
    message = str(info.value)
    assert "line 4" in message
    assert "1.0" in message


def test_evaluate_then_compare(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = [dspy.Example(question="What is 2+3?", answer="5").with_inputs("question")] * 3
    a = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name a")
    assert isinstance(a, dx.EvaluationResult)
    assert shell.user_ns["_dspex_last"] is a
    shell.user_ns["a"] = a
    shell.user_ns["b"] = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name b")
    assert isinstance(shell.run_line_magic("dspex", "compare a b"), dx.Comparison)


def test_config_shows_settings(shell, tmp_path):
    config = shell.run_line_magic("dspex", "config")
    assert config["journal"].endswith("j.duckdb")
    assert set(config) == {"lm", "journal", "threads"}


def test_dashboard_is_the_documented_gap(shell):
    with pytest.raises(UsageError, match="does not exist yet"):
        shell.run_line_magic("dspex", "dashboard --port 8000")


def test_unknown_subcommand_lists_the_subcommands(shell):
    with pytest.raises(UsageError, match="expected one of program, evaluate, compare"):
        shell.run_line_magic("dspex", "frobnicate")


def test_missing_argument_shows_usage(shell):
    with pytest.raises(
        UsageError, match=r"required: --data, --metric\nusage: %dspex evaluate --data DATA --metric METRIC"
    ):
        shell.run_line_magic("dspex", "evaluate qa")


def test_sql_cell_queries_the_journal(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = [dspy.Example(question="What is 2+3?", answer="5").with_inputs("question")] * 2
    result = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name s")
    frame = shell.run_cell_magic("dspex", "sql", "SELECT count(*) AS n FROM trials")
    assert int(frame["n"].iloc[0]) == len(result.trials)

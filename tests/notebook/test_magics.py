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
    assert "line 6" in message
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
    assert set(config) == {"lm", "journal", "threads", "executor"}


def test_dashboard_starts_on_loopback_answers_and_stops(shell):
    import urllib.request

    pytest.importorskip("panel")
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = list(dx.datasets.arithmetic(2, seed=0))
    shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name shown")
    server = shell.run_line_magic("dspex", "dashboard")
    try:
        assert server.host == "127.0.0.1" and server.running
        assert shell.run_line_magic("dspex", "dashboard") is server  # a second start shows the running one
        with pytest.raises(UsageError, match="already running"):
            shell.run_line_magic("dspex", f"dashboard --port {server.port + 1}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(server.url, timeout=60) as response:
            assert response.status == 200
    finally:
        shell.run_line_magic("dspex", "dashboard --stop")
    assert not server.running
    with pytest.raises(UsageError, match="no dashboard started by this kernel is running"):
        shell.run_line_magic("dspex", "dashboard --stop")


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


def test_without_a_journal_file_the_magics_read_the_in_memory_journal(shell, tmp_path, capsys):
    from dspex_lab.notebook._magics import _dashboard_link

    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = list(dx.datasets.arithmetic(2, seed=0))
    with dx.Context(lm=dx.lab_lm(), journal=False) as context:
        result = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --trace --name m")
        frame = shell.run_cell_magic("dspex", "sql", "SELECT count(*) AS n FROM trials")
        trial = result.trials["trial_id"].iloc[0]
        shell.run_line_magic("dspex", f"trace {result.experiment_id} {trial} --text")
        config = shell.run_line_magic("dspex", "config")
    assert int(frame["n"].iloc[0]) == 2
    assert "lm" in capsys.readouterr().out
    assert config["journal"] == context.journal.location == "an in-memory journal (kept for this process only)"
    assert not (tmp_path / "j.duckdb").exists()  # nothing reached the outer context's file
    server = type("Server", (), {"url": "http://127.0.0.1:1/", "journal": context.journal})()
    assert "(an in-memory journal (kept for this process only))" in _dashboard_link(server, "started")


def test_the_dashboard_link_names_a_journal_file_by_its_name_only(shell, tmp_path):
    from dspex_lab.notebook._magics import _dashboard_link

    server = type("Server", (), {"url": "http://127.0.0.1:1/", "journal": dx.open_journal(tmp_path / "j.duckdb")})()
    link = _dashboard_link(server, "started")
    assert "(journal j.duckdb)" in link and str(tmp_path) not in link


def test_optimize_runs_simba_c_and_binds_the_result(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    problems = list(dx.datasets.arithmetic(40, seed=3))
    shell.user_ns.update(train=problems[:16], val=problems[16:])
    result = shell.run_line_magic(
        "dspex", "optimize qa --train train --val val --metric exact_match --max-steps 1 --bsize 8 --name magic"
    )
    assert isinstance(result, dx.OptimizationResult)
    assert shell.user_ns["_dspex_last"] is result
    assert list(result.steps["step"]) == [0, 1]  # the baseline, then one step
    assert isinstance(result.best, dx.Program)


def test_optimize_rejects_simba_c_options_for_another_optimizer(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns.update(train=[], val=[])
    with pytest.raises(UsageError, match="--max-steps and --bsize set SIMBA-C, not --optimizer bootstrap"):
        shell.run_line_magic(
            "dspex", "optimize qa --train train --val val --metric exact_match --optimizer bootstrap --max-steps 2"
        )
    with pytest.raises(UsageError, match="invalid choice: 'copro'"):
        shell.run_line_magic("dspex", "optimize qa --train train --val val --metric exact_match --optimizer copro")


MODELS = """\
module: dspy.Predict
signature: "question -> answer"
variables:
  model:
    type: choice
    value: lab/small
    choices: [lab/small, lab/large]
"""


def test_optimize_guardrails_are_the_objective_a_namespace_metric_included(shell):
    shell.run_cell_magic("dspex", "program qa", MODELS)
    problems = list(dx.datasets.arithmetic(120, seed=3))
    shell.user_ns.update(train=problems[:30], val=problems[30:], short=lambda example, prediction: 1.0)
    result = shell.run_line_magic(
        "dspex",
        "optimize qa --train train --val val --metric exact_match --max-steps 1 --bsize 16 "
        "--guardrail 'cost <= 0.0002' --guardrail metric:short>=0.5 --guardrail error_rate<=0.2",
    )
    cost, short = (
        dx.Guardrail("cost", at_most=0.0002),
        dx.Guardrail("metric", at_least=0.5, metric=shell.user_ns["short"]),
    )
    expected = dx.Objective(guardrails=[cost, short, dx.Guardrail("error_rate", at_most=0.2)])
    assert result.config["objective"] == expected.config()
    baseline = result.steps.iloc[0]["detail"]
    assert baseline.startswith("baseline; it meets every guardrail (") and "<lambda> 1 (" in baseline


def test_a_bad_guardrail_is_one_usage_error_naming_the_magic(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns.update(train=[], val=[])
    line = "optimize qa --train train --val val --metric exact_match --guardrail "
    with pytest.raises(UsageError) as raised:
        shell.run_line_magic("dspex", line + "cost<0.1")
    assert str(raised.value).startswith("%dspex optimize: --guardrail 'cost<0.1': '<' is not a bound's comparison")
    assert str(raised.value).endswith("e.g. cost<=0.0005 or metric:f1>=0.6")
    with pytest.raises(UsageError, match=r"^%dspex optimize: --guardrail's metric 'nope' is neither a callable"):
        shell.run_line_magic("dspex", line + "metric:nope>=0.5")
    with pytest.raises(UsageError, match=r"^%dspex optimize: --guardrail: error_rate is bounded twice"):
        shell.run_line_magic("dspex", line + "error_rate<=0.1 --guardrail error_rate<=0.2")


def test_unknown_metric_names_the_known_ones(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = []
    with pytest.raises(UsageError, match=r"--metric 'exact' is neither .* \(exact_match, numeric_match, contains, f1,"):
        shell.run_line_magic("dspex", "evaluate qa --data data --metric exact")


def test_trace_shows_the_viewer_text_and_optimization_steps(shell, capsys):
    from dspex_lab.notebook._trace_viewer import TraceViewer

    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = list(dx.datasets.arithmetic(3, seed=0))
    result = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --trace --name traced")
    viewer = shell.run_line_magic("dspex", f"trace {result.experiment_id}")
    assert isinstance(viewer, TraceViewer)
    trial = result.trials["trial_id"].iloc[0]
    assert shell.run_line_magic("dspex", f"trace {result.experiment_id} {trial} --text") is None
    assert "lm" in capsys.readouterr().out
    with pytest.raises(UsageError, match="needs a TRIAL"):
        shell.run_line_magic("dspex", f"trace {result.experiment_id} --text")

    problems = list(dx.datasets.arithmetic(40, seed=3))
    shell.user_ns.update(train=problems[:16], val=problems[16:])
    run = shell.run_line_magic(
        "dspex", "optimize qa --train train --val val --metric exact_match --max-steps 1 --bsize 8"
    )
    steps = shell.run_line_magic("dspex", f"trace {run.run_id}")
    assert list(steps["trace"]) == ["step-0", "step-1"]
    shell.run_line_magic("dspex", f"trace {run.run_id} step-1")
    assert "step" in capsys.readouterr().out


def test_trace_of_an_unknown_experiment_is_one_line(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = list(dx.datasets.arithmetic(2, seed=0))
    shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match")
    with pytest.raises(UsageError, match=r"JournalError: .*nope"):
        shell.run_line_magic("dspex", "trace nope")


def test_config_masks_secrets(tmp_path):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "dspex_lab")
    key = "sk-" + "q" * 40
    lm = dspy.LM(
        "openai/some-model",
        api_base="http://127.0.0.1:9/v1",
        api_key=key,
        extra_headers={"Authorization": "Basic hunter2pass"},
    )
    with dx.Context(lm=lm, journal=tmp_path / "j.duckdb"):
        config = ip.run_line_magic("dspex", "config")
    shown = repr(config)
    assert "hunter2pass" not in shown and key not in shown
    assert config["api_base"] == "http://127.0.0.1:9/v1"
    # Credentials in the URL itself are refused up front (DSPy's client cannot use them), without quoting them.
    in_url = dspy.LM("openai/some-model", api_base="http://user:hunter2pass@127.0.0.1:9/v1", api_key=key)
    with pytest.raises(dx.errors.ProgramSpecError, match="credentials in its URL") as refused:
        dx.Context(lm=in_url).__enter__()
    assert "hunter2pass" not in str(refused.value)

import json
import subprocess
import sys
from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.cli import main
from dspex_lab.errors import DspexLabWarning


def test_demo_runs_end_to_end_and_prints_the_table(tmp_path, capsys):
    journal = tmp_path / "demo.duckdb"
    assert main(["demo", "--journal", str(journal), "-n", "60", "--quiet"]) == 0
    output = capsys.readouterr().out
    assert "predict" in output and "chain-of-thought" in output
    assert "95% CI" in output and "errors" in output and "tokens in/out" in output
    assert "Paired comparison" in output
    assert str(journal.resolve()) in output.replace("\n", "")
    experiments = dx.open_journal(journal).experiments()
    assert sorted(experiments["kind"]) == ["comparison", "evaluation", "evaluation"]
    evaluations = experiments[experiments["kind"] == "evaluation"]
    assert list(evaluations["n_trials"]) == [60, 60]


def test_the_journal_is_named_with_how_to_browse_it_only_when_it_is_a_file(tmp_path, capsys):
    from rich.console import Console

    from dspex_lab.cli import _print_where

    console = Console(width=300)
    _print_where(console, dx.open_journal(tmp_path / "kept.duckdb"))
    _print_where(console, dx.journal.memory_journal())
    kept, in_memory = capsys.readouterr().out.splitlines()
    path = (tmp_path / "kept.duckdb").resolve()
    assert kept == f"Journal: {path}  (browse with: dspex journal list --journal {path})"
    assert in_memory == "Journal: an in-memory journal (kept for this process only); nothing was written to disk"


def test_demo_console_script_is_installed(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "dspex_lab.cli", "demo", "--journal", str(tmp_path / "d.duckdb"), "-n", "20", "--quiet"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    assert "Journal:" in completed.stdout


def test_journal_list_trials_and_sql(tmp_path, capsys):
    journal = tmp_path / "j.duckdb"
    main(["demo", "--journal", str(journal), "-n", "10", "--quiet"])
    capsys.readouterr()
    assert main(["journal", "--journal", str(journal), "list"]) == 0
    listing = capsys.readouterr().out
    assert "predict" in listing and "finished" in listing
    assert main(["journal", "list", "--journal", str(journal)]) == 0  # the form the demo prints
    assert capsys.readouterr().out == listing
    experiment = dx.open_journal(journal).experiments().query("name == 'predict'")["id"].iloc[0]
    assert main(["journal", "--journal", str(journal), "trials", experiment]) == 0
    assert "/r0" in capsys.readouterr().out
    assert main(["journal", "--journal", str(journal), "sql", "select count(*) as n from trials"]) == 0
    assert "20" in capsys.readouterr().out


def test_evaluate_command_with_spec_and_jsonl(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.ChainOfThought", signature="question -> answer", name="qa").to_json())
    data = tmp_path / "problems.jsonl"
    data.write_text("\n".join(json.dumps(example.toDict()) for example in dx.datasets.arithmetic(15, seed=2)))
    code = main(
        [
            "evaluate",
            str(spec),
            str(data),
            "--metric",
            "exact_match",
            "--inputs",
            "question",
            "--journal",
            str(tmp_path / "e.duckdb"),
            "--quiet",
            "--json",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 15 and summary["n_errors"] == 0


def test_evaluate_command_reports_bad_data_with_file_and_line(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.Predict", signature="question -> answer").to_json())
    data = tmp_path / "broken.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2"}\n{"question": oops}\n')
    code = main(
        [
            "evaluate",
            str(spec),
            str(data),
            "--metric",
            "exact_match",
            "--inputs",
            "question",
            "--journal",
            str(tmp_path / "e.duckdb"),
            "--quiet",
        ]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "broken.jsonl:2" in error


def test_evaluate_command_refuses_unsafe_spec(tmp_path, capsys):
    spec = tmp_path / "evil.json"
    spec.write_text(json.dumps({"module": "os.system", "signature": "question -> answer"}))
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    assert main(["evaluate", str(spec), str(data), "--metric", "exact_match", "--inputs", "question"]) == 2
    assert "'os.system' is not allowed" in capsys.readouterr().err


def test_journal_trials_limit_and_unknown_experiment(tmp_path, capsys):
    journal = tmp_path / "j.duckdb"
    main(["demo", "--journal", str(journal), "-n", "6", "--quiet"])
    capsys.readouterr()
    experiment = dx.open_journal(journal).experiments().query("name == 'predict'")["id"].iloc[0]
    assert main(["journal", "trials", experiment, "--journal", str(journal), "--limit", "4"]) == 0
    output = capsys.readouterr().out
    lines = output.splitlines()
    assert lines[0] == f"Trials of {experiment}" and lines[1].split()[:3] == ["trial_id", "status", "score"]
    assert sum("/r0" in line for line in lines) == 4
    assert "2 more trials (show more with --limit 6)" in output
    assert main(["journal", "trials", "no-such-experiment", "--journal", str(journal)]) == 2
    assert "no experiment 'no-such-experiment'" in capsys.readouterr().err


def test_journal_list_reads_through_the_store_without_pandas(tmp_path):
    journal = tmp_path / "j.duckdb"
    main(["demo", "--journal", str(journal), "-n", "4", "--quiet"])
    code = (
        "import sys\n"
        "from dspex_lab.cli import main\n"
        f"assert main(['journal', 'list', '--journal', {str(journal)!r}]) == 0\n"
        "print('LOADED:' + ','.join(m for m in ('pandas', 'pyarrow', 'rich', 'dspy') if m in sys.modules))\n"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert "chain-of-thought" in completed.stdout and "comparison" in completed.stdout
    assert completed.stdout.strip().splitlines()[-1] == "LOADED:"


def test_optimize_command_runs_simba_c_writes_the_winner_and_lists_its_steps(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.ChainOfThought", signature="question -> answer", name="qa").to_json())
    problems = [json.dumps(example.toDict()) for example in dx.datasets.arithmetic(60, seed=4)]
    (tmp_path / "train.jsonl").write_text("\n".join(problems[:30]))
    (tmp_path / "val.jsonl").write_text("\n".join(problems[30:]))
    journal = str(tmp_path / "o.duckdb")
    arguments = ["optimize", str(spec), str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl")]
    arguments += ["--metric", "exact_match", "--inputs", "question", "--journal", journal, "--quiet"]
    code = main([*arguments, "--max-steps", "1", "--bsize", "8", "--output", str(tmp_path / "best.json"), "--json"])

    assert code == 0
    output = capsys.readouterr().out
    summary = json.loads(output.strip().splitlines()[-1])
    assert summary["optimizer"] == "simba-c" and summary["steps"] == 1 and summary["lm_calls"] > 0
    assert dx.Program.from_json((tmp_path / "best.json").read_text()).module == "dspy.ChainOfThought"
    assert main(["trace", summary["run_id"], "--journal", journal]) == 0
    listing = capsys.readouterr().out
    assert "step-0" in listing and "step-1" in listing
    assert main(["trace", summary["run_id"], "step-1", "--journal", journal]) == 0
    assert "propose c1" in capsys.readouterr().out


def test_optimize_command_explains_an_overlapping_valset(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.Predict", signature="question -> answer").to_json())
    data = tmp_path / "all.jsonl"
    data.write_text("\n".join(json.dumps(example.toDict()) for example in dx.datasets.arithmetic(40, seed=4)))
    code = main(
        [
            *("optimize", str(spec), str(data), "--val", str(data), "--metric", "exact_match", "--inputs", "question"),
            *("--journal", str(tmp_path / "o.duckdb"), "--quiet"),
        ]
    )
    assert code == 2
    assert "shares 40 examples with the trainset" in capsys.readouterr().err


def test_every_journal_default_comes_from_the_settings(tmp_path, capsys, monkeypatch):
    journal = tmp_path / "from-env.duckdb"
    monkeypatch.setenv("DSPEX_JOURNAL", str(journal))
    assert main(["demo", "-n", "4", "--quiet"]) == 0
    assert str(journal.resolve()) in capsys.readouterr().out.replace("\n", "")
    assert not (tmp_path / "dspex.duckdb").exists()
    assert main(["journal", "list"]) == 0
    assert f"Experiments in {journal}" in capsys.readouterr().out
    experiment = dx.open_journal(journal).experiments().query("name == 'predict'")["id"].iloc[0]
    assert main(["trace", experiment]) == 0
    assert f"show one: dspex trace {experiment} TRIAL_ID --journal {journal}" in capsys.readouterr().out
    monkeypatch.delenv("DSPEX_JOURNAL")
    (tmp_path / "dspex.toml").write_text(f"journal = {str(journal)!r}\n")
    assert main(["journal", "trials", experiment]) == 0
    assert f"Trials of {experiment}" in capsys.readouterr().out


FLAKY_METRICS = """
def flaky(example, prediction):
    if int(example.id.rsplit("-", 1)[1]) % 3 == 0:
        raise RuntimeError("upstream refused api_key=sk-abcdef1234567890abcdef " + "padding " * 40)
    return float(example.answer == prediction.answer)
"""


def _flaky_experiment(tmp_path, capsys):
    (tmp_path / "labmetrics_flaky.py").write_text(FLAKY_METRICS)
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.Predict", signature="question -> answer", name="qa").to_json())
    data = tmp_path / "problems.jsonl"
    data.write_text("\n".join(json.dumps(example.toDict()) for example in dx.datasets.arithmetic(12, seed=2)))
    arguments = ["evaluate", str(spec), str(data), "--inputs", "question", "--quiet", "--json"]
    journal = tmp_path / "flaky.duckdb"
    # The metric raises on 4 of the 12 examples: metric errors, warned about apart from program errors.
    with pytest.warns(DspexLabWarning, match="the metric raised on 4 of 12 trials"):
        code = main(
            [
                *arguments,
                "--import",
                "labmetrics_flaky",
                "--metric",
                "labmetrics_flaky:flaky",
                "--journal",
                str(journal),
            ]
        )
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n_errors"] == 4 and summary["n"] == 8
    return journal, summary["experiment_id"]


def test_journal_trials_shows_masked_errors_filters_sorts_and_counts_the_rest(tmp_path, capsys):
    journal, experiment = _flaky_experiment(tmp_path, capsys)
    where = ["--journal", str(journal)]
    assert main(["journal", "trials", experiment, *where, "--status", "error", "--limit", "3"]) == 0
    output = capsys.readouterr().out
    assert output.splitlines()[0] == f"Trials of {experiment} (status=error)"
    assert "error" in output.splitlines()[1].split()
    failed = [line for line in output.splitlines() if "/r0" in line]
    assert len(failed) == 3 and all("RuntimeError: upstream refused" in line for line in failed)
    assert "sk-abcdef" not in output and "[REDACTED]" in output
    assert all(line.endswith("…") for line in failed)  # the long message is cut short
    assert "1 more trials (show more with --limit 4)" in output

    assert main(["journal", "trials", experiment, *where, "--min-score", "0.5", "--sort", "latency"]) == 0
    output = capsys.readouterr().out
    rows = [line.split() for line in output.splitlines() if "/r0" in line]
    scored_well = dx.open_journal(journal).trials(experiment).query("score >= 0.5")
    assert len(rows) == len(scored_well) and all(row[1] == "ok" and float(row[2]) >= 0.5 for row in rows)
    latencies = [float(row[3]) for row in rows]
    assert latencies == sorted(latencies, reverse=True)
    assert "more trials" not in output

    assert main(["journal", "trials", experiment, *where, "--max-score", "0.5", "--sort", "score"]) == 0
    scores = [float(line.split()[2]) for line in capsys.readouterr().out.splitlines() if "/r0" in line]
    assert scores and all(score <= 0.5 for score in scores)
    assert main(["journal", "trials", experiment, *where, "--limit", "-1"]) == 2
    assert "--limit must be zero or more" in capsys.readouterr().err


def test_import_option_refuses_what_is_not_a_module_path(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.Predict", signature="question -> answer").to_json())
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "q", "answer": "a"}\n')
    base = ["evaluate", str(spec), str(data), "--inputs", "question", "--quiet"]
    assert main([*base, "--metric", "exact_match", "--import", "../evil.py"]) == 2
    assert "--import '../evil.py': give a Python import path" in capsys.readouterr().err
    assert main([*base, "--metric", "exact_match", "--import", "no_such_module_here"]) == 2
    assert "--import no_such_module_here: cannot import it" in capsys.readouterr().err
    assert main([*base, "--metric", "os.system"]) == 2
    assert "module:qualname" in capsys.readouterr().err
    assert main([*base, "--metric", "json:_default_encoder"]) == 2
    assert "'_default_encoder' is private; name a public function" in capsys.readouterr().err
    assert main([*base, "--metric", "json:no_such_function"]) == 2
    assert "module json has no function 'no_such_function'" in capsys.readouterr().err


def test_numbers_never_print_as_negative_zero():
    from dspex_lab.cli import _cell, _format_ci, _number

    assert _number(-0.0) == "0.000" and _number(-0.0001) == "0.000" and _number(-0.0004, "+.3f") == "+0.000"
    assert _number(-0.25) == "-0.250" and _number(0.25, "+.3f") == "+0.250"
    assert _format_ci({"ci": [-0.0002, 0.5]}) == "[0.000, 0.500]" and _cell(-0.0) == "0.000"


CUSTOM_LAB = """
import dspy
import dspex_lab as dx


@dx.register("CliSolver")
class CliSolver(dspy.Module):
    def __init__(self):
        super().__init__()
        self.solve = dspy.ChainOfThought("question -> answer")

    def forward(self, question):
        return self.solve(question=question)


def same_answer(example, prediction):
    return float(str(example.answer).strip() == str(prediction.answer).strip())
"""


def test_custom_modules_and_metrics_work_from_the_command_line_and_packages_say_what_to_import(tmp_path, capsys):
    (tmp_path / "clilab_custom.py").write_text(CUSTOM_LAB)
    spec = tmp_path / "solver.json"
    spec.write_text(json.dumps({"dspex_program": 1, "module": "CliSolver", "name": "solver"}))
    data = tmp_path / "problems.jsonl"
    data.write_text("\n".join(json.dumps(example.toDict()) for example in dx.datasets.arithmetic(8, seed=3)))
    journal = tmp_path / "custom.duckdb"
    arguments = ["evaluate", str(spec), str(data), "--inputs", "question", "--journal", str(journal), "--quiet"]
    assert main([*arguments, "--metric", "exact_match"]) == 2  # the module is unknown until imported
    capsys.readouterr()
    imports = ["--import", "clilab_custom", "--metric", "clilab_custom:same_answer"]
    assert main([*arguments, *imports, "--json"]) == 0
    experiment = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["experiment_id"]
    package = tmp_path / "custom.zip"
    assert main(["export", experiment, str(package), "--journal", str(journal)]) == 0
    capsys.readouterr()
    import zipfile

    with zipfile.ZipFile(package) as archive:
        run = json.loads(archive.read("run.json"))
    assert run["imports"] == {"program": ["clilab_custom"], "metric": ["clilab_custom"]}
    assert run["metric"] == "clilab_custom.same_answer"

    # A fresh process: nothing the package names is imported for it; the errors say which --import it needs.
    fresh = [sys.executable, "-m", "dspex_lab.cli"]
    completed = subprocess.run(
        [*fresh, "verify", str(package)], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert completed.returncode == 1
    assert "custom modules from clilab_custom: add --import" in completed.stdout
    completed = subprocess.run(
        [*fresh, "verify", str(package), "--import", "clilab_custom"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr

    assert main(["rerun", str(package), "--import", "clilab_custom"]) == 2
    error = capsys.readouterr().err
    assert f"dspex rerun {package} --import clilab_custom --metric clilab_custom:same_answer" in error
    assert main(["rerun", str(package), *imports]) == 0
    assert "identical" in capsys.readouterr().out.lower()


# -- the terminal, as polished as the notebook (issue 22 item 6) ------------------------------------------


def _write_arithmetic(path, n, *, seed):
    path.write_text("\n".join(json.dumps(example.toDict()) for example in dx.datasets.arithmetic(n, seed=seed)))
    return path


def _dspex(*arguments, cwd, **options):
    """Run ``dspex`` as a user does: the console script next to this interpreter, in a fresh process."""
    script = [str(Path(sys.executable).with_name("dspex"))]
    return subprocess.run([*script, *arguments], capture_output=True, text=True, cwd=cwd, timeout=300, **options)


def test_evaluate_trace_records_each_trials_spans_and_inputs_come_from_the_signature(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.ChainOfThought", signature="question -> answer", name="qa").to_json())
    data = _write_arithmetic(tmp_path / "problems.jsonl", 6, seed=5)
    journal = tmp_path / "t.duckdb"
    # No --inputs: the signature says the input is `question` (the data also has id, topic, difficulty).
    arguments = ["evaluate", str(spec), str(data), "--metric", "exact_match", "--journal", str(journal)]
    assert main([*arguments, "--quiet", "--trace", "--json"]) == 0
    output = capsys.readouterr().out
    experiment = json.loads(output.strip().splitlines()[-2])["experiment_id"]
    assert output.strip().splitlines()[-1] == f"its traces: dspex trace {experiment} --journal {journal}"
    store = dx.open_journal(journal)
    assert store.experiment(experiment)["config"]["trace"] is True
    assert store.experiment(experiment)["dataset_manifest"]["inputs"] == ["question"]
    rows = store.trial_rows(experiment, columns=["trial_id"], with_span_counts=True)
    assert len(rows) == 6 and all(row["spans"] > 0 for row in rows)
    tree = store.trace(experiment, rows[0]["trial_id"])
    assert {node.span.kind for node in tree.walk()} >= {"module", "lm", "metric"}


def test_inputs_come_from_a_custom_modules_forward_and_a_wrong_guess_says_where_it_came_from(tmp_path, capsys):
    (tmp_path / "clilab_forward.py").write_text(CUSTOM_LAB.replace("CliSolver", "ForwardSolver"))
    spec = tmp_path / "solver.json"
    spec.write_text(json.dumps({"dspex_program": 1, "module": "ForwardSolver", "name": "solver"}))
    data = _write_arithmetic(tmp_path / "problems.jsonl", 4, seed=1)
    base = ["evaluate", str(spec), str(data), "--journal", str(tmp_path / "f.duckdb"), "--quiet", "--json"]
    assert main([*base, "--import", "clilab_forward", "--metric", "clilab_forward:same_answer"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == 4 and summary["n_errors"] == 0

    renamed = tmp_path / "renamed.jsonl"
    renamed.write_text(data.read_text().replace('"question"', '"prompt"'))
    qa = tmp_path / "qa.json"
    qa.write_text(dx.Program("dspy.Predict", signature="question -> answer").to_json())
    assert main(["evaluate", str(qa), str(renamed), "--metric", "exact_match", "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and f"{renamed}:1: record is missing field(s) ['question']" in error
    assert "(input fields question from the signature 'question -> answer'; choose them with --inputs)" in error


GRADERS = """
class Graders:
    @staticmethod
    def strict(example, prediction, trace=None):
        return float(str(example.answer).strip() == str(prediction.answer).strip())
"""


def test_optimize_imports_the_users_module_metric_by_qualname_and_trace_step_says_why(tmp_path, capsys):
    (tmp_path / "clilab_optimize.py").write_text(CUSTOM_LAB.replace("CliSolver", "OptimizeSolver") + GRADERS)
    spec = tmp_path / "solver.json"
    spec.write_text(json.dumps({"dspex_program": 1, "module": "OptimizeSolver", "name": "solver"}))
    problems = dx.datasets.arithmetic(60, seed=4)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(example.toDict()) for example in problems[:30]))
    (tmp_path / "val.jsonl").write_text("\n".join(json.dumps(example.toDict()) for example in problems[30:]))
    journal = str(tmp_path / "o.duckdb")
    arguments = ["optimize", str(spec), str(tmp_path / "train.jsonl"), "--val", str(tmp_path / "val.jsonl")]
    arguments += ["--journal", journal, "--quiet", "--max-steps", "1", "--bsize", "8", "--name", "solver-run"]
    # Without --import the spec's module is unknown: a spec (data) never chooses what is imported.
    assert main([*arguments, "--metric", "exact_match"]) == 2
    assert "module 'OptimizeSolver' is not allowed" in capsys.readouterr().err
    imports = ["--import", "clilab_optimize", "--metric", "clilab_optimize:Graders.strict"]
    assert main([*arguments, *imports, "--json"]) == 0
    output = capsys.readouterr().out
    assert output.splitlines()[0].startswith("solver-run (simba-c): finished")
    run_id = json.loads(output.strip().splitlines()[-1])["run_id"]

    assert main(["trace", "solver-run", "step-1", "--journal", journal, "--import", "clilab_optimize"]) == 0
    why = capsys.readouterr().out
    result = dx.OptimizationResult.from_journal(dx.open_journal(journal), run_id)
    step = result.steps.set_index("step").loc[1]
    assert f"\nWhy, step 1: {step['detail']}\n" in why
    candidates = result.candidates.query("step == 1")
    assert len(candidates) > 1
    for candidate in candidates.itertuples():
        assert f"- {result.why(candidate.candidate_id)}\n" in why  # the rationale, what run.why() says
        screen = candidate.screen_mean - candidate.incumbent_screen_mean
        assert f"screen {screen:+.3f} (n=8)" in why
    validated = candidates.dropna(subset=["p_value"])
    assert len(validated) >= 1 and why.count("validation ") >= 2 * len(validated)
    for candidate in validated.itertuples():
        assert f"p={candidate.p_value:.3g} (Holm {candidate.p_adjusted:.3g})" in why
    evaluations = next(row for row in dx.open_journal(journal).step_rows(run_id) if row["step"] == 1)["evaluations"]
    for item in evaluations:
        assert f"validation {item['difference']:+.3f} (95% CI {item['diff_ci_low']:+.3f} to " in why
    # The run's program is the user's module: in a fresh process without its import, the tree prints, then
    # one line says what to add.
    completed = _dspex("trace", run_id, "step-1", "--journal", journal, cwd=tmp_path)
    assert completed.returncode == 2 and "propose c1" in completed.stdout
    assert completed.stderr.count("\n") == 1
    assert "give the module that registers it with --import MODULE" in completed.stderr


def _guarded_run(tmp_path, *guardrails, extra=()):
    """``dspex optimize`` of a program whose model is a variable (lab/large: better and ~16x the price)."""
    program = dx.Program(
        "dspy.Predict",
        signature="question -> answer",
        name="qa",
        variables={"model": dx.Choice("lab/small", choices=["lab/small", "lab/large"])},
    )
    (tmp_path / "qa.json").write_text(program.to_json())
    problems = [json.dumps(example.toDict()) for example in dx.datasets.arithmetic(160, seed=3)]
    (tmp_path / "train.jsonl").write_text("\n".join(problems[:40]))
    (tmp_path / "val.jsonl").write_text("\n".join(problems[40:]))
    arguments = ["optimize", "qa.json", "train.jsonl", "--val", "val.jsonl", "--metric", "exact_match"]
    arguments += ["--journal", str(tmp_path / "g.duckdb"), "--quiet", "--max-steps", "2", "--bsize", "16", "--json"]
    return main([*arguments, *extra, *(word for guardrail in guardrails for word in ("--guardrail", guardrail))])


def test_optimize_with_guardrails_records_the_objective_and_prints_the_front_as_trace_does(tmp_path, capsys):
    from dspex_lab.optimization import pareto_text

    (tmp_path / "clilab_guard.py").write_text(GRADERS)
    strict = "metric:clilab_guard:Graders.strict>=0.1"
    assert _guarded_run(tmp_path, "cost<=0.0002", strict, extra=("--import", "clilab_guard")) == 0
    output = capsys.readouterr().out
    run_id = json.loads(output.strip().splitlines()[-1])["run_id"]
    journal = dx.open_journal(tmp_path / "g.duckdb")
    result = dx.OptimizationResult.from_journal(journal, run_id)
    assert result.config["objective"]["guardrails"] == [
        {"quantity": "cost", "name": "cost", "at_most": 0.0002},
        {"quantity": "metric", "name": "metric:clilab_guard.Graders.strict", "at_least": 0.1},
    ]
    assert result.steps.iloc[0]["detail"].startswith("baseline; it meets every guardrail (cost per example $")
    # The large model's gain is significant, but its cost breaks the guardrail: rejected, and on the front.
    assert "'s gain was significant but cost per example $" in " ".join(result.steps["detail"])
    points = result.pareto()
    assert points["on_front"].sum() >= 2 and points["cost"].max() > 0.0002
    front = pareto_text(points)
    assert f"\n\n{front}\n" in output  # after the verdict, before where to read why
    assert output.index(result.headline) < output.index(front) < output.index("why each candidate exists")
    assert main(["trace", run_id, "--journal", str(tmp_path / "g.duckdb")]) == 0
    trace = capsys.readouterr().out
    assert trace.index("Which variables mattered") < trace.index(f"\n{front}\n")


def test_a_bad_guardrail_is_one_line_naming_the_option_before_anything_runs(tmp_path, capsys):
    assert _guarded_run(tmp_path, "cost<=0.001", "cost<0.1") == 2
    error = capsys.readouterr().err
    assert error.startswith("dspex: error: --guardrail 'cost<0.1': '<' is not a bound's comparison (<= or >=); ")
    syntax = "cost<=USD, latency_p95<=SECONDS, error_rate<=FRACTION, or metric:NAME>=NUMBER (or <=), e.g. cost<=0.0005"
    assert error.endswith(f"write {syntax} or metric:f1>=0.6\n") and error.count("\n") == 1
    assert _guarded_run(tmp_path, "metric:exact>=0.5") == 2
    assert capsys.readouterr().err.startswith("dspex: error: --guardrail 'metric:exact>=0.5': metric 'exact': one of ")
    assert _guarded_run(tmp_path, "cost<=0.001", "cost<=0.002") == 2
    assert "--guardrail: cost is bounded twice" in capsys.readouterr().err
    assert dx.open_journal(tmp_path / "g.duckdb").experiments().empty  # refused before any run began


BOOM_METRIC = """
def boom(example, prediction):
    raise RuntimeError("the grader\\nis down: " + "retry later " * 20)
"""


def test_a_run_whose_every_trial_failed_exits_1_with_each_warning_on_one_line(tmp_path):
    (tmp_path / "clilab_boom.py").write_text(BOOM_METRIC)
    (tmp_path / "qa.json").write_text(dx.Program("dspy.Predict", signature="question -> answer", name="qa").to_json())
    _write_arithmetic(tmp_path / "problems.jsonl", 5, seed=3)
    arguments = ["evaluate", "qa.json", "problems.jsonl", "--import", "clilab_boom", "--metric", "clilab_boom:boom"]
    completed = _dspex(*arguments, "--journal", "b.duckdb", "--quiet", cwd=tmp_path)
    assert completed.returncode == 1, completed.stderr
    assert "qa" in completed.stdout and "Evaluations" in completed.stdout  # the table is still printed
    lines = completed.stderr.splitlines()
    assert lines and all(line.startswith("dspex: warning: ") for line in lines), completed.stderr
    failed = next(line for line in lines if "every trial of qa failed" in line)
    assert "(5 RuntimeError)" in failed and "the grader is down: retry later" in failed and failed.endswith("later")
    assert "warnings.warn" not in completed.stderr and ".py:" not in completed.stderr

    completed = _dspex("evaluate", "qa.json", "problems.jsonl", "--metric", "exact_match", "--quiet", cwd=tmp_path)
    assert completed.returncode == 0 and completed.stderr == ""


def test_a_journal_that_does_not_exist_is_an_error_not_an_empty_table(tmp_path, capsys):
    missing = tmp_path / "typo.duckdb"
    for command in (
        ["journal", "list", "--journal", str(missing)],
        ["journal", "--journal", str(missing), "trials", "qa"],
        ["journal", "sql", "select 1", "--journal", str(missing)],
        ["trace", "qa", "--journal", str(missing)],
        ["export", "qa", str(tmp_path / "out.zip"), "--journal", str(missing)],
    ):
        assert main(command) == 2, command
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == (
            f"dspex: error: no journal at {missing}: nothing was recorded there "
            "(name one with --journal, DSPEX_JOURNAL or journal = ... in dspex.toml)\n"
        )
    assert not missing.exists()  # and reading did not create it
    assert main(["journal", "list"]) == 2  # the default journal (dspex.duckdb here) does not exist either
    assert f"no journal at {tmp_path / 'dspex.duckdb'}" in capsys.readouterr().err


def test_output_to_a_reader_that_went_away_ends_quietly(tmp_path):
    journal = tmp_path / "p.duckdb"
    assert main(["demo", "--journal", str(journal), "-n", "4", "--quiet"]) == 0
    experiment = dx.open_journal(journal).experiments().query("name == 'predict'")["id"].iloc[0]
    script = str(Path(sys.executable).with_name("dspex"))
    for command in (
        ["journal", "list", "--journal", str(journal)],  # printed as plain text
        ["journal", "sql", "select * from trials", "--journal", str(journal)],  # printed by rich
        ["trace", experiment, "--journal", str(journal)],
    ):
        # The reader is gone before the first line is written (as `| head` is once it has its lines).
        process = subprocess.Popen([script, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
        process.stdout.close()
        errors = process.stderr.read()
        process.stderr.close()
        assert process.wait(timeout=120) == 141, (command, errors)
        assert errors == b"", (command, errors)
    # And through a shell pipe into head, as a user types it.
    completed = subprocess.run(
        f"{script} journal list --journal {journal} | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert completed.stdout == f"Experiments in {journal}\n" and completed.stderr == ""


def test_journal_trials_shows_question_expected_and_prediction(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.Predict", signature="question -> answer", name="qa-terminal").to_json())
    data = _write_arithmetic(tmp_path / "problems.jsonl", 5, seed=8)
    journal = tmp_path / "q.duckdb"
    arguments = ["evaluate", str(spec), str(data), "--metric", "exact_match", "--journal", str(journal)]
    assert main([*arguments, "--quiet"]) == 0
    capsys.readouterr()
    # Named by its name, as dx.load and the magics take it.
    assert main(["journal", "trials", "qa-terminal", "--journal", str(journal)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[1]
    assert header.split() == [
        "trial_id", "status", "score", "latency", "input_tokens", "output_tokens", "question", "expected", "prediction",
        "error",
    ]  # fmt: skip
    store = dx.open_journal(journal)
    experiment = store.experiments().query("name == 'qa-terminal'")["id"].iloc[0]
    assert lines[0] == f"Trials of {experiment}"
    predictions = {row["trial_id"]: json.loads(row["prediction"]) for row in store.trial_rows(experiment)}
    examples = {f"{example.id}/r0": example for example in dx.datasets.arithmetic(5, seed=8)}
    starts = {column: header.index(column) for column in ("question", "expected", "prediction", "error")}
    for line in lines[3:8]:
        trial = line.split()[0]
        question = line[starts["question"] : starts["expected"]].strip()
        expected = line[starts["expected"] : starts["prediction"]].strip()
        prediction = line[starts["prediction"] : starts["error"]].strip()
        gold = examples[trial]
        assert question.rstrip("…") and gold.question.startswith(question.rstrip("…"))
        assert len(question) <= 48 and (question == gold.question or question.endswith("…"))
        assert expected == gold.answer  # the gold answer, not id/topic/difficulty
        assert prediction == predictions[trial]["answer"]


def test_experiments_are_named_by_id_or_name_in_every_command(tmp_path, capsys):
    spec = tmp_path / "qa.json"
    spec.write_text(dx.Program("dspy.Predict", signature="question -> answer", name="qa").to_json())
    data = _write_arithmetic(tmp_path / "problems.jsonl", 4, seed=9)
    journal = str(tmp_path / "n.duckdb")
    base = ["evaluate", str(spec), str(data), "--metric", "exact_match", "--journal", journal, "--quiet", "--json"]
    assert main([*base, "--name", "baseline", "--trace"]) == 0
    experiment = json.loads(capsys.readouterr().out.strip().splitlines()[-2])["experiment_id"]

    assert main(["trace", "baseline", "--journal", journal]) == 0
    assert f"Trials of {experiment}, failed first" in capsys.readouterr().out
    trial = dx.open_journal(journal).trial_rows(experiment, columns=["trial_id"])[0]["trial_id"]
    assert main(["trace", "baseline", trial, "--journal", journal]) == 0
    assert "module" in capsys.readouterr().out
    assert main(["export", "baseline", str(tmp_path / "pkg.zip"), "--journal", journal]) == 0
    assert "Wrote" in capsys.readouterr().out
    # --resume by name: the finished run is returned as it is, no trial twice.
    assert main([*base, "--resume", "baseline"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["experiment_id"] == experiment
    assert len(dx.open_journal(journal).trial_rows(experiment, columns=["trial_id"])) == 4

    assert main([*base, "--name", "baseline"]) == 0  # a second experiment of that name
    capsys.readouterr()
    assert main(["journal", "trials", "baseline", "--journal", journal]) == 2
    error = capsys.readouterr().err
    assert error.startswith("dspex: error: 2 experiments are named 'baseline'") and "name one by its id" in error
    assert main(["journal", "trials", "basline", "--journal", journal]) == 2
    assert "close names: 'baseline'" in capsys.readouterr().err

import json
import subprocess
import sys

import dspex_lab as dx
from dspex_lab.cli import main


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
        ["optimize", str(spec), str(data), "--val", str(data), "--metric", "exact_match", "--inputs", "question"]
        + ["--journal", str(tmp_path / "o.duckdb"), "--quiet"]
    )
    assert code == 2
    assert "shares 40 examples with the trainset" in capsys.readouterr().err

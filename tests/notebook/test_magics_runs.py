"""The %dspex magics as a researcher uses them day to day, none ending in a traceback.

Data files given with ``--data FILE`` (JSONL, CSV, JSON, Hugging Face exports), runs stopped with an
interrupt (what Cancel and the kernel's stop button send) and continued with ``--resume``, experiments
named by id or by name, and the session set with ``%dspex config``. Driven through IPython's test shell
on the lab LM, as the other magic tests are.
"""

from __future__ import annotations

import _thread
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from IPython.core.error import UsageError

import dspex_lab as dx
from dspex_lab.session import _context

PROGRAM = 'module: dspy.Predict\nsignature: "question -> answer"\n'


def problems(n: int, seed: int = 0) -> list[dict[str, Any]]:
    return [example.toDict() for example in dx.datasets.arithmetic(n, seed=seed)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


class InterruptingMetric:
    """exact_match that interrupts the main thread once, at its ``at``-th call (a Cancel click or Ctrl-C)."""

    __name__ = "interrupting_metric"

    def __init__(self, at: int | None) -> None:
        self.at = at
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, example: Any, prediction: Any) -> float:
        with self._lock:
            self.calls += 1
            if self.calls == self.at:
                _thread.interrupt_main()
        return dx.metrics.exact_match(example, prediction)


# -- --data FILE ----------------------------------------------------------------------------------------


def hf_rows(rows: list[dict[str, Any]]) -> str:
    # What the Hugging Face dataset viewer's /rows endpoint returns.
    wrapped = [{"row_idx": index, "row": row, "truncated_cells": []} for index, row in enumerate(rows)]
    return json.dumps({"features": [], "rows": wrapped, "num_rows_total": len(rows)})


def csv_text(rows: list[dict[str, Any]]) -> str:
    fields = ["question", "answer"]
    lines = [",".join(fields)]
    lines += [",".join(json.dumps(str(row[field])) for field in fields) for row in rows]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("name", "render"),
    [
        ("data.jsonl", lambda rows: "".join(json.dumps(row) + "\n" for row in rows)),
        ("data.json", json.dumps),
        ("data.csv", csv_text),
        ("rows.json", hf_rows),
        ("to_json.json", lambda rows: "".join(json.dumps(row) + "\n" for row in rows)),  # datasets' to_json
    ],
    ids=["jsonl", "json-list", "csv", "hf-viewer-rows", "hf-to-json-lines"],
)
def test_evaluate_reads_a_data_file_with_the_inputs_of_the_signature(shell, tmp_path, name, render):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    rows = problems(6)
    (tmp_path / name).write_text(render(rows))
    result = shell.run_line_magic("dspex", f"evaluate qa --data {tmp_path / name} --metric exact_match --out r")
    assert shell.user_ns["r"] is result
    assert result.n_trials == 6
    assert result.dataset["n"] == 6 and result.dataset["inputs"] == ["question"]


def test_inputs_given_on_the_line_are_the_files_inputs(shell, tmp_path):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    rows = [{"q": row["question"], "question": row["question"], "answer": row["answer"]} for row in problems(3)]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(UsageError, match=r"DatasetError: .*data\.jsonl.*'missing'"):
        shell.run_line_magic("dspex", f"evaluate qa --data {path} --metric exact_match --inputs question,missing")
    result = shell.run_line_magic("dspex", f"evaluate qa --data {path} --metric exact_match --inputs question")
    assert result.n_trials == 3


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("absent.jsonl", None, r"^DatasetError: .*absent\.jsonl: no such file$"),
        ("bad.jsonl", '{"question": "1+1?", "answer": "2"}\n{"question": \n', r"^DatasetError: .*bad\.jsonl:2: "),
        ("data.txt", "question,answer\n", r"^DatasetError: .*data\.txt: unsupported file extension '\.txt'"),
        ("list.json", '{"question": "1+1?"}', r"^DatasetError: .*list\.json: expected a JSON list of objects"),
    ],
    ids=["missing", "broken-line", "unknown-extension", "json-object"],
)
def test_a_missing_or_malformed_data_file_is_one_line_naming_it(shell, tmp_path, file, content, message):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    if content is not None:
        (tmp_path / file).write_text(content)
    with pytest.raises(UsageError, match=message) as caught:
        shell.run_line_magic("dspex", f"evaluate qa --data {tmp_path / file} --metric exact_match")
    assert "\n" not in str(caught.value)


def test_a_mistyped_variable_name_is_one_line(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = list(dx.datasets.arithmetic(2, seed=0))
    with pytest.raises(UsageError, match=r"^%dspex: --data 'dat' is neither a notebook variable nor a file$"):
        shell.run_line_magic("dspex", "evaluate qa --data dat --metric exact_match")
    with pytest.raises(UsageError, match=r"--out 'class' is not a Python variable name"):
        shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --out class")


def test_a_module_without_a_signature_needs_inputs(shell, tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", problems(2))
    shell.user_ns["module"] = __import__("dspy").Predict("question -> answer")
    with pytest.raises(UsageError, match=r"say which fields of .*data\.jsonl are inputs with --inputs"):
        shell.run_line_magic("dspex", f"evaluate module --data {path} --metric exact_match")


# -- interrupts and --resume --------------------------------------------------------------------------


def recorded_keys(journal: Any, experiment_id: str) -> list[tuple[str, int]]:
    frame = journal.trials(experiment_id)
    return list(zip(frame["example_id"], frame["repeat"], strict=True))


def test_an_interrupted_evaluation_prints_one_line_binds_its_partial_result_and_resumes(shell, tmp_path, capsys):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["slow"] = dx.lab_lm("lab/small", latency=0.02)
    shell.run_line_magic("dspex", "config lm=slow threads=2")
    path = write_jsonl(tmp_path / "data.jsonl", problems(40))
    metric = shell.user_ns["interrupting_metric"] = InterruptingMetric(at=6)
    line = f"evaluate qa --data {path} --metric interrupting_metric --name halted --out partial --no-progress"

    assert shell.run_line_magic("dspex", line) is None  # no KeyboardInterrupt reaches the notebook
    (said,) = capsys.readouterr().out.splitlines()
    partial = shell.user_ns["partial"]
    assert shell.user_ns["_"] is partial is shell.user_ns["_dspex_last"]
    assert partial.status == "interrupted" and 0 < partial.n_trials < 40
    assert said.startswith(f"evaluation {partial.experiment_id} interrupted: {partial.n_trials} trials kept")
    assert said.endswith(f"continue it with %dspex {line} --resume {partial.experiment_id}")

    metric.at, before = None, metric.calls
    line = line.replace("--out partial", "--out full")
    full = shell.run_line_magic("dspex", f"{line} --resume halted")  # by name
    assert full.experiment_id == partial.experiment_id and full.status == "finished"
    keys = recorded_keys(dx.current_context().journal, full.experiment_id)
    assert len(keys) == len(set(keys)) == 40  # every trial once
    assert metric.calls - before == 40 - partial.n_trials  # the resumed run scored only the missing trials
    assert shell.user_ns["full"] is full


def test_an_interrupt_before_any_run_is_one_line_too(shell, capsys):
    class Stops(Sequence):  # a dataset whose reading is interrupted (Ctrl-C while it loads)
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: Any) -> Any:
            raise KeyboardInterrupt

    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = Stops()
    assert shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --out r") is None
    assert capsys.readouterr().out == "%dspex evaluate interrupted\n"
    assert "r" not in shell.user_ns


def test_an_interrupted_optimization_binds_its_steps_and_resumes(shell, capsys):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    data = list(dx.datasets.arithmetic(40, seed=3))
    shell.user_ns.update(train=data[:16], val=data[16:])
    # The baseline scores the 24 validation examples (the confirmation split aside): stop after it, mid-step.
    metric = shell.user_ns["interrupting_metric"] = InterruptingMetric(at=30)
    line = "optimize qa --train train --val val --metric interrupting_metric --max-steps 2 --bsize 8 --name opt"
    assert shell.run_line_magic("dspex", f"{line} --no-progress") is None
    said = capsys.readouterr().out.strip().splitlines()[-1]
    partial = shell.user_ns["_"]
    assert isinstance(partial, dx.OptimizationResult) and partial.status == "interrupted"
    assert said.startswith(f"optimization {partial.run_id} interrupted: ")
    assert said.endswith(f"--resume {partial.run_id}")
    metric.at = None
    result = shell.run_line_magic("dspex", f"{line} --no-progress --resume opt --out best")
    assert result.run_id == partial.run_id and result.status == "finished"
    assert shell.user_ns["best"] is result


def test_an_optimization_interrupted_before_its_baseline_has_nothing_to_bind(shell, capsys):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    data = list(dx.datasets.arithmetic(40, seed=3))
    shell.user_ns.update(train=data[:16], val=data[16:], interrupting_metric=InterruptingMetric(at=2))
    line = "optimize qa --train train --val val --metric interrupting_metric --max-steps 1 --bsize 8 --out best"
    assert shell.run_line_magic("dspex", f"{line} --no-progress") is None
    said = capsys.readouterr().out.strip().splitlines()[-1]
    assert " interrupted: no step finished, so there is no partial result; continue it with %dspex " in said
    assert "best" not in shell.user_ns


# -- experiments by id or name --------------------------------------------------------------------------


def test_compare_trace_and_load_take_names(shell, capsys):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = list(dx.datasets.arithmetic(4, seed=0))
    base = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name qa-base --trace")
    shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name qa-cot")
    comparison = shell.run_line_magic("dspex", "compare qa-base qa-cot")
    assert isinstance(comparison, dx.Comparison)
    assert dx.load("qa-base").experiment_id == base.experiment_id
    trial = base.trials["trial_id"].iloc[0]
    shell.run_line_magic("dspex", f"trace qa-base {trial} --text")
    assert "lm" in capsys.readouterr().out
    # A program variable named like an experiment does not shadow the experiment.
    shell.user_ns["qa-cot"] = shell.user_ns["qa"]
    assert isinstance(shell.run_line_magic("dspex", "compare qa-base qa-cot"), dx.Comparison)


def test_a_name_two_experiments_share_is_one_line_listing_them(shell):
    shell.run_cell_magic("dspex", "program qa", PROGRAM)
    shell.user_ns["data"] = list(dx.datasets.arithmetic(2, seed=0))
    first = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name twice")
    second = shell.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name twice")
    with pytest.raises(UsageError) as caught:
        shell.run_line_magic("dspex", f"compare twice {first.experiment_id}")
    message = str(caught.value)
    assert message.startswith("JournalError: 2 experiments are named 'twice' in ")
    assert first.experiment_id in message and second.experiment_id in message
    assert message.endswith("name one by its id") and "\n" not in message
    with pytest.raises(dx.errors.JournalError, match="close names: 'twice'"):
        dx.load("twise")


# -- %dspex config --------------------------------------------------------------------------------------


def test_config_sets_the_session_so_no_with_block_is_needed(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_context, "_default", None)  # this test's own process-wide default session
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "dspex_lab")
    try:
        ip.user_ns["tuned"] = dx.lab_lm("lab/large")
        settings = ip.run_line_magic("dspex", f"config lm=tuned journal={tmp_path / 'notes.duckdb'} threads=3")
        assert settings == ip.run_line_magic("dspex", "config")
        assert settings["lm"] == "lab/large" and settings["threads"] == "3"
        assert settings["journal"].endswith("notes.duckdb")
        ip.run_cell_magic("dspex", "program qa", PROGRAM)
        ip.user_ns["data"] = list(dx.datasets.arithmetic(3, seed=0))
        result = ip.run_line_magic("dspex", "evaluate qa --data data --metric exact_match --name configured")
        record = dx.open_journal(tmp_path / "notes.duckdb").experiment(result.experiment_id)
        assert record["config"]["lm"] == "lab/large" and record["config"]["threads"] == 3
        assert ip.run_line_magic("dspex", "config journal=memory")["journal"].startswith("an in-memory journal")
        assert ip.run_line_magic("dspex", "config lm=lab/small")["lm"] == "lab/small"
    finally:
        ip.user_ns.clear()


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("lm", r"^%dspex config: 'lm' is not KEY=VALUE with a key of lm, journal, threads, executor$"),
        ("model=lab/small", r"'model=lab/small' is not KEY=VALUE"),
        ("threads=many", r"^%dspex config: threads='many' is not an integer$"),
        ("threads=0", r"^ExecutionError: threads must be a positive integer, got 0$"),
    ],
)
def test_a_bad_config_word_is_one_line_and_changes_nothing(shell, words, message):
    before = shell.run_line_magic("dspex", "config")
    with pytest.raises(UsageError, match=message) as caught:
        shell.run_line_magic("dspex", f"config threads=5 {words}")
    assert "\n" not in str(caught.value)
    assert shell.run_line_magic("dspex", "config") == before


def test_a_variants_header_names_the_module_it_runs(shell):
    body = PROGRAM + "variables:\n  module:\n    type: module_type\n    value: dspy.Predict\n"
    body += "    choices: [dspy.Predict, dspy.ChainOfThought]\n"
    program = shell.run_cell_magic("dspex", "program qa", body)
    variant = program.with_values(module="dspy.ChainOfThought")
    header = variant._repr_html_().split("<table>")[0]
    assert "<code>dspy.ChainOfThought</code>" in header and "dspy.Predict" not in header
    assert "<code>dspy.Predict</code>" in program._repr_html_().split("<table>")[0]

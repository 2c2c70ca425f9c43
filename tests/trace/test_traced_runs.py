"""Traced evaluations: spans streamed into the journal per trial, read back as trees and in the CLI."""

import dspy
from dspy.utils.callback import BaseCallback

import dspex_lab as dx
from dspex_lab.cli import main

COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


def test_every_trial_gets_its_own_tree_under_threads(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(48, seed=4), name="traced")
    with dx.Context(journal=journal_path, threads=8):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    journal = dx.open_journal(journal_path)
    spans = journal.sql("select * from spans where experiment_id = ?", [result.experiment_id])
    assert set(spans["trace_id"]) == set(result.table()["trial_id"])
    by_id = {(row.trace_id, row.span_id): row for row in spans.itertuples()}
    for row in spans.itertuples():
        if row.kind == "trial":
            assert row.parent_id is None or row.parent_id != row.parent_id  # NULL
        else:
            assert (row.trace_id, row.parent_id) in by_id, "a span's parent is in another trial's tree"
    tree = journal.trace(result.experiment_id, problems.example_ids[0] + "/r0")
    kinds = [node.span.kind for node in tree.walk()]
    assert kinds[0] == "trial" and {"module", "adapter_format", "lm", "adapter_parse", "metric"} <= set(kinds)
    text = tree.to_text(width=100)
    assert "ChainOfThought" in text and "lab/small" in text and "exact_match" in text
    assert "(orphan)" not in text


def test_untraced_runs_write_no_spans_and_say_so(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(4, seed=4), name="untraced")
    with dx.Context(journal=journal_path, threads=2):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False)
    journal = dx.open_journal(journal_path)
    assert journal.sql("select count(*) as n from spans")["n"][0] == 0
    try:
        journal.trace(result.experiment_id, problems.example_ids[0] + "/r0")
    except dx.errors.JournalError as error:
        assert "trace=True" in str(error)
    else:
        raise AssertionError("expected a JournalError for an untraced trial")


def test_failing_trial_trace_shows_the_error(journal_path):
    problems = dx.Dataset(dx.datasets.arithmetic(30, seed=8), name="faulty-traced")
    lm = dx.lab_lm("lab/small", error_rate=0.3, seed=3)
    with dx.Context(lm=lm, journal=journal_path, threads=4):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True, retries=0)
    failed = result.table().query("status == 'error'")["trial_id"]
    assert len(failed) > 0
    tree = dx.open_journal(journal_path).trace(result.experiment_id, failed.iloc[0])
    root = next(node.span for node in tree.walk() if node.span.kind == "trial")
    assert root.status == "error" and root.error  # the failure recorded as data marks the root too
    assert any(node.span.status == "error" for node in tree.walk() if node.span.kind != "trial")


def test_dspex_trace_lists_trials_and_prints_a_tree(journal_path, capsys):
    problems = dx.Dataset(dx.datasets.arithmetic(6, seed=5), name="cli-traced")
    with dx.Context(journal=journal_path, threads=2):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    assert main(["trace", result.experiment_id, "--journal", str(journal_path)]) == 0
    listing = capsys.readouterr().out
    assert problems.example_ids[0] + "/r0" in listing and "spans" in listing
    trial = problems.example_ids[0] + "/r0"
    assert main(["trace", result.experiment_id, trial, "--journal", str(journal_path), "--prompts"]) == 0
    tree = capsys.readouterr().out
    assert "ChainOfThought" in tree and "lab/small" in tree
    assert main(["trace", result.experiment_id, "nope/r0", "--journal", str(journal_path)]) == 2


def test_dspex_trace_exports_otlp_for_a_trial_and_an_experiment(journal_path, tmp_path, capsys):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("export_tests", Path(__file__).with_name("test_tree_and_export.py"))
    export_tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_tests)
    jsonschema = __import__("jsonschema")

    problems = dx.Dataset(dx.datasets.arithmetic(5, seed=6), name="otlp")
    with dx.Context(journal=journal_path, threads=2):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    trial = problems.example_ids[0] + "/r0"
    one, every = tmp_path / "trial.json", tmp_path / "experiment.json"
    assert main(["trace", result.experiment_id, trial, "--journal", str(journal_path), "--otlp", str(one)]) == 0
    assert main(["trace", result.experiment_id, "--journal", str(journal_path), "--otlp", str(every)]) == 0
    single, whole = json.loads(one.read_text()), json.loads(every.read_text())
    jsonschema.validate(single, export_tests.OTLP_SCHEMA)
    jsonschema.validate(whole, export_tests.OTLP_SCHEMA)

    def count(payload):
        return sum(len(scope["spans"]) for resource in payload["resourceSpans"] for scope in resource["scopeSpans"])

    assert count(whole) == 5 * count(single) and count(single) >= 6
    trace_ids = {span["traceId"] for r in whole["resourceSpans"] for s in r["scopeSpans"] for span in s["spans"]}
    assert len(trace_ids) == 5


def test_traced_runs_keep_a_users_own_dspy_callback_working(journal_path):
    class Counting(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.lm_calls = 0

        def on_lm_start(self, call_id, instance, inputs) -> None:
            self.lm_calls += 1

    user = Counting()
    problems = dx.Dataset(dx.datasets.arithmetic(12, seed=5), name="with-callback")
    with dspy.context(callbacks=[user]), dx.Context(journal=journal_path, threads=4):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    assert user.lm_calls == 12
    spans = dx.open_journal(journal_path).spans(result.experiment_id)
    assert sum(item.kind == "lm" for item in spans) == 12
    assert {item.trace_id for item in spans} == set(result.table()["trial_id"])


def test_tracing_without_a_journal_file_keeps_the_traces_in_the_memory_journal():
    problems = dx.Dataset(dx.datasets.arithmetic(3, seed=6), name="no-journal")
    with dx.Context(journal=False) as context:
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    spans = context.journal.spans(result.experiment_id)
    assert {item.trace_id for item in spans} == set(result.table()["trial_id"])
    assert sum(item.kind == "lm" for item in spans) == 3


def test_tracing_replaces_no_dspy_method_and_registers_the_recorder_per_trial():
    from dspex_lab._dspy_compat import active_patches

    problems = dx.Dataset(dx.datasets.arithmetic(4, seed=7), name="public-surface")
    with dx.Context(journal=False) as context:
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True)
    assert sum(item.kind == "lm" for item in context.journal.spans(result.experiment_id)) == 4
    # Only the LM call guard (engine/_cancel.py) patches DSPy; tracing goes through DSPy's callbacks alone.
    assert {name.rsplit(".", 2)[-2] + "." + name.rsplit(".", 1)[-1] for name in active_patches()} <= {
        "BaseLM.__call__",
        "BaseLM.acall",
    }
    # Registered per trial, never left behind in the caller's settings.
    assert not dspy.settings.callbacks

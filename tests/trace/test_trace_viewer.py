"""The trace viewer widget through its Python state (the front end only renders this state)."""

import json

import pytest

import dspex_lab as dx

pytest.importorskip("anywidget")

COT = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="cot")


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    path = tmp_path_factory.mktemp("viewer") / "journal.duckdb"
    problems = dx.Dataset(dx.datasets.arithmetic(24, seed=3), name="viewer")
    lm = dx.lab_lm("lab/small", error_rate=0.25, seed=4)
    with dx.Context(lm=lm, journal=path, threads=4):
        result = dx.evaluate(COT, problems, metric=dx.metrics.exact_match, progress=False, trace=True, retries=0)
    return path, result


def test_front_end_sources_exist_and_define_render():
    from dspex_lab.notebook._widgets_common import front_end_file

    assert "export default { render }" in front_end_file("trace_viewer.js", widget="TraceViewer").read_text()
    assert front_end_file("trace_viewer.css", widget="TraceViewer").read_text().startswith(".dspex-trace-viewer")


def test_front_end_is_read_from_the_package_first_then_the_source_checkout(tmp_path, monkeypatch):
    from dspex_lab.notebook import _widgets_common

    packaged, checkout = tmp_path / "packaged", tmp_path / "checkout"
    for folder in (packaged, checkout):
        folder.mkdir()
        (folder / "trace_viewer.css").write_text(folder.name)
    (checkout / "trace_viewer.js").write_text("checkout")
    monkeypatch.setattr(_widgets_common, "_FRONT_END_FOLDERS", (packaged, checkout))
    find = _widgets_common.front_end_file
    assert find("trace_viewer.css", widget="TraceViewer") == packaged / "trace_viewer.css"
    assert find("trace_viewer.js", widget="TraceViewer") == checkout / "trace_viewer.js"
    with pytest.raises(dx.errors.DspexLabError, match=r"front end trace_viewer\.mjs is missing .*reinstall"):
        find("trace_viewer.mjs", widget="TraceViewer")


def test_trials_sorted_by_error_then_score_and_first_is_open(traced):
    path, result = traced
    viewer = dx.widgets.TraceViewer(path, result.experiment_id)
    statuses = [trial["status"] for trial in viewer.trials]
    assert len(viewer.trials) == 24
    assert statuses == sorted(statuses, key=lambda status: status == "ok")  # failures first
    assert viewer.selected_trial == viewer.trials[0]["trial_id"]
    root = next(node for node in viewer.nodes if node["parent"] is None)
    assert root["kind"] == "trial" and viewer.expanded == [root["id"]]  # lazily: only the root is open


def test_selecting_a_span_fills_the_detail_pane(traced):
    path, result = traced
    ok_trial = result.table().query("status == 'ok'")["trial_id"].iloc[0]
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, trial_id=ok_trial)
    lm_node = next(node for node in viewer.nodes if node["kind"] == "lm")
    viewer.selected_span = lm_node["id"]
    assert viewer.detail["kind"] == "lm" and viewer.detail["name"] == "lab/small"
    assert "messages" in viewer.detail["attributes"] and "completion" in viewer.detail["attributes"]
    viewer.selected_trial = result.table()["trial_id"].iloc[-1]
    assert viewer.detail == {} and viewer.selected_span == ""


def test_search_marks_matches_and_opens_their_ancestors(traced):
    path, result = traced
    ok_trial = result.table().query("status == 'ok'")["trial_id"].iloc[0]
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, trial_id=ok_trial, sort_by="trial")
    viewer.search = "ChatAdapter.parse"
    parse = [node for node in viewer.nodes if node["name"] == "ChatAdapter.parse"]
    assert len(parse) == 1 and viewer.matches == [parse[0]["id"]]
    by_id = {node["id"]: node for node in viewer.nodes}
    parent = by_id[parse[0]["id"]]["parent"]
    while parent is not None:
        assert parent in viewer.expanded
        parent = by_id[parent]["parent"]
    viewer.search = ""
    assert viewer.matches == []


def test_untraced_experiment_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.duckdb"
    with dx.Context(journal=path, threads=2):
        result = dx.evaluate(COT, dx.datasets.arithmetic(3, seed=1), metric=dx.metrics.exact_match, progress=False)
    with pytest.raises(dx.errors.JournalError, match="trace=True"):
        dx.widgets.TraceViewer(path, result.experiment_id)


def test_the_trial_list_reads_question_expected_answer_and_the_numbers(traced):
    path, result = traced
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, sort_by="trial")
    table = result.table().set_index("trial_id")
    examples = {example.id: example for example in dx.datasets.arithmetic(24, seed=3)}
    for trial in viewer.trials:
        row = table.loc[trial["trial_id"]]
        example = examples[row["example_id"]]
        assert trial["question"] == " ".join(example.question.split())
        # The gold field the program outputs, not the example's metadata (id, topic, difficulty).
        assert trial["expected"] == example.answer
        if row["status"] == "ok":
            assert trial["answer"] == str(json.loads(row["prediction"])["answer"])
        assert trial["latency_ms"] == pytest.approx(row["latency"] * 1000, abs=1e-3)
        assert trial["tokens"] == row["input_tokens"] + row["output_tokens"]


def test_the_metric_detail_shows_the_question_and_only_the_gold_fields(traced):
    path, result = traced
    ok_trial = result.table().query("status == 'ok'")["trial_id"].iloc[0]
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, trial_id=ok_trial)
    metric = next(node for node in viewer.nodes if node["kind"] == "metric")
    viewer.selected_span = metric["id"]
    compared = viewer.detail["comparison"]
    assert set(compared["expected"]) == {"answer"}
    assert set(compared["question"]) == {"question"} and compared["question"]["question"].endswith("?")
    assert compared["got"]["answer"] and "reasoning" in compared["got"]


def test_search_counts_the_matching_spans_of_every_trial(traced):
    path, result = traced
    viewer = dx.widgets.TraceViewer(path, result.experiment_id, sort_by="trial")
    viewer.search = "chatadapter.PARSE"  # case-insensitive
    spans = viewer._journal.span_rows(result.experiment_id)
    expected = {}
    for row in spans:
        if row["name"] == "ChatAdapter.parse" or "chatadapter.parse" in (row["attributes"] or "").casefold():
            expected[row["trace_id"]] = expected.get(row["trace_id"], 0) + 1
    assert viewer.trial_matches == expected and len(expected) > 1
    viewer.search = "no such text anywhere"
    assert viewer.trial_matches == {} and viewer.matches == []

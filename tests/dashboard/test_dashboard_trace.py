"""The dashboard's trace and optimization pages as a researcher reads them: the trial table, span detail,
search across an experiment's spans, and the "why" of each optimization decision (through the panel objects)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

import dspex_lab as dx

pytest.importorskip("panel")

from dspex_lab.journal import open_journal
from dspex_lab.notebook._dashboard import Dashboard
from dspex_lab.notebook._dashboard_data import TRIAL_TABLE_COLUMNS, WHY_COLUMNS, trace_rows, why_frame
from dspex_lab.notebook._trace_data import format_cost, format_latency, format_tokens, shorten

PROBLEMS = 12
LATENCY = re.compile(r"^(\d+(\.\d)? ms|\d+\.\d\d s)$")


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> dict:
    """A journal with one traced chain-of-thought evaluation and a short SIMBA-C run (built once)."""
    path = tmp_path_factory.mktemp("dashboard-trace") / "journal.duckdb"
    data = list(dx.datasets.arithmetic(60, seed=4))
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        program = dx.Program("dspy.ChainOfThought", signature="question -> answer", name="qa-cot")
        evaluation = dx.evaluate(program, data[:PROBLEMS], metric=dx.metrics.exact_match, progress=False, trace=True)
        run = dx.optimize(
            dx.Program("dspy.Predict", signature="question -> answer", name="qa-opt"),
            data[:24],
            data[24:],
            metric=dx.metrics.exact_match,
            optimizer=dx.SimbaC(max_steps=2, bsize=6, num_candidates=2, num_sources=1, patience=2),
            progress=False,
            seed=2,
        )
    examples = {example.id: example for example in data}
    return {"path": path, "evaluation": evaluation, "run": run, "examples": examples}


@pytest.fixture
def dashboard(lab) -> Dashboard:
    board = Dashboard(open_journal(lab["path"]))
    board.open_page("trace")
    board.trace_experiment.value = lab["evaluation"].experiment_id
    return board


def test_values_are_written_as_a_researcher_reads_them() -> None:
    assert format_latency(0.306438) == "306 ms" and format_latency(0.0042) == "4.2 ms"
    assert format_latency(1.5) == "1.50 s" and format_latency(None) == "" and format_latency(math.nan) == ""
    assert format_tokens(1234567) == "1,234,567" and format_tokens(None) == ""
    assert (
        format_cost(0.0000843) == "$0.000084"
        and format_cost(0.00843) == "$0.0084"
        and format_cost(0.25) == "$0.2500"
        and format_cost(0) == "$0"
    )
    assert format_cost(None, unpriced=True) == "unpriced" and format_cost(0.5, unpriced=True) == "$0.5000 + unpriced"


def test_the_trial_table_shows_question_expected_answer_and_formatted_numbers(lab, dashboard) -> None:
    table = dashboard.trial_table.value
    assert list(table.columns) == list(TRIAL_TABLE_COLUMNS) and len(table) == PROBLEMS
    trials = lab["evaluation"].table().set_index("trial_id")
    for row in table.to_dict("records"):
        trial = trials.loc[row["trial"]]
        example = lab["examples"][trial["example_id"]]
        assert row["question"] == shorten(example.question)  # on one line, cut past 300 characters
        assert row["expected"] == example.answer  # the gold field, not id, topic or difficulty
        assert row["answer"] == str(json.loads(trial["prediction"])["answer"])
        assert row["tokens"] == f"{trial['input_tokens'] + trial['output_tokens']:,}"
        assert row["cost"] == format_cost(trial["cost"]) and row["cost"].startswith("$")
        assert LATENCY.match(row["latency"]) and row["latency"] == format_latency(trial["latency"])
    assert dashboard.trial_table.sortable is False  # sorted by the menu, in the journal, across pages


def test_the_span_tree_prices_lm_calls_and_writes_durations(lab) -> None:
    journal = open_journal(lab["path"])
    experiment_id = lab["evaluation"].experiment_id
    trial_id = lab["evaluation"].table()["trial_id"].iloc[0]
    rows = trace_rows(journal, experiment_id, trial_id)
    lm = [row for row in rows if row["kind"] == "lm"]
    assert lm and all(row["cost"] is not None and row["cost"] > 0 for row in lm)  # the cost column was empty
    from dspex_lab.notebook._dashboard_data import trace_html

    rendered = trace_html(rows)
    assert format_cost(lm[0]["cost"]) in rendered
    assert "0.306438" not in rendered and re.search(r"<td>\d+(\.\d)? ms</td>", rendered)


def test_the_trace_page_shows_a_spans_detail_with_the_metrics_expected_vs_got(lab, dashboard) -> None:
    trial_id = str(dashboard.trials.iloc[0]["trial_id"])
    assert dashboard.shown_trial == trial_id
    example = lab["examples"][str(dashboard.trials.iloc[0]["example_id"])]
    # The metric span is shown first: the question, then expected vs got, field by field.
    detail = dashboard.span_view.object
    assert "metric · exact_match" in detail
    assert 'class="dspex-question"' in detail and json.dumps(example.question)[1:-1][:40] in detail
    answer_row = re.search(r'<tr class="[^"]*" data-field="answer">(.*?)</tr>', detail, re.S)
    assert answer_row and f'<td class="dspex-expected">{example.answer}</td>' in answer_row.group(1)
    assert 'data-field="topic"' not in detail and 'data-field="id"' not in detail
    # An LM call: its prompt messages, completion, tokens and cost.
    lm = next(span_id for label, span_id in dashboard.span_select.options.items() if label.endswith("lm lab/small"))
    dashboard.span_select.value = lm
    detail = dashboard.span_view.object
    assert detail.count('class="dspex-message"') == 2 and 'class="dspex-completion"' in detail
    assert "[[ ## answer ## ]]" in detail and "<dt>cost</dt><dd>$" in detail


def test_search_finds_text_in_every_trials_spans_and_opens_a_match(lab, dashboard) -> None:
    journal = open_journal(lab["path"])
    experiment_id = lab["evaluation"].experiment_id
    spans = journal.span_rows(experiment_id)
    parse = [row for row in spans if row["name"] == "ChatAdapter.parse"]
    dashboard.search_spans("chatadapter.PARSE")
    assert len(dashboard.matches) == len(parse) == PROBLEMS
    assert dashboard.search_count.object == f"{PROBLEMS} matching spans in {PROBLEMS} trials"
    assert dashboard.search_results.visible
    assert all("ChatAdapter.parse" in snippet for snippet in dashboard.matches["snippet"])  # as written, not folded
    # Text inside a prompt: one example's question is found in that trial's spans only.
    example = lab["examples"][str(dashboard.trials.iloc[-1]["example_id"])]
    dashboard.search_spans(example.question[:50])
    assert set(dashboard.matches["trial_id"]) == {str(dashboard.trials.iloc[-1]["trial_id"])}
    lm = dashboard.matches.index[dashboard.matches["kind"] == "lm"][0]
    dashboard.search_results.selection = [int(lm)]
    assert dashboard.shown_trial == str(dashboard.trials.iloc[-1]["trial_id"])
    assert dashboard.span_select.value == dashboard.matches.iloc[lm]["span_id"]
    assert "lm · lab/small" in dashboard.span_view.object
    dashboard.search_spans("no such text in any span")
    assert dashboard.search_count.object == "no match" and not dashboard.search_results.visible
    dashboard.search_spans("")
    assert dashboard.search_count.object == "" and dashboard.matches.empty


def test_the_why_table_says_what_was_decided_about_each_candidate_and_why(lab) -> None:
    run = lab["run"]
    journal = open_journal(lab["path"])
    why = why_frame(dx.OptimizationResult.from_journal(journal, run.run_id))
    assert list(why.columns) == list(WHY_COLUMNS)
    candidates = run.candidates.set_index("candidate_id")
    assert list(why["candidate"]) == list(run.candidates["candidate_id"])
    evaluations = {
        item["candidate"]: item for step in journal.step_rows(run.run_id) for item in step["evaluations"] or []
    }
    for row in why.to_dict("records"):
        candidate = candidates.loc[row["candidate"]]
        assert row["rationale"] == candidate["rationale"]
        if candidate["accepted"]:
            assert row["decision"] == "accepted"
        elif row["candidate"] in evaluations:
            assert row["decision"] == "rejected"
            assert row["validation difference"] == pytest.approx(evaluations[row["candidate"]]["difference"])
            assert row["p"] == pytest.approx(evaluations[row["candidate"]]["p_value"])
            assert row["p (Holm)"] == pytest.approx(evaluations[row["candidate"]]["p_adjusted"])
        else:
            assert row["decision"] in ("baseline", "not validated")
        screened = candidate["screen_mean"] - candidate["incumbent_screen_mean"]
        assert row["screen difference"] == pytest.approx(screened, nan_ok=True)
    assert (why["decision"] == "baseline").sum() == 1
    steps = dict(zip(run.steps["step"], run.steps["detail"], strict=True))
    assert list(why["step outcome"]) == [steps[step] or "" for step in why["step"]]
    assert why.loc[why["step"] > 0, "step outcome"].str.match(r"^(accepted c\d+|rejected)").all()


def test_the_optimization_page_shows_the_why_table(lab) -> None:
    dashboard = Dashboard(open_journal(lab["path"]))
    dashboard.open_page("optimization")
    assert dashboard.run_select.value == lab["run"].run_id
    table = dashboard.why_table.value
    assert list(table.columns) == list(WHY_COLUMNS) and len(table) == len(lab["run"].candidates)


def test_an_untraced_trial_empties_the_span_menu(tmp_path: Path) -> None:
    path = tmp_path / "journal.duckdb"
    with dx.Context(lm=dx.lab_lm("lab/small"), journal=path, threads=2):
        program = dx.Program("dspy.Predict", signature="question -> answer", name="plain")
        result = dx.evaluate(
            program, list(dx.datasets.arithmetic(3, seed=1)), metric=dx.metrics.exact_match, progress=False
        )
    dashboard = Dashboard(open_journal(path))
    dashboard.open_page("trace")
    assert dashboard.trace_experiment.value == result.experiment_id
    assert "trace=True" in dashboard.trace_view.object
    assert dashboard.span_select.options == {} and dashboard.span_view.object == "Select a span."
    assert list(dashboard.trial_table.value["question"]) != ["", "", ""]  # the examples are read all the same

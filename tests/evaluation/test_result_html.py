"""The evaluation result's rich HTML links each shown trial to its trace, inline, and ``result.trace``."""

import dataclasses
import html
import re
import shlex
from html.parser import HTMLParser

import pytest

import dspex_lab as dx
from dspex_lab.errors import DspexLabWarning
from dspex_lab.trace import TraceTree

PREDICT = dx.Program("dspy.Predict", signature="question -> answer", name="predict")
HOSTILE = "<script>alert('x')</script> & \"quoted\""


def awkward_metric(example, prediction):
    """Exact match, but raises with markup in its message on every fifth example."""
    if int(example.answer) % 5 == 0:
        raise ValueError(HOSTILE)
    return dx.metrics.exact_match(example, prediction)


class Elements(HTMLParser):
    """Counts start tags and collects the text of each <details> element, to check the HTML's structure."""

    def __init__(self):
        super().__init__()
        self.tags: dict[str, int] = {}
        self.details: list[str] = []
        self._open = 0

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        if tag == "details":
            self._open += 1
            self.details.append("")

    def handle_endtag(self, tag):
        if tag == "details":
            self._open -= 1

    def handle_data(self, data):
        if self._open:
            self.details[-1] += data


def parse(markup: str) -> Elements:
    parser = Elements()
    parser.feed(markup)
    parser.close()
    return parser


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    # A folder name that needs escaping in HTML and quoting in a shell.
    path = tmp_path_factory.mktemp("results") / "odd <dir> & 'q'" / "journal.duckdb"
    problems = dx.Dataset(dx.datasets.arithmetic(40, seed=6), name="html <run>")
    lm = dx.lab_lm("lab/small", error_rate=0.2, seed=3)
    with dx.Context(lm=lm, journal=path, threads=4), pytest.warns(DspexLabWarning, match="the metric raised on"):
        result = dx.evaluate(
            PREDICT, problems, metric=awkward_metric, progress=False, trace=True, retries=0, name="<b>bold</b>"
        )
    return path, result


def test_traced_result_shows_failed_and_lowest_scoring_trials_with_their_traces(traced):
    path, result = traced
    table = result.table()
    failed = table[table["status"] == "error"]
    scored = table[table["status"] == "ok"]
    assert len(failed) > 10 and len(scored) > 10  # both lists are cut, with a count of the rest
    markup = result._repr_html_()
    parsed = parse(markup)
    assert parsed.tags["details"] == 20
    assert f"failed trials (10 of {len(failed)} shown)" in markup
    assert f"lowest-scoring trials (10 of {len(scored)} shown)" in markup
    assert f"{len(failed) - 10} more failed trials" in markup
    assert f"{len(scored) - 10} more lowest-scoring trials" in markup

    shown_failed = failed.sort_values(["example_index", "repeat"])["trial_id"].head(10)
    shown_scored = scored.sort_values(["score", "example_index"], kind="stable")["trial_id"].head(10)
    experiment = result.experiment_id
    for details, trial_id in zip(parsed.details, [*shown_failed, *shown_scored], strict=True):
        tree = result.trace(trial_id)
        assert details.startswith(f"{len(tree)} spanstrial {trial_id}")  # the summary, then the tree from its root
        assert tree.to_text(width=110).splitlines()[1] in details
        assert f"dspex trace {experiment} {trial_id} --journal {shlex.quote(str(path))}" in details
        assert f"dx.widgets.TraceViewer({str(path)!r}, {experiment!r}, trial_id={trial_id!r})" in details
    lowest = [float(score) for score in re.findall(r"<td [^>]*>(\d\.\d{3})</td>", markup)]
    assert lowest == sorted(lowest) and len(lowest) == 10


def test_everything_in_the_html_is_escaped(traced):
    _, result = traced
    markup = result._repr_html_()
    assert "<script>" not in markup and "<b>bold" not in markup and "<dir>" not in markup
    assert html.escape(HOSTILE) in markup  # the metric's error message, escaped
    assert "&lt;b&gt;bold&lt;/b&gt;" in markup
    assert html.escape(f"--journal {shlex.quote(str(result.journal.path))}") in markup
    # Only the elements the result writes itself.
    assert set(parse(markup).tags) <= {"div", "h4", "h5", "table", "tr", "th", "td", "b", "code", "p", "details",
                                       "summary", "pre"}  # fmt: skip


def test_trace_accessor_returns_the_trial_tree(traced):
    _, result = traced
    trial_id = result.table()["trial_id"].iloc[0]
    tree = result.trace(trial_id)
    assert isinstance(tree, TraceTree)
    (root,) = tree.roots
    assert root.span.kind == "trial" and root.span.trace_id == trial_id
    assert {node.span.kind for node in tree} >= {"module", "lm"}


def test_a_deleted_journal_still_renders_the_trials(traced, tmp_path):
    _, result = traced
    gone = dx.EvaluationResult(
        experiment_id=result.experiment_id,
        name=result.name,
        status=result.status,
        trials=result.trials,
        journal=dx.open_journal(tmp_path / "missing.duckdb"),
        traced=True,
    )
    markup = gone._repr_html_()
    assert "traces unavailable" in markup and "does not exist" in markup
    assert "no spans stored" in markup and "<details>" not in markup


def test_untraced_results_have_no_trials_section(journal_path):
    problems = dx.datasets.arithmetic(12, seed=2)
    with dx.Context(journal=journal_path, threads=2):
        plain = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=False)
    with dx.Context(journal=False, threads=2):
        memory = dx.evaluate(PREDICT, problems, metric=dx.metrics.exact_match, progress=False)
    for result in (plain, memory):
        markup = result._repr_html_()
        assert "mean score" in markup and "<details>" not in markup and "Trials and their traces" not in markup
        with pytest.raises(dx.errors.JournalError, match=r"trace=True"):
            result.trace(result.table()["trial_id"].iloc[0])


def test_a_traced_run_without_a_journal_file_keeps_its_traces_in_memory(tmp_path):
    problems = dx.Dataset(dx.datasets.arithmetic(30, seed=2), name="arith-30")
    context = dx.Context(lm="lab/small", journal=False, threads=4)
    with context, pytest.warns(DspexLabWarning, match="metric raised"):
        result = dx.evaluate(PREDICT, problems, metric=awkward_metric, progress=False, trace=True)
    assert result.traced and result.journal is context.journal and not result.journal.durable
    assert not list(tmp_path.glob("*.duckdb")), "no journal file is written"
    failed = result.table().query("status == 'error'")["trial_id"].iloc[0]
    tree = result.trace(failed)
    assert isinstance(tree, TraceTree) and {node.span.kind for node in tree} >= {"trial", "metric"}
    markup = result._repr_html_()
    parsed = parse(markup)
    assert parsed.tags["details"] > 0 and html.escape(f"result.trace({failed!r})") in markup
    # Nothing outside this process can read an in-memory journal: no command naming a journal file is offered.
    assert "--journal" not in markup and "dspex trace" not in markup and "dspex journal" not in markup
    assert "TraceViewer" not in markup and html.escape(context.journal.location) in markup


def test_journal_commands_name_the_journal_unless_it_is_the_default(tmp_path, monkeypatch):
    problems = dx.Dataset(dx.datasets.arithmetic(30, seed=2), name="arith-30")
    elsewhere = tmp_path / "elsewhere.duckdb"
    with dx.Context(lm="lab/small", journal=elsewhere, threads=4), pytest.warns(DspexLabWarning, match="metric raised"):
        result = dx.evaluate(PREDICT, problems, metric=awkward_metric, progress=False, trace=True)
    page = html.unescape(result._repr_html_())
    where = f"--journal {shlex.quote(str(elsewhere.resolve()))}"
    assert f"dspex journal trials {result.experiment_id} {where}" in page
    monkeypatch.setenv("DSPEX_JOURNAL", str(elsewhere))  # now it is the default: the commands need no option
    page = html.unescape(result._repr_html_())
    assert f"<code>dspex journal trials {result.experiment_id}</code>" in page


def test_means_intervals_and_differences_never_print_negative_zero():
    from dspex_lab.evaluation._result import format_number

    assert format_number(-0.0) == "0.000" and format_number(-0.0004, "+.3f") == "+0.000"
    assert format_number(-0.0006) == "-0.001"
    with dx.Context(lm="lab/small", journal=False, threads=2):
        run = dx.evaluate(PREDICT, dx.datasets.arithmetic(4, seed=1), metric=dx.metrics.exact_match, progress=False)
    trials = run.table().assign(score=[-1e-5, 1e-5, -2e-5, 2e-5])
    result = dataclasses.replace(run, trials=trials)
    assert result.ci[0] < 0 and "-0.000" not in repr(result) + result._repr_html_()
    comparison = dx.compare(result, result)
    assert "-0.000" not in repr(comparison) + comparison._repr_html_()

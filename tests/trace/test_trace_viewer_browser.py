"""The trace viewer's front end in a real headless Chromium, on a small traced run and on a 10,000-span trial.

The page loads widgets/trace_viewer.js from a server on 127.0.0.1 and renders it against a stand-in
for the widget model that replays the Python side's state (taken from a real TraceViewer), including its
answers to a selection or a search. A scenario script then clicks through the widget and reports what the
page shows. A screenshot of the small run is kept in the test's temporary directory.
"""

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

import dspex_lab as dx
from dspex_lab.journal import ExperimentRecord, open_journal
from dspex_lab.trace import Span

pytest.importorskip("anywidget")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")

TRAITS = ("header", "trials", "selected_trial", "nodes", "expanded", "selected_span", "detail", "search", "matches")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="trace_viewer.css"></head>
<body><div id="widget"></div><pre id="result">pending</pre>
<script id="state" type="application/json">STATE</script>
<script type="module">
import viewer from "./trace_viewer.js";
const state = JSON.parse(document.getElementById("state").textContent);
try {
const listeners = {};
const emit = (name) => (listeners["change:" + name] || []).forEach((callback) => callback());
const model = {
  get: (name) => state[name],
  set: (name, value) => {
    state[name] = value;
    emit(name);
    if (name === "selected_span") {  // what the Python side answers
      state.detail = state.details[value] || {};
      emit("detail");
    }
    if (name === "search" && state.searches[value]) {
      state.expanded = state.searches[value].expanded;
      emit("expanded");
      state.matches = state.searches[value].matches;
      emit("matches");
    }
  },
  save_changes: () => {},
  on: (event, callback) => { (listeners[event] = listeners[event] || []).push(callback); },
};
const root = document.getElementById("widget");
viewer.render({ model, el: root });
const rows = () => root.querySelectorAll(".dspex-span").length;
const row = (id) => root.querySelector(`.dspex-span[data-span-id="${id}"]`);
const report = (() => { SCENARIO })();
document.getElementById("result").textContent = JSON.stringify(report);
} catch (error) {
  document.getElementById("result").textContent = "error: " + error + " " + error.stack;
}
</script></body></html>
"""


def chromium(*arguments: str, user_data: Path) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data}",
        "--virtual-time-budget=10000",
    ]
    return subprocess.run([CHROMIUM, *flags, *arguments], capture_output=True, text=True, timeout=120)


def viewer_state(viewer, *, details=(), searches=()) -> dict:
    """The widget's synced state, plus the Python side's answers to selecting spans and to searches."""
    state = {name: getattr(viewer, name) for name in TRAITS}
    state["details"] = {}
    for span_id in details:
        viewer.selected_span = span_id
        state["details"][span_id] = dict(viewer.detail)
    viewer.selected_span = ""
    state["searches"] = {}
    for text in searches:
        viewer.search = text
        state["searches"][text] = {"expanded": list(viewer.expanded), "matches": list(viewer.matches)}
    return state


def run_page(tmp_path: Path, state: dict, scenario: str, *, screenshot: Path | None = None) -> dict:
    """Serve the front end with ``state``, run ``scenario`` (a JS function body returning a report) in Chromium."""
    site = tmp_path / "site"
    site.mkdir()
    widgets = Path(dx.__file__).resolve().parents[1] / "widgets"
    shutil.copy(widgets / "trace_viewer.js", site)
    shutil.copy(widgets / "trace_viewer.css", site)
    inline = json.dumps(state, default=str).replace("</", "<\\/")  # safe inside a <script> element
    (site / "index.html").write_text(PAGE.replace("STATE", inline).replace("SCENARIO", scenario), encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    try:
        dumped = chromium("--dump-dom", url, user_data=tmp_path / "profile-dom")
        if screenshot is not None:
            chromium(f"--screenshot={screenshot}", "--window-size=1300,700", url, user_data=tmp_path / "profile-shot")
    finally:
        server.shutdown()
    assert '<pre id="result">' in dumped.stdout, dumped.stderr[-2000:]
    text = dumped.stdout.split('<pre id="result">', 1)[1].split("</pre>", 1)[0]
    assert text != "pending", dumped.stderr[-3000:]
    assert not text.startswith("error"), text
    return json.loads(text.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


SMALL_RUN = """
const before = rows();
root.querySelectorAll(".dspex-span")[1].querySelector(".dspex-toggle").click();  // open the root's first child
const afterFirst = rows();
for (let pass = 0; pass < 50; pass++) {  // open every closed node, one click at a time
  const closed = Array.from(root.querySelectorAll(".dspex-toggle")).find((toggle) => toggle.textContent === "▸");
  if (!closed) break;
  closed.click();
}
const afterAll = rows();
const isLm = (element) => element.querySelector(".dspex-kind").textContent === "lm";
Array.from(root.querySelectorAll(".dspex-span")).find(isLm).click();
// Drag the splitter 300 px to the left of the widget's right edge: the detail pane becomes 300 px wide.
const splitter = root.querySelector(".dspex-splitter");
const right = root.getBoundingClientRect().right;
const pointer = (type, x) => splitter.dispatchEvent(new PointerEvent(type, { clientX: x, pointerId: 1 }));
pointer("pointerdown", right - 100);
pointer("pointermove", right - 300);
pointer("pointerup", right - 300);
return {
  detailWidth: root.style.getPropertyValue("--dspex-detail-width"),
  header: root.querySelector(".dspex-header").textContent,
  treeColumns: Array.from(root.querySelectorAll(".dspex-tree-head .dspex-column")).map((cell) => cell.textContent),
  before, afterFirst, afterAll,
  trials: root.querySelectorAll(".dspex-trial").length,
  detail: root.querySelector(".dspex-detail").textContent.slice(0, 4000),
  selected: root.querySelectorAll(".dspex-span.dspex-selected").length,
};
"""


@needs_chromium
def test_tree_expands_and_detail_pane_shows_the_lm_call(tmp_path):
    journal = tmp_path / "journal.duckdb"
    with dx.Context(journal=journal, threads=2):
        result = dx.evaluate(
            dx.Program("dspy.ChainOfThought", signature="question -> answer"),
            dx.datasets.arithmetic(3, seed=2),
            metric=dx.metrics.exact_match,
            progress=False,
            trace=True,
        )
    viewer = dx.widgets.TraceViewer(journal, result.experiment_id)
    state = viewer_state(viewer, details=[node["id"] for node in viewer.nodes])
    screenshot = tmp_path / "trace_viewer.png"
    report = run_page(tmp_path, state, SMALL_RUN, screenshot=screenshot)
    assert report["trials"] == 3
    assert report["before"] == 3  # root open, its two children (module, metric) shown
    assert report["afterFirst"] > report["before"] and report["afterAll"] == len(viewer.nodes)
    assert report["selected"] == 1
    assert "lm · lab/small" in report["detail"] and "completion" in report["detail"]
    assert report["detailWidth"] == "300px"
    assert f"mean{result.mean:.3f}" in report["header"] and f"n{result.n}" in report["header"]
    assert report["treeColumns"][:6] == ["span", "status", "T", "tokens", "cost", "duration"]
    assert screenshot.exists() and screenshot.stat().st_size > 5_000


# -- a trial with 10,000 spans -------------------------------------------------------------------------------

MODULES, CALLS_PER_MODULE, WIDE, CHAIN = 69, 99, 3000, 98  # 1 + 69 * 100 + 3001 + 98 = 10,000 spans


def write_wide_trial(path: Path) -> str:
    """Journal one trial of 10,000 spans: a root over 69 modules of 99 calls, one tool span with 3,000 children,
    and a chain of 98 nested spans under the first call, whose deepest span alone says ``needle-deepest``."""
    trial_id = "example-0/r0"
    spans = []

    def add(span_id, parent_id, kind, name, **attributes):
        start = 1_700_000_000_000_000_000 + len(spans) * 1000
        spans.append(
            Span(trial_id, span_id, parent_id=parent_id, kind=kind, name=name, start_ns=start, end_ns=start + 500_000,
                 attributes=attributes)
        )  # fmt: skip

    add("root", None, "trial", trial_id)
    for module in range(MODULES):
        add(f"module-{module}", "root", "module", "Predict", signature="question -> answer")
        for call in range(CALLS_PER_MODULE):
            add(f"call-{module}-{call}", f"module-{module}", "lm", "lab/small", completion=f"answer {module}.{call}")
    add("wide", "root", "tool", "fetch_all")
    for document in range(WIDE):
        add(f"fetch-{document}", "wide", "tool", f"fetch {document}", url=f"doc://{document}")
    parent = "call-0-0"
    for depth in range(CHAIN):
        note = 'say "needle-deepest"' if depth == CHAIN - 1 else ""
        add(f"step-{depth}", parent, "module", f"Step{depth}", note=note)
        parent = f"step-{depth}"
    journal = open_journal(path)
    record = ExperimentRecord(kind="evaluation", name="wide", n_planned=1)
    journal.create_experiment(record)
    row = {"index": 0, "trial_id": trial_id, "example_id": "example-0", "repeat": 0, "status": "ok", "score": 1.0}
    journal.append_trials(record.id, [row], spans=[span.to_row() for span in spans])
    journal.finish_experiment(record.id, status="finished")
    return record.id


@pytest.fixture(scope="module")
def wide_trial(tmp_path_factory):
    path = tmp_path_factory.mktemp("wide") / "journal.duckdb"
    return path, write_wide_trial(path)


def test_python_state_of_a_10000_span_trial(wide_trial):
    viewer = dx.widgets.TraceViewer(*wide_trial)
    assert len(viewer.nodes) == 10_000 and len({node["id"] for node in viewer.nodes}) == 10_000
    seen = set()
    for node in viewer.nodes:  # parents before children, so the front end never sorts
        assert node["parent"] is None or node["parent"] in seen
        seen.add(node["id"])
    assert viewer.expanded == ["root"]
    wide = [node["id"] for node in viewer.nodes if node["parent"] == "wide"]
    assert wide == [f"fetch-{document}" for document in range(WIDE)]  # siblings in start order

    viewer.search = 'NEEDLE-deepest"'  # case-insensitive, and a quote matches the stored (escaped) JSON text
    assert viewer.matches == [f"step-{CHAIN - 1}"]
    chain = {"root", "module-0", "call-0-0", *(f"step-{depth}" for depth in range(CHAIN - 1))}
    assert set(viewer.expanded) == chain

    viewer.search = "lab/small"  # 6,831 matches, all marked; only the first 50 have their ancestors opened
    assert len(viewer.matches) == MODULES * CALLS_PER_MODULE
    assert set(viewer.expanded) == chain  # module-0 holds the first 50: the other 68 modules stay closed

    viewer.selected_span = "fetch-2999"
    assert viewer.detail["attributes"] == {"url": "doc://2999"} and viewer.detail["kind"] == "tool"


WIDE_SCENARIO = """
const report = { initial: rows(), trials: root.querySelectorAll(".dspex-trial").length };
row("wide").querySelector(".dspex-toggle").click();
report.afterOpen = rows();
const more = () => row("wide").nextElementSibling.querySelector(":scope > .dspex-more");
report.moreText = more().textContent;
more().click();
report.afterMore = rows();
report.moreAfterMore = more().textContent;
row("wide").querySelector(".dspex-toggle").click();
report.afterClose = rows();

model.set("search", "fetch 2999");  // beyond the wide node's first page
report.pinned = Boolean(row("fetch-2999")) && row("fetch-2999").classList.contains("dspex-match");
report.afterPinned = rows();

model.set("search", "needle-deepest");
const deepest = row("step-97");
report.deepest = Boolean(deepest) && deepest.classList.contains("dspex-match");
let ancestor = deepest.parentElement.previousElementSibling, closedAncestors = 0, depth = 0;
while (ancestor) {
  if (ancestor.querySelector(".dspex-toggle").textContent !== "▾") closedAncestors += 1;
  depth += 1;
  ancestor = ancestor.parentElement.classList.contains("dspex-children") ?
    ancestor.parentElement.previousElementSibling : null;
}
report.depth = depth;
report.closedAncestors = closedAncestors;
report.afterSearch = rows();
report.unpinnedDropped = !row("fetch-2999");  // no longer a match: the wide node shows its pages only
deepest.click();
const selectedRows = root.querySelectorAll(".dspex-span.dspex-selected");
report.selected = Array.from(selectedRows).map((element) => element.dataset.spanId);
report.oneMatch = root.querySelector(".dspex-match-count").textContent;
model.set("search", "lab/small");  // 6,831 matches: counted, the first one current
report.manyMatches = root.querySelector(".dspex-match-count").textContent;
root.querySelector(".dspex-previous").click();  // back from the first to the last, beyond the first 50
report.lastMatch = root.querySelector(".dspex-match-count").textContent;
report.current = Array.from(root.querySelectorAll(".dspex-current")).map((element) => element.dataset.spanId);
return report;
"""


@needs_chromium
def test_a_10000_span_trial_draws_bounded_pages_and_search_opens_the_way(tmp_path, wide_trial):
    viewer = dx.widgets.TraceViewer(*wide_trial)
    state = viewer_state(viewer, searches=["fetch 2999", "needle-deepest", "lab/small"])
    report = run_page(tmp_path, state, WIDE_SCENARIO)
    assert report["trials"] == 1
    assert report["initial"] == 1 + MODULES + 1  # the root and its children, nothing deeper
    assert report["afterOpen"] == report["initial"] + 200  # one page of the 3,000 children
    assert report["moreText"] == "… 2,800 more — show 200"
    assert report["afterMore"] == report["initial"] + 400
    assert report["moreAfterMore"] == "… 2,600 more — show 200"
    assert report["afterClose"] == report["initial"]
    # A match beyond the shown pages is drawn in its place, without the 2,599 siblings before it (the node
    # reopens with the 400 rows it had).
    assert report["pinned"] and report["afterPinned"] == report["initial"] + 400 + 1
    assert report["deepest"] and report["depth"] == CHAIN - 1 + 3 and report["closedAncestors"] == 0
    # The way down to the match and its siblings, not the trial's 10,000 spans; the earlier match beyond the
    # wide node's pages is gone again.
    assert report["unpinnedDropped"]
    assert report["afterSearch"] == report["afterPinned"] - 1 + CALLS_PER_MODULE + CHAIN
    assert report["selected"] == ["step-97"]
    assert report["oneMatch"] == "1 of 1 match"
    assert report["manyMatches"] == f"1 of {MODULES * CALLS_PER_MODULE:,} matches"
    assert report["lastMatch"] == f"{MODULES * CALLS_PER_MODULE:,} of {MODULES * CALLS_PER_MODULE:,} matches"
    # Stepping to a match whose ancestors the Python side left closed opens them and draws it.
    assert report["current"] == [f"call-{MODULES - 1}-{CALLS_PER_MODULE - 1}"]

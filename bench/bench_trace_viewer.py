"""Benchmark the trace viewer widget on one trial of 10,000 spans, Python side and in headless Chromium.

The trial (written through the journal's public API): a root over 69 modules of 99 calls (every third an
LM call with a ~400-character prompt), one tool span with 3,000 direct children (the wide fan-out) and a
chain of 98 nested spans. Span ids are 32 hex digits, like DSPy's call ids.

Python side, anchored on ``journal.spans(experiment, trial)`` (reading the same spans as ``Span`` objects):
``TraceViewer`` construction with its trial load; the trial's first search (which builds the search text
once per trial) and a later one.

Front end, in one headless Chromium page, on the Python side's real state: time to first render and time to
open the wide node, each until layout is done (``performance.now()`` in the page), anchored on appending the
same number of plain rows (a div with the same four texts) to the same pane. ``--compare-js PATH`` measures
another version of ``trace_viewer.js`` alongside (e.g. an older one from ``git show REV:widgets/...``).

Run: python bench/bench_trace_viewer.py [--repeats 7] [--compare-js PATH] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import format_table, machine_description, median_or_none, prepare_for_measurement, timed, write_json

import dspex_lab as dx
from dspex_lab.journal import ExperimentRecord, open_journal
from dspex_lab.trace import Span

MODULES, CALLS_PER_MODULE, WIDE, CHAIN = 69, 99, 3000, 98  # 1 + 69 * 100 + 3001 + 98 = 10,000 spans
TRIAL_ID = "example-0/r0"
TRAITS = ("header", "trials", "selected_trial", "nodes", "expanded", "selected_span", "detail", "search", "matches")
WIDGETS = Path(dx.__file__).resolve().parents[1] / "widgets"


def span_id(label: str) -> str:
    return uuid.uuid5(uuid.NAMESPACE_URL, label).hex


def write_trial(path: Path) -> tuple[str, str]:
    """Journal the 10,000-span trial; return (experiment id, id of the wide node)."""
    spans: list[Span] = []

    def add(label: str, parent: str | None, kind: str, name: str, attributes: dict) -> str:
        start = 1_700_000_000_000_000_000 + len(spans) * 1000
        identifier = span_id(label)
        spans.append(
            Span(
                TRIAL_ID,
                identifier,
                parent_id=parent,
                kind=kind,
                name=name,
                start_ns=start,
                end_ns=start + 400_000,
                attributes=attributes,
            )
        )
        return identifier

    root = add("root", None, "trial", TRIAL_ID, {})
    first_call = None
    for module in range(MODULES):
        parent = add(f"module-{module}", root, "module", "Predict", {"signature": "question -> answer"})
        for call in range(CALLS_PER_MODULE):
            if call % 3 == 1:
                prompt = f"Question {module}.{call}: " + "what is the sum of the numbers below? " * 10
                attributes = {"messages": [{"role": "user", "content": prompt}], "completion": [f"{call}"]}
                identifier = add(f"call-{module}-{call}", parent, "lm", "lab/small", attributes)
            else:
                kind, name = ("adapter_format", "ChatAdapter.format") if call % 3 == 0 else ("adapter_parse", "parse")
                identifier = add(f"call-{module}-{call}", parent, kind, name, {"fields": ["answer"]})
            first_call = first_call or identifier
    wide = add("wide", root, "tool", "fetch_all", {})
    for document in range(WIDE):
        add(f"fetch-{document}", wide, "tool", f"fetch {document}", {"url": f"doc://{document}"})
    parent = first_call
    for depth in range(CHAIN):
        note = "needle" if depth == CHAIN - 1 else ""
        parent = add(f"step-{depth}", parent, "module", f"Step{depth}", {"note": note})
    journal = open_journal(path)
    record = ExperimentRecord(kind="evaluation", name="trace-viewer-bench", n_planned=1)
    journal.create_experiment(record)
    row = {"index": 0, "trial_id": TRIAL_ID, "example_id": "example-0", "repeat": 0, "status": "ok", "score": 1.0}
    journal.append_trials(record.id, [row], spans=[span.to_row() for span in spans])
    journal.finish_experiment(record.id, status="finished")
    return record.id, wide


def measure_python(journal_path: Path, experiment_id: str, repeats: int) -> dict[str, list[float]]:
    """Time the anchor and the widget's Python side, alternating which goes first."""
    journal = open_journal(journal_path)
    times: dict[str, list[float]] = {"journal.spans": [], "construction": [], "first search": [], "search": []}
    for repeat in range(repeats):
        for side in ("anchor", "widget") if repeat % 2 == 0 else ("widget", "anchor"):
            prepare_for_measurement()
            if side == "anchor":
                with timed() as timing:
                    spans = journal.spans(experiment_id, TRIAL_ID)
                assert len(spans) == 10_000
                times["journal.spans"].append(timing.seconds)
                continue
            with timed() as timing:
                viewer = dx.widgets.TraceViewer(journal, experiment_id)
            times["construction"].append(timing.seconds)
            with timed() as timing:
                viewer.search = "needle"
            times["first search"].append(timing.seconds)
            assert len(viewer.matches) == 1 and len(viewer.expanded) == CHAIN + 2
            with timed() as timing:
                viewer.search = "fetch 2999"
            times["search"].append(timing.seconds)
            assert len(viewer.matches) == 1
    return times


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="trace_viewer.css"></head>
<body><pre id="result">pending</pre><script id="state" type="application/json">STATE</script>
<script type="module">
import current from "./trace_viewer.js";
import compare from "./compare.js";
const state = JSON.parse(document.getElementById("state").textContent);
const REPEATS = REPEAT_COUNT, WIDE = "WIDE_ID";
function makeModel() {
  const values = { ...state, expanded: [...state.expanded] };
  const listeners = {};
  return {
    get: (name) => values[name],
    set: (name, value) => {
      values[name] = value;
      (listeners["change:" + name] || []).forEach((callback) => callback());
    },
    save_changes: () => {},
    on: (event, callback) => { (listeners[event] = listeners[event] || []).push(callback); },
  };
}
function pane() {
  const host = document.createElement("div");
  document.body.append(host);
  return host;
}
function widget(viewer) {
  const host = pane();
  let start = performance.now();
  viewer.render({ model: makeModel(), el: host });
  void host.offsetHeight;  // style and layout are part of the cost
  const first = performance.now() - start;
  const firstRows = host.querySelectorAll(".dspex-span").length;
  const toggle = host.querySelector(`.dspex-span[data-span-id="${WIDE}"] .dspex-toggle`);
  start = performance.now();
  toggle.click();
  void host.offsetHeight;
  const expand = performance.now() - start;
  const expandRows = host.querySelectorAll(".dspex-span").length - firstRows;
  host.remove();
  return { first, expand, firstRows, expandRows };
}
function plainRows(count) {
  const host = pane();
  const start = performance.now();
  const tree = document.createElement("div");
  host.append(tree);
  for (let index = 0; index < count; index++) {
    const node = state.nodes[index % state.nodes.length];
    const row = document.createElement("div");
    for (const text of ["▸", node.kind, node.name, `${node.duration_ms.toFixed(1)} ms`]) {
      const cell = document.createElement("span");
      cell.textContent = text;
      row.append(cell);
    }
    tree.append(row);
  }
  void host.offsetHeight;
  const elapsed = performance.now() - start;
  host.remove();
  return elapsed;
}
const report = { current: [], compare: [], plainFirst: [], plainExpand: [], plainAll: [] };
try {
  for (let repeat = 0; repeat < REPEATS + 1; repeat++) {  // the first pass warms up and is dropped
    const sides = [["current", () => widget(current)]];
    if (compare) sides.push(["compare", () => widget(compare)]);
    const measured = {};
    for (const [name, run] of repeat % 2 ? sides.reverse() : sides) measured[name] = run();
    const plainFirst = plainRows(measured.current.firstRows);
    const plainExpand = plainRows(measured.current.expandRows);
    const plainAll = plainRows(state.nodes.length);
    if (repeat === 0) continue;
    for (const name in measured) report[name].push(measured[name]);
    report.plainFirst.push(plainFirst);
    report.plainExpand.push(plainExpand);
    report.plainAll.push(plainAll);
  }
  document.getElementById("result").textContent = JSON.stringify(report);
} catch (error) {
  document.getElementById("result").textContent = "error: " + error + " " + error.stack;
}
</script></body></html>
"""


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *arguments: object) -> None:
        pass


def measure_browser(state: dict, wide: str, repeats: int, compare_js: Path | None, folder: Path) -> dict:
    """Run the page in headless Chromium and return its raw measurements (milliseconds)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("the front-end measurements need Debian's chromium package")
    site = folder / "site"
    site.mkdir()
    shutil.copy(WIDGETS / "trace_viewer.js", site)
    shutil.copy(WIDGETS / "trace_viewer.css", site)
    if compare_js is not None:
        shutil.copy(compare_js, site / "compare.js")
    else:
        (site / "compare.js").write_text("export default null;\n", encoding="utf-8")
    page = (
        PAGE.replace("STATE", json.dumps(state).replace("</", "<\\/"))
        .replace("REPEAT_COUNT", str(repeats))
        .replace("WIDE_ID", wide)
    )
    (site / "index.html").write_text(page, encoding="utf-8")
    handler = functools.partial(QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    flags += ["--disable-component-update", "--disable-sync", f"--user-data-dir={folder / 'profile'}"]
    # No --virtual-time-budget: under virtual time performance.now() stands still while a script runs.
    flags += ["--window-size=1300,700"]
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        dumped = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=600)
    finally:
        server.shutdown()
    text = dumped.stdout.split('<pre id="result">', 1)[-1].split("</pre>", 1)[0]
    if not text.startswith("{"):
        raise SystemExit(f"the page did not report: {text[:2000]} {dumped.stderr[-2000:]}")
    return json.loads(text.replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compare-js", type=Path, default=None, help="another trace_viewer.js to measure alongside")
    parser.add_argument("--json", default=None)
    arguments = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        folder = Path(directory)
        journal_path = folder / "journal.duckdb"
        experiment_id, wide = write_trial(journal_path)
        dx.widgets.TraceViewer(journal_path, experiment_id)  # warm-up: imports, first open of the file
        python = measure_python(journal_path, experiment_id, arguments.repeats)
        viewer = dx.widgets.TraceViewer(journal_path, experiment_id)
        state = {name: getattr(viewer, name) for name in TRAITS}
        nodes_bytes = len(json.dumps(state["nodes"]))
        browser = measure_browser(state, wide, arguments.repeats, arguments.compare_js, folder)

    # (measurement, median ms, anchor, anchor median ms)
    spans_ms = median_or_none(python["journal.spans"]) * 1000  # type: ignore[operator]
    measured: list[tuple[str, float, str, float | None]] = [
        (name, median_or_none(python[name]) * 1000, "journal.spans", spans_ms)  # type: ignore[operator]
        for name in ("construction", "first search", "search")
    ]
    for key, label, plain in (("first", "first render", "plainFirst"), ("expand", "open the wide node", "plainExpand")):
        count = browser["current"][0][f"{key}Rows"]
        current = median_or_none([run[key] for run in browser["current"]])
        measured.append((f"{label}: {count} rows", current, f"{count} plain rows", median_or_none(browser[plain])))
        if browser["compare"]:
            drawn = browser["compare"][0][f"{key}Rows"]
            before = median_or_none([run[key] for run in browser["compare"]])
            measured.append((f"{label} (--compare-js): {drawn} rows", before, "this trace_viewer.js", current))
    measured.append(("10,000 plain rows (reference)", median_or_none(browser["plainAll"]), "", None))  # type: ignore[arg-type]
    rows = [
        [name, f"{mine:.1f} ms", anchor, "" if base is None else f"{base:.1f} ms", f"{mine / base:.2f}" if base else ""]
        for name, mine, anchor, base in measured
    ]
    print(f"10,000 spans; nodes payload {nodes_bytes / 1e6:.2f} MB of JSON; medians of {arguments.repeats} repeats\n")
    print(format_table(["measurement", "median", "anchor", "anchor median", "ratio"], rows))
    if arguments.json:
        write_json(
            arguments.json,
            {"machine": machine_description(), "python_seconds": python, "browser_ms": browser, "nodes": nodes_bytes},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

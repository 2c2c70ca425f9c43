"""The trace viewer's front end in a real headless Chromium.

The page loads widgets/trace_viewer.js from a server on 127.0.0.1 and renders it against a stand-in
for the widget model that replays the Python side's state (taken from a real TraceViewer over a
traced evaluation). The page clicks a node open and selects the LM span, then reports what it shows.
A screenshot is kept in the test's temporary directory.
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

pytest.importorskip("anywidget")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium package is not installed")

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="trace_viewer.css"></head>
<body><div id="widget"></div><pre id="result">pending</pre>
<script id="state" type="application/json">STATE</script>
<script type="module">
import viewer from "./trace_viewer.js";
const state = JSON.parse(document.getElementById("state").textContent);
try {
const listeners = {};
const model = {
  get: (name) => state[name],
  set: (name, value) => {
    state[name] = value;
    if (name === "selected_span") {  // what the Python side answers
      state.detail = state.details[value] || {};
      (listeners["change:detail"] || []).forEach((callback) => callback());
    }
    (listeners["change:" + name] || []).forEach((callback) => callback());
  },
  save_changes: () => {},
  on: (event, callback) => { (listeners[event] = listeners[event] || []).push(callback); },
};
const root = document.getElementById("widget");
viewer.render({ model, el: root });
const rows = () => root.querySelectorAll(".dspex-span").length;
const before = rows();
root.querySelectorAll(".dspex-span")[1].querySelector(".dspex-toggle").click();  // open the root's first child
const afterFirst = rows();
for (let pass = 0; pass < 20; pass++) {  // each click redraws the tree: find the next closed node anew
  const closed = Array.from(root.querySelectorAll(".dspex-toggle")).find((toggle) => toggle.textContent === "▸");
  if (!closed) break;
  closed.click();
}
const afterAll = rows();
const isLm = (row) => row.querySelector(".dspex-kind").textContent === "lm";
const lm = Array.from(root.querySelectorAll(".dspex-span")).find(isLm);
lm.click();
document.getElementById("result").textContent = JSON.stringify({
  before, afterFirst, afterAll,
  trials: root.querySelectorAll(".dspex-trial").length,
  detail: root.querySelector(".dspex-detail").textContent.slice(0, 4000),
  selected: root.querySelectorAll(".dspex-span.dspex-selected").length,
});
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
    details = {}
    for node in viewer.nodes:
        viewer.selected_span = node["id"]
        details[node["id"]] = dict(viewer.detail)
    viewer.selected_span = ""
    state = {
        name: getattr(viewer, name)
        for name in ("trials", "selected_trial", "nodes", "expanded", "selected_span", "detail", "search", "matches")
    }
    state["details"] = details

    site = tmp_path / "site"
    site.mkdir()
    widgets = Path(dx.__file__).resolve().parents[1] / "widgets"
    shutil.copy(widgets / "trace_viewer.js", site)
    shutil.copy(widgets / "trace_viewer.css", site)
    inline = json.dumps(state, default=str).replace("</", "<\\/")  # safe inside a <script> element
    (site / "index.html").write_text(PAGE.replace("STATE", inline), encoding="utf-8")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    try:
        dumped = chromium("--dump-dom", url, user_data=tmp_path / "profile-dom")
        screenshot = tmp_path / "trace_viewer.png"
        chromium(f"--screenshot={screenshot}", "--window-size=1300,700", url, user_data=tmp_path / "profile-shot")
    finally:
        server.shutdown()
    assert '<pre id="result">' in dumped.stdout, dumped.stderr[-2000:]
    text = dumped.stdout.split('<pre id="result">', 1)[1].split("</pre>", 1)[0]
    assert text != "pending", dumped.stderr[-3000:]
    assert not text.startswith("error"), text
    report = json.loads(text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    assert report["trials"] == 3
    assert report["before"] == 3  # root open, its two children (module, metric) shown
    assert report["afterFirst"] > report["before"] and report["afterAll"] == len(viewer.nodes)
    assert report["selected"] == 1
    assert "lm · lab/small" in report["detail"] and "completion" in report["detail"]
    assert screenshot.exists() and screenshot.stat().st_size > 5_000

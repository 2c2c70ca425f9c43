// The trace viewer's front end: a header, the trial list, a collapsible span tree with a timing waterfall and
// search, and a detail pane. The Python side (dspex_lab.notebook.TraceViewer) owns the data; this file only
// renders it and reports clicks.
//
// A trial can hold 10,000 spans, some with thousands of children, so the tree is drawn lazily:
// - the parent -> children index is built once per trial (when `nodes` changes), not per redraw;
// - each row is followed by a box holding its children's rows, filled only while the node is expanded, so
//   opening or closing a node touches that node's rows only;
// - a box shows its children a page at a time (PAGE rows, then a "show more" row), plus any child that is a
//   search match or leads to one, in its place among its siblings;
// - selection and match changes only move CSS classes between rows.
//
// Colours come from JupyterLab's theme variables (--jp-*), with light fallbacks outside JupyterLab.

const PAGE = 200;
const INDENT = 14; // pixels per tree level
const MIN_DETAIL = 240; // the detail pane's narrowest width while dragging its edge, in pixels
const TREE_COLUMNS = ["span", "status", "T", "tokens", "cost", "duration", "timeline"];
const TRIAL_COLUMNS = ["trial", "question", "expected", "answer", "score", "status", "tokens", "cost", "latency"];
// Each trial column's starting width (CSS grid tracks): the texts share what the numbers leave. Dragging a
// column head's right edge sets that column's width in pixels (kept while the widget lives).
const TRIAL_WIDTHS = ["minmax(7em, 0.6fr)", "minmax(8em, 2fr)", "minmax(5em, 1fr)", "minmax(5em, 1fr)", "3.6em",
  "minmax(6em, 0.8fr)", "5.2em", "6.2em", "5.4em"];
const MIN_COLUMN = 32; // the narrowest a dragged column gets, in pixels

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const numbers = new Intl.NumberFormat("en"); // one formatter: toLocaleString builds one per call
const integer = (value) => numbers.format(value);

function formatCost(cost, unpriced) {
  const dollars = (value) => `$${value >= 0.01 ? value.toFixed(4) : value.toPrecision(2)}`;
  if (cost == null) return unpriced ? "unpriced" : "";
  if (unpriced) return cost > 0 ? `${dollars(cost)} + unpriced` : "unpriced";
  return cost === 0 ? "$0" : dollars(cost);
}

function formatDuration(ms) {
  if (ms == null) return "";
  return ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function formatTokens(tokensIn, tokensOut) {
  if (tokensIn == null && tokensOut == null) return "";
  return `${integer(tokensIn ?? 0)}→${integer(tokensOut ?? 0)}`;
}

function buildIndex(nodes) {
  const byId = new Map();
  const children = new Map();
  let end = 0;
  for (const node of nodes) {
    byId.set(node.id, node);
    const key = node.parent ?? "";
    let siblings = children.get(key);
    if (!siblings) children.set(key, (siblings = []));
    siblings.push(node);
    end = Math.max(end, (node.start_ms ?? 0) + node.duration_ms);
  }
  // A span whose parent is not in the trial is shown as a root, as the Python side treats it.
  const roots = nodes.filter((node) => node.parent == null || !byId.has(node.parent));
  return { byId, children, roots, end };
}

// Which of a node's children to draw: the first `limit`, plus pinned ones further on, with the gaps between
// them as { gap: [first, last] } entries.
function visibleChildren(kids, limit, pinned) {
  const shown = [];
  let next = 0;
  const take = (index) => {
    if (index > next) shown.push({ gap: [next, index - 1] });
    shown.push({ node: kids[index] });
    next = index + 1;
  };
  for (let index = 0; index < Math.min(limit, kids.length); index++) take(index);
  if (pinned.size) for (let index = limit; index < kids.length; index++) if (pinned.has(kids[index].id)) take(index);
  if (next < kids.length) shown.push({ gap: [next, kids.length - 1] });
  return shown;
}

// An exception's name with break opportunities between its words (LMRate|Limit|Error): a narrow column wraps
// it at a word, never mid-word, and its text stays the whole name.
function errorName(className, name) {
  const node = el("span", className);
  const words = name.split(/(?<=[a-z0-9])(?=[A-Z])|(?<=\.)/);
  words.forEach((word, position) => {
    if (position) node.append(document.createElement("wbr"));
    node.append(word);
  });
  return node;
}

function stat(name, label, value, title) {
  const item = el("span", "dspex-stat");
  item.dataset.stat = name;
  item.append(el("span", "dspex-stat-label", label), el("span", "dspex-stat-value", value));
  if (title) item.title = title;
  return item;
}

function columnHeads(className, names) {
  const head = el("div", className);
  for (const name of names) head.append(el("span", "dspex-column", name));
  return head;
}

// A cell of text cut to one line; its whole text is its tooltip.
function textCell(className, text) {
  const cell = el("span", `dspex-cell-text ${className}`, text || "");
  if (text) cell.title = text;
  return cell;
}

function render({ model, el: root }) {
  root.classList.add("dspex-trace-viewer");
  const headerPane = el("div", "dspex-header");
  const trialsPane = el("div", "dspex-trials");
  const treePane = el("div", "dspex-tree");
  const detailPane = el("div", "dspex-detail");
  const splitter = el("div", "dspex-splitter");
  splitter.title = "drag to resize the detail pane";
  const search = el("input", "dspex-search");
  search.placeholder = "search the experiment's spans (Enter: next match)";
  search.value = model.get("search");
  search.addEventListener("input", () => {
    model.set("search", search.value);
    model.save_changes();
  });
  search.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    step(event.shiftKey ? -1 : 1);
  });
  const matchCount = el("span", "dspex-match-count");
  const previous = el("button", "dspex-previous", "↑");
  previous.title = "previous match (Shift+Enter)";
  const next = el("button", "dspex-next", "↓");
  next.title = "next match (Enter)";
  previous.addEventListener("click", () => step(-1));
  next.addEventListener("click", () => step(1));
  const searchBar = el("div", "dspex-searchbar");
  searchBar.append(search, matchCount, previous, next);
  const middle = el("div", "dspex-middle");
  middle.append(searchBar, treePane);
  // The root is a size container: a narrow output area stacks the detail pane under the tree (see the CSS).
  const layout = el("div", "dspex-layout");
  layout.append(headerPane, trialsPane, middle, splitter, detailPane);
  root.replaceChildren(layout);

  let index = buildIndex([]);
  const expanded = new Set();
  const limits = new Map(); // node id -> how many of its children are shown (PAGE unless "more" was clicked)
  const drawn = new Map(); // node id -> { row, box, toggle, depth } for every row in the DOM
  let matches = new Set();
  let matchOrder = []; // the matches in the Python side's order, for stepping through them
  let current = -1; // the position in matchOrder of the match stepped to
  let pinned = new Set(); // matches and their ancestors: drawn even beyond a page
  let selected = "";

  function drawHeader() {
    const header = model.get("header") || {};
    headerPane.replaceChildren();
    if (!header.experiment_id) return;
    const title = el("span", "dspex-title");
    title.append(el("strong", null, header.name), el("span", "dspex-id", ` ${header.experiment_id}`));
    if (header.status && header.status !== "finished") title.append(el("span", "dspex-run-status", ` ${header.status}`));
    title.title = [header.program && `program ${header.program}`, header.dataset && `dataset ${header.dataset}`,
      header.metric && `metric ${header.metric}`].filter(Boolean).join(" · ");
    headerPane.append(title);
    let mean = header.mean == null ? "—" : header.mean.toFixed(3);
    if (header.mean != null && header.ci) {
      const level = header.confidence == null ? "" : ` ${Math.round(header.confidence * 100)}% CI`;
      mean += ` [${header.ci[0].toFixed(3)}, ${header.ci[1].toFixed(3)}]${level}`;
    }
    headerPane.append(stat("mean", "mean", mean, header.ci_method ? `interval: ${header.ci_method}` : ""));
    headerPane.append(stat("n", "n", integer(header.n ?? 0), `${integer(header.n_trials ?? 0)} trials, ` +
      `${integer(header.traced_trials ?? 0)} traced`));
    const errors = Object.entries(header.errors || {}).map(([name, count]) => `${name} ${count}`).join(", ");
    const errorStat = stat("errors", "errors", integer(header.n_errors ?? 0) + (errors ? ` (${errors})` : ""));
    if (header.n_errors) errorStat.classList.add("dspex-has-errors");
    headerPane.append(errorStat);
    headerPane.append(stat("tokens", "tokens", `${integer(header.tokens_in ?? 0)} in · ${integer(header.tokens_out ?? 0)} out`));
    const unpriced = header.unpriced_models || [];
    const cost = formatCost(header.cost, unpriced.length > 0) || "—";
    headerPane.append(stat("cost", "cost", cost, unpriced.length ? `no price known for ${unpriced.join(", ")}` : ""));
  }

  const trialWidths = [...TRIAL_WIDTHS];

  function setTrialWidths() {
    root.style.setProperty("--dspex-trial-columns", trialWidths.join(" "));
  }

  // Drag a column head's right edge to set that column's width; the other columns keep theirs.
  function resizable(head) {
    Array.from(head.children).forEach((cell, position) => {
      const handle = el("span", "dspex-resize");
      handle.title = "drag to resize the column";
      cell.append(handle);
      handle.addEventListener("pointerdown", (event) => {
        event.preventDefault();
        event.stopPropagation();
        try {
          handle.setPointerCapture(event.pointerId);
        } catch {
          // an event without an active pointer (dispatched by a script) has nothing to capture
        }
        const left = cell.getBoundingClientRect().left;
        const move = (moved) => {
          trialWidths[position] = `${Math.round(Math.max(moved.clientX - left, MIN_COLUMN))}px`;
          setTrialWidths();
        };
        const stop = () => {
          handle.removeEventListener("pointermove", move);
          handle.removeEventListener("pointerup", stop);
        };
        handle.addEventListener("pointermove", move);
        handle.addEventListener("pointerup", stop);
      });
    });
    return head;
  }

  function drawTrials() {
    setTrialWidths();
    trialsPane.replaceChildren(resizable(columnHeads("dspex-trials-head", TRIAL_COLUMNS)));
    const found = model.get("trial_matches") || {};
    for (const trial of model.get("trials")) {
      const row = el("div", `dspex-trial dspex-${trial.status}`);
      row.dataset.trialId = trial.trial_id;
      const score = trial.score == null ? "—" : Number(trial.score).toFixed(2);
      const status = errorName("dspex-trial-outcome", trial.error_type || trial.status);
      if (trial.error) status.title = trial.error;
      if (trial.attempts > 1) status.append(el("span", "dspex-attempts", ` ×${trial.attempts}`));
      const spent = trial.tokens || trial.cost || trial.unpriced;
      const id = el("span", "dspex-trial-id", trial.trial_id);
      if (found[trial.trial_id]) {
        row.classList.add("dspex-trial-match");
        const badge = el("span", "dspex-match-badge", integer(found[trial.trial_id]));
        badge.title = `${integer(found[trial.trial_id])} spans of this trial match the search`;
        id.prepend(badge);
      }
      row.append(
        id,
        textCell("dspex-question", trial.question),
        textCell("dspex-expected", trial.expected),
        textCell("dspex-answer", trial.answer),
        el("span", "dspex-number dspex-score", score),
        status,
        el("span", "dspex-number dspex-tokens", trial.tokens == null ? "—" : integer(trial.tokens)),
        el("span", "dspex-number dspex-cost", spent ? formatCost(trial.cost, trial.unpriced) : "—"),
        el("span", "dspex-number dspex-latency", formatDuration(trial.latency_ms) || "—"),
      );
      row.title = `${trial.trial_id}: ${trial.spans} spans` + (trial.attempts > 1 ? `, ${trial.attempts} attempts` : "");
      if (trial.trial_id === model.get("selected_trial")) row.classList.add("dspex-selected");
      row.addEventListener("click", () => {
        model.set("selected_trial", trial.trial_id);
        model.save_changes();
      });
      trialsPane.append(row);
    }
  }

  function saveExpanded() {
    model.set("expanded", Array.from(expanded));
    model.save_changes();
  }

  function drawNode(node, depth, container) {
    const kids = index.children.get(node.id) || [];
    const row = el("div", `dspex-span dspex-${node.status}`);
    row.dataset.spanId = node.id;
    const name = el("span", "dspex-cell-name");
    name.style.paddingLeft = `${depth * INDENT}px`;
    const toggle = el("span", "dspex-toggle", kids.length ? (expanded.has(node.id) ? "▾" : "▸") : "·");
    // "attempt 2" rather than "attempt attempt 2": the kind is hidden when the name starts with it.
    const repeated = node.name.split(" ", 1)[0] === node.kind;
    name.append(toggle, el("span", repeated ? "dspex-kind dspex-repeated" : "dspex-kind", node.kind),
      el("span", "dspex-name", node.name));
    if (node.label) name.append(el("span", "dspex-label", node.label.startsWith(node.name) ? node.label.slice(node.name.length) : node.label));
    if (kids.length > PAGE) name.append(el("span", "dspex-count", `${kids.length.toLocaleString("en")} children`));
    if (node.status === "timeout" || node.status === "cancelled") name.append(el("span", "dspex-cut", node.status));
    name.title = `${repeated ? "" : `${node.kind} `}${node.label || node.name}`; // the cell may be cut short
    row.append(name);
    // Cells are placed by their grid column, so a span without an error, usage or temperature gets no
    // empty cells (most of a large trial's rows).
    if (node.error_type) {
      const status = errorName("dspex-cell-status", node.error_type);
      status.title = node.error || node.error_type;
      row.append(status);
    } else if (node.score != null) {
      row.append(el("span", "dspex-cell-status", `score ${node.score}`));
    }
    if (node.kind === "lm") {
      // An LM span is named by its model; the column holds its temperature ("—": the LM's default).
      const lm = el("span", "dspex-cell-temperature dspex-number", node.temperature == null ? "—" : String(node.temperature));
      lm.title = `${node.model ?? node.name}, ${node.temperature == null ? "the LM's default temperature" : `temperature ${node.temperature}`}`;
      row.append(lm);
    }
    if (node.tokens_in != null || node.tokens_out != null) {
      const tokens = el("span", "dspex-cell-tokens dspex-number", formatTokens(node.tokens_in, node.tokens_out));
      tokens.title = `${integer(node.tokens_in ?? 0)} in, ${integer(node.tokens_out ?? 0)} out` +
        (node.kind === "lm" ? "" : ` over ${node.lm_calls} LM call${node.lm_calls > 1 ? "s" : ""} below`);
      row.append(tokens);
    }
    if (node.cost != null || node.unpriced || node.cached) {
      row.append(el("span", "dspex-cell-cost dspex-number", node.cached ? "cached" : formatCost(node.cost, node.unpriced)));
    }
    const bar = el("span", "dspex-bar");
    const total = index.end || 1;
    bar.style.left = `${((node.start_ms ?? 0) / total) * 100}%`;
    bar.style.width = `${(node.duration_ms / total) * 100}%`;
    const timeline = el("span", "dspex-cell-timeline");
    timeline.title = `starts at ${formatDuration(node.start_ms ?? 0)}, lasts ${formatDuration(node.duration_ms)}`;
    timeline.append(bar);
    row.append(el("span", "dspex-duration dspex-number", formatDuration(node.duration_ms)), timeline);
    if (matches.has(node.id)) row.classList.add("dspex-match");
    if (matchOrder[current] === node.id) row.classList.add("dspex-current");
    if (node.id === selected) row.classList.add("dspex-selected");
    const box = el("div", "dspex-children");
    container.append(row, box);
    drawn.set(node.id, { row, box, toggle, depth });
    if (expanded.has(node.id)) fillChildren(node.id);
  }

  function forgetRows(box) {
    for (const row of box.querySelectorAll(".dspex-span")) drawn.delete(row.dataset.spanId);
    box.replaceChildren();
  }

  function fillChildren(id) {
    const entry = drawn.get(id);
    if (!entry) return;
    forgetRows(entry.box);
    const kids = index.children.get(id) || [];
    const fragment = document.createDocumentFragment();
    for (const item of visibleChildren(kids, limits.get(id) ?? PAGE, pinned)) {
      if (item.node) drawNode(item.node, entry.depth + 1, fragment);
      else fragment.append(moreRow(id, item.gap, entry.depth + 1));
    }
    entry.box.append(fragment);
  }

  function moreRow(id, [first, last], depth) {
    const hidden = last - first + 1;
    const row = el("div", "dspex-more", `… ${hidden.toLocaleString("en")} more — show ${Math.min(hidden, PAGE)}`);
    row.style.paddingLeft = `${depth * INDENT + INDENT}px`;
    row.addEventListener("click", (event) => {
      event.stopPropagation();
      limits.set(id, Math.max(limits.get(id) ?? PAGE, first + PAGE));
      fillChildren(id);
    });
    return row;
  }

  function setOpen(id, open) {
    if (open) expanded.add(id);
    else expanded.delete(id);
    const entry = drawn.get(id);
    if (!entry || !(index.children.get(id) || []).length) return;
    entry.toggle.textContent = open ? "▾" : "▸";
    if (open) fillChildren(id);
    else forgetRows(entry.box);
  }

  function ancestorsOf(ids) {
    const found = new Set();
    for (const id of ids) {
      let current = id;
      while (current != null && index.byId.has(current) && !found.has(current)) {
        found.add(current);
        current = index.byId.get(current).parent;
      }
    }
    return found;
  }

  function drawTimeScale() {
    const head = columnHeads("dspex-tree-head", TREE_COLUMNS);
    head.lastChild.textContent = `timeline ${formatDuration(index.end)}`;
    head.lastChild.title = `bars placed by start and duration within the trial's ${formatDuration(index.end)}`;
    return head;
  }

  function drawTree() {
    index = buildIndex(model.get("nodes"));
    expanded.clear();
    for (const id of model.get("expanded")) expanded.add(id);
    limits.clear();
    matchOrder = model.get("matches");
    matches = new Set(matchOrder);
    current = matchOrder.length ? 0 : -1;
    pinned = ancestorsOf(matches);
    selected = model.get("selected_span");
    drawn.clear();
    treePane.replaceChildren(drawTimeScale());
    const fragment = document.createDocumentFragment();
    for (const node of index.roots) drawNode(node, 0, fragment);
    treePane.append(fragment);
    drawMatchCount();
  }

  // One listener for every row (not one per row): a click on a toggle opens or closes, elsewhere selects.
  treePane.addEventListener("click", (event) => {
    const row = event.target.closest(".dspex-span");
    if (!row) return;
    const id = row.dataset.spanId;
    if (event.target.classList.contains("dspex-toggle")) {
      if (!(index.children.get(id) || []).length) return;
      setOpen(id, !expanded.has(id));
      saveExpanded();
      return;
    }
    model.set("selected_span", id);
    model.save_changes();
  });

  function syncExpanded() {
    const wanted = new Set(model.get("expanded"));
    for (const id of Array.from(expanded)) if (!wanted.has(id)) setOpen(id, false);
    // Parents first: opening a parent draws its children, which then open in place.
    const opening = Array.from(wanted).filter((id) => !expanded.has(id));
    for (const id of opening) expanded.add(id);
    for (const id of opening) {
      const entry = drawn.get(id);
      if (entry && !entry.box.firstChild) setOpen(id, true);
    }
  }

  function syncMatches() {
    for (const id of matches) drawn.get(id)?.row.classList.remove("dspex-match", "dspex-current");
    matchOrder = model.get("matches");
    matches = new Set(matchOrder);
    const before = pinned;
    pinned = ancestorsOf(matches);
    // A newly pinned child beyond its parent's page is drawn by refilling that parent; a child no longer pinned
    // is dropped the same way (refilling draws the parent's pages plus what is still pinned).
    const parents = new Set();
    for (const id of pinned) {
      if (before.has(id) || drawn.has(id)) continue;
      const parent = index.byId.get(id).parent;
      if (parent != null && expanded.has(parent)) parents.add(parent);
    }
    for (const id of before) {
      if (pinned.has(id) || !drawn.has(id)) continue;
      const parent = index.byId.get(id)?.parent;
      if (parent != null && expanded.has(parent)) parents.add(parent);
    }
    for (const parent of parents) if (drawn.has(parent)) fillChildren(parent);
    for (const id of matches) drawn.get(id)?.row.classList.add("dspex-match");
    current = -1;
    if (matchOrder.length) goTo(0);
    drawMatchCount();
  }

  function drawMatchCount() {
    const searching = model.get("search").trim() !== "";
    const count = matchOrder.length;
    const noun = count === 1 ? "match" : "matches";
    const here = count ? `${integer(current + 1)} of ${integer(count)} ${noun}` : "no matches";
    // The experiment-wide count, once the kernel has sent one (a bare model without the trait shows none).
    const found = model.get("trial_matches");
    const trials = found ? Object.keys(found).length : 0;
    const elsewhere = found ? ` · ${integer(trials)} trial${trials === 1 ? "" : "s"} match` : "";
    matchCount.textContent = !searching ? "" : here + elsewhere;
    previous.disabled = next.disabled = count < 2;
  }

  // Step to a match: open the way down to it (parents first), mark it and scroll it into view.
  function goTo(position) {
    drawn.get(matchOrder[current])?.row.classList.remove("dspex-current");
    current = position;
    const id = matchOrder[current];
    const chain = [];
    for (let parent = index.byId.get(id)?.parent; parent != null && index.byId.has(parent); parent = index.byId.get(parent).parent) {
      if (chain.includes(parent)) break; // a parent cycle in damaged data
      chain.unshift(parent);
    }
    const closed = chain.filter((parent) => !expanded.has(parent));
    for (const parent of closed) setOpen(parent, true);
    if (closed.length) saveExpanded();
    const row = drawn.get(id)?.row;
    if (row) {
      row.classList.add("dspex-current");
      if (typeof row.scrollIntoView === "function") row.scrollIntoView({ block: "nearest" });
    }
  }

  function step(direction) {
    if (!matchOrder.length) return;
    goTo((current + direction + matchOrder.length) % matchOrder.length);
    drawMatchCount();
  }

  function syncSelected() {
    drawn.get(selected)?.row.classList.remove("dspex-selected");
    selected = model.get("selected_span");
    drawn.get(selected)?.row.classList.add("dspex-selected");
  }

  function drawDetail() {
    detailPane.replaceChildren();
    const detail = model.get("detail");
    if (!detail || !detail.id) {
      detailPane.append(el("div", "dspex-hint", "select a span"));
      return;
    }
    detailPane.append(el("h4", null, `${detail.kind} · ${detail.name}`));
    detailPane.append(el("div", `dspex-status dspex-${detail.status}`, detail.error || detail.status));
    const facts = [["duration", formatDuration(detail.duration_ms)]];
    const usage = detail.usage;
    if (usage) {
      facts.push(["model", usage.model ?? "—"], ["temperature", usage.temperature ?? "the LM's default"]);
      const counted = usage.tokens_in != null || usage.tokens_out != null;
      facts.push(["tokens", counted ? `${integer(usage.tokens_in ?? 0)} in → ${integer(usage.tokens_out ?? 0)} out` : "—"]);
      facts.push(["cost", usage.cached ? "cached" : formatCost(usage.cost, usage.unpriced) || "—"]);
    }
    const table = el("dl", "dspex-facts");
    for (const [name, value] of facts) table.append(el("dt", null, name), el("dd", null, String(value)));
    detailPane.append(table);
    const attributes = { ...detail.attributes };
    if (detail.comparison) {
      detailPane.append(comparison(detail.comparison));
      delete attributes.expected;
      delete attributes.got;
      // What the metric said beyond its score reads as text under the comparison.
      if (typeof detail.comparison.feedback === "string") {
        detailPane.append(textBlock("dspex-feedback", "the metric's feedback", detail.comparison.feedback));
        delete attributes.feedback;
      }
    }
    // Prompts and completions read as text (newlines kept), one block per message; the rest stays JSON.
    if (Array.isArray(attributes.messages)) {
      for (const message of attributes.messages) {
        const content = typeof message?.content === "string" ? message.content : JSON.stringify(message?.content, null, 2);
        detailPane.append(textBlock("dspex-message", message?.role ?? "message", content));
      }
      delete attributes.messages;
    }
    if (attributes.completion !== undefined && attributes.completion !== null) {
      const completions = Array.isArray(attributes.completion) ? attributes.completion : [attributes.completion];
      completions.forEach((completion, index) => {
        const text = typeof completion === "string" ? completion : JSON.stringify(completion, null, 2);
        const title = completions.length > 1 ? `completion ${index + 1}` : "completion";
        detailPane.append(textBlock("dspex-completion", title, text));
      });
      delete attributes.completion;
    }
    detailPane.append(el("div", "dspex-block-title", "attributes"));
    detailPane.append(el("pre", "dspex-attributes", JSON.stringify(attributes, null, 2)));
  }

  // The metric's inputs side by side: one line per field, fields that differ marked.
  function comparison({ question, expected, got, score }) {
    const block = el("div", "dspex-block dspex-compare");
    // The example's inputs first: what was asked, then what was expected and what came back.
    for (const [field, value] of Object.entries(question || {})) {
      const text = typeof value === "string" ? value : JSON.stringify(value, null, 2);
      block.append(textBlock("dspex-question-block", field, text));
    }
    const title = score == null ? "expected vs got" : `expected vs got — score ${score}`;
    block.append(el("div", "dspex-block-title", title));
    const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
    const table = el("table", "dspex-compare-table");
    const head = el("tr");
    head.append(el("th", null, "field"), el("th", null, "expected"), el("th", null, "got"));
    table.append(head);
    const text = (value) => (value === undefined ? "" : typeof value === "string" ? value : JSON.stringify(value, null, 2));
    const line = (field, left, right) => {
      const row = el("tr", left !== undefined && right !== undefined && text(left) !== text(right) ? "dspex-differs" : "");
      row.dataset.field = field;
      row.append(el("td", "dspex-field", field), el("td", "dspex-expected", text(left)), el("td", "dspex-got", text(right)));
      table.append(row);
    };
    if (isObject(expected) && isObject(got)) {
      // Fields the prediction answers first (those the metric compares), then the rest of each side.
      const shared = Object.keys(expected).filter((key) => key in got);
      const rest = [...Object.keys(expected), ...Object.keys(got)].filter((key) => !shared.includes(key));
      for (const key of [...shared, ...new Set(rest)]) line(key, expected[key], got[key]);
    } else {
      line("value", expected, got);
    }
    block.append(table);
    return block;
  }

  function textBlock(className, title, text) {
    const block = el("div", `dspex-block ${className}`);
    block.dataset.title = title;
    block.append(el("div", "dspex-block-title", title), el("pre", "dspex-text", text));
    return block;
  }

  // Dragging the splitter sets the detail pane's width (kept while the widget lives).
  splitter.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    try {
      splitter.setPointerCapture(event.pointerId); // keep receiving moves when the pointer leaves the thin bar
    } catch {
      // an event without an active pointer (dispatched by a script) has nothing to capture
    }
    const move = (moved) => {
      const box = root.getBoundingClientRect();
      const width = Math.min(Math.max(box.right - moved.clientX, MIN_DETAIL), Math.max(box.width * 0.7, MIN_DETAIL));
      root.style.setProperty("--dspex-detail-width", `${Math.round(width)}px`);
    };
    const stop = () => {
      splitter.removeEventListener("pointermove", move);
      splitter.removeEventListener("pointerup", stop);
    };
    splitter.addEventListener("pointermove", move);
    splitter.addEventListener("pointerup", stop);
  });

  model.on("change:header", drawHeader);
  model.on("change:trials", drawTrials);
  model.on("change:selected_trial", drawTrials);
  model.on("change:trial_matches", () => {
    drawTrials();
    drawMatchCount();
  });
  model.on("change:nodes", drawTree);
  model.on("change:expanded", syncExpanded);
  model.on("change:matches", syncMatches);
  model.on("change:search", drawMatchCount);
  model.on("change:selected_span", syncSelected);
  model.on("change:detail", drawDetail);
  drawHeader();
  drawTrials();
  drawTree();
  drawDetail();
}

export default { render };

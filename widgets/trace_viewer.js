// The trace viewer's front end: trial list, collapsible span tree, search, and a detail pane. The Python side
// (dspex_lab.notebook.TraceViewer) owns the data; this file only renders it and reports clicks.
//
// A trial can hold 10,000 spans, some with thousands of children, so the tree is drawn lazily:
// - the parent -> children index is built once per trial (when `nodes` changes), not per redraw;
// - each row is followed by a box holding its children's rows, filled only while the node is expanded, so
//   opening or closing a node touches that node's rows only;
// - a box shows its children a page at a time (PAGE rows, then a "show more" row), plus any child that is a
//   search match or leads to one, in its place among its siblings;
// - selection and match changes only move CSS classes between rows.

const PAGE = 200;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function buildIndex(nodes) {
  const byId = new Map();
  const children = new Map();
  for (const node of nodes) {
    byId.set(node.id, node);
    const key = node.parent ?? "";
    let siblings = children.get(key);
    if (!siblings) children.set(key, (siblings = []));
    siblings.push(node);
  }
  // A span whose parent is not in the trial is shown as a root, as the Python side treats it.
  const roots = nodes.filter((node) => node.parent == null || !byId.has(node.parent));
  return { byId, children, roots };
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

function render({ model, el: root }) {
  root.classList.add("dspex-trace-viewer");
  const trialsPane = el("div", "dspex-trials");
  const treePane = el("div", "dspex-tree");
  const detailPane = el("div", "dspex-detail");
  const search = el("input", "dspex-search");
  search.placeholder = "search spans";
  search.value = model.get("search");
  search.addEventListener("input", () => {
    model.set("search", search.value);
    model.save_changes();
  });
  const middle = el("div", "dspex-middle");
  middle.append(search, treePane);
  root.replaceChildren(trialsPane, middle, detailPane);

  let index = buildIndex([]);
  const expanded = new Set();
  const limits = new Map(); // node id -> how many of its children are shown (PAGE unless "more" was clicked)
  const drawn = new Map(); // node id -> { row, box, toggle, depth } for every row in the DOM
  let matches = new Set();
  let pinned = new Set(); // matches and their ancestors: drawn even beyond a page
  let selected = "";

  function drawTrials() {
    trialsPane.replaceChildren();
    for (const trial of model.get("trials")) {
      const row = el("div", `dspex-trial dspex-${trial.status}`);
      row.dataset.trialId = trial.trial_id;
      const score = trial.score === null ? "—" : Number(trial.score).toFixed(2);
      row.textContent = `${trial.trial_id}  ${score}${trial.error_type ? "  " + trial.error_type : ""}`;
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
    row.style.paddingLeft = `${depth * 14}px`;
    const toggle = el("span", "dspex-toggle", kids.length ? (expanded.has(node.id) ? "▾" : "▸") : "·");
    row.append(toggle, el("span", "dspex-kind", node.kind), el("span", "dspex-name", node.name),
      el("span", "dspex-duration", `${node.duration_ms.toFixed(1)} ms`));
    if (kids.length > PAGE) row.append(el("span", "dspex-count", `${kids.length.toLocaleString("en")} children`));
    if (node.status === "timeout" || node.status === "cancelled") row.append(el("span", "dspex-cut", node.status));
    if (matches.has(node.id)) row.classList.add("dspex-match");
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
    row.style.paddingLeft = `${depth * 14 + 14}px`;
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

  function drawTree() {
    index = buildIndex(model.get("nodes"));
    expanded.clear();
    for (const id of model.get("expanded")) expanded.add(id);
    limits.clear();
    matches = new Set(model.get("matches"));
    pinned = ancestorsOf(matches);
    selected = model.get("selected_span");
    drawn.clear();
    treePane.replaceChildren();
    const fragment = document.createDocumentFragment();
    for (const node of index.roots) drawNode(node, 0, fragment);
    treePane.append(fragment);
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
    for (const id of matches) drawn.get(id)?.row.classList.remove("dspex-match");
    matches = new Set(model.get("matches"));
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
    // Prompts and completions read as text (newlines kept), one block per message; the rest stays JSON.
    const attributes = { ...detail.attributes };
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

  function textBlock(className, title, text) {
    const block = el("div", `dspex-block ${className}`);
    block.dataset.title = title;
    block.append(el("div", "dspex-block-title", title), el("pre", "dspex-text", text));
    return block;
  }

  model.on("change:trials", drawTrials);
  model.on("change:selected_trial", drawTrials);
  model.on("change:nodes", drawTree);
  model.on("change:expanded", syncExpanded);
  model.on("change:matches", syncMatches);
  model.on("change:selected_span", syncSelected);
  model.on("change:detail", drawDetail);
  drawTrials();
  drawTree();
  drawDetail();
}

export default { render };

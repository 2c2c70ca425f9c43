// The trace viewer's front end: trial list, collapsible span tree (children rendered only when a node is
// expanded, so a trial with 10,000 spans stays responsive), search, and a detail pane. The Python side
// (dspex_lab.notebook.TraceViewer) owns the data; this file only renders it and reports clicks.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function childrenIndex(nodes) {
  const children = new Map();
  for (const node of nodes) {
    const key = node.parent ?? "";
    if (!children.has(key)) children.set(key, []);
    children.get(key).push(node);
  }
  return children;
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
  const expanded = new Set(model.get("expanded"));

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

  function drawTree() {
    treePane.replaceChildren();
    const nodes = model.get("nodes");
    const children = childrenIndex(nodes);
    const matches = new Set(model.get("matches"));
    const selected = model.get("selected_span");
    function drawNode(node, depth, container) {
      const kids = children.get(node.id) || [];
      const row = el("div", `dspex-span dspex-${node.status}`);
      row.dataset.spanId = node.id;
      row.style.paddingLeft = `${depth * 14}px`;
      const toggle = el("span", "dspex-toggle", kids.length ? (expanded.has(node.id) ? "▾" : "▸") : "·");
      toggle.addEventListener("click", (event) => {
        event.stopPropagation();
        if (expanded.has(node.id)) expanded.delete(node.id);
        else expanded.add(node.id);
        model.set("expanded", Array.from(expanded));
        model.save_changes();
        drawTree();
      });
      row.append(toggle, el("span", "dspex-kind", node.kind), el("span", "dspex-name", node.name),
        el("span", "dspex-duration", `${node.duration_ms.toFixed(1)} ms`));
      if (matches.has(node.id)) row.classList.add("dspex-match");
      if (node.id === selected) row.classList.add("dspex-selected");
      row.addEventListener("click", () => {
        model.set("selected_span", node.id);
        model.save_changes();
      });
      container.append(row);
      if (expanded.has(node.id)) for (const kid of kids) drawNode(kid, depth + 1, container);
    }
    for (const rootNode of children.get("") || []) drawNode(rootNode, 0, treePane);
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
    const pre = el("pre", "dspex-attributes", JSON.stringify(detail.attributes, null, 2));
    detailPane.append(pre);
  }

  model.on("change:trials", drawTrials);
  model.on("change:selected_trial", drawTrials);
  model.on("change:nodes", () => {
    expanded.clear();
    for (const id of model.get("expanded")) expanded.add(id);
    drawTree();
  });
  model.on("change:matches", drawTree);
  model.on("change:selected_span", drawTree);
  model.on("change:detail", drawDetail);
  drawTrials();
  drawTree();
  drawDetail();
}

export default { render };

// LiveConvergenceWidget's front end: four SVG panels drawn from the `payload` trait, which the kernel sends
// after every optimization step (dspex_lab.notebook.LiveConvergenceWidget). Nothing is fetched: colours are
// the JupyterLab theme's CSS variables (live_convergence.css), hover text is each mark's SVG <title>, and a
// click on a legend entry hides its layer, as in the holoviews version.

const SVG = "http://www.w3.org/2000/svg";
const MARGIN = { left: 52, right: 12, top: 8, bottom: 30 };
const PLOT_HEIGHT = 170;
const ROW_HEIGHT = 22;
// At most this many labelled step ticks; a longer run labels every k-th step (still whole steps).
const MAX_STEP_TICKS = 16;
const SCREEN_OFFSET = 0.15;
// A variable's name beside its row is cut to this many characters (the whole name shows on hover).
const LABEL_CHARACTERS = 24;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function svg(tag, attributes, className) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
  if (className) node.setAttribute("class", className);
  return node;
}

function titled(node, text) {
  const title = svg("title");
  title.textContent = text;
  node.append(title);
  return node;
}

function isNumber(value) {
  return value !== null && value !== undefined && Number.isFinite(value);
}

function fixed(value, digits = 3) {
  return isNumber(value) ? Number(value).toFixed(digits) : "–";
}

// Marker outlines centred on (0, 0), one per candidate outcome (as in the holoviews version).
function markerPath(shape, size) {
  const r = size / 2;
  switch (shape) {
    case "square":
      return `M${-r},${-r}H${r}V${r}H${-r}Z`;
    case "triangle":
      return `M0,${-r}L${r},${r * 0.8}H${-r}Z`;
    case "x":
      return `M${-r},${-r}L${r},${r}M${r},${-r}L${-r},${r}`;
    case "dash":
      return `M${-r},0H${r}`;
    case "star": {
      const points = [];
      for (let i = 0; i < 10; i += 1) {
        const radius = i % 2 ? r * 0.45 : r;
        const angle = (Math.PI / 5) * i - Math.PI / 2;
        points.push(`${(radius * Math.cos(angle)).toFixed(2)},${(radius * Math.sin(angle)).toFixed(2)}`);
      }
      return `M${points.join("L")}Z`;
    }
    default:
      return `M${-r},0A${r},${r} 0 1,0 ${r},0A${r},${r} 0 1,0 ${-r},0Z`;
  }
}

const OUTCOME_SHAPES = {
  baseline: "square",
  accepted: "star",
  rejected: "x",
  "screened only": "triangle",
  "not evaluated": "circle",
};

// Round tick values for a score axis between low and high.
function scoreTicks(low, high) {
  const span = high - low || 1;
  const raw = span / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) ticks.push(value);
  return { ticks, digits: Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) };
}

// Whole steps only: 0, 1, 2, ... or every k-th step for a long run (the axis never shows -0.5 or 0.5).
function stepTicks(lastStep) {
  const every = Math.max(1, Math.ceil((lastStep + 1) / MAX_STEP_TICKS));
  const ticks = [];
  for (let step = 0; step <= lastStep; step += every) ticks.push(step);
  return ticks;
}

function scoreRange(values) {
  const finite = values.filter(isNumber);
  if (!finite.length) return [0, 1];
  let low = Math.min(...finite);
  let high = Math.max(...finite);
  const pad = (high - low) * 0.08 || 0.05;
  low -= pad;
  high += pad;
  return [low, high];
}

// One panel: a title, a legend (click hides a layer) and an SVG whose width follows the cell's.
class Panel {
  constructor(root, key, title) {
    this.key = key;
    this.node = el("section", "dspex-conv-panel");
    this.node.dataset.panel = key;
    this.heading = el("div", "dspex-conv-title", title);
    this.legend = el("div", "dspex-conv-legend");
    this.svg = svg("svg", { role: "img" }, "dspex-conv-svg");
    this.svg.setAttribute("aria-label", title);
    this.node.append(this.heading, this.legend, this.svg);
    this.hidden = new Set();
    root.append(this.node);
  }

  frame(lastStep, yRange, height = PLOT_HEIGHT, yLabel = "", left = MARGIN.left) {
    const width = Math.max(280, Math.floor(this.node.clientWidth || 480));
    const total = height + MARGIN.top + MARGIN.bottom;
    this.svg.replaceChildren();
    this.svg.setAttribute("viewBox", `0 0 ${width} ${total}`);
    this.svg.setAttribute("width", width);
    this.svg.setAttribute("height", total);
    const plotWidth = width - left - MARGIN.right;
    const x = (step) => left + ((step + 0.5) / (lastStep + 1)) * plotWidth;
    const y = (value) => MARGIN.top + (1 - (value - yRange[0]) / (yRange[1] - yRange[0] || 1)) * height;
    const axes = svg("g", {}, "dspex-conv-axes");
    axes.append(svg("rect", { x: left, y: MARGIN.top, width: plotWidth, height }, "dspex-conv-frame"));
    for (const step of stepTicks(lastStep)) {
      const at = x(step);
      axes.append(svg("line", { x1: at, x2: at, y1: MARGIN.top, y2: MARGIN.top + height }, "dspex-conv-gridline"));
      const label = svg("text", { x: at, y: MARGIN.top + height + 14, "text-anchor": "middle" }, "dspex-conv-tick");
      label.textContent = String(step);
      label.dataset.axis = "step";
      axes.append(label);
    }
    const axisName = svg("text", { x: left + plotWidth / 2, y: total - 2, "text-anchor": "middle" }, "dspex-conv-axis-label");
    axisName.textContent = "step";
    axes.append(axisName);
    if (yLabel) {
      const name = svg("text", { x: 10, y: MARGIN.top + height / 2, "text-anchor": "middle",
        transform: `rotate(-90 10 ${MARGIN.top + height / 2})` }, "dspex-conv-axis-label");
      name.textContent = yLabel;
      axes.append(name);
    }
    this.svg.append(axes);
    return { x, y, axes, width, plotWidth, height, left };
  }

  yAxis(view, yRange) {
    const { ticks, digits } = scoreTicks(yRange[0], yRange[1]);
    for (const value of ticks) {
      const at = view.y(value);
      view.axes.append(svg("line", { x1: MARGIN.left, x2: MARGIN.left + view.plotWidth, y1: at, y2: at }, "dspex-conv-gridline"));
      const label = svg("text", { x: MARGIN.left - 6, y: at + 4, "text-anchor": "end" }, "dspex-conv-tick");
      label.textContent = value.toFixed(digits);
      view.axes.append(label);
    }
  }

  layer(name) {
    const group = svg("g", {}, "dspex-conv-layer");
    group.dataset.layer = name;
    if (this.hidden.has(name)) group.style.display = "none";
    this.svg.append(group);
    return group;
  }

  legendEntries(entries) {
    this.legend.replaceChildren();
    for (const { name, className, shape } of entries) {
      const item = el("button", "dspex-conv-legend-item");
      item.type = "button";
      item.dataset.layer = name;
      item.title = "show or hide this layer";
      if (this.hidden.has(name)) item.classList.add("dspex-conv-off");
      const swatch = svg("svg", { width: 14, height: 14, viewBox: "-7 -7 14 14" });
      swatch.append(svg("path", { d: markerPath(shape || "square", shape === "line" ? 10 : 9) }, className));
      if (shape === "line") swatch.firstChild.setAttribute("d", "M-6,0H6");
      item.append(swatch, el("span", "", name));
      item.addEventListener("click", () => {
        if (this.hidden.has(name)) this.hidden.delete(name);
        else this.hidden.add(name);
        item.classList.toggle("dspex-conv-off", this.hidden.has(name));
        for (const group of this.svg.querySelectorAll(".dspex-conv-layer")) {
          if (group.dataset.layer === name) group.style.display = this.hidden.has(name) ? "none" : "";
        }
      });
      this.legend.append(item);
    }
  }
}

function point(layer, view, step, value, shape, size, className, hover) {
  if (!isNumber(value)) return;
  const mark = svg("path", { d: markerPath(shape, size), transform: `translate(${view.x(step)},${view.y(value)})` }, `dspex-conv-mark ${className}`);
  layer.append(titled(mark, hover));
}

function candidateHover(candidate, extra) {
  const lines = [`${candidate.candidate_id} (${candidate.strategy}) · step ${candidate.step} · ${candidate.outcome}`];
  return [...lines, ...extra.filter(Boolean)].join("\n");
}

function drawBest(panel, payload) {
  const best = payload.best;
  const candidates = payload.candidates.filter((c) => c.outcome === "accepted" || c.outcome === "rejected");
  const range = scoreRange([
    ...best.flatMap((row) => [row.best_ci_low, row.best_ci_high, row.best_mean]),
    ...candidates.map((c) => c.val_mean),
  ]);
  const view = panel.frame(payload.last_step, range, PLOT_HEIGHT, "validation mean");
  panel.yAxis(view, range);
  const band = panel.layer("incumbent CI");
  const withCi = best.filter((row) => isNumber(row.best_ci_low) && isNumber(row.best_ci_high));
  if (withCi.length) {
    const upper = withCi.map((row) => `${view.x(row.step)},${view.y(row.best_ci_high)}`);
    const lower = withCi.map((row) => `${view.x(row.step)},${view.y(row.best_ci_low)}`).reverse();
    const pad = withCi.length === 1 ? 6 : 0;  // one step: a bar, not an invisible sliver
    const d = pad
      ? `M${view.x(withCi[0].step) - pad},${view.y(withCi[0].best_ci_high)}h${2 * pad}V${view.y(withCi[0].best_ci_low)}h${-2 * pad}Z`
      : `M${upper.join("L")}L${lower.join("L")}Z`;
    band.append(svg("path", { d }, "dspex-conv-band"));
  }
  const line = panel.layer("incumbent (validation mean)");
  const meanPoints = best.filter((row) => isNumber(row.best_mean));
  if (meanPoints.length) {
    line.append(svg("path", { d: `M${meanPoints.map((row) => `${view.x(row.step)},${view.y(row.best_mean)}`).join("L")}` }, "dspex-conv-line"));
    for (const row of meanPoints) {
      const hover = `step ${row.step}: incumbent ${row.incumbent_id}\nmean ${fixed(row.best_mean)} [${fixed(row.best_ci_low)}, ${fixed(row.best_ci_high)}]\nLM calls so far ${row.lm_calls ?? "–"}`;
      point(line, view, row.step, row.best_mean, "circle", 6, "dspex-conv-incumbent", hover);
    }
  }
  for (const outcome of ["accepted", "rejected"]) {
    const layer = panel.layer(outcome);
    for (const c of candidates.filter((row) => row.outcome === outcome)) {
      const hover = candidateHover(c, [`validation ${fixed(c.val_mean)} [${fixed(c.val_ci_low)}, ${fixed(c.val_ci_high)}]`, isNumber(c.p_adjusted) ? `adjusted p ${fixed(c.p_adjusted, 4)}` : ""]);
      point(layer, view, c.step, c.val_mean, OUTCOME_SHAPES[outcome], 12, `dspex-conv-${outcome.replace(" ", "-")}`, hover);
    }
  }
  panel.legendEntries([
    { name: "incumbent CI", className: "dspex-conv-band", shape: "square" },
    { name: "incumbent (validation mean)", className: "dspex-conv-line", shape: "line" },
    { name: "accepted", className: "dspex-conv-accepted", shape: "star" },
    { name: "rejected", className: "dspex-conv-rejected", shape: "x" },
  ]);
}

function drawScreening(panel, payload) {
  const candidates = payload.candidates;
  const range = scoreRange(candidates.flatMap((c) => [c.screen_mean, c.val_mean, c.incumbent_screen_mean]));
  const view = panel.frame(payload.last_step, range, PLOT_HEIGHT, "mean score");
  panel.yAxis(view, range);
  const links = panel.layer("same candidate");
  for (const c of candidates.filter((row) => isNumber(row.screen_mean) && isNumber(row.val_mean))) {
    const segment = svg("line", {
      x1: view.x(c.step - SCREEN_OFFSET), y1: view.y(c.screen_mean), x2: view.x(c.step + SCREEN_OFFSET), y2: view.y(c.val_mean),
    }, "dspex-conv-link");
    links.append(titled(segment, candidateHover(c, [`optimism (screening − full) ${fixed(c.optimism)}`])));
  }
  const incumbent = panel.layer("incumbent on the same mini-batch");
  const screen = panel.layer("screening (mini-batch)");
  const full = panel.layer("full (validation set)");
  for (const c of candidates) {
    const hover = candidateHover(c, [`screening ${fixed(c.screen_mean)} · full ${fixed(c.val_mean)}`]);
    point(incumbent, view, c.step - SCREEN_OFFSET, c.incumbent_screen_mean, "dash", 14, "dspex-conv-incumbent-screen", `incumbent on ${c.candidate_id}'s mini-batch: ${fixed(c.incumbent_screen_mean)}`);
    point(screen, view, c.step - SCREEN_OFFSET, c.screen_mean, "circle", 8, "dspex-conv-screen", hover);
    point(full, view, c.step + SCREEN_OFFSET, c.val_mean, "square", 8, "dspex-conv-full", hover);
  }
  panel.legendEntries([
    { name: "same candidate", className: "dspex-conv-link", shape: "line" },
    { name: "incumbent on the same mini-batch", className: "dspex-conv-incumbent-screen", shape: "dash" },
    { name: "screening (mini-batch)", className: "dspex-conv-screen", shape: "circle" },
    { name: "full (validation set)", className: "dspex-conv-full", shape: "square" },
  ]);
}

function drawLineage(panel, payload) {
  const candidates = payload.candidates;
  const range = scoreRange(candidates.flatMap((c) => [c.score, c.parent_score]));
  const view = panel.frame(payload.last_step, range, PLOT_HEIGHT, "mean score");
  panel.yAxis(view, range);
  const edges = panel.layer("parent → child");
  for (const c of candidates.filter((row) => isNumber(row.parent_step) && isNumber(row.parent_score))) {
    const edge = svg("line", { x1: view.x(c.parent_step), y1: view.y(c.parent_score), x2: view.x(c.step), y2: view.y(c.score) }, "dspex-conv-edge");
    edges.append(titled(edge, `${c.candidate_id} from step ${c.parent_step}`));
  }
  const entries = [{ name: "parent → child", className: "dspex-conv-edge", shape: "line" }];
  for (const [outcome, shape] of Object.entries(OUTCOME_SHAPES)) {
    const layer = panel.layer(outcome);
    const className = `dspex-conv-${outcome.replace(" ", "-")}`;
    for (const c of candidates.filter((row) => row.outcome === outcome)) {
      const hover = candidateHover(c, [`${c.score_kind} ${fixed(c.score)}`, c.rationale]);
      point(layer, view, c.step, c.score, shape, outcome === "accepted" ? 16 : 9, className, hover);
    }
    entries.push({ name: outcome, className, shape });
  }
  panel.legendEntries(entries);
}

function drawVariables(panel, payload) {
  const cells = payload.variables;
  const names = [];
  for (const cell of cells) names[cell.row] = cell.variable;
  const rows = Math.max(names.length, 1);
  const height = rows * ROW_HEIGHT;
  // Room for the variables' names (cut at LABEL_CHARACTERS, whole on hover), about 6 px a character.
  const shortNames = names.map((name) => (name.length > LABEL_CHARACTERS ? `${name.slice(0, LABEL_CHARACTERS - 1)}…` : name));
  const left = Math.max(MARGIN.left, 12 + 6 * Math.max(0, ...shortNames.map((name) => (name || "").length)));
  const view = panel.frame(payload.last_step, [rows - 0.5, -0.5], height, "", left);
  const y = (row) => MARGIN.top + row * ROW_HEIGHT;
  names.forEach((name, row) => {
    const label = svg("text", { x: left - 6, y: y(row) + ROW_HEIGHT / 2 + 4, "text-anchor": "end" }, "dspex-conv-tick");
    label.textContent = shortNames[row];
    view.axes.append(titled(label, name));
  });
  const layer = panel.layer("variables");
  const cellWidth = view.plotWidth / (payload.last_step + 1);
  for (const cell of cells) {
    const x = view.x(cell.step) - cellWidth / 2;
    // Away from the neutral middle the cell turns one colour (low) or the other (high), more strongly.
    const strength = Math.abs(cell.level - 0.5) * 2;
    const rect = svg("rect", {
      x: x + 1, y: y(cell.row) + 1, width: Math.max(cellWidth - 2, 1), height: ROW_HEIGHT - 2,
      "fill-opacity": (0.15 + 0.45 * strength).toFixed(2),
    }, `dspex-conv-cell ${cell.level < 0.5 ? "dspex-conv-low" : cell.level > 0.5 ? "dspex-conv-high" : "dspex-conv-neutral"}${cell.changed ? " dspex-conv-changed" : ""}`);
    layer.append(titled(rect, `${cell.variable} at step ${cell.step}: ${cell.value}${cell.changed ? " (changed)" : ""}`));
    if (cellWidth > 28) {
      const text = svg("text", { x: view.x(cell.step), y: y(cell.row) + ROW_HEIGHT / 2 + 4, "text-anchor": "middle" }, "dspex-conv-cell-label");
      text.textContent = cell.label;
      layer.append(text);
    }
  }
  panel.legend.replaceChildren(el("span", "dspex-conv-note", cells.length ? "colour = value; outlined = changed at that step" : "no variables yet"));
}

function render({ model, el: root }) {
  root.classList.add("dspex-convergence");
  const head = el("div", "dspex-conv-head");
  const title = el("span", "dspex-conv-heading");
  const status = el("span", "dspex-conv-status");
  head.append(title, status);
  const grid = el("div", "dspex-conv-grid");
  root.append(head, grid);
  const panels = [
    [new Panel(grid, "best", "Best so far (validation set, with CI)"), drawBest],
    [new Panel(grid, "screening", "Screening vs full evaluation per step"), drawScreening],
    [new Panel(grid, "lineage", "Lineage (validation score, else screening)"), drawLineage],
    [new Panel(grid, "variables", "Incumbent's variables per step"), drawVariables],
  ];

  function draw() {
    const payload = model.get("payload") || {};
    const best = payload.best || [];
    const data = { best, candidates: payload.candidates || [], variables: payload.variables || [], last_step: payload.last_step || 0 };
    title.textContent = model.get("title") || "Convergence";
    const step = payload.step;
    status.textContent = step === null || step === undefined ? "waiting for the baseline" : `after step ${step} · ${data.candidates.length} candidates`;
    root.dataset.step = step === null || step === undefined ? "" : String(step);
    for (const [panel, drawPanel] of panels) drawPanel(panel, data);
  }

  model.on("change:payload", draw);
  model.on("change:title", draw);
  // Redraw at the cell's width when it changes (the panels are sized in pixels, so text stays sharp).
  let lastWidth = 0;
  const resized = new ResizeObserver(() => {
    const width = grid.clientWidth;
    if (width && width !== lastWidth) {
      lastWidth = width;
      draw();
    }
  });
  resized.observe(grid);
  draw();
  return () => {
    resized.disconnect();
    model.off("change:payload", draw);
    model.off("change:title", draw);
  };
}

export default { render };

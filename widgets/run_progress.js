// RunProgress's front end: draws the numbers the Python side (dspex_lab.notebook.RunProgress) keeps, and
// sends {type: "cancel"} when Cancel is clicked. Elapsed time ticks here between updates from the kernel,
// which only sends one when a trial finishes. An optimization (kind "optimization") is drawn as one run:
// its step of N, its totals, budget, time left and best so far; the evaluation running now is one line.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "–";
  const whole = Math.max(0, Math.round(seconds));
  const hours = Math.floor(whole / 3600);
  const minutes = Math.floor((whole % 3600) / 60);
  const rest = String(whole % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${rest}` : `${minutes}:${rest}`;
}

function money(value) {
  if (value === 0) return "$0";
  return value < 0.01 ? `$${value.toPrecision(2)}` : `$${value.toFixed(2)}`;
}

function count(value) {
  return Number(value || 0).toLocaleString();
}

function plural(number, word) {
  return `${count(number)} ${word}${number === 1 ? "" : "s"}`;
}

// "1,234 of 5,000 LM calls (25%)" for each limit of an optimization's budget.
function budgetText(budget, spent) {
  const names = { lm_calls: "LM calls", tokens: "tokens", usd: "dollars" };
  return Object.entries(budget || {})
    .map(([name, limit]) => {
      const used = spent[name];
      if (used === null || used === undefined) return `${names[name] || name}: unknown of ${limit}`;
      const share = limit > 0 ? ` (${Math.round((100 * used) / limit)}%)` : "";
      const shown = name === "usd" ? `${money(used)} of ${money(limit)}` : `${count(used)} of ${count(limit)} ${names[name] || name}`;
      return `${shown}${share}`;
    })
    .join("; ");
}

// The synced traits this view draws (anywidget's model signals changes per trait).
const TRAITS = [
  "title", "status", "done", "total", "already_done", "n_scored", "mean", "ci_low", "ci_high", "ci_method",
  "n_errors", "errors", "input_tokens", "output_tokens", "lm_calls", "cost", "unpriced_models", "elapsed",
  "eta", "best", "kind", "evaluation", "step", "planned_steps", "screened", "validated", "tokens", "budget",
  "eta_basis",
];

const FINAL = new Set(["finished", "stopped", "interrupted", "cancelled"]);

function render({ model, el: root }) {
  root.classList.add("dspex-progress");
  const head = el("div", "dspex-progress-head");
  const title = el("span", "dspex-progress-title");
  const status = el("span", "dspex-progress-status");
  const cancel = el("button", "dspex-progress-cancel", "Cancel");
  cancel.type = "button";
  cancel.title = "stop the run; every finished trial is kept";
  head.append(title, status, cancel);
  const bar = el("div", "dspex-progress-bar");
  const okPart = el("div", "dspex-bar-ok");
  const errorPart = el("div", "dspex-bar-error");
  bar.append(okPart, errorPart);
  const grid = el("dl", "dspex-progress-grid");
  const rows = {};
  for (const [key, label] of [
    ["step", "step"],
    ["best", "best so far"],
    ["trials", "trials"],
    ["mean", "mean"],
    ["errors", "errors"],
    ["tokens", "tokens"],
    ["cost", "cost"],
    ["budget", "budget"],
    ["time", "time"],
  ]) {
    const term = el("dt", "", label);
    const value = el("dd", `dspex-progress-${key}`);
    grid.append(term, value);
    rows[key] = { term, value };
  }
  root.append(head, bar, grid);

  let cancelling = false;
  let elapsedAt = performance.now();

  cancel.addEventListener("click", () => {
    cancelling = true;
    model.send({ type: "cancel" });
    draw();
  });

  function liveElapsed() {
    const base = model.get("elapsed") || 0;
    return model.get("status") === "running" ? base + (performance.now() - elapsedAt) / 1000 : base;
  }

  function draw() {
    const state = model.get("status");
    if (state !== "running") cancelling = false;
    title.textContent = model.get("title") || "run";
    const shown = cancelling ? "cancelling" : state;
    status.textContent = shown;
    status.dataset.status = shown;
    cancel.disabled = state !== "running" || cancelling;
    cancel.textContent = cancelling ? "Cancelling…" : "Cancel";

    const optimizing = model.get("kind") === "optimization";
    root.dataset.kind = optimizing ? "optimization" : "evaluation";
    const total = model.get("total");
    const done = model.get("done");
    const errors = model.get("n_errors");
    const share = (count) => (total > 0 ? `${(100 * count) / total}%` : "0%");
    const planned = model.get("planned_steps");
    const step = model.get("step");
    if (optimizing) {
      // The bar is the run's: steps finished of the most it may take.
      const steps = planned > 0 && step !== null ? Math.min(step / planned, 1) : 0;
      okPart.style.width = `${100 * steps}%`;
      errorPart.style.width = "0%";
    } else {
      okPart.style.width = share(done - errors);
      errorPart.style.width = share(errors);
    }
    const resumed = model.get("already_done") ? ` (${model.get("already_done")} before resume)` : "";
    const trialsText = `${done} / ${total}${resumed}`;

    const mean = model.get("mean");
    const low = model.get("ci_low");
    const high = model.get("ci_high");
    const interval = low === null || high === null ? "" : ` [${fixed(low, 3)}, ${fixed(high, 3)}] 95% ${model.get("ci_method")}`;
    const meanText = mean === null ? "–" : `${fixed(mean, 3)}${interval} (n=${model.get("n_scored")})`;
    rows.mean.term.style.display = rows.mean.value.style.display = optimizing ? "none" : "";
    rows.step.term.style.display = rows.step.value.style.display = optimizing ? "" : "none";
    if (optimizing) {
      // The evaluation running now (a candidate's screening or validation), named without the run's title.
      const prefix = `${model.get("title")} `;
      let name = model.get("evaluation") || "";
      if (name.startsWith(prefix)) name = name.slice(prefix.length);
      rows.trials.term.textContent = "evaluation";
      rows.trials.value.textContent = name ? `${name}: ${trialsText} trials, mean ${meanText}` : "–";
      const of = planned === null ? "" : ` of ${planned}`;
      const where = step === null ? `baseline (step 0${of})` : `step ${step}${of}`;
      rows.step.value.textContent = `${where} · ${plural(model.get("screened"), "candidate")} screened, ${count(model.get("validated"))} validated`;
    } else {
      rows.trials.term.textContent = "trials";
      rows.trials.value.textContent = trialsText;
      rows.mean.value.textContent = meanText;
    }

    rows.errors.value.replaceChildren();
    const byType = Object.entries(model.get("errors") || {});
    if (!byType.length) rows.errors.value.textContent = "0";
    for (const [kind, count] of byType) rows.errors.value.append(el("span", "", `${kind} ×${count}`));

    const input = model.get("input_tokens");
    const output = model.get("output_tokens");
    rows.tokens.value.textContent = optimizing
      ? `${count(model.get("tokens"))} (${count(model.get("lm_calls"))} LM calls, rule proposals and compiles included)`
      : `${(input + output).toLocaleString()} (${input.toLocaleString()} in, ${output.toLocaleString()} out; ${model.get("lm_calls").toLocaleString()} LM calls)`;

    const cost = model.get("cost");
    const unpriced = model.get("unpriced_models") || [];
    rows.cost.value.replaceChildren();
    if (unpriced.length) {
      const priced = cost ? `${money(cost)} + ` : "";
      rows.cost.value.append(priced, el("span", "dspex-progress-unpriced", `unpriced: ${unpriced.join(", ")}`));
    } else {
      rows.cost.value.textContent = cost === null ? "–" : money(cost);
    }

    const budget = model.get("budget") || {};
    const hasBudget = optimizing && Object.keys(budget).length > 0;
    rows.budget.term.style.display = rows.budget.value.style.display = hasBudget ? "" : "none";
    if (hasBudget) {
      const spent = { lm_calls: model.get("lm_calls"), tokens: model.get("tokens"), usd: cost };
      rows.budget.value.textContent = budgetText(budget, spent);
    }

    const eta = model.get("eta");
    const basis = model.get("eta_basis");
    const left = state === "running" && eta !== null ? `, about ${duration(eta)} left${basis ? ` (${basis})` : ""}` : "";
    rows.time.value.textContent = `${duration(liveElapsed())} elapsed${left}`;

    const best = model.get("best") || {};
    const hasBest = best.best_mean !== undefined && best.best_mean !== null;
    rows.best.term.style.display = rows.best.value.style.display = hasBest ? "" : "none";
    if (hasBest) {
      const bestInterval =
        best.best_ci_low === null || best.best_ci_low === undefined
          ? ""
          : ` [${fixed(best.best_ci_low, 3)}, ${fixed(best.best_ci_high, 3)}]${best.ci_method ? ` 95% ${best.ci_method}` : ""}`;
      const who = best.best_id ? `${best.best_id}: ` : "";
      const n = best.n ? ` (n=${best.n})` : "";
      rows.best.value.textContent = `${who}${fixed(best.best_mean, 3)}${bestInterval}${n} after step ${best.step}`;
    }
    root.dataset.status = FINAL.has(state) ? "done" : state;
  }

  const onElapsed = () => {
    elapsedAt = performance.now();
  };
  model.on("change:elapsed", onElapsed);
  for (const key of TRAITS) model.on(`change:${key}`, draw);
  const ticker = setInterval(() => {
    if (model.get("status") === "running") draw();
  }, 500);
  draw();
  return () => {
    clearInterval(ticker);
    model.off("change:elapsed", onElapsed);
    for (const key of TRAITS) model.off(`change:${key}`, draw);
  };
}

export default { render };

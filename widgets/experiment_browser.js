// ExperimentBrowser's front end: the experiment table (filters, sortable columns, Refresh) and the selected
// experiment's trial table (status, score and order filters). Runs nest: a run's nested experiments (an
// optimization's candidate evaluations) are folded under it, unfolded by its ▸ button or all at once by
// "show nested runs". The Python side
// (dspex_lab.notebook.ExperimentBrowser) queries the journal and owns every row; this file draws the rows
// and writes the user's choices back into the model. A selected trial's trace is a separate widget below.
// The form under the trial table annotates the selected trial: it sends the texts to Python, which writes
// them through journal.annotate and answers with one line (annotation_message).

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function fixed(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function option(value, label) {
  const node = el("option", "", label);
  node.value = value;
  return node;
}

function labelled(text, control) {
  const label = el("label", "", text);
  label.append(control);
  return label;
}

const EXPERIMENT_COLUMNS = [
  ["name", "experiment"],
  ["kind", "kind"],
  ["status", "status"],
  ["mean", "mean [95% CI]"],
  ["n", "n"],
  ["n_trials", "trials"],
  ["n_errors", "errors"],
  ["created", "created"],
];

// The trial table's columns: [header, the journal column it sorts by (none: not sortable)].
const TRIAL_COLUMNS = [
  ["trial", "trial_id"],
  ["status", "status"],
  ["score", "score"],
  ["error", "error_type"],
  ["latency", "latency"],
  ["tokens", "input_tokens"],
  ["spans", null],
  ["label", null],
];

function render({ model, el: root }) {
  root.classList.add("dspex-browser");

  // -- experiments ---------------------------------------------------------------------------------
  const bar = el("div", "dspex-browser-bar");
  const nameFilter = el("input", "dspex-filter-name");
  nameFilter.type = "search";
  nameFilter.placeholder = "filter by name or id";
  nameFilter.value = model.get("name_filter");
  const kindFilter = el("select", "dspex-filter-kind");
  const statusFilter = el("select", "dspex-filter-status");
  const refresh = el("button", "dspex-refresh", "Refresh");
  refresh.type = "button";
  const nestedBox = el("input", "dspex-show-nested");
  nestedBox.type = "checkbox";
  const count = el("span", "dspex-browser-count");
  bar.append(
    nameFilter,
    labelled("kind", kindFilter),
    labelled("status", statusFilter),
    labelled("show nested runs", nestedBox),
    refresh,
    count,
  );

  const experimentScroll = el("div", "dspex-browser-scroll");
  const experimentTable = el("table", "dspex-experiments");
  const experimentHead = el("thead");
  const experimentBody = el("tbody");
  experimentTable.append(experimentHead, experimentBody);
  experimentScroll.append(experimentTable);

  // -- trials --------------------------------------------------------------------------------------
  const trialSection = el("div", "dspex-trial-section");
  const trialTitle = el("div", "dspex-browser-title");
  const trialBar = el("div", "dspex-browser-bar");
  const trialStatus = el("select", "dspex-trial-status");
  trialStatus.append(option("", "all"), option("ok", "ok"), option("error", "error"));
  const minScore = el("input", "dspex-trial-min");
  const maxScore = el("input", "dspex-trial-max");
  for (const input of [minScore, maxScore]) {
    input.type = "number";
    input.step = "any";
  }
  minScore.placeholder = "min";
  maxScore.placeholder = "max";
  const trialCount = el("span", "dspex-browser-count");
  trialBar.append(
    labelled("status", trialStatus),
    labelled("score ≥", minScore),
    labelled("≤", maxScore),
    trialCount,
  );
  const trialScroll = el("div", "dspex-browser-scroll");
  const trialTable = el("table", "dspex-trials-table");
  const trialHead = el("thead");
  const trialBody = el("tbody");
  trialTable.append(trialHead, trialBody);
  trialScroll.append(trialTable);
  const note = el("div", "dspex-browser-note");

  // -- the selected trial's annotation form ------------------------------------------------------
  const form = el("div", "dspex-annotate");
  const formTitle = el("div", "dspex-browser-title");
  const preset = el("select", "dspex-annotate-preset");
  const labelInput = el("input", "dspex-annotate-label");
  labelInput.placeholder = "label, e.g. wrong gold";
  const noteInput = el("textarea", "dspex-annotate-note");
  noteInput.placeholder = "note";
  noteInput.rows = 2;
  const goldInput = el("input", "dspex-annotate-gold");
  goldInput.placeholder = 'corrected gold: 42, or {"answer": "42"}';
  const annotate = el("button", "dspex-annotate-button", "Annotate");
  annotate.type = "button";
  // Shown while the trial has an annotation in force: withdrawing it is one more journaled row.
  const withdraw = el("button", "dspex-withdraw-button", "Withdraw");
  withdraw.type = "button";
  const formMessage = el("div", "dspex-annotate-message");
  const formBar = el("div", "dspex-browser-bar");
  formBar.append(labelled("preset", preset), labelInput, noteInput, goldInput, annotate, withdraw);
  form.append(formTitle, formBar, formMessage);
  trialSection.append(trialTitle, trialBar, trialScroll, form);

  root.append(bar, experimentScroll, trialSection, note);

  // -- user input -> model -------------------------------------------------------------------------
  const save = (key, value) => {
    model.set(key, value);
    model.save_changes();
  };
  let typing;
  nameFilter.addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => save("name_filter", nameFilter.value), 250);
  });
  kindFilter.addEventListener("change", () => save("kind_filter", kindFilter.value));
  statusFilter.addEventListener("change", () => save("status_filter", statusFilter.value));
  nestedBox.addEventListener("change", () => save("nested", nestedBox.checked));
  refresh.addEventListener("click", () => model.send({ type: "refresh" }));
  trialStatus.addEventListener("change", () => save("trial_status", trialStatus.value));
  const bound = (input, key) => {
    input.addEventListener("change", () => {
      const text = input.value.trim();
      const number = Number(text);
      if (text === "") save(key, null);
      else if (Number.isFinite(number)) save(key, number);
      else input.value = model.get(key) ?? "";
    });
  };
  bound(minScore, "trial_min_score");
  bound(maxScore, "trial_max_score");
  preset.addEventListener("change", () => {
    if (preset.value) labelInput.value = preset.value;
  });
  annotate.addEventListener("click", () =>
    model.send({ type: "annotate", label: labelInput.value, note: noteInput.value, gold: goldInput.value }),
  );
  withdraw.addEventListener("click", () => model.send({ type: "withdraw" }));

  // -- model -> view -------------------------------------------------------------------------------
  function fillSelect(select, values, current) {
    select.replaceChildren(option("", "all"), ...values.map((value) => option(value, value)));
    select.value = current;
  }

  function drawFilters() {
    fillSelect(kindFilter, model.get("kinds"), model.get("kind_filter"));
    fillSelect(statusFilter, model.get("statuses"), model.get("status_filter"));
    if (document.activeElement !== nameFilter) nameFilter.value = model.get("name_filter");
    nestedBox.checked = model.get("nested");
  }

  // The ▸ / ▾ button of a run with nested experiments: unfolds or folds them without selecting the run.
  function foldButton(row) {
    const open = model.get("nested") || model.get("expanded").includes(row.id);
    const button = el("button", "dspex-fold", `${open ? "▾" : "▸"} ${row.n_children} nested`);
    button.type = "button";
    button.title = open ? "fold this run's nested experiments" : "show this run's nested experiments under it";
    button.disabled = model.get("nested");
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      const others = model.get("expanded").filter((id) => id !== row.id);
      save("expanded", open ? others : [...others, row.id]);
    });
    return button;
  }

  function drawExperimentHead() {
    const row = el("tr");
    const sorted = model.get("sort_column");
    const descending = model.get("sort_descending");
    for (const [key, label] of EXPERIMENT_COLUMNS) {
      const arrow = key === sorted ? (descending ? " ▼" : " ▲") : "";
      const cell = el("th", `dspex-sortable${key === sorted ? " dspex-sorted" : ""}`, label + arrow);
      cell.dataset.column = key;
      cell.title = "sort by this column (click again to reverse)";
      cell.addEventListener("click", () => {
        if (key === model.get("sort_column")) model.set("sort_descending", !model.get("sort_descending"));
        else {
          model.set("sort_column", key);
          model.set("sort_descending", key !== "name" && key !== "kind" && key !== "status");
        }
        model.save_changes();
      });
      row.append(cell);
    }
    experimentHead.replaceChildren(row);
  }

  function drawExperiments() {
    const rows = model.get("experiments");
    const selected = model.get("selected_experiment");
    count.textContent = model.get("count_note");
    experimentBody.replaceChildren();
    if (!rows.length) {
      const cell = el("td", "dspex-browser-empty", "no experiment matches");
      cell.colSpan = EXPERIMENT_COLUMNS.length;
      const empty = el("tr");
      empty.append(cell);
      experimentBody.append(empty);
    }
    for (const row of rows) {
      const line = el("tr", `${row.id === selected ? "dspex-row-selected" : ""}${row.depth ? " dspex-nested" : ""}`);
      line.dataset.id = row.id;
      const name = el("td", row.depth ? "dspex-nested-name" : "");
      const title = el("div", "", row.depth ? `↳ ${row.name}` : row.name);
      if (row.depth && row.role) title.append(" ", el("span", "dspex-role", row.role));
      name.append(title, el("div", "dspex-id", row.id));
      if (row.n_children) name.append(foldButton(row));
      const status = el("td", `dspex-status-${row.status}`, row.status);
      if (row.model) status.title = `model ${row.model}`;
      const interval = row.ci_low === null ? "" : ` [${fixed(row.ci_low, 3)}, ${fixed(row.ci_high, 3)}]`;
      const mean = el("td", "dspex-number dspex-mean", row.mean === null ? "–" : `${fixed(row.mean, 3)}${interval}`);
      if (row.ci_method) mean.title = `95% interval, ${row.ci_method}`;
      line.append(
        name,
        el("td", "", row.kind),
        status,
        mean,
        el("td", "dspex-number", row.n),
        el("td", "dspex-number", row.n_trials),
        el("td", `dspex-number${row.n_errors ? " dspex-status-error" : ""}`, row.n_errors),
        el("td", "dspex-number", row.created ?? "–"),
      );
      line.addEventListener("click", () => save("selected_experiment", row.id));
      experimentBody.append(line);
    }
  }

  function drawTrialHead() {
    const row = el("tr");
    const sorted = model.get("trial_sort");
    const descending = model.get("trial_descending");
    for (const [label, column] of TRIAL_COLUMNS) {
      const arrow = column === sorted ? (descending ? " ▼" : " ▲") : "";
      const cell = el("th", column ? `dspex-sortable${column === sorted ? " dspex-sorted" : ""}` : "", label + arrow);
      if (column) {
        cell.dataset.column = column;
        cell.title = "sort by this column (click again to reverse)";
        cell.addEventListener("click", () => {
          if (column === model.get("trial_sort")) model.set("trial_descending", !model.get("trial_descending"));
          else {
            model.set("trial_sort", column);
            model.set("trial_descending", column === "latency" || column === "input_tokens");
          }
          model.save_changes();
        });
      }
      row.append(cell);
    }
    trialHead.replaceChildren(row);
  }

  function drawTrials() {
    const experiment = model.get("selected_experiment");
    trialSection.style.display = experiment ? "" : "none";
    if (!experiment) return;
    const rows = model.get("trials");
    const selected = model.get("selected_trial");
    trialTitle.textContent = `trials of ${experiment}`;
    trialStatus.value = model.get("trial_status");
    if (document.activeElement !== minScore) minScore.value = model.get("trial_min_score") ?? "";
    if (document.activeElement !== maxScore) maxScore.value = model.get("trial_max_score") ?? "";
    const limited = rows.length >= model.get("trial_limit") ? ` (first ${rows.length})` : "";
    trialCount.textContent = `${rows.length} shown of ${model.get("trial_total")}${limited}`;
    trialBody.replaceChildren();
    for (const row of rows) {
      const line = el("tr", row.trial_id === selected ? "dspex-row-selected" : "");
      line.dataset.id = row.trial_id;
      const error = el("td", "dspex-message");
      if (row.error_type) error.append(el("span", "dspex-status-error", row.error_type), `: ${row.error_message}`);
      line.append(
        el("td", "dspex-id", row.trial_id),
        el("td", `dspex-status-${row.status}`, row.status),
        el("td", "dspex-number", fixed(row.score, 3)),
        error,
        el("td", "dspex-number", row.latency === null ? "–" : `${fixed(row.latency, 2)} s`),
        el("td", "dspex-number", row.tokens.toLocaleString()),
        el("td", "dspex-number", row.spans ? row.spans : "–"),
        el("td", "dspex-label", row.label),
      );
      line.title = row.spans ? "show this trial's trace below" : "no trace recorded for this trial";
      line.addEventListener("click", () => save("selected_trial", row.trial_id));
      trialBody.append(line);
    }
  }

  // The form follows the selected trial: its title says the trial's label now; another trial clears it.
  let formTrial = null;
  function drawForm() {
    const selected = model.get("selected_trial");
    const row = model.get("trials").find((trial) => trial.trial_id === selected);
    form.style.display = row ? "" : "none";
    if (!row) return;
    if (selected !== formTrial) {
      formTrial = selected;
      for (const input of [preset, labelInput, noteInput, goldInput]) input.value = "";
    }
    formTitle.textContent = `annotate ${selected}: ${row.label ? `label now ${row.label}` : "not annotated"}`;
    withdraw.style.display = row.label ? "" : "none";
  }

  function drawPresets() {
    preset.replaceChildren(option("", "–"), ...model.get("label_presets").map((label) => option(label, label)));
  }

  function drawFormMessage() {
    const message = model.get("annotation_message");
    formMessage.textContent = message;
    formMessage.classList.toggle("dspex-status-error", message.startsWith("not annotated"));
    if (message.startsWith("annotated")) noteInput.value = goldInput.value = "";
  }

  function drawNote() {
    note.textContent = model.get("note");
    note.style.display = model.get("note") ? "" : "none";
  }

  const handlers = [
    [["kinds", "statuses", "kind_filter", "status_filter", "name_filter", "nested"], drawFilters],
    [["sort_column", "sort_descending"], drawExperimentHead],
    [["experiments", "selected_experiment", "count_note", "expanded", "nested"], drawExperiments],
    [
      ["selected_experiment", "trials", "selected_trial", "trial_status", "trial_total", "trial_min_score",
        "trial_max_score", "trial_limit"],
      drawTrials,
    ],
    [["trial_sort", "trial_descending"], drawTrialHead],
    [["note"], drawNote],
    [["trials", "selected_trial"], drawForm],
    [["label_presets"], drawPresets],
    [["annotation_message"], drawFormMessage],
  ];
  for (const [keys, handler] of handlers) for (const key of keys) model.on(`change:${key}`, handler);
  drawFilters();
  drawExperimentHead();
  drawExperiments();
  drawTrialHead();
  drawTrials();
  drawNote();
  drawPresets();
  drawForm();
  drawFormMessage();
  return () => {
    clearTimeout(typing);
    for (const [keys, handler] of handlers) for (const key of keys) model.off(`change:${key}`, handler);
  };
}

export default { render };

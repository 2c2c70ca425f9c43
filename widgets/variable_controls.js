// VariableControls' front end: one control per variable, each unable to leave its variable's domain
// (sliders between the bounds, dropdowns of the choices, text areas with the length limit), and the
// preview the Python side (dspex_lab.notebook.VariableControls) computes. Python checks every value again.

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function shownNumber(value, integer) {
  if (value === null || value === undefined) return "";
  return integer ? String(value) : String(Number(Number(value).toPrecision(6)));
}

function render({ model, el: root }) {
  root.classList.add("dspex-controls");
  const title = el("div", "dspex-controls-title");
  const list = el("div", "dspex-controls-list");
  const preview = el("div", "dspex-preview");
  const error = el("div", "dspex-controls-error");
  root.append(title, list, preview, error);

  // One updater per control, so a change of `values` from Python moves the control too.
  const updaters = new Map();

  function setValue(name, value) {
    model.set("values", { ...model.get("values"), [name]: value });
    model.save_changes();
  }

  function numberControl(spec, box) {
    const value = el("span", "dspex-control-value");
    const input = el("input");
    input.name = spec.name;
    if (spec.control === "slider") {
      input.type = "range";
      input.min = spec.low;
      input.max = spec.high;
      input.step = spec.step ?? "any";
      input.addEventListener("input", () => (value.textContent = shownNumber(input.value, spec.integer)));
      box.append(input, value);
    } else {
      input.type = "number";
      if (spec.low !== null && spec.low !== undefined) input.min = spec.low;
      if (spec.high !== null && spec.high !== undefined) input.max = spec.high;
      input.step = spec.integer ? "1" : "any";
      box.append(input);
    }
    input.addEventListener("change", () => {
      const number = Number(input.value);
      const inside =
        input.value.trim() !== "" &&
        Number.isFinite(number) &&
        (!spec.integer || Number.isInteger(number)) &&
        (spec.low === null || spec.low === undefined || number >= spec.low) &&
        (spec.high === null || spec.high === undefined || number <= spec.high);
      // Out of the domain: the box goes back to the current value, and nothing is sent.
      if (inside) setValue(spec.name, spec.integer ? Math.round(number) : number);
      else updaters.get(spec.name)(model.get("values")[spec.name]);
    });
    return (current) => {
      input.value = current;
      value.textContent = shownNumber(current, spec.integer);
    };
  }

  function dropdownControl(spec, box) {
    const select = el("select");
    select.name = spec.name;
    spec.choices.forEach((choice, index) => {
      const item = el("option", "", typeof choice === "string" ? choice : JSON.stringify(choice));
      item.value = String(index);
      select.append(item);
    });
    select.addEventListener("change", () => setValue(spec.name, spec.choices[Number(select.value)]));
    box.append(select);
    return (current) => {
      const key = JSON.stringify(current);
      select.value = String(spec.choices.findIndex((choice) => JSON.stringify(choice) === key));
    };
  }

  function checkboxControl(spec, box) {
    const input = el("input");
    input.type = "checkbox";
    input.name = spec.name;
    input.addEventListener("change", () => setValue(spec.name, input.checked));
    box.append(input);
    return (current) => (input.checked = Boolean(current));
  }

  function textControl(spec, box) {
    const area = el("textarea");
    area.name = spec.name;
    if (spec.max_length) area.maxLength = spec.max_length;
    area.addEventListener("change", () => setValue(spec.name, area.value));
    box.append(area);
    return (current) => {
      if (document.activeElement !== area) area.value = current;
    };
  }

  function drawControls() {
    list.replaceChildren();
    updaters.clear();
    for (const spec of model.get("controls")) {
      const name = el("label", "dspex-control-name", spec.name);
      name.title = [spec.description, spec.allowed].filter(Boolean).join(" — ");
      const box = el("div", "dspex-control");
      box.dataset.name = spec.name;
      box.dataset.control = spec.control;
      let update;
      if (spec.control === "slider" || spec.control === "number") update = numberControl(spec, box);
      else if (spec.control === "dropdown") update = dropdownControl(spec, box);
      else if (spec.control === "checkbox") update = checkboxControl(spec, box);
      else if (spec.control === "text") update = textControl(spec, box);
      else box.append(el("span", "dspex-control-fixed", spec.shown));
      if (update) updaters.set(spec.name, update);
      list.append(name, box);
    }
    drawValues();
  }

  function drawValues() {
    const values = model.get("values");
    for (const [name, update] of updaters) if (name in values) update(values[name]);
  }

  function drawPreview() {
    const state = model.get("preview") || {};
    preview.replaceChildren();
    preview.style.display = state.status === "none" ? "none" : "";
    const status = el("div", "dspex-preview-status");
    status.dataset.status = state.status ?? "idle";
    const label = {
      idle: "preview: change a value to run the program on the example",
      pending: "preview: waiting for the controls to settle…",
      running: "preview: running…",
      ok: "preview",
      error: "preview failed",
    };
    status.textContent = label[state.status] ?? "preview";
    preview.append(status);
    if (state.values && (state.status === "ok" || state.status === "error")) {
      const ran = Object.entries(state.values).map(([name, value]) => `${name}=${typeof value === "string" ? value : JSON.stringify(value)}`);
      preview.append(el("div", "dspex-preview-values", `with ${ran.join(" · ")}`));
    }
    if (state.score !== undefined) preview.append(el("div", "dspex-preview-score", `score: ${shownNumber(state.score)}`));
    if (state.metric_error) preview.append(el("div", "dspex-preview-error", `metric: ${state.metric_error}`));
    if (state.error) preview.append(el("div", "dspex-preview-error", state.error));
    for (const [field, text] of Object.entries(state.outputs ?? {})) {
      const block = el("div", "dspex-preview-field");
      block.dataset.field = field;
      block.append(el("div", "", field), el("pre", "dspex-preview-text", text));
      preview.append(block);
    }
  }

  function drawError() {
    error.textContent = model.get("error");
    error.style.display = model.get("error") ? "" : "none";
  }

  const drawTitle = () => (title.textContent = model.get("title"));
  const handlers = [
    ["title", drawTitle],
    ["controls", drawControls],
    ["values", drawValues],
    ["preview", drawPreview],
    ["error", drawError],
  ];
  for (const [key, handler] of handlers) model.on(`change:${key}`, handler);
  drawTitle();
  drawControls();
  drawPreview();
  drawError();
  return () => {
    for (const [key, handler] of handlers) model.off(`change:${key}`, handler);
  };
}

export default { render };

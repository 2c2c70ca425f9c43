// VariableControls' front end: one control per variable, each unable to leave its variable's domain
// (sliders between the bounds, dropdowns of the choices, text boxes with the length limit), and the
// preview the Python side (dspex_lab.notebook.VariableControls) computes. Python checks every value again.
//
// Keys: JupyterLab takes keys pressed in a notebook's output for its own commands (the arrows move between
// cells; Enter in a text area has its new line cancelled). Its key handler listens on the document as the
// event bubbles, so each control handles the keys it answers to itself and stops them there; every other
// key (Shift+Enter, Ctrl+S) still reaches JupyterLab.

// Keys a focused slider answers to: how many steps each moves (Home and End go to the bounds).
const SLIDER_KEYS = {
  ArrowLeft: -1,
  ArrowDown: -1,
  ArrowRight: 1,
  ArrowUp: 1,
  PageDown: -10,
  PageUp: 10,
  Home: -Infinity,
  End: Infinity,
};

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

// The value `steps` steps of the slider away from `current`, within the bounds. Marks are counted from the
// low bound, as a range input counts them; a value between two marks moves to the next mark that way.
function steppedValue(spec, current, steps) {
  if (steps === -Infinity) return spec.low;
  if (steps === Infinity) return spec.high;
  const step = Number(spec.step);
  const marks = (Number(current) - spec.low) / step;
  const mark = steps > 0 ? Math.floor(marks + 1e-9) + steps : Math.ceil(marks - 1e-9) + steps;
  const next = Math.min(spec.high, Math.max(spec.low, spec.low + mark * step));
  // Twelve significant digits, so 0.1 + 0.2 reaches Python as 0.3 (Float.sample rounds the same way).
  return spec.integer ? Math.round(next) : Number(next.toPrecision(12));
}

function commandKey(event) {
  return event.ctrlKey || event.metaKey || event.altKey;
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
    input.setAttribute("aria-label", spec.name);
    const show = (current) => {
      value.textContent = shownNumber(current, spec.integer);
      if (spec.control !== "slider") return;
      input.setAttribute("aria-valuenow", String(current));
      input.setAttribute("aria-valuetext", value.textContent);
    };
    if (spec.control === "slider") {
      input.type = "range";
      input.min = spec.low;
      input.max = spec.high;
      input.step = spec.step ?? "any";
      input.setAttribute("role", "slider");
      input.setAttribute("aria-valuemin", String(spec.low));
      input.setAttribute("aria-valuemax", String(spec.high));
      input.addEventListener("input", () => show(input.value));
      input.addEventListener("keydown", (event) => moveSlider(spec, input, show, event));
      box.append(input, value);
    } else {
      input.type = "number";
      if (spec.low !== null && spec.low !== undefined) input.min = spec.low;
      if (spec.high !== null && spec.high !== undefined) input.max = spec.high;
      input.step = spec.integer ? "1" : "any";
      input.addEventListener("keydown", (event) => {
        if (event.key !== "Escape" || commandKey(event)) return;
        event.preventDefault();
        event.stopPropagation();
        updaters.get(spec.name)(model.get("values")[spec.name]);
      });
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
      show(current);
    };
  }

  // A slider's keys move it as a drag does: the new value is shown and sent at once.
  function moveSlider(spec, input, show, event) {
    if (!(event.key in SLIDER_KEYS) || commandKey(event)) return;
    event.preventDefault(); // the browser's own move would count Page Up/Down differently
    event.stopPropagation(); // and JupyterLab would move to another cell
    const next = steppedValue(spec, model.get("values")[spec.name], SLIDER_KEYS[event.key]);
    if (next === model.get("values")[spec.name]) return;
    input.value = next;
    show(next);
    setValue(spec.name, next);
  }

  function dropdownControl(spec, box) {
    const select = el("select");
    select.name = spec.name;
    select.setAttribute("aria-label", spec.name);
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
    input.setAttribute("aria-label", spec.name);
    input.addEventListener("change", () => setValue(spec.name, input.checked));
    box.append(input);
    return (current) => (input.checked = Boolean(current));
  }

  // A text box sends its value on Enter (Ctrl/Cmd+Enter in a text area, where Enter starts a line), when it
  // is left, and after `typing_pause` seconds without a keystroke; Escape puts back the value last sent.
  function textControl(spec, box) {
    const field = el(spec.multiline ? "textarea" : "input");
    if (!spec.multiline) field.type = "text";
    field.name = spec.name;
    field.setAttribute("aria-label", spec.name);
    if (spec.max_length) field.maxLength = spec.max_length;
    let pause = null;
    const sent = () => model.get("values")[spec.name];
    const send = () => {
      clearTimeout(pause);
      pause = null;
      if (field.value !== sent()) setValue(spec.name, field.value);
    };
    field.addEventListener("input", () => {
      clearTimeout(pause);
      const seconds = model.get("typing_pause");
      pause = seconds === null || seconds === undefined ? null : setTimeout(send, seconds * 1000);
    });
    field.addEventListener("change", send);
    field.addEventListener("keydown", (event) => {
      if (event.isComposing) return; // Enter that ends an input method's composition is not a send
      const command = event.ctrlKey || event.metaKey;
      const enter = event.key === "Enter" && !event.shiftKey && !event.altKey;
      if (enter && spec.multiline && !command) {
        // The browser starts a new line; JupyterLab, seeing Enter in a cell, would cancel it.
        event.stopPropagation();
        return;
      }
      if (enter) send();
      else if (event.key === "Escape" && !commandKey(event)) {
        clearTimeout(pause);
        pause = null;
        field.value = sent();
      } else return;
      event.preventDefault();
      event.stopPropagation();
    });
    box.append(field);
    return (current) => {
      if (document.activeElement !== field) field.value = current;
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

// The settings panel: system prompt, sampling options and the API key, kept in localStorage.

const KEY = "phi4mm.settings.v1";
const NUMBERS = ["temperature", "top_p", "max_tokens", "dynamic_hd"];
const INTEGERS = new Set(["max_tokens", "dynamic_hd"]);

export class Settings {
  constructor(form, panel, toggle) {
    this.form = form;
    this.panel = panel;
    this.toggle = toggle;
    this.values = load();
    for (const field of form.elements) {
      if (field.name && this.values[field.name] !== undefined) field.value = this.values[field.name];
    }
    form.addEventListener("input", (event) => this.changed(event.target));
    form.addEventListener("submit", (event) => event.preventDefault());
  }

  changed(field) {
    if (!field.name) return;
    this.values[field.name] = field.value;
    localStorage.setItem(KEY, JSON.stringify(this.values));
  }

  get apiKey() {
    return (this.values.apiKey || "").trim();
  }

  get system() {
    return (this.values.system || "").trim();
  }

  // The request fields the user has set; empty ones are left to the server.
  sampling() {
    const out = {};
    for (const name of NUMBERS) {
      const text = (this.values[name] || "").trim();
      if (text) out[name] = INTEGERS.has(name) ? Number.parseInt(text, 10) : Number(text);
    }
    return out;
  }

  open(focus) {
    this.panel.hidden = false;
    this.toggle.setAttribute("aria-expanded", "true");
    (focus || this.panel.querySelector("textarea, input")).focus();
  }

  close() {
    this.panel.hidden = true;
    this.toggle.setAttribute("aria-expanded", "false");
    this.toggle.focus();
  }

  flip() {
    if (this.panel.hidden) this.open();
    else this.close();
  }
}

function load() {
  try {
    return JSON.parse(localStorage.getItem(KEY)) || {};
  } catch {
    return {};
  }
}

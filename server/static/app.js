// The chat page: the conversation (kept in localStorage), the composer, sending and stopping.

import { describeError, fetchConfig, renderMarkdown, streamChat } from "./api.js";
import { contentPart, formatBytes } from "./attachments.js";
import { Settings } from "./settings.js";
import { messageView } from "./transcript.js";
import { Tray } from "./tray.js";

const CHAT_KEY = "phi4mm.chat.v1";
const NO_LIMITS = { model: "phi4mm", api_key_required: false, max_body_bytes: Infinity, max_image_bytes: Infinity,
  max_audio_bytes: Infinity, max_audio_seconds: Infinity };
const $ = (id) => document.getElementById(id);

const state = {
  config: NO_LIMITS,
  messages: loadChat(),
  controller: null,  // the AbortController of the request in flight
};
const settings = new Settings($("settings-form"), $("settings"), $("settings-toggle"));
const tray = new Tray(() => state.config, notify);

// -- the conversation --------------------------------------------------------------------------

function loadChat() {
  try {
    return JSON.parse(localStorage.getItem(CHAT_KEY)) || [];
  } catch {
    return [];
  }
}

function saveChat() {
  const plain = state.messages.map(({ html, htmlOf, pending, dirty, rendering, ...kept }) => kept);
  try {
    localStorage.setItem(CHAT_KEY, JSON.stringify(plain));
  } catch { // over the storage quota: keep the words, drop the media
    const slim = plain.map((m) => (m.attachments
      ? { ...m, attachments: m.attachments.map(({ url, ...a }) => ({ ...a, dropped: true })) } : m));
    try {
      localStorage.setItem(CHAT_KEY, JSON.stringify(slim));
      notify("Browser storage is full: after a reload, this conversation's attachments will be gone.");
    } catch {
      notify("Browser storage is full: this conversation will not survive a reload.");
    }
  }
}

function actionsFor(message) {
  const last = state.messages[state.messages.length - 1];
  const actions = [];
  const copy = () => navigator.clipboard.writeText(message.text).catch((e) => notify(`Could not copy: ${e.message}`));
  if (message.text) actions.push(["Copy", copy]);
  if (message === last && !message.pending) actions.push([message.text ? "Regenerate" : "Retry", regenerate]);
  return actions;
}

function renderAll() {
  const transcript = $("transcript");
  transcript.replaceChildren(...state.messages.map((m) => messageView(m, actionsFor(m))));
  $("empty").hidden = state.messages.length > 0;
  scrollToEnd(true);
}

function update(message) {
  const old = $("transcript").querySelector(`[data-id="${message.id}"]`);
  const stick = nearEnd();
  if (old) old.replaceWith(messageView(message, actionsFor(message)));
  scrollToEnd(stick);
}

function nearEnd() {
  const main = $("main");
  return main.scrollHeight - main.scrollTop - main.clientHeight < 80;
}

function scrollToEnd(really) {
  if (really) $("main").scrollTop = $("main").scrollHeight;
}

// Markdown comes from the server; one render request per answer at a time, the latest text wins.
async function renderAnswer(message) {
  if (message.rendering) {
    message.dirty = true;
    return;
  }
  message.rendering = true;
  try {
    do {
      message.dirty = false;
      const text = message.text;
      [message.html] = await renderMarkdown([text], settings.apiKey);
      message.htmlOf = text;
      update(message);
    } while (message.dirty);
  } catch {
    // the answer stays as plain text
  } finally {
    message.rendering = false;
  }
}

async function renderStoredAnswers() {
  const answers = state.messages.filter((m) => m.role === "assistant" && m.text);
  for (let i = 0; i < answers.length; i += 100) {
    const batch = answers.slice(i, i + 100);
    try {
      const html = await renderMarkdown(batch.map((m) => m.text), settings.apiKey);
      batch.forEach((m, j) => Object.assign(m, { html: html[j], htmlOf: m.text }));
    } catch {
      return;
    }
  }
  renderAll();
}

// -- requests -------------------------------------------------------------------------------------

function userContent(message) {
  const media = message.attachments.filter((a) => !a.dropped).map(contentPart);
  if (!media.length) return message.text;
  return message.text ? [...media, { type: "text", text: message.text }] : media;
}

// The history as OpenAI messages; a turn that failed without an answer is left out.
function requestMessages() {
  const out = settings.system ? [{ role: "system", content: settings.system }] : [];
  state.messages.forEach((message, i) => {
    const next = state.messages[i + 1];
    const failed = next && next.role === "assistant" && !next.text;
    if (message.role === "user" && !failed) out.push({ role: "user", content: userContent(message) });
    if (message.role === "assistant" && message.text) out.push({ role: "assistant", content: message.text });
  });
  return out;
}

function requestBody() {
  return JSON.stringify({
    model: state.config.model, messages: requestMessages(), stream: true,
    stream_options: { include_usage: true }, ...settings.sampling(),
  });
}

async function answer() {
  const body = requestBody();
  const message = { id: crypto.randomUUID(), role: "assistant", text: "", pending: true };
  state.messages.push(message);
  renderAll();
  const size = new Blob([body]).size;
  if (size > state.config.max_body_bytes) {
    finish(message, `This conversation is ${formatBytes(size)} with its attachments; the server accepts ` +
      `requests up to ${formatBytes(state.config.max_body_bytes)} (its --max-body-mb). Start a new chat or ` +
      "remove attachments.");
    return;
  }
  const controller = new AbortController();
  state.controller = controller;
  setBusy(true);
  const started = performance.now();
  try {
    for await (const event of streamChat(body, settings.apiKey, controller.signal)) {
      if (event.delta) {
        message.clientTtftS ??= (performance.now() - started) / 1000;
        message.text += event.delta;
        update(message);
        renderAnswer(message);
      }
      if (event.finish) message.finish = event.finish;
      if (event.usage) message.usage = event.usage;
    }
    message.stopped = controller.signal.aborted;
    finish(message);
  } catch (error) {
    if (controller.signal.aborted) {
      message.stopped = true;
      finish(message);
    } else {
      finish(message, describeError(error));
      if (error.status === 401) askForKey();
    }
  }
}

function finish(message, error) {
  message.pending = false;
  if (error) message.error = error;
  state.controller = null;
  setBusy(false);
  renderAll();
  saveChat();
}

function send() {
  const text = $("prompt").value.trim();
  if (state.controller || (!text && !tray.pending.length)) return;
  if (tray.recorder) return notify("Stop the recording first, then send.");
  state.messages.push({ id: crypto.randomUUID(), role: "user", text, attachments: tray.take() });
  $("prompt").value = "";
  notify(null);
  autosize();
  answer();
}

function regenerate() {
  if (state.controller) return;
  if (state.messages[state.messages.length - 1]?.role === "assistant") state.messages.pop();
  if (state.messages.length) answer();
}

function stop() {
  if (state.controller) state.controller.abort();
}

function clearChat() {
  stop();
  state.messages = [];
  saveChat();
  renderAll();
  $("prompt").focus();
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
}

function askForKey() {
  $("api-key-row").hidden = false;
  settings.open($("api-key"));
}

function notify(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

// -- wiring -------------------------------------------------------------------------------------------

function autosize() {
  const prompt = $("prompt");
  prompt.style.height = "auto";
  prompt.style.height = `${Math.min(prompt.scrollHeight, 200)}px`;
}

function wire() {
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("prompt").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  $("prompt").addEventListener("input", autosize);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.controller) stop();
  });
  $("stop").addEventListener("click", stop);
  $("clear").addEventListener("click", clearChat);
  $("settings-toggle").addEventListener("click", () => settings.flip());
  $("settings-close").addEventListener("click", () => settings.close());
  $("notice").addEventListener("click", () => notify(null));
  tray.wire();
}

async function start() {
  wire();
  renderAll();
  try {
    state.config = await fetchConfig();
  } catch (error) {
    notify(`Could not read the server's limits (${describeError(error)}); uploads are not checked.`);
  }
  const model = state.config.model.split("/").filter(Boolean).pop() || state.config.model;
  $("model").textContent = model;
  $("model").title = state.config.model;
  $("api-key-row").hidden = !state.config.api_key_required;
  document.body.dataset.ready = "true";
  renderStoredAnswers();
  $("prompt").focus();
}

start();

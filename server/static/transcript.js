// The transcript as DOM: user text and model output only ever go in as text nodes, except the
// server's Markdown rendering, which is parsed inertly and filtered to an allow-list first.

import { formatBytes } from "./attachments.js";

const TAGS = new Set(["P", "BR", "HR", "H1", "H2", "H3", "H4", "H5", "H6", "STRONG", "EM", "DEL", "S",
  "CODE", "PRE", "BLOCKQUOTE", "UL", "OL", "LI", "A", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD"]);
const ATTRIBUTES = { A: ["href", "target", "rel"], OL: ["start"], CODE: ["class"] };
const SAFE_URL = /^(https?:|mailto:|#)/i;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Server-rendered Markdown -> a fragment holding only allow-listed tags and attributes.
export function safeFragment(html) {
  const body = new DOMParser().parseFromString(html, "text/html").body; // inert: nothing runs
  clean(body);
  const fragment = document.createDocumentFragment();
  fragment.append(...body.childNodes);
  return fragment;
}

function clean(parent) {
  for (const child of [...parent.childNodes]) {
    if (child.nodeType === Node.TEXT_NODE) continue;
    if (child.nodeType !== Node.ELEMENT_NODE || !TAGS.has(child.tagName)) {
      child.replaceWith(document.createTextNode(child.textContent || ""));
      continue;
    }
    const allowed = ATTRIBUTES[child.tagName] || [];
    for (const { name, value } of [...child.attributes]) {
      if (!allowed.includes(name) || (name === "href" && !SAFE_URL.test(value))) child.removeAttribute(name);
    }
    clean(child);
  }
}

function attachmentView(attachment) {
  const item = element("figure", `attachment ${attachment.kind}`);
  if (attachment.dropped) {
    item.append(element("figcaption", "dropped", `${attachment.name} (not kept: browser storage was full)`));
  } else if (attachment.kind === "image") {
    const img = element("img");
    img.src = attachment.url;
    img.alt = attachment.name;
    item.append(img);
  } else {
    const audio = element("audio");
    audio.controls = true;
    audio.src = attachment.url;
    audio.setAttribute("aria-label", attachment.name);
    item.append(audio, element("figcaption", "", `${attachment.name} · ${formatBytes(attachment.bytes)}`));
  }
  return item;
}

function userView(message) {
  const node = element("article", "msg user");
  if (message.attachments.length) {
    const list = element("div", "msg-attachments");
    list.append(...message.attachments.map(attachmentView));
    node.append(list);
  }
  if (message.text) node.append(element("div", "bubble", message.text));
  return node;
}

export function usageText(usage, clientTtftS) {
  const parts = [`${usage.prompt_tokens} prompt`, `${usage.completion_tokens} completion tokens`];
  const serverTtftS = (usage.image_seconds || 0) + (usage.audio_seconds || 0) + (usage.prompt_seconds || 0);
  const ttftS = serverTtftS || clientTtftS;
  if (ttftS) parts.push(`first token ${ttftS.toFixed(2)} s`);
  if (usage.completion_tokens_per_second) parts.push(`${usage.completion_tokens_per_second.toFixed(1)} tokens/s`);
  return parts.join(" · ");
}

function answerBody(message) {
  const body = element("div", "answer");
  if (message.html !== undefined && message.text.startsWith(message.htmlOf)) {
    body.append(safeFragment(message.html));
    const tail = message.text.slice(message.htmlOf.length);
    if (tail) body.append(element("span", "tail", tail));
  } else {
    body.append(element("div", "plain", message.text));
  }
  if (message.pending && !message.text) body.append(element("span", "typing", "Thinking…"));
  return body;
}

function assistantView(message, actions) {
  const node = element("article", "msg assistant");
  if (message.pending || message.text) node.append(answerBody(message));
  if (message.error) node.append(element("p", "error", message.error));
  const meta = element("div", "meta");
  if (message.usage) meta.append(element("span", "usage", usageText(message.usage, message.clientTtftS)));
  if (message.finish === "length") meta.append(element("span", "flag", "cut at max tokens"));
  if (message.stopped) meta.append(element("span", "flag", "stopped"));
  for (const [label, handler] of actions) {
    const button = element("button", "link", label);
    button.type = "button";
    button.addEventListener("click", handler);
    meta.append(button);
  }
  if (meta.childNodes.length) node.append(meta);
  return node;
}

// One message -> its <article>; `actions` are [label, handler] pairs shown under an answer.
export function messageView(message, actions = []) {
  const node = message.role === "user" ? userView(message) : assistantView(message, actions);
  node.dataset.id = message.id;
  return node;
}

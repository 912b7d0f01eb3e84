// Talking to the server: the page's config, streamed chat completions (SSE), Markdown rendering,
// and the server's error bodies turned into one ApiError with a readable message.

export class ApiError extends Error {
  constructor(status, message, code = null) {
    super(message);
    this.status = status; // HTTP status; 0 for a network failure or an error sent mid-stream
    this.code = code;
  }
}

const STATUS_WORDS = {
  400: "The server refused the request",
  401: "The server needs a valid API key",
  404: "Not found",
  413: "The request is too large",
  429: "The server is busy",
  499: "The request was cancelled",
  500: "The server failed",
  503: "The server is not ready",
};

export function describeError(error) {
  if (!(error instanceof ApiError)) return `Could not reach the server: ${error.message}`;
  const words = STATUS_WORDS[error.status];
  const head = error.status ? `${words || "Error"} (HTTP ${error.status})` : "The answer was interrupted";
  return `${head}: ${error.message}`;
}

function headers(apiKey) {
  const out = { "Content-Type": "application/json" };
  if (apiKey) out.Authorization = `Bearer ${apiKey}`;
  return out;
}

async function errorFrom(response) {
  const text = await response.text();
  try {
    const { error } = JSON.parse(text);
    return new ApiError(response.status, error.message, error.code);
  } catch {
    return new ApiError(response.status, text.trim().slice(0, 300) || response.statusText);
  }
}

export async function fetchConfig() {
  const response = await fetch("/v1/ui/config");
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

export async function renderMarkdown(texts, apiKey) {
  const response = await fetch("/v1/ui/markdown", {
    method: "POST", headers: headers(apiKey), body: JSON.stringify({ texts }),
  });
  if (!response.ok) throw await errorFrom(response);
  return (await response.json()).html;
}

// POST /v1/chat/completions with stream: true; yields {delta}, {finish} and {usage} as they arrive.
// Aborting `signal` closes the connection (and errors the body), so the server cancels the sequence.
export async function* streamChat(body, apiKey, signal) {
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(apiKey), signal, body,
  });
  if (!response.ok) throw await errorFrom(response);
  for await (const data of sseData(response.body)) {
    if (data === "[DONE]") return;
    const chunk = JSON.parse(data);
    if (chunk.error) throw new ApiError(0, chunk.error.message, chunk.error.code);
    const choice = chunk.choices && chunk.choices[0];
    if (choice && choice.delta && choice.delta.content) yield { delta: choice.delta.content };
    if (choice && choice.finish_reason) yield { finish: choice.finish_reason };
    if (chunk.usage) yield { usage: chunk.usage };
  }
}

// The `data:` payloads of a text/event-stream body, one per event.
async function* sseData(stream) {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const lines = event.split(/\r?\n/).filter((line) => line.startsWith("data:"));
      if (lines.length) yield lines.map((line) => line.slice(5).replace(/^ /, "")).join("\n");
    }
  }
}

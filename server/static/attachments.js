// Attachments: files (picker, drop, paste) and microphone recordings read as data URLs, checked
// against the server's limits before anything is uploaded.

const AUDIO_FORMATS = { // MIME subtype or file extension -> input_audio.format
  webm: "webm", ogg: "ogg", oga: "ogg", opus: "ogg", mpeg: "mp3", mp3: "mp3", wav: "wav",
  "x-wav": "wav", wave: "wav", flac: "flac", "x-flac": "flac", mp4: "mp4", m4a: "m4a",
  "x-m4a": "m4a", aac: "aac",
};

export function formatBytes(n) {
  if (n < 1024) return `${n} bytes`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / (1 << 20)).toFixed(1)} MB`;
}

export function base64Bytes(n) {
  return Math.ceil(n / 3) * 4;
}

function kindOf(file) {
  if (file.type.startsWith("image/")) return "image";
  if (file.type.startsWith("audio/") || file.type === "video/webm") return "audio";
  return null;
}

function audioFormat(file) {
  const subtype = file.type.split(";")[0].split("/")[1] || "";
  const extension = (file.name.split(".").pop() || "").toLowerCase();
  return AUDIO_FORMATS[subtype] || AUDIO_FORMATS[extension] || extension || "wav";
}

// The reason `file` cannot be sent to this server, or null when it fits.
export function refusal(file, config) {
  const kind = kindOf(file);
  if (!kind) return `${file.name || "This file"} is not an image or an audio recording (${file.type || "unknown type"}).`;
  const limit = config[`max_${kind}_bytes`];
  if (file.size > limit) {
    return `${file.name} is ${formatBytes(file.size)}; the server accepts ${kind}s up to ${formatBytes(limit)}.`;
  }
  if (base64Bytes(file.size) > config.max_body_bytes) {
    return `${file.name} is ${formatBytes(file.size)} (${formatBytes(base64Bytes(file.size))} once encoded); ` +
      `the server accepts requests up to ${formatBytes(config.max_body_bytes)} (its --max-body-mb).`;
  }
  return null;
}

function dataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

// A File -> {kind, name, bytes, url, format?}; `url` is a data: URL (kept across reloads).
export async function readAttachment(file) {
  const kind = kindOf(file);
  const attachment = { kind, name: file.name, bytes: file.size, url: await dataUrl(file) };
  if (kind === "audio") attachment.format = audioFormat(file);
  return attachment;
}

// The OpenAI content part for an attachment.
export function contentPart(attachment) {
  if (attachment.kind === "image") return { type: "image_url", image_url: { url: attachment.url } };
  const data = attachment.url.slice(attachment.url.indexOf(",") + 1);
  return { type: "input_audio", input_audio: { data, format: attachment.format } };
}

const RECORDING_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"];

// The microphone through MediaRecorder; stop() resolves to a File in the recorder's own format.
export class Recorder {
  static available() {
    return Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.MediaRecorder);
  }

  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const mimeType = RECORDING_TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    this.recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : undefined);
    this.chunks = [];
    this.recorder.addEventListener("dataavailable", (event) => {
      if (event.data.size) this.chunks.push(event.data);
    });
    this.startedAt = performance.now();
    this.recorder.start(250);
  }

  get seconds() {
    return this.startedAt ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  stop() {
    return new Promise((resolve) => {
      this.recorder.addEventListener("stop", () => {
        this.stream.getTracks().forEach((track) => track.stop());
        const type = this.recorder.mimeType || "audio/webm";
        const extension = audioFormat({ type, name: "" });
        const stamp = new Date().toTimeString().slice(0, 8).replaceAll(":", "");
        resolve(new File(this.chunks, `recording-${stamp}.${extension}`, { type }));
      }, { once: true });
      this.recorder.stop();
    });
  }
}

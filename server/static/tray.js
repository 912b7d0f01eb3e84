// The composer's tray of attachments for the next message: files from the picker, drag and drop
// and paste, and microphone recordings, each checked against the server's limits on arrival.

import { base64Bytes, formatBytes, readAttachment, Recorder, refusal } from "./attachments.js";

const $ = (id) => document.getElementById(id);

export class Tray {
  // `limits()` returns the server's config; `notify(text)` shows why something was refused.
  constructor(limits, notify) {
    this.limits = limits;
    this.notify = notify;
    this.pending = [];
    this.recorder = null;
  }

  take() {
    const taken = this.pending;
    this.pending = [];
    this.render();
    return taken;
  }

  async add(files) {
    for (const file of files) {
      const reason = refusal(file, this.limits()) || this.overBody(file);
      if (reason) {
        this.notify(reason);
        continue;
      }
      this.pending.push(await readAttachment(file));
      this.render();
    }
  }

  overBody(file) {
    const limit = this.limits().max_body_bytes;
    const pendingBytes = this.pending.reduce((sum, a) => sum + base64Bytes(a.bytes), 0);
    if (pendingBytes + base64Bytes(file.size) <= limit) return null;
    return `${file.name} would make this message larger than the server accepts: requests up to ` +
      `${formatBytes(limit)} (its --max-body-mb).`;
  }

  render() {
    $("attachments").replaceChildren(...this.pending.map((attachment) => this.chip(attachment)));
  }

  chip(attachment) {
    const item = document.createElement("li");
    item.className = `chip ${attachment.kind}`;
    const preview = document.createElement(attachment.kind === "image" ? "img" : "audio");
    preview.src = attachment.url;
    if (attachment.kind === "image") preview.alt = attachment.name;
    else preview.controls = true;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${attachment.name}`);
    remove.addEventListener("click", () => {
      this.pending.splice(this.pending.indexOf(attachment), 1);
      this.render();
    });
    item.append(preview, remove);
    return item;
  }

  async toggleRecording() {
    if (this.recorder) return this.stopRecording();
    if (!Recorder.available()) {
      return this.notify("Recording needs the microphone, which browsers only allow on https:// or localhost pages.");
    }
    const recorder = new Recorder();
    try {
      await recorder.start();
    } catch (error) {
      return this.notify(`The microphone could not be used: ${error.message}`);
    }
    this.recorder = recorder;
    this.showRecording(true);
    recorder.timer = setInterval(() => {
      const s = Math.floor(recorder.seconds);
      $("rec-time").textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
      if (recorder.seconds >= this.limits().max_audio_seconds) this.stopRecording(); // the server's limit
    }, 200);
  }

  async stopRecording() {
    const recorder = this.recorder;
    if (!recorder) return;
    this.recorder = null;
    clearInterval(recorder.timer);
    this.showRecording(false);
    await this.add([await recorder.stop()]);
  }

  showRecording(on) {
    $("record").setAttribute("aria-pressed", String(on));
    $("record").setAttribute("aria-label", on ? "Stop recording" : "Record from the microphone");
    $("rec-time").hidden = !on;
    if (!on) $("rec-time").textContent = "0:00";
  }

  wire() {
    $("attach").addEventListener("click", () => $("file").click());
    $("file").addEventListener("change", async (event) => {
      await this.add([...event.target.files]);
      event.target.value = "";
    });
    $("record").addEventListener("click", () => this.toggleRecording());
    const hint = $("drop-hint");
    const hasFiles = (event) => event.dataTransfer && [...event.dataTransfer.types].includes("Files");
    window.addEventListener("dragover", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      hint.hidden = false;
    });
    window.addEventListener("dragleave", (event) => {
      if (!event.relatedTarget) hint.hidden = true;
    });
    window.addEventListener("drop", (event) => {
      if (!hasFiles(event)) return;
      event.preventDefault();
      hint.hidden = true;
      this.add([...event.dataTransfer.files]);
    });
    $("prompt").addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])];
      if (!files.length) return;
      event.preventDefault();
      this.add(files);
    });
  }
}

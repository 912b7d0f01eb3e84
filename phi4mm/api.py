"""The public Python API: `Phi4MM.from_pretrained(...)`, `create_chat_completion(...)` returning
OpenAI-shaped dicts (or a generator of chunks), and `prompt_logits(...)`."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from phi4mm import store
from phi4mm.engine import llama
from phi4mm.engine.engine import Engine, EngineSettings, Stream
from phi4mm.engine.offload import Offload
from phi4mm.errors import InputError, OffloadWarning
from phi4mm.files import ModelFiles
from phi4mm.media import MediaLimits
from phi4mm.params import make_params
from phi4mm.transcribe import DEFAULT_MAX_TOKENS_PER_WINDOW, Event, Transcript, final, transcribe_events


class Phi4MM:
    """A loaded Phi-4-multimodal-instruct. Calls from any thread, and any number of open streams,
    are decoded together by one engine thread (up to `n_parallel` sequences at a time, the rest
    wait in order); a stream that is closed or dropped frees its sequence."""

    def __init__(self, files: ModelFiles, settings: EngineSettings | None = None, name: str | None = None):
        self.files = files
        self.name = name or files.source
        self.engine = Engine(files, settings or EngineSettings())
        if self.engine.model.plan.warning:
            warnings.warn(self.engine.model.plan.warning, OffloadWarning, stacklevel=2)

    @classmethod
    def from_pretrained(cls, model: str | Path = store.DEFAULT_MODEL, quant: str | None = None,
                        n_ctx: int = 8192, n_threads: int = 0, n_batch: int = 512,
                        dynamic_hd: int | None = None, media_cache_mb: int = 512,
                        media_limits: MediaLimits | None = None, flash_attn: bool = False,
                        use_mmap: bool = False, cache_dir: str | Path | None = None,
                        encoder_type: str = "f16", n_parallel: int = 1, prefill_chunk: int = 8,
                        media_workers: int = 0, n_gpu_layers: int | None = None, main_gpu: int | None = None,
                        encoder_device: str = "cpu", kv_budget_mb: int | None = None,
                        progress: Callable[[str, int, int], None] | None = None) -> Phi4MM:
        """Load a converted directory, or convert a hub-layout directory / hub repo id once
        (into `cache_dir`, default ~/.cache/phi4mm) and load that. `media_workers` > 0 decodes
        encoded images and audio in that many worker processes (phi4mm.media.isolation).
        `n_gpu_layers`: decoder layers offloaded to the GPU (llama.cpp counts the output layer as
        one); None: every layer when the installed llama.cpp has a GPU backend, else 0 (asking for
        more without one warns with OffloadWarning and runs on the CPU). `main_gpu`: the GPU that
        holds the whole decoder; None: llama.cpp splits the layers over every GPU.
        `encoder_device`: where the image and audio encoders run, "cpu" or "cuda".
        `kv_budget_mb`: the KV cells of every context together (one context per adapter set and
        LongRoPE factor set, created on first need); past it requests wait. None: room for a short
        context of each adapter set, and for a long one beside a short one (README: Serving several users)."""
        if not isinstance(n_ctx, int) or n_ctx < 16:
            raise InputError(f"n_ctx is {n_ctx!r}, expected an integer >= 16", param="n_ctx")
        files = store.locate(model, quant, encoder_type, cache_dir, progress, n_threads)
        settings = EngineSettings(n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch, flash_attn=flash_attn,
                                  use_mmap=use_mmap, dynamic_hd=dynamic_hd,
                                  media_cache_bytes=media_cache_mb << 20,
                                  media_limits=media_limits or MediaLimits(), n_parallel=n_parallel,
                                  prefill_chunk=prefill_chunk, media_workers=media_workers,
                                  n_gpu_layers=n_gpu_layers, main_gpu=main_gpu, encoder_device=encoder_device,
                                  kv_budget_mb=kv_budget_mb)
        return cls(files, settings, name=str(model))

    @property
    def offload(self) -> Offload:
        """Where the decoder's layers are: `.n_gpu_layers` of `.n_layers` on `.devices`;
        `.describe()` says it in one line."""
        return self.engine.model.offload

    def placement(self) -> dict:
        """What sits where now: the decoder's layers, KV cells and LoRA adapters, the GPUs and
        their free memory, the encoders' device (what the server's /health reports)."""
        return self.engine.placement()

    def create_chat_completion(self, messages: Any, max_tokens: int | None = None,
                               temperature: float | None = None, top_p: float | None = None,
                               top_k: int | None = None, min_p: float | None = None,
                               frequency_penalty: float | None = None, presence_penalty: float | None = None,
                               repeat_penalty: float | None = None, stop: str | list[str] | None = None,
                               seed: int | None = None, stream: bool = False,
                               response_format: dict | None = None, dynamic_hd: int | None = None,
                               media_limits: MediaLimits | None = None,
                               should_stop: Callable[[], bool] | None = None) -> dict | Iterator[dict]:
        """OpenAI-shaped `chat.completion` dict, or a generator of `chat.completion.chunk` dicts
        whose last chunk carries `finish_reason` and `usage`. Input errors raise before any output.
        `should_stop()` is polled between images, prefill batches and tokens; when it returns True
        the request ends with `phi4mm.Cancelled`."""
        params = make_params(max_tokens, temperature, top_p, top_k, min_p, frequency_penalty,
                             presence_penalty, repeat_penalty, stop, seed, dynamic_hd,
                             _grammar(response_format))
        prepared = self.engine.prepare(messages, params.dynamic_hd, media_limits, should_stop)
        chunks = self.engine.submit(prepared, params, should_stop)
        return self._stream(chunks) if stream else self._collect(chunks)

    def prompt_logits(self, messages: Any, dynamic_hd: int | None = None,
                      media_limits: MediaLimits | None = None) -> np.ndarray:
        """float32 (vocab,) next-token logits after the prompt (chat template + generation prompt)."""
        make_params(dynamic_hd=dynamic_hd)
        return self.engine.prompt_logits(self.engine.prepare(messages, dynamic_hd, media_limits))

    def transcribe(self, audio: Any, *, translate_to: str | None = None, language: str | None = None,
                   prompt: str | None = None, temperature: float = 0.0,
                   max_tokens_per_window: int = DEFAULT_MAX_TOKENS_PER_WINDOW,
                   media_limits: MediaLimits | None = None,
                   should_stop: Callable[[], bool] | None = None) -> Transcript:
        """Audio of any length (a path, URL, bytes, (samples, rate) or media.Waveform) -> Transcript
        (`.text`, `.segments` of (start_s, end_s, text), `.duration_s`; `phi4mm.transcribe.render`
        gives srt/vtt/verbose_json). Windows of at most 30 s cut at quiet points, one chat completion
        each; `translate_to` ("French", "fr") translates instead; `language` is the spoken language
        (a hint); `prompt` is sent as the system message."""
        return final(self.transcribe_stream(audio, translate_to=translate_to, language=language, prompt=prompt,
                                            temperature=temperature, max_tokens_per_window=max_tokens_per_window,
                                            media_limits=media_limits, should_stop=should_stop))

    def transcribe_stream(self, audio: Any, *, translate_to: str | None = None, language: str | None = None,
                          prompt: str | None = None, temperature: float = 0.0,
                          max_tokens_per_window: int = DEFAULT_MAX_TOKENS_PER_WINDOW,
                          media_limits: MediaLimits | None = None,
                          should_stop: Callable[[], bool] | None = None) -> Iterator[Event]:
        """As `transcribe`, as a generator of events (phi4mm.transcribe): per window a Window, its
        Deltas (they concatenate to the transcript's text) and its Segment; last the Transcript.
        Input errors raise before any event."""
        return transcribe_events(self, audio, media_limits or self.engine.settings.media_limits,
                                 translate_to=translate_to, language=language, prompt=prompt,
                                 temperature=temperature, max_tokens_per_window=max_tokens_per_window,
                                 should_stop=should_stop, load_audio=self.engine.media.load_audio)

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text)

    def _collect(self, chunks: Stream) -> dict:
        parts, finish = [], None
        try:
            for chunk in chunks:
                parts.append(chunk.text)
                finish = chunk.finish_reason
        finally:
            chunks.close()
        usage = chunks.usage
        return {
            "id": _completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage.as_dict(),
        }

    def _stream(self, chunks: Stream) -> Iterator[dict]:
        head = {"id": _completion_id(), "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.name}
        try:
            yield {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None}]}
            for chunk in chunks:
                if chunk.finish_reason is None:
                    yield {**head, "choices": [{"index": 0, "delta": {"content": chunk.text}, "logprobs": None,
                                                "finish_reason": None}]}
                    continue
                delta = {"content": chunk.text} if chunk.text else {}
                yield {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": chunk.finish_reason}], "usage": chunks.usage.as_dict()}
        finally:
            chunks.close()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> Phi4MM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def _grammar(response_format: Any) -> str | None:
    """OpenAI response_format -> llama.cpp GBNF (None for plain text)."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return llama.json_grammar(None)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InputError("response_format.json_schema.schema must be a JSON schema object, "
                             f"got {schema!r}", param="response_format")
        try:
            return llama.json_grammar(schema)
        except Exception as exc:  # the converter raises assorted errors on schemas it can't handle
            raise InputError(f"response_format.json_schema could not be turned into a grammar: {exc}",
                             param="response_format") from exc
    raise InputError(f"response_format.type is {kind!r}, expected 'text', 'json_object' or 'json_schema'",
                     param="response_format")

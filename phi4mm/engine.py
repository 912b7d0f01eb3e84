"""Prompt -> embeddings -> llama.cpp -> a generator of small chunks; KV prefix reuse, LongRoPE
context choice, per-request LoRA by modality and the image-row cache.

LongRoPE (model-spec.md §3.1, llamacpp-notes §1.3): the reference uses the short factors while the
sequence holds at most `original_max_position_embeddings` (n_orig) tokens and recomputes the whole
sequence with the long factors once it grows past that. llama.cpp fixes the factor set per context
(long iff the context is larger than n_orig), so the engine keeps a context of exactly n_orig for
short sequences and a larger one for long sequences, re-decoding everything at the crossing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from phi4mm import image as image_mod
from phi4mm import media, vision
from phi4mm.cache import RowCache
from phi4mm.errors import Cancelled, ContextOverflowError, InputError
from phi4mm.files import ModelFiles
from phi4mm.llama import Adapter, Context, ContextSettings, Model, Sampler, SamplerSettings, StopCheck
from phi4mm.params import GenerationParams
from phi4mm.prompt import ImageInput, build_prompt
from phi4mm.streaming import StopScanner, Utf8Stream
from phi4mm.tokenizer import Tokenizer
from phi4mm.weights import read_gguf


@dataclass(frozen=True)
class ImageSpan:
    key: str            # image content + dynamic_hd: identifies the rows for KV reuse
    rows: np.ndarray    # (n_tokens, n_embd) float32 projected image rows


Item = int | ImageSpan


@dataclass(frozen=True)
class EngineSettings:
    n_ctx: int = 8192
    n_threads: int = 0
    n_batch: int = 512
    flash_attn: bool = False  # on: ~9% faster prompt processing, about twice the deviation (README)
    use_mmap: bool = False
    dynamic_hd: int | None = None          # None: the checkpoint's value (36 for the real model)
    image_cache_bytes: int = 512 << 20
    media_limits: media.MediaLimits = field(default_factory=media.MediaLimits)


@dataclass(frozen=True)
class Chunk:
    text: str
    finish_reason: str | None = None   # "stop" or "length" on the last chunk


@dataclass
class Usage:
    prompt_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    image_seconds: float = 0.0
    prompt_seconds: float = 0.0
    completion_seconds: float = 0.0

    def as_dict(self) -> dict:
        decoded = self.prompt_tokens - self.cached_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "image_tokens": self.image_tokens},
            "image_seconds": round(self.image_seconds, 4),
            "prompt_seconds": round(self.prompt_seconds, 4),
            "completion_seconds": round(self.completion_seconds, 4),
            "prompt_tokens_per_second": _rate(decoded, self.prompt_seconds),
            "completion_tokens_per_second": _rate(self.completion_tokens, self.completion_seconds),
        }


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if seconds > 0 and n > 0 else None


@dataclass
class _Slot:
    ctx: Context
    keys: list = field(default_factory=list)  # what the KV holds: token ids and (image key, row)


@dataclass(frozen=True)
class Prepared:
    items: tuple[Item, ...]
    n_rows: int
    modality: str | None      # "vision" or None (text only): selects the LoRA
    image_tokens: int


class Engine:
    """One loaded model serving one request at a time."""

    def __init__(self, files: ModelFiles, settings: EngineSettings | None = None):
        self.files = files
        self.settings = settings = settings or EngineSettings()
        self.model = Model(files.text, use_mmap=settings.use_mmap)
        self.tokenizer = Tokenizer(files.tokenizer)
        self.n_orig = int(self.model.meta("phi3.rope.scaling.original_context_length") or self.model.n_ctx_train)
        self.n_ctx = settings.n_ctx
        self.image_token_id = int(self.model.meta("phi4mm.image_token_id") or 200010)
        self.image_cache = RowCache(settings.image_cache_bytes)
        self._adapters: dict[str, Adapter] = {}
        self._slots: dict[str, _Slot] = {}
        self._vision: vision.VisionWeights | None = None
        self._checkpoint_dynamic_hd = 0

    # -- prompt preparation ------------------------------------------------------------------

    def prepare(self, messages: object, dynamic_hd: int | None = None, limits: media.MediaLimits | None = None,
                should_stop: StopCheck | None = None) -> tuple[Prepared, float]:
        """Messages -> prompt items (token ids and image spans); returns also image seconds.
        `should_stop` is checked before each image is encoded."""
        prompt = build_prompt(messages)
        tokens = self.tokenizer.encode(prompt.text)
        started = time.perf_counter()
        spans = []
        for img in prompt.images:
            if should_stop is not None and should_stop():
                raise Cancelled("the request was cancelled")
            spans.append(self._image_span(img, dynamic_hd, limits or self.settings.media_limits))
        image_s = time.perf_counter() - started
        items: list[Item] = []
        spans_left = iter(spans)
        for tok in tokens:
            items.append(next(spans_left) if tok == self.image_token_id else tok)
        n_rows = _n_rows(items)
        image_tokens = sum(s.rows.shape[0] for s in spans)
        return Prepared(tuple(items), n_rows, "vision" if spans else None, image_tokens), image_s

    def _image_span(self, img: ImageInput, dynamic_hd: int | None, limits: media.MediaLimits) -> ImageSpan:
        picture = media.load_image(img.source, limits)
        hd = self._dynamic_hd(dynamic_hd, img.detail)
        key = f"{image_mod.content_key(picture)}:{hd}"
        rows = self.image_cache.get(key)
        if rows is None:
            started = time.perf_counter()
            crops = image_mod.preprocess(picture, hd)
            rows = vision.encode_image(crops, self.vision)
            self.image_cache.put(key, rows, time.perf_counter() - started)
        return ImageSpan(key, rows)

    def _dynamic_hd(self, requested: int | None, detail: str | None) -> int:
        """Crops limit for one image: the request's, the model's, else the checkpoint's (36)."""
        if detail == "low":
            return 1
        hd = requested or self.settings.dynamic_hd
        if hd is None:
            self.vision  # noqa: B018 (loading the encoder reads the checkpoint's value)
            hd = self._checkpoint_dynamic_hd
        return hd

    @property
    def vision(self) -> vision.VisionWeights:
        """The vision encoder's float32 weights, loaded on the first image."""
        if self._vision is None:
            contents = read_gguf(self.files.vision, "phi4mm-vision")
            self._checkpoint_dynamic_hd = int(contents.value("phi4mm.vision.dynamic_hd"))
            self._vision = vision.load_weights(contents.metadata, contents.tensors)
        return self._vision

    # -- evaluation --------------------------------------------------------------------------

    def _adapter(self, modality: str) -> Adapter:
        if modality not in self._adapters:
            path = {"vision": self.files.vision_lora, "speech": self.files.speech_lora}[modality]
            self._adapters[modality] = Adapter(self.model, path)
        return self._adapters[modality]

    def _slot(self, n_rows: int) -> _Slot:
        """The short-factor context while n_rows <= n_orig, else the long one (module docstring)."""
        kind = "short" if n_rows <= self.n_orig or self.n_ctx <= self.n_orig else "long"
        if kind not in self._slots:
            size = min(self.n_ctx, self.n_orig) if kind == "short" else self.n_ctx
            s = self.settings
            self._slots[kind] = _Slot(Context(self.model, ContextSettings(size, s.n_batch, s.n_threads, s.flash_attn)))
        return self._slots[kind]

    def evaluate(self, items: list[Item], modality: str | None,
                 should_stop: StopCheck | None = None) -> tuple[_Slot, int]:
        """Decode items (reusing the KV prefix) so the last position's logits are ready.

        Returns the slot and how many leading rows were reused from the KV cache. If decoding stops
        early (Cancelled, EngineError) the slot's keys still name only rows known to be right."""
        n_rows = _n_rows(items)
        if not items or isinstance(items[-1], ImageSpan):
            raise InputError("a prompt must end with a text token", param="messages")
        slot = self._slot(n_rows)
        lora = [(self._adapter(modality), 1.0)] if modality else []
        if slot.ctx.set_adapters(lora):
            slot.keys = []  # KV computed under another adapter set is never reused (notes §4.3)
        keys = _row_keys(items)
        reuse = _common_prefix(slot.keys, keys)
        reuse = min(reuse, len(keys) - 1)
        slot.ctx.truncate(reuse)
        slot.keys = keys[:reuse]
        self._decode_from(slot, items, reuse, should_stop)
        slot.keys = keys
        return slot, reuse

    def _decode_from(self, slot: _Slot, items: list[Item], start: int, should_stop: StopCheck | None) -> None:
        pos, run = 0, []
        for item in items:
            if isinstance(item, ImageSpan):
                if run:
                    slot.ctx.decode_tokens(run, pos - len(run), False, should_stop)
                    run = []
                n = item.rows.shape[0]
                if pos + n > start:
                    skip = max(0, start - pos)
                    slot.ctx.decode_embeddings(item.rows[skip:], pos + skip, should_stop)
                pos += n
                continue
            if pos >= start:
                run.append(item)
            pos += 1
        if run:
            slot.ctx.decode_tokens(run, pos - len(run), True, should_stop)

    def check_fits(self, prepared: Prepared, room: int) -> None:
        if prepared.n_rows + room > self.n_ctx:
            raise ContextOverflowError(prepared.n_rows, self.n_ctx - room)

    def prompt_logits(self, prepared: Prepared) -> np.ndarray:
        self.check_fits(prepared, 0)
        slot, _ = self.evaluate(list(prepared.items), prepared.modality)
        return slot.ctx.last_logits()

    # -- generation --------------------------------------------------------------------------

    def generate(self, prepared: Prepared, params: GenerationParams, usage: Usage,
                 should_stop: StopCheck | None = None) -> Iterator[Chunk]:
        """Yield text chunks; the last one carries finish_reason. `usage` is filled in as it goes.
        `should_stop` is checked between prefill batches and between tokens (raises Cancelled)."""
        self.check_fits(prepared, 1)
        items = list(prepared.items)
        started = time.perf_counter()
        slot, reused = self.evaluate(items, prepared.modality, should_stop)
        usage.prompt_tokens, usage.image_tokens, usage.cached_tokens = prepared.n_rows, prepared.image_tokens, reused
        usage.prompt_seconds = time.perf_counter() - started
        sampler = Sampler(self.model, _sampler_settings(params))
        try:
            yield from self._loop(slot, items, prepared, params, sampler, usage, should_stop)
        finally:
            sampler.close()

    def _loop(self, slot: _Slot, items: list[Item], prepared: Prepared, params: GenerationParams,
              sampler: Sampler, usage: Usage, should_stop: StopCheck | None) -> Iterator[Chunk]:
        utf8, stops = Utf8Stream(), StopScanner(params.stop)
        n_rows, limit = prepared.n_rows, params.max_tokens or self.n_ctx
        started = time.perf_counter()
        finish, hit = "length", False
        while usage.completion_tokens < limit:
            token = sampler.sample(slot.ctx)
            usage.completion_tokens += 1
            if self.model.is_eog(token):
                finish = "stop"
                break
            text, hit = stops.feed(utf8.feed(self.model.piece(token)))
            usage.completion_seconds = time.perf_counter() - started
            if hit:
                finish = "stop"
                if text:
                    yield Chunk(text)
                break
            if text:
                yield Chunk(text)
            if n_rows + 1 > self.n_ctx or usage.completion_tokens >= limit:
                break
            items.append(token)
            n_rows += 1
            if n_rows == self.n_orig + 1 and self.n_ctx > self.n_orig:
                slot, _ = self.evaluate(items, prepared.modality, should_stop)  # into long factors
            else:
                slot.ctx.decode_tokens([token], n_rows - 1, True, should_stop)
                slot.keys.append(token)
        tail = ""
        if not hit:  # emit what was held back as a possible stop-string start
            tail, _ = stops.feed(utf8.flush())
            tail += stops.flush()
        usage.completion_seconds = time.perf_counter() - started
        yield Chunk(tail, finish)

    def close(self) -> None:
        for slot in self._slots.values():
            slot.ctx.close()
        self._slots.clear()
        for adapter in self._adapters.values():
            adapter.close()
        self._adapters.clear()
        self.model.close()


def _n_rows(items: list[Item]) -> int:
    return sum(i.rows.shape[0] if isinstance(i, ImageSpan) else 1 for i in items)


def _row_keys(items: list[Item]) -> list:
    keys: list = []
    for item in items:
        if isinstance(item, ImageSpan):
            keys.extend((item.key, i) for i in range(item.rows.shape[0]))
        else:
            keys.append(item)
    return keys


def _common_prefix(a: list, b: list) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _sampler_settings(p: GenerationParams) -> SamplerSettings:
    return SamplerSettings(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
                           repeat_penalty=p.repeat_penalty, frequency_penalty=p.frequency_penalty,
                           presence_penalty=p.presence_penalty, seed=p.seed, grammar=p.grammar)

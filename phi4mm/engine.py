"""Prompt -> media spans and token ids -> llama.cpp -> a generator of small chunks.

The request's mode (model-spec.md §4), derived once from the prompt, picks the LoRA adapter and
the audio projector head; media rows come from `encoders`, contexts, KV reuse and LongRoPE
switching from `contexts`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from phi4mm import keys, media
from phi4mm.contexts import Contexts, Item, Slot, n_rows
from phi4mm.encoders import Encoders, Span
from phi4mm.errors import ContextOverflowError, InputError
from phi4mm.files import ModelFiles
from phi4mm.llama import ContextSettings, Model, Sampler, SamplerSettings, StopCheck
from phi4mm.modes import Mode
from phi4mm.params import GenerationParams
from phi4mm.prompt import KINDS, MediaRef, build_prompt
from phi4mm.streaming import StopScanner, Utf8Stream
from phi4mm.tokenizer import Tokenizer


@dataclass(frozen=True)
class EngineSettings:
    n_ctx: int = 8192
    n_threads: int = 0
    n_batch: int = 512
    flash_attn: bool = False  # on: ~9% faster prompt processing, about twice the deviation (README)
    use_mmap: bool = False
    dynamic_hd: int | None = None          # None: the checkpoint's value (36 for the real model)
    media_cache_bytes: int = 512 << 20     # projected image and audio rows
    media_limits: media.MediaLimits = field(default_factory=media.MediaLimits)


@dataclass(frozen=True)
class Chunk:
    text: str
    finish_reason: str | None = None   # "stop" or "length" on the last chunk


@dataclass
class Usage:
    prompt_tokens: int = 0
    image_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    image_seconds: float = 0.0
    audio_seconds: float = 0.0
    prompt_seconds: float = 0.0
    completion_seconds: float = 0.0

    def as_dict(self) -> dict:
        decoded = self.prompt_tokens - self.cached_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "image_tokens": self.image_tokens,
                                      "audio_tokens": self.audio_tokens},
            "image_seconds": round(self.image_seconds, 4),
            "audio_seconds": round(self.audio_seconds, 4),
            "prompt_seconds": round(self.prompt_seconds, 4),
            "completion_seconds": round(self.completion_seconds, 4),
            "prompt_tokens_per_second": _rate(decoded, self.prompt_seconds),
            "completion_tokens_per_second": _rate(self.completion_tokens, self.completion_seconds),
        }


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if seconds > 0 and n > 0 else None


@dataclass(frozen=True)
class Prepared:
    items: tuple[Item, ...]
    n_rows: int
    mode: Mode                      # picks the LoRA (and, for audio, the projector head)
    media_tokens: dict[str, int]    # rows per media kind
    media_seconds: dict[str, float]  # encoding time per media kind


class Engine:
    """One loaded model serving one request at a time."""

    def __init__(self, files: ModelFiles, settings: EngineSettings | None = None):
        self.files = files
        self.settings = settings = settings or EngineSettings()
        self.model = Model(files.text, use_mmap=settings.use_mmap)
        self.tokenizer = Tokenizer(files.tokenizer)
        n_orig = int(self.model.meta(keys.ORIGINAL_CONTEXT_KEY) or self.model.n_ctx_train)
        self.contexts = Contexts(self.model, ContextSettings(settings.n_ctx, settings.n_batch, settings.n_threads,
                                                              settings.flash_attn), n_orig,
                                 {"vision": files.vision_lora, "speech": files.speech_lora})
        self.encoders = Encoders(files, settings.media_cache_bytes, settings.dynamic_hd)

    @property
    def n_ctx(self) -> int:
        return self.contexts.n_ctx

    @property
    def n_orig(self) -> int:
        return self.contexts.n_orig

    # -- prompt preparation ------------------------------------------------------------------

    def prepare(self, messages: object, dynamic_hd: int | None = None, limits: media.MediaLimits | None = None,
                should_stop: StopCheck | None = None) -> Prepared:
        """Messages -> prompt items (token ids and media spans). `should_stop` is checked before
        each media item is encoded."""
        prompt = build_prompt(messages)
        tokens = self.tokenizer.encode(prompt.text)
        spans, seconds = self.encoders.encode_all(prompt.media, prompt.mode, dynamic_hd,
                                         limits or self.settings.media_limits, should_stop)
        items = _splice(tokens, prompt.media, spans)
        counts = {kind: sum(s.rows.shape[0] for r, s in zip(prompt.media, spans, strict=True) if r.kind == kind)
                  for kind in KINDS}
        return Prepared(tuple(items), n_rows(items), prompt.mode, counts, seconds)

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, items: list[Item], mode: Mode, should_stop: StopCheck | None = None) -> tuple[Slot, int]:
        return self.contexts.evaluate(items, mode.lora, should_stop)

    def check_fits(self, prepared: Prepared, room: int) -> None:
        if prepared.n_rows + room > self.n_ctx:
            raise ContextOverflowError(prepared.n_rows, self.n_ctx - room)

    def prompt_logits(self, prepared: Prepared) -> np.ndarray:
        self.check_fits(prepared, 0)
        slot, _ = self.evaluate(list(prepared.items), prepared.mode)
        return slot.ctx.last_logits()

    # -- generation --------------------------------------------------------------------------

    def generate(self, prepared: Prepared, params: GenerationParams, usage: Usage,
                 should_stop: StopCheck | None = None) -> Iterator[Chunk]:
        """Yield text chunks; the last one carries finish_reason. `usage` is filled in as it goes.
        `should_stop` is checked between prefill batches and between tokens (raises Cancelled)."""
        self.check_fits(prepared, 1)
        items = list(prepared.items)
        started = time.perf_counter()
        slot, reused = self.evaluate(items, prepared.mode, should_stop)
        usage.prompt_tokens, usage.cached_tokens = prepared.n_rows, reused
        usage.image_tokens, usage.audio_tokens = prepared.media_tokens["image"], prepared.media_tokens["audio"]
        usage.image_seconds, usage.audio_seconds = prepared.media_seconds["image"], prepared.media_seconds["audio"]
        usage.prompt_seconds = time.perf_counter() - started
        sampler = Sampler(self.model, _sampler_settings(params))
        try:
            yield from self._loop(slot, items, prepared, params, sampler, usage, should_stop)
        finally:
            sampler.close()

    def _loop(self, slot: Slot, items: list[Item], prepared: Prepared, params: GenerationParams,
              sampler: Sampler, usage: Usage, should_stop: StopCheck | None) -> Iterator[Chunk]:
        utf8, stops = Utf8Stream(), StopScanner(params.stop)
        rows, limit = prepared.n_rows, params.max_tokens or self.n_ctx
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
            if rows + 1 > self.n_ctx or usage.completion_tokens >= limit:
                break
            items.append(token)
            rows += 1
            if rows == self.n_orig + 1 and self.n_ctx > self.n_orig:
                slot, _ = self.evaluate(items, prepared.mode, should_stop)  # into long factors
            else:
                slot.ctx.decode_tokens([token], rows - 1, True, should_stop)
                slot.keys.append(token)
        tail = ""
        if not hit:  # emit what was held back as a possible stop-string start
            tail, _ = stops.feed(utf8.flush())
            tail += stops.flush()
        usage.completion_seconds = time.perf_counter() - started
        yield Chunk(tail, finish)

    def close(self) -> None:
        self.contexts.close()
        self.model.close()


def _splice(tokens: list[int], refs: tuple[MediaRef, ...], spans: list[Span]) -> list[Item]:
    """Replace each placeholder token by its media span, in order; the placeholders must match
    the references one to one, kind by kind (a missing or extra placeholder is an error)."""
    by_id = {kind.token_id: kind.name for kind in KINDS.values()}
    found = [by_id[t] for t in tokens if t in by_id]
    expected = [r.kind for r in refs]
    if found != expected:
        raise InputError(f"the tokenized prompt holds media placeholders {found} but the messages give "
                         f"{expected}; placeholders must match the media one to one", param="messages")
    spans_left = iter(spans)
    return [next(spans_left) if t in by_id else t for t in tokens]


def _sampler_settings(p: GenerationParams) -> SamplerSettings:
    return SamplerSettings(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, min_p=p.min_p,
                           repeat_penalty=p.repeat_penalty, frequency_penalty=p.frequency_penalty,
                           presence_penalty=p.presence_penalty, seed=p.seed, grammar=p.grammar)

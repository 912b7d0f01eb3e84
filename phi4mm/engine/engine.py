"""Prompt -> media spans and token ids -> sequences decoded together by the scheduler -> chunks.

The request's mode (model-spec.md §4), derived once from the prompt, picks the LoRA adapter and
the audio projector head; media rows come from `encoders`; slots, KV reuse and LongRoPE from
`contexts`; batching from `scheduler`. Any thread may prepare and submit; a `Stream` reads one
sequence's output and cancels it when closed or dropped.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from phi4mm import keys, media
from phi4mm.engine import llama, malloc
from phi4mm.engine.contexts import Contexts, Item, default_budget_cells, n_rows
from phi4mm.engine.encoders import Encoders, Span
from phi4mm.engine.llama import ContextSettings, Model, Sampler, SamplerSettings, StopCheck
from phi4mm.engine.scheduler import Scheduler
from phi4mm.engine.sequence import END, Chunk, Sequence
from phi4mm.engine.tokenizer import Tokenizer
from phi4mm.errors import ContextOverflowError, EngineError, InputError
from phi4mm.files import ModelFiles
from phi4mm.modes import Mode
from phi4mm.params import GenerationParams
from phi4mm.prompt import KINDS, MediaRef, build_prompt
from phi4mm.usage import Usage

__all__ = ["Chunk", "Engine", "EngineSettings", "Prepared", "Stream", "Usage"]

LOGGER = logging.getLogger("phi4mm.engine")


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
    n_parallel: int = 1                    # sequences decoded together (each with its own KV cells)
    prefill_chunk: int = 8                 # prompt rows per step while other streams are decoding
    media_workers: int = 0                 # decoder processes for encoded media (0: decode in-process)
    n_gpu_layers: int | None = None        # decoder layers on the GPU; None: all if llama.cpp has a GPU backend
    main_gpu: int | None = None            # the GPU holding the whole decoder; None: split over every GPU
    encoder_device: str = "cpu"            # where the image and audio encoders run: "cpu" or "cuda"
    kv_budget_mb: int | None = None        # KV of every context together; None: contexts.default_budget_cells
    context_idle_s: float | None = 600.0   # a context unused this long is closed, its cached prefixes with it


@dataclass(frozen=True)
class Prepared:
    items: tuple[Item, ...]
    n_rows: int
    mode: Mode                      # picks the LoRA (and, for audio, the projector head)
    media_tokens: dict[str, int]    # rows per media kind
    media_seconds: dict[str, float]  # encoding time per media kind


class Engine:
    """One loaded model; requests from any thread are decoded together by one engine thread."""

    def __init__(self, files: ModelFiles, settings: EngineSettings | None = None):
        self.files = files
        self.settings = settings = settings or EngineSettings()
        if settings.n_parallel < 1:
            raise InputError(f"n_parallel is {settings.n_parallel}, expected >= 1", param="n_parallel")
        if settings.encoder_device not in keys.ENCODER_DEVICES:
            raise InputError(f"encoder_device is {settings.encoder_device!r}, expected one of {keys.ENCODER_DEVICES}",
                             param="encoder_device")
        malloc.fix_mmap_threshold()  # freed encoder activations leave the resident set (malloc.py)
        self.model = Model(files.text, use_mmap=settings.use_mmap, n_gpu_layers=settings.n_gpu_layers,
                           main_gpu=settings.main_gpu)
        LOGGER.info(self.model.offload.describe())
        self.tokenizer = Tokenizer(files.tokenizer)
        n_orig = int(self.model.meta(keys.ORIGINAL_CONTEXT_KEY) or self.model.n_ctx_train)
        self.contexts = Contexts(self.model, ContextSettings(settings.n_ctx, settings.n_batch, settings.n_threads,
                                                              settings.flash_attn), n_orig,
                                 {"vision": files.vision_lora, "speech": files.speech_lora}, settings.n_parallel,
                                 budget_cells=self._budget_cells(settings, n_orig),
                                 idle_release_s=settings.context_idle_s)
        self.contexts.context("short")  # its KV cells are allocated now, not on the first request
        self.media = media.media_loader(settings.media_workers)  # decodes what requests send
        self.encoders = Encoders(files, settings.media_cache_bytes, settings.dynamic_hd, self.media,
                                 device=settings.encoder_device)
        self.scheduler = Scheduler(self.model, self.contexts, settings.n_batch, settings.prefill_chunk)
        self._encoding = threading.Lock()  # encoders and their cache: one request at a time

    def _budget_cells(self, settings: EngineSettings, n_orig: int) -> int:
        """The KV budget in cells: kv_budget_mb over the model's bytes per cell, else the default."""
        if settings.kv_budget_mb is None:
            return default_budget_cells(settings.n_parallel, settings.n_ctx, n_orig)
        cells = (settings.kv_budget_mb << 20) // self.model.kv_bytes_per_cell
        least = settings.n_parallel * settings.n_ctx  # one long context (or the only context size)
        if cells < least:
            least_mb = -(-least * self.model.kv_bytes_per_cell // (1 << 20))
            self.model.close()
            raise InputError(f"kv_budget_mb is {settings.kv_budget_mb}, expected at least {least_mb} "
                             f"({settings.n_parallel} slot(s) of {settings.n_ctx} cells, "
                             f"{self.model.kv_bytes_per_cell // 1024} KiB each)", param="kv_budget_mb")
        return cells

    @property
    def n_ctx(self) -> int:
        return self.contexts.n_ctx

    @property
    def n_orig(self) -> int:
        return self.contexts.n_orig

    # -- prompt preparation (any thread) -------------------------------------------------------

    def prepare(self, messages: object, dynamic_hd: int | None = None, limits: media.MediaLimits | None = None,
                should_stop: StopCheck | None = None) -> Prepared:
        """Messages -> prompt items (token ids and media spans). `should_stop` is checked before
        each media item is encoded."""
        prompt = build_prompt(messages)
        tokens = self.tokenizer.encode(prompt.text)
        with self._encoding:
            spans, seconds = self.encoders.encode_all(prompt.media, prompt.mode, dynamic_hd,
                                                      limits or self.settings.media_limits, should_stop)
        items = _splice(tokens, prompt.media, spans)
        if not items or isinstance(items[-1], Span):
            raise InputError("a prompt must end with a text token", param="messages")
        counts = {kind: sum(s.rows.shape[0] for r, s in zip(prompt.media, spans, strict=True) if r.kind == kind)
                  for kind in KINDS}
        return Prepared(tuple(items), n_rows(items), prompt.mode, counts, seconds)

    def check_fits(self, prepared: Prepared, room: int) -> None:
        if prepared.n_rows + room > self.n_ctx:
            raise ContextOverflowError(prepared.n_rows, self.n_ctx - room)

    # -- submission (any thread) ---------------------------------------------------------------

    def submit(self, prepared: Prepared, params: GenerationParams | None,
               should_stop: StopCheck | None = None) -> Stream:
        """Queue a generation (params) or a prompt-logits request (None); its output is read from
        the returned Stream. Raises ContextOverflowError or a grammar EngineError before queueing."""
        self.check_fits(prepared, 0 if params is None else 1)
        usage = _usage(prepared)
        sampler = None if params is None else Sampler(self.model, _sampler_settings(params))
        out: queue.SimpleQueue = queue.SimpleQueue()
        seq = Sequence(list(prepared.items), prepared.mode, params, sampler, out.put, usage, should_stop)
        try:
            self.scheduler.submit(seq)
        except BaseException:
            if sampler is not None:
                sampler.close()
            raise
        return Stream(seq, out, self.scheduler)

    def prompt_logits(self, prepared: Prepared) -> np.ndarray:
        """float32 (n_vocab,) next-token logits after the prompt."""
        (logits,) = list(self.submit(prepared, None))
        return logits

    def placement(self) -> dict:
        """What sits where (JSON-ready): the decoder's layers, its KV cells and LoRA adapters, the
        GPUs with their memory now, and the encoders' device with the weights loaded there so far."""
        placed = self.model.offload
        gpus = [d for d in llama.devices() if d.kind in ("gpu", "igpu")]
        return {
            "text_decoder": {"layers_on_gpu": placed.n_gpu_layers, "layers": placed.n_layers,
                             "devices": [d.name for d in placed.devices],
                             "kv_on_gpu": placed.blocks_on_gpu > 0,  # llama.cpp's offload_kqv is on
                             "lora": {"loaded": sorted(self.contexts.adapters), "on_gpu": placed.blocks_on_gpu > 0}},
            "gpu": {"offload_supported": placed.gpu_backend,
                    "devices": [{"name": d.name, "description": d.description, "backend": d.backend,
                                 "memory_free_bytes": d.memory_free_bytes,
                                 "memory_total_bytes": d.memory_total_bytes} for d in gpus]},
            "encoders": {"device": self.settings.encoder_device, "weight_bytes": self.encoders.weight_bytes()},
        }

    def close(self) -> None:
        self.scheduler.close()
        self.contexts.close()
        self.model.close()
        self.media.close()


class Stream:
    """Iterates one sequence's output: Chunks (generation) or the logits (prompt_logits), raising
    what the engine raised. `close()`, or dropping the last reference, cancels the sequence,
    which frees its slot at the next step. `usage` is final once iteration ends."""

    def __init__(self, seq: Sequence, out: queue.SimpleQueue, scheduler: Scheduler):
        self.seq = seq
        self.usage = seq.usage
        self._out = out
        self._scheduler = scheduler
        self._ended = False

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Chunk | np.ndarray:
        if self._ended:
            raise StopIteration
        while True:
            try:
                item = self._out.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._scheduler.alive:
                    self._ended = True
                    raise EngineError("the engine thread has stopped") from None
        if item is END:
            self._ended = True
            raise StopIteration
        if isinstance(item, BaseException):
            self._ended = True
            self._out.get()  # the END after it
            raise item
        return item

    def close(self) -> None:
        if not self._ended:
            self._ended = True
            self.seq.cancel()
            self._scheduler.wake()

    def __del__(self) -> None:
        self.close()


def _usage(prepared: Prepared) -> Usage:
    return Usage(prompt_tokens=prepared.n_rows, image_tokens=prepared.media_tokens["image"],
                 audio_tokens=prepared.media_tokens["audio"], image_seconds=prepared.media_seconds["image"],
                 audio_seconds=prepared.media_seconds["audio"])


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

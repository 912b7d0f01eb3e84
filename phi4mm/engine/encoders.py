"""Media reference + mode -> the rows spliced at its placeholders (model-spec.md §6, §7): loads
and decodes the media, runs the encoder of its kind on the encoder device (NumPy on the CPU, CuPy
on a GPU: phi4mm.arrays), and keeps the projected rows, as NumPy, in one byte-bounded LRU cache
keyed by content and every setting that changes them. Encoder weights are read from their GGUF
files on first use and moved to the device once (float16 matrices stay float16 there)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from phi4mm import arrays, keys, media
from phi4mm.audio import encoder as audio_encoder
from phi4mm.engine.cache import RowCache
from phi4mm.errors import Cancelled
from phi4mm.files import ModelFiles
from phi4mm.modes import Mode
from phi4mm.prompt import MediaRef
from phi4mm.vision import encoder as vision_encoder
from phi4mm.vision import preprocess
from phi4mm.weights import read_gguf


@dataclass(frozen=True)
class Span:
    key: str            # content + settings: identifies the rows for KV reuse
    rows: np.ndarray    # (n_rows, n_embd) float32 projected rows


class Encoders:
    """The image and audio encoders of one model, their weights and the shared row cache."""

    def __init__(self, files: ModelFiles, cache_bytes: int, dynamic_hd: int | None = None,
                 loader: media.InProcess | None = None, device: str = "cpu"):
        self.files = files
        self.device = device                  # "cpu" or "cuda" (EngineSettings.encoder_device)
        self.xp = arrays.namespace_for(device)  # fails now, not on the first image, without CuPy
        self.loader = loader or media.InProcess()  # decodes encoded sources (maybe in worker processes)
        self.cache = RowCache(cache_bytes)
        self.dynamic_hd = dynamic_hd          # None: the checkpoint's value (36 for the real model)
        self._vision: vision_encoder.VisionWeights | None = None
        self._audio: audio_encoder.AudioWeights | None = None
        self._checkpoint_dynamic_hd = 0

    def encode_all(self, refs: tuple[MediaRef, ...], mode: Mode, dynamic_hd: int | None,
                   limits: media.MediaLimits, should_stop: Callable[[], bool] | None = None,
                   ) -> tuple[list[Span], dict[str, float]]:
        """One span per reference, in order, and the seconds spent per kind; `should_stop` is
        checked before each item."""
        seconds = {"image": 0.0, "audio": 0.0}
        spans = []
        for ref in refs:
            if should_stop is not None and should_stop():
                raise Cancelled("the request was cancelled")
            started = time.perf_counter()
            spans.append(self.encode(ref, mode, dynamic_hd, limits))
            seconds[ref.kind] += time.perf_counter() - started
        return spans, seconds

    def encode(self, ref: MediaRef, mode: Mode, dynamic_hd: int | None, limits: media.MediaLimits) -> Span:
        if ref.kind == "image":
            return self._image(ref, dynamic_hd, limits)
        return self._audio_span(ref, mode, limits)

    # -- images (§5, §6) ---------------------------------------------------------------------

    def _image(self, ref: MediaRef, dynamic_hd: int | None, limits: media.MediaLimits) -> Span:
        picture = self.loader.load_image(ref.source, limits)
        hd = self._dynamic_hd(dynamic_hd, ref.detail)
        key = f"image:{preprocess.content_key(picture)}:{hd}"
        return self._cached(key, lambda: vision_encoder.encode_image(preprocess.preprocess(picture, hd), self.vision))

    def _dynamic_hd(self, requested: int | None, detail: str | None) -> int:
        """Crops limit for one image: the request's, the model's, else the checkpoint's (36)."""
        if detail == "low":
            return 1
        hd = requested or self.dynamic_hd
        if hd is None:
            self.vision  # noqa: B018 (loading the encoder reads the checkpoint's value)
            hd = self._checkpoint_dynamic_hd
        return hd

    @property
    def vision(self) -> vision_encoder.VisionWeights:
        """The vision encoder's float32 weights, loaded on the first image."""
        if self._vision is None:
            contents = read_gguf(self.files.vision, keys.VISION_ARCH, keep_f16=True)
            self._checkpoint_dynamic_hd = int(contents.value(keys.VISION_PREFIX + "dynamic_hd"))
            self._vision = arrays.move(vision_encoder.load_weights(contents.metadata, contents.tensors), self.xp)
        return self._vision

    # -- audio (§7) --------------------------------------------------------------------------

    def _audio_span(self, ref: MediaRef, mode: Mode, limits: media.MediaLimits) -> Span:
        clip = self.loader.load_audio(ref.source, limits)
        head = mode.audio_head or "speech"
        digest = hashlib.sha256(np.ascontiguousarray(clip.samples, dtype=np.float32).tobytes()).hexdigest()
        key = f"audio:{digest}:{clip.sample_rate_hz}:{head}"
        return self._cached(key, lambda: audio_encoder.encode_audio(clip.samples, clip.sample_rate_hz,
                                                                    self.audio, head))

    @property
    def audio(self) -> audio_encoder.AudioWeights:
        """The audio encoder's weights (large matrices kept as stored), loaded on the first clip."""
        if self._audio is None:
            contents = read_gguf(self.files.audio, keys.AUDIO_ARCH, keep_f16=True)
            self._audio = arrays.move(audio_encoder.load_weights(contents.metadata, contents.tensors), self.xp)
        return self._audio

    def weight_bytes(self) -> dict[str, int]:
        """Bytes of the encoder weights loaded so far, per kind (on the encoder device)."""
        loaded = {"vision": self._vision, "audio": self._audio}
        return {kind: sum(arrays.nbytes(a) for a in arrays.arrays_of(w)) for kind, w in loaded.items() if w is not None}

    def _cached(self, key: str, compute: Callable[[], np.ndarray]) -> Span:
        rows = self.cache.get(key)
        if rows is None:
            started = time.perf_counter()
            rows = arrays.to_host(compute())
            self.cache.put(key, rows, time.perf_counter() - started)
        return Span(key, rows)

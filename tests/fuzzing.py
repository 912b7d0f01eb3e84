"""Hypothesis strategies for hostile input, seeded from valid input: JSON request bodies with parts
replaced, deleted or retyped, and encoded media (PNG, JPEG, WAV, FLAC, MP3, OGG, WEBM) truncated,
with flipped bytes, with huge declared sizes or with inserted junk. Shared by the in-process and
the live-server fuzz tests. PHI4MM_FUZZ_EXAMPLES scales every campaign (default: CI's bound)."""

from __future__ import annotations

import copy
import hashlib
import io
import os
from dataclasses import dataclass
from functools import cache

import av
import numpy as np
import soundfile as sf
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image

SCALE = float(os.environ.get("PHI4MM_FUZZ_EXAMPLES", "1"))  # a campaign: e.g. 20 = twenty times CI's


def bounded(n_examples: int, **extra) -> settings:
    """CI's bound of `n_examples` (times SCALE), no example database, no deadline per example."""
    return settings(max_examples=max(1, int(n_examples * SCALE)), database=None, deadline=None,
                    suppress_health_check=list(HealthCheck), derandomize=SCALE == 1, **extra)


# -- JSON bodies ---------------------------------------------------------------------------------

KEYS = ["type", "text", "image_url", "url", "input_audio", "data", "format", "role", "content",
        "audio_url", "detail", "messages", "stream", "stream_options", "include_usage", "max_tokens",
        "temperature", "stop", "n", "response_format", "seed", "model"]
LEAVES = (st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats() | st.text(max_size=16)
          | st.sampled_from(["text", "image_url", "input_audio", "audio_url", "user", "system", "assistant",
                             "tool", "wav", "json_object", "data:image/png;base64,AAAA", "<|image_1|>",
                             "<|endoftext10|>", "http://127.0.0.1:1/x.png", "file:///etc/passwd"]))
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4),
                      max_leaves=16)
PNG_1PX = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/"
           "pLvAAAAAElFTkSuQmCC")
SEED_BODIES = [
    {"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]},
    {"model": "m", "max_tokens": 1, "temperature": 0, "stop": ["x"], "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "<|image_1|> what?"},
                                     {"type": "image_url", "image_url": {"url": PNG_1PX, "detail": "low"}}]}]},
    {"model": "m", "max_tokens": 1, "stream": True, "stream_options": {"include_usage": True}, "messages": [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                                     {"type": "text", "text": "Transcribe."}]},
        {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]},
    {"model": "m", "max_completion_tokens": 1, "response_format": {"type": "json_object"}, "seed": 1,
     "messages": [{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": "http://127.0.0.1:9/a.wav"}}]}]},
]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield from _paths(value, (*prefix, index))


@st.composite
def mutated_bodies(draw):
    """A seed body with 1-3 of its subtrees replaced by random JSON, deleted or the whole body replaced."""
    body = copy.deepcopy(draw(st.sampled_from(SEED_BODIES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(_paths(body))))
        if not path:
            return draw(VALUES)
        parent = body
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(VALUES)
    return body


# -- encoded media -------------------------------------------------------------------------------

def _image(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(out, fmt)
    return out.getvalue()


def _tone(seconds: float = 0.3, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def _audio(fmt: str, subtype: str) -> bytes:
    out = io.BytesIO()
    sf.write(out, _tone(), 16000, format=fmt, subtype=subtype)
    return out.getvalue()


def _webm() -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="webm") as box:
        stream = box.add_stream("libopus", rate=48000, layout="mono")
        frame = av.AudioFrame.from_ndarray(_tone(0.3, 48000)[None], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in stream.encode(frame):
            box.mux(packet)
        for packet in stream.encode(None):
            box.mux(packet)
    return out.getvalue()


@cache
def seed_media() -> dict[str, tuple[str, bytes]]:
    """name -> (kind, valid encoded bytes)."""
    return {"png": ("image", _image("PNG")), "jpeg": ("image", _image("JPEG")),
            "wav": ("audio", _audio("WAV", "PCM_16")), "flac": ("audio", _audio("FLAC", "PCM_16")),
            "mp3": ("audio", _audio("MP3", "MPEG_LAYER_III")), "ogg": ("audio", _audio("OGG", "VORBIS")),
            "webm": ("audio", _webm())}


@dataclass(frozen=True)
class Sample:
    """Mutated media; its repr stays short (hypothesis prints failing examples)."""

    name: str   # the seed's format
    kind: str   # "image" or "audio"
    data: bytes

    def __iter__(self):
        return iter((self.name, self.kind, self.data))

    def __repr__(self) -> str:
        digest = hashlib.sha256(self.data).hexdigest()[:12]
        return f"Sample({self.name}, {len(self.data)} bytes, sha256 {digest}, starting {self.data[:24]!r})"


@st.composite
def mutated_media(draw, kinds=("image", "audio")):
    """(seed name, kind, bytes): a valid file with 1-3 mutations, or now and then random bytes."""
    name = draw(st.sampled_from(sorted(n for n, (k, _) in seed_media().items() if k in kinds)))
    kind, data = seed_media()[name]
    if draw(st.integers(0, 9)) == 0:
        return Sample(name, kind, draw(st.binary(max_size=512)))
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["truncate", "flip", "huge", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "truncate":
            del data[at:]
        elif how == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif how == "huge":
            data[at:at + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"]))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
    return Sample(name, kind, bytes(data))

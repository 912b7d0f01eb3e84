#!/usr/bin/env python3
"""End-to-end transcription time and the memory of serving all three modalities, on a converted
full-size checkpoint (scripts/make_checkpoint.py DIR --size full; phi4mm convert DIR OUT).

  python scripts/bench_transcribe.py OUT [--clips 30,300] [--tokens-per-window 96] [--threads N]

For each clip length: `Phi4MM.transcribe` of a seeded tone-and-noise recording (16 kHz, with a
short pause every 7 s so the window cuts have somewhere quiet to go), wall time and real-time factor
(seconds of work per second of audio). A random checkpoint never emits <|end|> on purpose, so every
window generates exactly --tokens-per-window tokens (about a fast speaker's 30 s): the figure is the
encoder, the prefill and that many decode steps per window. Then one text, one image (1000x666)
and one image+audio chat in the same process; peak RSS (ru_maxrss) is reported after each stage.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
from PIL import Image

from phi4mm import Phi4MM

RATE_HZ = 16000


def recording(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE_HZ)) / RATE_HZ
    wave = sum(a * np.sin(2 * np.pi * f * t) for f, a in ((220, 0.1), (530, 0.05), (1250, 0.03)))
    wave = wave + 0.01 * rng.standard_normal(len(t))
    wave[(t % 7.0) > 6.6] *= 0.02  # a 0.4 s pause every 7 s
    return wave.astype(np.float32)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--clips", default="30,300", help="clip lengths in seconds, comma-separated")
    ap.add_argument("--tokens-per-window", type=int, default=96)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    model = Phi4MM.from_pretrained(args.model, n_ctx=8192, n_threads=args.threads)
    print(f"loaded: peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    for seconds in (float(s) for s in args.clips.split(",")):
        samples = recording(seconds)
        started = time.perf_counter()
        transcript = model.transcribe((samples, RATE_HZ), temperature=0.0,
                                      max_tokens_per_window=args.tokens_per_window)
        wall_s = time.perf_counter() - started
        print(f"transcribe {seconds:.0f} s: {len(transcript.segments)} windows, {wall_s:.1f} s, "
              f"RTF {wall_s / seconds:.2f}, peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    rng = np.random.default_rng(1)
    picture = Image.fromarray(rng.integers(0, 256, (666, 1000, 3), dtype=np.uint8))
    clip = (recording(10.0, seed=2), RATE_HZ)
    stages = {
        "text": [{"role": "user", "content": "Hello there"}],
        "image": [{"role": "user", "content": [{"type": "image", "image": picture},
                                               {"type": "text", "text": "Describe it."}]}],
        "image+audio": [{"role": "user", "content": [{"type": "image", "image": picture},
                                                     {"type": "audio", "audio": clip},
                                                     {"type": "text", "text": "Answer the question."}]}],
    }
    for name, messages in stages.items():
        started = time.perf_counter()
        out = model.create_chat_completion(messages, max_tokens=8, temperature=0.0)
        print(f"{name}: {time.perf_counter() - started:.1f} s, {out['usage']['prompt_tokens']} prompt tokens, "
              f"peak RSS {peak_rss_gib():.2f} GiB", flush=True)
    model.close()


if __name__ == "__main__":
    main()

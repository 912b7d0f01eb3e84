#!/usr/bin/env python3
"""What decoding media in worker processes costs (issue 18): the decode alone, in-process against a
DecoderPool, for a 448x448 image (PNG, JPEG) and a 30 s clip (WAV, MP3); and the time to first
token of a request carrying that image or clip (as base64 bytes, so it is decoded), through the
Python API with media_workers=0 and media_workers=2, alternating, in one run.

  python scripts/bench_isolation.py OUT [--runs 3] [--decodes 10] [--threads N]

OUT is a converted directory (the full-size random checkpoint for real encoder and prefill times;
the tiny one works too). Every run uses a new picture and a new clip (another seed), so no row
cache or KV prefix is reused. Figures are medians.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image


def png_or_jpeg(fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:448, 0:448]
    smooth = np.stack([xs * 255 // 447, ys * 255 // 447, (xs + ys) % 256], axis=-1)
    pixels = np.clip(smooth + rng.integers(-30, 31, smooth.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def clip(fmt: str, subtype: str, seed: int, seconds: float = 30.0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    samples = 0.2 * np.sin(2 * np.pi * rng.uniform(100, 1000) * t) + 0.02 * rng.standard_normal(t.size)
    out = io.BytesIO()
    sf.write(out, samples.astype(np.float32), 16000, format=fmt, subtype=subtype)
    return out.getvalue()


def decode_times(loader, kind: str, data: bytes, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        if kind == "image":
            loader.load_image(data)
        else:
            loader.decode_audio(data)
        times.append(time.perf_counter() - started)
    return times


def ttft(model, kind: str, data: bytes) -> float:
    encoded = base64.b64encode(data).decode()
    part = ({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}} if kind == "image"
            else {"type": "input_audio", "input_audio": {"data": encoded, "format": "wav"}})
    messages = [{"role": "user", "content": [part, {"type": "text", "text": "Describe it."}]}]
    started = time.perf_counter()
    stream = model.create_chat_completion(messages, max_tokens=1, temperature=0, stream=True)
    next(iter(stream))
    took = time.perf_counter() - started
    for _ in stream:
        pass
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="converted directory")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--decodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    from phi4mm import Phi4MM
    from phi4mm.media import DecoderPool, InProcess

    load = [os.getloadavg()[0]]
    samples = {"448x448 PNG": ("image", png_or_jpeg("PNG", 0)), "448x448 JPEG": ("image", png_or_jpeg("JPEG", 0)),
               "30 s WAV": ("audio", clip("WAV", "PCM_16", 0)), "30 s MP3": ("audio", clip("MP3", "MPEG_LAYER_III", 0))}
    pool = DecoderPool()
    print(f"{'decode only':<16}{'bytes':>10}{'in-process ms':>16}{'workers ms':>13}{'overhead ms':>13}")
    for name, (kind, data) in samples.items():
        decode_times(pool, kind, data, 2)  # warm: both workers have imported and run once
        here = statistics.median(decode_times(InProcess(), kind, data, args.decodes)) * 1e3
        there = statistics.median(decode_times(pool, kind, data, args.decodes)) * 1e3
        print(f"{name:<16}{len(data):>10}{here:>16.1f}{there:>13.1f}{there - here:>13.1f}")
    pool.close()
    load.append(os.getloadavg()[0])

    models = {n: Phi4MM.from_pretrained(args.out, n_ctx=4096, n_threads=args.threads, media_workers=n)
              for n in (0, 2)}
    results: dict = {(n, kind): [] for n in models for kind in ("image", "audio")}
    for run in range(args.runs + 1):  # run 0 warms both
        for kind, data in (("image", png_or_jpeg("PNG", 100 + run)), ("audio", clip("WAV", "PCM_16", 100 + run))):
            for n, model in models.items():
                took = ttft(model, kind, data)
                if run:
                    results[(n, kind)].append(took)
    load.append(os.getloadavg()[0])
    for model in models.values():
        model.close()
    print(f"\n{'time to first token':<32}{'in-process s':>14}{'workers s':>11}{'ratio':>8}"
          "   runs (in-process | workers)")
    for kind, label in (("image", "448x448 PNG image"), ("audio", "30 s WAV clip")):
        a, b = results[(0, kind)], results[(2, kind)]
        print(f"{label:<32}{statistics.median(a):>14.3f}{statistics.median(b):>11.3f}"
              f"{statistics.median(b) / statistics.median(a):>8.3f}   {' '.join(f'{t:.3f}' for t in a)} | "
              f"{' '.join(f'{t:.3f}' for t in b)}")
    print(f"\n1-min load average at start, after decodes, at end: {' '.join(f'{v:.2f}' for v in load)} "
          f"on {os.cpu_count()} cores; model {args.out}")


if __name__ == "__main__":
    main()

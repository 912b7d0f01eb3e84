#!/usr/bin/env python3
"""Time to first token for one image through the whole engine: media decode, dynamic-HD
preprocessing, numpy vision encoder, prefill of text + image rows with the vision LoRA, first token.

  python scripts/bench_ttft.py CONVERTED_DIR [--image 1000x666] [--runs 3] [--threads 2]

CONVERTED_DIR is a `phi4mm convert` output (e.g. the full-size random checkpoint at q4_k_m).
Per run, three requests (medians reported, the first run is a warm-up):
  cold        a new image: encode + prefill + first token;
  rows cached the same image after a different system prompt: its rows come from the image-row
              cache, the KV prefix does not match, so everything is prefilled again;
  repeated    the identical request again: the KV prefix is reused, only the last token is decoded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from phi4mm import Phi4MM


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def request(image: Image.Image, system: str) -> list[dict]:
    return [{"role": "system", "content": system},
            {"role": "user", "content": [{"type": "image", "image": image},
                                         {"type": "text", "text": "What is shown in this image?"}]}]


def ttft(model: Phi4MM, messages: list[dict]) -> tuple[float, dict]:
    started = time.perf_counter()
    out = model.create_chat_completion(messages, max_tokens=1, temperature=0)
    return time.perf_counter() - started, out["usage"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--image", default="1000x666")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    width, height = (int(v) for v in args.image.split("x"))
    model = Phi4MM.from_pretrained(args.model_dir, n_ctx=4096, n_threads=args.threads)
    results: dict[str, list[float]] = {"cold": [], "rows cached": [], "repeated": []}
    for run in range(args.runs + 1):
        image = picture(width, height, run)
        cold, usage = ttft(model, request(image, f"Run {run}. Be brief."))
        cached, _ = ttft(model, request(image, f"Run {run}. Be precise."))
        repeated, _ = ttft(model, request(image, f"Run {run}. Be precise."))
        print(f"run {run}{' (warm-up)' if run == 0 else ''}: cold {cold:.1f} s (image encode "
              f"{usage['image_seconds']:.1f} s, prefill {usage['prompt_seconds']:.1f} s), rows cached "
              f"{cached:.1f} s, repeated {repeated:.2f} s", flush=True)
        if run:
            for key, value in zip(results, (cold, cached, repeated), strict=True):
                results[key].append(value)
    print(f"\n{width}x{height} image: {usage['prompt_tokens_details']['image_tokens']} image rows, "
          f"{usage['prompt_tokens']} prompt tokens, {args.threads} threads, medians of {args.runs} runs")
    for key, values in results.items():
        print(f"time to first token, {key:12s} {statistics.median(values):7.2f} s")
    stats = model.engine.encoders.cache.stats
    print(f"image-row cache: {stats.hits} hits, {stats.misses} misses, {stats.seconds_saved:.1f} s of encoding saved")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What an adapter change costs the next decode (issue 19, "measure first"): llama.cpp alone, no
scheduler. A 1-token text batch and an 8-row embedding batch are decoded again and again, either
under one adapter set throughout, or right after `llama_set_adapters_lora` changed the set (the
vision LoRA and the speech LoRA in turn, as the engine's groups take turns).

  python scripts/bench_adapter_switch.py OUT [--repeats 20] [--threads N]

OUT is a converted directory (the full-size random checkpoint gives real figures). Each repeat
decodes at the next position of a 64-token prompt per adapter set, in its own sequence, so the
only difference between the two columns is the change of adapters. Times are medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="converted directory")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    from phi4mm.engine.llama import Adapter, Context, ContextSettings, EmbeddingRun, Model, TokenRow
    from phi4mm.files import ModelFiles

    files = ModelFiles.from_dir(args.out)
    load = [os.getloadavg()[0]]
    rng = np.random.default_rng(0)
    with Model(files.text) as model:
        vision, speech = Adapter(model, files.vision_lora), Adapter(model, files.speech_lora)
        ctx = Context(model, ContextSettings(4096, 512, args.threads, False, 2))
        sets = {0: [(vision, 1.0)], 1: [(speech, 1.0)]}   # sequence i is decoded under sets[i]
        position = {}
        for seq, adapters in sets.items():
            ctx.set_adapters(adapters)
            ctx.decode_tokens([TokenRow(1000 + i, i, seq) for i in range(64)])
            position[seq] = 64

        def text(seq: int) -> None:
            ctx.decode_tokens([TokenRow(2000, position[seq], seq, True)])
            position[seq] += 1

        def rows(seq: int) -> None:
            embd = rng.standard_normal((8, model.n_embd)).astype(np.float32) * 0.02
            ctx.decode_embeddings([EmbeddingRun(embd, position[seq], seq)])
            position[seq] += 8

        results = {}
        for name, work in (("1-token text batch", text), ("8-row embedding batch", rows)):
            for _ in range(3):  # warm both sets' graphs
                for seq in sets:
                    ctx.set_adapters(sets[seq])
                    work(seq)
            same, switched = [], []
            for i in range(args.repeats):
                seq = i % 2
                ctx.set_adapters(sets[seq])           # a change: the other set was active
                started = time.perf_counter()
                work(seq)
                switched.append(time.perf_counter() - started)
                started = time.perf_counter()
                work(seq)                             # the same set again: no change
                same.append(time.perf_counter() - started)
            results[name] = (same, switched)
        ctx.close()
        vision.close()
        speech.close()
    load.append(os.getloadavg()[0])
    print(f"{'decode':<24}{'same set ms':>13}{'after a change ms':>19}{'cost ms':>9}{'ratio':>8}")
    for name, (same, switched) in results.items():
        a, b = statistics.median(same) * 1e3, statistics.median(switched) * 1e3
        print(f"{name:<24}{a:>13.1f}{b:>19.1f}{b - a:>9.1f}{b / a:>8.2f}")
    print(f"medians of {args.repeats}; 1-min load average before and after: {load[0]:.2f} {load[1]:.2f} "
          f"on {os.cpu_count()} cores; model {args.out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Peak RSS of one process serving a text, an audio (30 s) and an image (1000x666) request at
once, default settings (n_ctx 8192, one slot per context), on a converted full-size checkpoint;
optionally the same with another checkout of phi4mm (e.g. before contexts per adapter set), each
in its own process, one after the other.

  python scripts/bench_modes_memory.py CONVERTED_DIR [--also-code OTHER_CHECKOUT] [--threads N]

Reports per run: peak RSS (ru_maxrss) after loading and after the three requests, wall time, and
for this checkout the contexts it opened and the KV cells they hold.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, threading, time
sys.path.insert(0, sys.argv[1])
import numpy as np
from PIL import Image
from phi4mm import Phi4MM
assert Phi4MM.__module__ and sys.modules["phi4mm"].__file__.startswith(sys.argv[1])
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
model = Phi4MM.from_pretrained(sys.argv[2], n_ctx=8192, n_threads=int(sys.argv[3]))
loaded = rss()
rng = np.random.default_rng(0)
picture = Image.fromarray(rng.integers(0, 256, (666, 1000, 3), dtype=np.uint8))
t = np.arange(30 * 16000) / 16000
clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
requests = {
    "text": [{"role": "user", "content": "Write a short story about a lighthouse."}],
    "audio": [{"role": "user", "content": [{"type": "audio", "audio": (clip, 16000)},
                                           {"type": "text", "text": "Transcribe the audio clip into text."}]}],
    "image": [{"role": "user", "content": [{"type": "image", "image": picture},
                                           {"type": "text", "text": "What is shown in this image?"}]}],
}
done = {}
def run(name):
    started = time.perf_counter()
    out = model.create_chat_completion(requests[name], max_tokens=8, temperature=0)
    done[name] = (time.perf_counter() - started, out["usage"]["prompt_tokens"])
started = time.perf_counter()
threads = [threading.Thread(target=run, args=(n,)) for n in requests]
for th in threads: th.start()
for th in threads: th.join()
report = {"code": sys.argv[1], "loaded_gib": loaded, "peak_gib": rss(), "wall_s": time.perf_counter() - started,
          "requests": done}
contexts = model.engine.contexts
if hasattr(contexts, "cells_allocated"):
    report["contexts"] = [list(k) for k in contexts.contexts]
    report["kv_cells_allocated"] = contexts.cells_allocated()
    report["kv_bytes_per_cell"] = model.engine.model.kv_bytes_per_cell
    report["context_stats"] = vars(contexts.context_stats)
print(json.dumps(report))
model.close()
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--also-code", type=Path, default=None, help="another checkout to measure the same way")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    codes = [Path(__file__).resolve().parents[1]] + ([args.also_code.resolve()] if args.also_code else [])
    for code in codes:
        out = subprocess.run([sys.executable, "-c", CHILD, str(code), str(args.model), str(args.threads)],
                             check=True, capture_output=True, text=True)
        print(json.dumps(json.loads(out.stdout.strip().splitlines()[-1]), indent=None), flush=True)


if __name__ == "__main__":
    main()

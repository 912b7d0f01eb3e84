#!/usr/bin/env python3
"""How far llama.cpp's logits move when only the batch shape changes: the basis of the tolerances
of the tests that compare our own outputs with each other (KV prefix reuse, batched against alone,
thread counts). Run it on a new CPU before trusting those tolerances there.

  python scripts/measure_drift.py [--model CONVERTED_DIR] [--threads 1,2]

Without --model it writes the tiny test checkpoint (scripts/make_checkpoint.py, seed 0) and its
f32 conversion into a temporary folder, as the test suite does. Every figure is
max|a - b| / max|b| over the final position's logits, the measure the tests use:
- reuse: a prompt decoded whole in a fresh model, then again from its cached prefix (only its last
  token decoded again), per modality and prompt;
- threads: the same prompt decoded whole with each thread count against the first;
- batched: a request decoded alone against the same request in a batch of four (mixed modalities);
- control: the nearest different prompt (another image of the same size, another clip, another
  last word): what a tolerance must stay far below;
- margin: along greedy generations (12 tokens), the gap between the best and the second-best
  logit over max|logit|, at each step. Tests that compare greedy text across batch shapes are safe
  while the smallest margin stays far above the drift.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

Row = tuple[str, str, float]  # kind, case, max|a - b| / max|b|


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def picture(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def clip(seconds: float, seed: int) -> tuple[np.ndarray, int]:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32), 16000


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": [*parts]}]


def text(t: str) -> dict:
    return {"type": "text", "text": t}


def image_prompt(width: int, height: int, seed: int) -> list[dict]:
    return user({"type": "image", "image": picture(width, height, seed)}, text("Describe the image."))


def audio_prompt(seconds: float, seed: int) -> list[dict]:
    return user({"type": "audio", "audio": clip(seconds, seed)}, text("Transcribe the audio clip."))


def prompts() -> dict[str, list[dict]]:
    """The prompts measured, by name: the shapes the tests use, and a few more."""
    found = {f"image {w}x{h}": image_prompt(w, h, 7) for w, h in ((640, 360), (448, 448), (300, 700),
                                                                  (200, 100), (1000, 666))}
    found["two images"] = user({"type": "image", "image": picture(500, 300, 1)},
                               {"type": "image", "image": picture(200, 450, 2)}, text("Which is taller?"))
    found["audio 1.5 s"] = audio_prompt(1.5, 2)
    found["audio 12 s"] = audio_prompt(12.0, 3)
    found["text chat"] = [{"role": "system", "content": "You answer in one line."},
                          {"role": "user", "content": "Describe a mountain."},
                          {"role": "assistant", "content": "A mountain with snow on it."},
                          {"role": "user", "content": "And the chart?"}]
    found["text count"] = [{"role": "user", "content": "count with me " * 20}]
    found["text long (LongRoPE)"] = [{"role": "user", "content": "a b c d e f g h " * 40 + "Summarise."}]
    return found


def controls() -> dict[str, tuple[list[dict], list[dict]]]:
    """Pairs of nearest different prompts."""
    return {
        "another image, same size": (image_prompt(640, 360, 7), image_prompt(640, 360, 8)),
        "another clip, same length": (audio_prompt(1.5, 2), audio_prompt(1.5, 5)),
        "another last word": ([{"role": "user", "content": "count with me " * 20}],
                              [{"role": "user", "content": "count with me " * 19 + "count with us"}]),
    }


def load(model_dir: Path, threads: int, n_parallel: int = 1):
    from phi4mm import Phi4MM

    return Phi4MM.from_pretrained(model_dir, n_ctx=4096, n_threads=threads, n_parallel=n_parallel)


def measure_reuse(model_dir: Path, threads: list[int]) -> list[Row]:
    rows, whole_by_threads = [], {}
    for n in threads:
        for name, messages in prompts().items():
            with load(model_dir, n) as model:
                whole = model.prompt_logits(messages)
                again = model.prompt_logits(messages)
            rows.append(("reuse", f"{name}, {n} threads", rel(again, whole)))
            whole_by_threads.setdefault(name, []).append(whole)
    for name, wholes in whole_by_threads.items():
        for n, logits in zip(threads[1:], wholes[1:], strict=True):
            rows.append(("threads", f"{name}, {n} vs {threads[0]} threads", rel(logits, wholes[0])))
    return rows


def measure_batched(model_dir: Path, threads: int) -> list[Row]:
    chosen = {k: v for k, v in prompts().items()
              if k in ("image 640x360", "audio 1.5 s", "text chat", "text long (LongRoPE)")}
    alone = {}
    for name, messages in chosen.items():
        with load(model_dir, threads) as model:
            alone[name] = model.prompt_logits(messages)
    together: dict = {}
    with load(model_dir, threads, n_parallel=4) as model:
        barrier = threading.Barrier(len(chosen))

        def work(name):
            barrier.wait()
            together[name] = model.prompt_logits(chosen[name])

        workers = [threading.Thread(target=work, args=(name,)) for name in chosen]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    return [("batched", f"{name}, {threads} threads", rel(together[name], alone[name])) for name in chosen]


def measure_controls(model_dir: Path, threads: int) -> list[Row]:
    with load(model_dir, threads) as model:
        return [("control", name, rel(model.prompt_logits(a), model.prompt_logits(b)))
                for name, (a, b) in controls().items()]


def measure_margins(model_dir: Path, threads: int) -> list[Row]:
    from phi4mm.engine import llama

    margins: list[float] = []
    sample = llama.Sampler.sample

    def recording(self, ctx, index):
        logits = ctx.logits(index)
        top2 = np.partition(logits, -2)[-2:]
        margins.append(float((top2[1] - top2[0]) / np.abs(logits).max()))
        return sample(self, ctx, index)

    rows = []
    llama.Sampler.sample = recording
    try:
        with load(model_dir, threads) as model:
            for name, messages in prompts().items():
                margins.clear()
                model.create_chat_completion(messages, max_tokens=12, temperature=0)
                rows.append(("margin", f"{name}: smallest of {len(margins)} steps", min(margins)))
    finally:
        llama.Sampler.sample = sample
    return rows


def tiny_model(root: Path) -> Path:
    from make_checkpoint import write_checkpoint

    from phi4mm.converter.convert import convert

    ckpt = write_checkpoint(root / "ckpt", size="tiny", seed=0, shards=2)
    convert(ckpt, root / "f32", quant="f32", encoder_type="f32", n_threads=2)
    return root / "f32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a converted directory (default: the tiny f32 one)")
    parser.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    from phi4mm.engine import llama

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model or tiny_model(Path(tmp))
        rows = measure_reuse(model_dir, threads) + measure_batched(model_dir, threads[-1])
        rows += measure_controls(model_dir, threads[-1]) + measure_margins(model_dir, threads[-1])
    print(f"{platform.processor() or platform.machine()}; llama.cpp {llama.system_info().strip()}")
    print(f"{'kind':<9}{'case':<56}{'max|Δ| / max|logit|':>22}")
    for kind, case, value in rows:
        print(f"{kind:<9}{case:<56}{value:>22.2e}")
    for kind in ("reuse", "threads", "batched", "control", "margin"):
        values = [v for k, _, v in rows if k == kind]
        if values:
            print(f"{kind}: min {min(values):.2e}, median {float(np.median(values)):.2e}, "
                  f"max {max(values):.2e} over {len(values)}")


if __name__ == "__main__":
    main()

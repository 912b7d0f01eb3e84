#!/usr/bin/env python3
"""Continuous batching on a converted full-size checkpoint, in one process, one run:

  python scripts/bench_batching.py CONVERTED_DIR [--streams 1,2,4,8] [--chunks 8,16,32] [--runs 3]

1. Aggregate decode tokens/s with 1, 2, 4 and 8 concurrent text streams (greedy, distinct
   prompts; a random checkpoint never ends a turn, so every stream decodes its whole max_tokens):
   tokens whose arrival falls in the window where every stream is decoding, divided by its length.
2. Inter-token latency of a text stream, p50 and p95: idle, while another client's 1000x666 image
   (1841 rows) is encoded, and while its prompt is prefilled, for each --prefill-chunk value. The
   image's rows come from the media cache after the first run (a distinct system prompt each time,
   so its KV prefix is never reused and the whole prompt is prefilled).
3. Time to first token of a short text request submitted 0.5 s after a long (about 2000-token)
   one, against the same short request alone.
Medians over --runs. Check the load average first: llama.cpp slows down many times over when
another process competes for the cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from phi4mm import Phi4MM
from phi4mm.errors import Cancelled
from phi4mm.params import make_params

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def text_request(tag: str, n_words: int = 12) -> list[dict]:
    words = [WORDS[(i * 7 + len(tag)) % len(WORDS)] for i in range(n_words)]
    return [{"role": "user", "content": f"{tag}: " + " ".join(words)}]


class Timed:
    """Reads one sequence's output in a thread; the engine stamps each generated token (a random
    checkpoint emits many control tokens that render no text, so chunks can't be the clock)."""

    def __init__(self, model: Phi4MM, messages: list[dict], max_tokens: int):
        engine = model.engine
        self.stream = engine.submit(engine.prepare(messages), make_params(max_tokens=max_tokens, temperature=0))
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        try:
            for _ in self.stream:
                pass
        except Cancelled:  # closed by the caller
            pass

    @property
    def stamps(self) -> list[float]:
        return self.stream.seq.token_times_s

    def join(self) -> Timed:
        self.thread.join()
        return self


def aggregate_tps(model: Phi4MM, n_streams: int, run: int, max_tokens: int) -> float:
    """Tokens generated while every stream is decoding, per second of that window."""
    streams = [Timed(model, text_request(f"run {run} stream {i}"), max_tokens) for i in range(n_streams)]
    for s in streams:
        s.join()
    lo = max(s.stamps[0] for s in streams)
    hi = min(s.stamps[-1] for s in streams)
    if hi <= lo:
        raise RuntimeError("the streams did not overlap")
    n = sum(sum(lo < t <= hi for t in s.stamps) for s in streams)
    return n / (hi - lo)


def raw_decode_tps(model_dir: Path, counts: list[int], steps: int = 24) -> dict[int, float]:
    """llama.cpp alone, no scheduler: tokens/s of llama_decode calls holding one new token for
    each of n sequences (positions 16.., after a 16-token prompt each): the ceiling batching meets."""
    from phi4mm.engine.llama import Context, ContextSettings, Model, TokenRow
    from phi4mm.files import ModelFiles

    files = ModelFiles.from_dir(model_dir)
    out = {}
    with Model(files.text) as model:
        ctx = Context(model, ContextSettings(4096, 512, 0, False, max(counts)))
        try:
            for n in counts:
                for seq in range(n):
                    ctx.truncate(seq, 0)
                ctx.decode_tokens([TokenRow(100 + i, i, seq) for seq in range(n) for i in range(16)])
                started = time.perf_counter()
                for step in range(steps):
                    ctx.decode_tokens([TokenRow(200 + step, 16 + step, seq, True) for seq in range(n)])
                out[n] = n * steps / (time.perf_counter() - started)
        finally:
            ctx.close()
    return out


def gaps(stamps: list[float], lo: float, hi: float) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False) if lo <= a and b <= hi]


def itl_under_image(model: Phi4MM, image: Image.Image, run: int) -> dict[str, list[float]]:
    """Gaps of a text stream: idle, during the image's encoding, during its prefill."""
    text = Timed(model, text_request(f"itl run {run}"), 3000)
    while len(text.stamps) < 25:
        time.sleep(0.05)
    t_call = time.perf_counter()
    messages = [{"role": "system", "content": f"Session {run}-{time.time_ns()}."},
                {"role": "user", "content": [{"type": "image", "image": image},
                                             {"type": "text", "text": "What is shown in this image?"}]}]
    other = model.create_chat_completion(messages, max_tokens=1, temperature=0, stream=True)
    t_submitted = time.perf_counter()  # encoding is done once the call returns
    for _ in other:  # max_tokens 1: it ends with its first token
        pass
    t_first = time.perf_counter()
    time.sleep(0.5)
    text.stream.close()
    text.join()  # the closed stream's sequence leaves at the next step
    return {"idle": gaps(text.stamps, 0, t_call), "encode": gaps(text.stamps, t_call, t_submitted),
            "prefill": gaps(text.stamps, t_submitted, t_first), "prefill_s": [t_first - t_submitted]}


def ttft(model: Phi4MM, messages: list[dict]) -> float:
    started = time.perf_counter()
    stream = model.create_chat_completion(messages, max_tokens=2, temperature=0, stream=True)
    next(stream)  # the role chunk
    next(stream)  # the first token
    elapsed = time.perf_counter() - started
    stream.close()
    return elapsed


def queued_ttft(model: Phi4MM, run: int) -> tuple[float, float]:
    words: list[str] = [f"long {run}-{time.time_ns()}"]
    while len(model.tokenize(" ".join(words))) < 2000:
        words.extend(WORDS[(len(words) * 5 + run) % len(WORDS)] for _ in range(50))
    long = [{"role": "user", "content": " ".join(words)}]
    short = text_request(f"short {run}-{time.time_ns()}")
    alone = ttft(model, short)
    first = Timed(model, long, 4)
    time.sleep(0.5)
    behind = ttft(model, text_request(f"short behind {run}-{time.time_ns()}"))
    first.join()
    return alone, behind


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--streams", default="1,2,4,8")
    parser.add_argument("--chunks", default="8,16,32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    counts = [int(n) for n in args.streams.split(",")]
    print(f"load average before: {os.getloadavg()}")

    raw = [raw_decode_tps(args.model, counts) for _ in range(args.runs)]
    with Phi4MM.from_pretrained(args.model, n_ctx=4096, n_threads=args.threads, n_parallel=max(counts)) as model:
        model.create_chat_completion(text_request("warm-up"), max_tokens=4)
        print(f"{'streams':>8}{'aggregate tok/s (median)':>26}{'runs':>24}{'vs 1 stream':>13}"
              f"{'llama_decode alone':>20}{'vs 1':>8}")
        base = raw_base = None
        for n in counts:
            rates = [aggregate_tps(model, n, r, args.max_tokens) for r in range(args.runs)]
            median, raw_n = statistics.median(rates), statistics.median(r[n] for r in raw)
            base, raw_base = base or median, raw_base or raw_n
            print(f"{n:>8}{median:>26.2f}{' '.join(f'{r:.2f}' for r in rates):>24}{median / base:>12.2f}x"
                  f"{raw_n:>20.2f}{raw_n / raw_base:>7.2f}x")

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (666, 1000, 3), dtype=np.uint8))
    for chunk in [int(c) for c in args.chunks.split(",")]:
        with Phi4MM.from_pretrained(args.model, n_ctx=4096, n_threads=args.threads, n_parallel=2,
                                    prefill_chunk=chunk) as model:
            model.create_chat_completion(text_request("warm-up"), max_tokens=4)
            runs = [itl_under_image(model, image, r) for r in range(args.runs + 1)][1:]  # first: encodes
            merged = {k: [v for r in runs for v in r[k]] for k in runs[0]}
            idle50, idle95 = pct(merged["idle"], 50), pct(merged["idle"], 95)
            p50, p95 = pct(merged["prefill"], 50), pct(merged["prefill"], 95)
            print(f"prefill chunk {chunk}: inter-token latency idle p50 {idle50:.3f} s p95 {idle95:.3f} s; "
                  f"during the image prefill p50 {p50:.3f} s p95 {p95:.3f} s (p95 {p95 / idle50:.1f}x idle p50, "
                  f"{p95 / idle95:.1f}x idle p95); image prefill {statistics.median(merged['prefill_s']):.1f} s")
            cold = itl_under_image(model, image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 99)
            print(f"  cold image (encoder running): gaps p50 {pct(cold['encode'], 50):.3f} s "
                  f"p95 {pct(cold['encode'], 95):.3f} s over {len(cold['encode'])} tokens")
            pairs = [queued_ttft(model, r) for r in range(args.runs)]
            alone = statistics.median(p[0] for p in pairs)
            behind = statistics.median(p[1] for p in pairs)
            print(f"  short request TTFT: alone {alone:.2f} s, behind a 2000-token prompt {behind:.2f} s")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

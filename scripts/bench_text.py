#!/usr/bin/env python3
"""Text decoder speed: our engine next to llama-cpp-python's plain `Llama` on the same GGUF,
in the same process and run, interleaved; medians of several runs, warm-up excluded.

  python scripts/bench_text.py CONVERTED_DIR [--prompt-tokens 512] [--gen-tokens 64] [--runs 5]

CONVERTED_DIR is a `phi4mm convert` output (e.g. of the full-size random checkpoint at q4_k_m).
Per run and engine, on a fresh prompt (so no prefix cache helps):
  prompt processing: wall time to decode the prompt and get its last logits;
  decode: wall time of a greedy completion of --gen-tokens right after, reusing the prompt's KV.
Our engine is also measured with the vision LoRA forced on, so the adapter's cost is known.
The order of the three measurements alternates from run to run.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from functools import partial
from pathlib import Path

from llama_cpp import Llama

from phi4mm import Phi4MM, modes
from phi4mm.params import make_params
from phi4mm.prompt import build_prompt

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def messages(model: Phi4MM, run: int, n_tokens: int) -> list[dict]:
    """A user message of about n_tokens prompt tokens, different per run."""
    words = [f"run{run}"]
    while len(model.tokenize(build_prompt([{"role": "user", "content": " ".join(words)}]).text)) < n_tokens:
        words.append(WORDS[(len(words) * 7 + run) % len(WORDS)])
    return [{"role": "user", "content": " ".join(words)}]


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def bench_ours(model: Phi4MM, msgs: list[dict], n_prompt: int, n_gen: int) -> tuple[float, float]:
    pp_s, _ = timed(lambda: model.prompt_logits(msgs))
    tg_s, out = timed(lambda: model.create_chat_completion(msgs, max_tokens=n_gen, temperature=0))
    assert out["usage"]["completion_tokens"] == n_gen, out["usage"]
    return n_prompt / pp_s, n_gen / tg_s


def bench_ours_lora(model: Phi4MM, msgs: list[dict], n_prompt: int, n_gen: int) -> tuple[float, float]:
    engine = model.engine
    prepared = engine.prepare(msgs)
    prepared = dataclasses.replace(prepared, mode=modes.VISION)
    pp_s, _ = timed(lambda: engine.prompt_logits(prepared))
    params = make_params(max_tokens=n_gen, temperature=0)
    tg_s, _ = timed(lambda: list(engine.submit(prepared, params)))
    return n_prompt / pp_s, n_gen / tg_s


def bench_llama(llm: Llama, tokens: list[int], n_gen: int) -> tuple[float, float]:
    def prompt() -> None:
        llm.reset()
        llm.eval(tokens)

    pp_s, _ = timed(prompt)
    tg_s, out = timed(lambda: llm.create_completion(prompt=tokens, max_tokens=n_gen, temperature=0))
    assert out["usage"]["completion_tokens"] == n_gen, out["usage"]
    return len(tokens) / pp_s, n_gen / tg_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    model = Phi4MM.from_pretrained(args.model_dir, n_ctx=4096, n_threads=args.threads, flash_attn=True)
    llm = Llama(str(model.files.text), n_ctx=4096, n_batch=512, n_ubatch=512, n_threads=args.threads,
                n_threads_batch=args.threads, flash_attn=True, use_mmap=False, verbose=False)
    names = ("phi4mm", "llama_cpp.Llama", "phi4mm + vision LoRA")
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for run in range(args.runs + 1):  # run 0 is the warm-up
        msgs = messages(model, run, args.prompt_tokens)
        tokens = model.tokenize(build_prompt(msgs).text)
        n = len(tokens)
        jobs = {
            "phi4mm": partial(bench_ours, model, msgs, n, args.gen_tokens),
            "llama_cpp.Llama": partial(bench_llama, llm, tokens, args.gen_tokens),
            "phi4mm + vision LoRA": partial(
                bench_ours_lora, model, messages(model, 1000 + run, args.prompt_tokens), n, args.gen_tokens),
        }
        order = list(jobs) if run % 2 else list(reversed(jobs))  # alternate who goes first
        rows = {name: jobs[name]() for name in order}
        print(f"run {run}{' (warm-up)' if run == 0 else ''}: " +
              "; ".join(f"{k} pp {pp:.1f} tg {tg:.2f}" for k, (pp, tg) in rows.items()), flush=True)
        if run:
            for k, v in rows.items():
                results[k].append(v)

    print(f"\nprompt {n} tokens, {args.gen_tokens} generated, {args.threads} threads, medians of {args.runs} runs")
    print(f"{'engine':24s} {'pp tok/s':>9s} {'tg tok/s':>9s}")
    med = {k: (statistics.median(p for p, _ in v), statistics.median(t for _, t in v)) for k, v in results.items()}
    for k, (pp, tg) in med.items():
        print(f"{k:24s} {pp:9.2f} {tg:9.2f}")
    ours, ref = med["phi4mm"], med["llama_cpp.Llama"]
    print(f"\nphi4mm / Llama: pp {ours[0] / ref[0]:.3f}, tg {ours[1] / ref[1]:.3f}")
    lora = med["phi4mm + vision LoRA"]
    print(f"vision LoRA cost: pp {lora[0] / ours[0]:.3f}x, tg {lora[1] / ours[1]:.3f}x of no-adapter speed")


if __name__ == "__main__":
    main()

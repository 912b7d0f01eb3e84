#!/usr/bin/env python3
"""The GPU check of issue 17, in three steps (scripts/gpu_run.sh runs the last two on a GPU machine):

  python scripts/gpu_check.py expect EXPECTED.npz
      here, with the 'reference' extra: writes the tiny checkpoint's digest and, for every case
      (text, text past the LongRoPE switch, image, audio, image + audio), the reference logits
      (transformers' Phi4MultimodalForCausalLM on the CPU) and this engine's CPU logits.
  python scripts/gpu_check.py parity EXPECTED.npz WORK_DIR [--encoder-device cuda] [--gpu-layers N]
      on the GPU machine: rebuilds the same tiny checkpoint (numpy only, seeded; its digest must
      match), converts it (f32), runs every case with the decoder offloaded and the encoders on the
      encoder device, and prints max|dlogit|/max|logit| against the reference and against the CPU
      engine, with the argmax agreement; then the encoders alone: device rows against NumPy rows
      for the f32 and f16 encoder files.
  python scripts/gpu_check.py bench CONVERTED_DIR [--encoder-device cuda] [--budget-s 300]
      on a full-size conversion (Q4_K_M): prompt and decode tok/s with no adapter, the vision LoRA
      and the speech LoRA, decoder on the GPU and on the CPU; the vision tower's s/crop and the
      Conformer's s per 30 s clip, device against NumPy; TTFT of a 1000x666 image; aggregate
      decode with 4 streams. Stops starting new measurements once --budget-s is spent.
Results are printed as JSON lines (one per measurement) so that a cut-off run still reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

from make_checkpoint import write_checkpoint  # noqa: E402  (numpy only)
from reference_audio import make_signal  # noqa: E402  (numpy only; torch is imported lazily)
from reference_image import make_picture  # noqa: E402

from phi4mm import Phi4MM, arrays, keys, modes  # noqa: E402
from phi4mm.params import make_params  # noqa: E402
from phi4mm.prompt import build_prompt  # noqa: E402

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
DYNAMIC_HD = 4


def report(**fields) -> None:
    print(json.dumps(fields, default=str), flush=True)


# ---------------------------------------------------------------------------------------------
# The cases: deterministic from seeds, so both machines build the same inputs.

def cases() -> dict[str, tuple[list[dict], list, list]]:
    """name -> (messages, pictures, clips)."""
    picture = make_picture(640, 360)
    clip = (make_signal(1.3, 16000, seed=1).astype(np.float32), 16000)  # test_parity_audio's "16k"
    long_text = " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(330))  # > 256 tokens: long factors

    def user(text, pictures=(), clips=()):
        parts = [*({"type": "image", "image": p} for p in pictures),
                 *({"type": "audio", "audio": c} for c in clips), {"type": "text", "text": text}]
        return [{"role": "user", "content": parts}]

    return {
        "text": ([{"role": "user", "content": "Hello world, this is a test."}], [], []),
        "text-longrope": ([{"role": "user", "content": long_text}], [], []),
        "image": (user("Describe the image.", [picture]), [picture], []),
        "audio": (user("Transcribe the audio clip into text.", clips=[clip]), [], [clip]),
        "image+audio": (user("What do you see and hear?", [picture], [clip]), [picture], [clip]),
    }


def tiny_checkpoint(work: Path) -> tuple[Path, str]:
    ckpt = work / "tiny-ckpt"
    if not (ckpt / "config.json").exists():
        write_checkpoint(ckpt, size="tiny", seed=0, shards=2)
    digest = hashlib.sha256()
    for path in sorted(p for p in ckpt.rglob("*") if p.is_file()):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return ckpt, digest.hexdigest()


def tiny_conversion(work: Path, ckpt: Path) -> Path:
    from phi4mm.converter.convert import convert

    out = work / "tiny-f32"
    if not (out / "manifest.json").exists():
        convert(ckpt, out, quant="f32", encoder_type="f32", n_threads=os.cpu_count() or 2)
    return out


def relative(ours: np.ndarray, ref: np.ndarray) -> tuple[float, bool]:
    return float(np.abs(ours - ref).max() / np.abs(ref).max()), int(ours.argmax()) == int(ref.argmax())


# ---------------------------------------------------------------------------------------------

def expect(out_path: Path) -> None:
    import tempfile

    import torch
    from reference_model import Reference
    from test_parity_audio import reference_logits as audio_reference_logits
    from test_parity_image import reference_inputs

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, digest = tiny_checkpoint(work)
        model = Phi4MM.from_pretrained(tiny_conversion(work, ckpt), n_ctx=4096, n_threads=2, n_gpu_layers=0)
        reference = Reference(ckpt)
        saved: dict[str, np.ndarray] = {"digest": np.array(digest)}
        for name, (messages, pictures, clips) in cases().items():
            ours = model.prompt_logits(messages, dynamic_hd=DYNAMIC_HD)
            if clips:
                ref = audio_reference_logits(reference, messages, clips, pictures, DYNAMIC_HD)
            elif pictures:
                ids, inputs = reference_inputs(reference, messages, pictures, DYNAMIC_HD)
                with torch.no_grad():
                    out = reference.model("vision")(input_ids=torch.tensor([ids]), **inputs)
                ref = out.logits[0, -1].float().numpy()
            else:
                ref = reference.next_logits(reference.encode(build_prompt(messages).text)).numpy()
            saved[f"{name}/reference"], saved[f"{name}/cpu"] = ref, ours
            report(case=name, cpu_vs_reference=relative(ours, ref))
        model.close()
    np.savez_compressed(out_path, **saved)
    print(f"wrote {out_path} ({out_path.stat().st_size / 1e6:.1f} MB)")


def parity(expected_path: Path, work: Path, encoder_device: str, gpu_layers: int | None) -> None:
    expected = np.load(expected_path)
    work.mkdir(parents=True, exist_ok=True)
    ckpt, digest = tiny_checkpoint(work)
    if digest != str(expected["digest"]):
        raise SystemExit(f"the tiny checkpoint here ({digest[:12]}) is not the one the expectations were "
                         f"computed on ({str(expected['digest'])[:12]}): numpy's generator differs")
    converted = tiny_conversion(work, ckpt)
    model = Phi4MM.from_pretrained(converted, n_ctx=4096, n_threads=2, n_gpu_layers=gpu_layers,
                                   encoder_device=encoder_device)
    report(step="parity", offload=model.offload.describe(), placement=model.placement())
    for name, (messages, _, _) in cases().items():
        ours = model.prompt_logits(messages, dynamic_hd=DYNAMIC_HD)
        report(case=name, vs_reference=relative(ours, expected[f"{name}/reference"]),
               vs_cpu_engine=relative(ours, expected[f"{name}/cpu"]))
    model.close()
    encoder_rows(ckpt, work, encoder_device)


def encoder_rows(ckpt: Path, work: Path, encoder_device: str) -> None:
    """The encoders alone: rows on the device against NumPy rows, f32 and f16 encoder files."""
    from phi4mm.audio import encoder as audio_encoder
    from phi4mm.converter.convert import convert
    from phi4mm.vision import encoder as vision_encoder
    from phi4mm.vision import preprocess
    from phi4mm.weights import read_gguf

    xp = arrays.namespace_for(encoder_device)
    f16 = work / "tiny-f16-encoders"
    if not (f16 / "manifest.json").exists():
        convert(ckpt, f16, quant="f32", encoder_type="f16", n_threads=os.cpu_count() or 2)
    crops = preprocess.preprocess(make_picture(1000, 666), 36)
    wave = make_signal(30.0, 16000, seed=5).astype(np.float32)
    for encoder_type, directory in (("f32", work / "tiny-f32"), ("f16", f16)):
        v = read_gguf(directory / f"phi4mm-vision-{encoder_type}.gguf", keys.VISION_ARCH, keep_f16=True)
        v = vision_encoder.load_weights(v.metadata, v.tensors)
        cpu = vision_encoder.encode_image(crops, v)
        dev = arrays.to_host(vision_encoder.encode_image(crops, arrays.move(v, xp)))
        report(encoder="vision", file=encoder_type, device_vs_numpy=relative(dev, cpu)[0])
        a = read_gguf(directory / f"phi4mm-audio-{encoder_type}.gguf", keys.AUDIO_ARCH, keep_f16=True)
        a = audio_encoder.load_weights(a.metadata, a.tensors)
        cpu = audio_encoder.encode_audio(wave, 16000, a, "speech")
        dev = arrays.to_host(audio_encoder.encode_audio(wave, 16000, arrays.move(a, xp), "speech"))
        report(encoder="audio", file=encoder_type, device_vs_numpy=relative(dev, cpu)[0])


# ---------------------------------------------------------------------------------------------

class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def text_messages(model: Phi4MM, run: int, n_tokens: int) -> list[dict]:
    words = [f"run{run}"]
    while len(model.tokenize(build_prompt([{"role": "user", "content": " ".join(words)}]).text)) < n_tokens:
        words.append(WORDS[(len(words) * 7 + run) % len(WORDS)])
    return [{"role": "user", "content": " ".join(words)}]


def decoder_speed(model: Phi4MM, mode: modes.Mode, run: int, n_prompt: int, n_gen: int) -> tuple[float, float]:
    """(prompt tok/s, decode tok/s) of a fresh text prompt with `mode`'s adapter set forced."""
    engine = model.engine
    prepared = dataclasses.replace(engine.prepare(text_messages(model, run, n_prompt)), mode=mode)
    pp_s, _ = timed(lambda: engine.prompt_logits(prepared))
    params = make_params(max_tokens=n_gen, temperature=0)
    tg_s, _ = timed(lambda: list(engine.submit(prepared, params)))
    return prepared.n_rows / pp_s, n_gen / tg_s


def bench(converted: Path, encoder_device: str, budget_s: float, runs: int) -> None:
    budget = Budget(budget_s)
    threads = os.cpu_count() or 2
    lora_modes = {"none": modes.TEXT, "vision LoRA": modes.VISION, "speech LoRA": modes.SPEECH}
    # 1. the decoder: GPU (every layer) then CPU, each mode, medians of `runs` after a warm-up
    for label, layers in (("gpu", None), ("cpu", 0)):
        if budget.left() < 60:
            report(skipped=f"decoder on {label}: budget spent")
            continue
        model = Phi4MM.from_pretrained(converted, n_ctx=4096, n_threads=threads, n_gpu_layers=layers,
                                       flash_attn=True)
        report(step="decoder", where=label, offload=model.offload.describe(), placement=model.placement())
        decoder_speed(model, modes.TEXT, 0, 64, 4)  # warm-up
        for name, mode in lora_modes.items():
            results = [decoder_speed(model, mode, 1 + run, 512, 64) for run in range(runs)]
            report(decoder=label, adapter=name, prompt_tok_s=statistics.median(p for p, _ in results),
                   decode_tok_s=statistics.median(t for _, t in results), runs=runs, prompt_tokens=512,
                   gen_tokens=64)
        model.close()
    # 2. the encoders alone, device against NumPy (same weights, same inputs)
    if budget.left() > 60:
        encoder_speed(converted, encoder_device)
    # 3. TTFT of a 1000x666 image, then aggregate decode with 4 streams, everything on the GPU
    if budget.left() > 45:
        model = Phi4MM.from_pretrained(converted, n_ctx=8192, n_threads=threads, n_parallel=4,
                                       encoder_device=encoder_device, flash_attn=True)
        for run in range(runs + 1):
            picture = make_picture(1000, 666) if run == 0 else _noise_picture(run)
            seconds, out = timed(lambda p=picture, r=run: model.create_chat_completion(
                [{"role": "system", "content": f"Run {r}."},
                 {"role": "user", "content": [{"type": "image", "image": p},
                                              {"type": "text", "text": "What is shown in this image?"}]}],
                max_tokens=1, temperature=0))
            usage = out["usage"]
            report(ttft_s=seconds, warm_up=run == 0, image_seconds=usage.get("image_seconds"),
                   prompt_seconds=usage.get("prompt_seconds"), prompt_tokens=usage["prompt_tokens"],
                   encoder_device=encoder_device)
        if budget.left() > 30:
            aggregate_decode(model, 4, 128)
        model.close()
    if budget.left() > 45:  # the same TTFT with everything on the CPU, for the comparison
        model = Phi4MM.from_pretrained(converted, n_ctx=8192, n_threads=threads, n_gpu_layers=0, flash_attn=True)
        for run in range(2):
            seconds, out = timed(lambda r=run: model.create_chat_completion(
                [{"role": "system", "content": f"CPU run {r}."},
                 {"role": "user", "content": [{"type": "image", "image": _noise_picture(100 + r)},
                                              {"type": "text", "text": "What is shown in this image?"}]}],
                max_tokens=1, temperature=0))
            report(ttft_s=seconds, warm_up=run == 0, where="cpu", image_seconds=out["usage"].get("image_seconds"),
                   prompt_seconds=out["usage"].get("prompt_seconds"))
            if budget.left() < 20:
                break
        model.close()


def _noise_picture(seed: int):
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (666, 1000, 3), dtype=np.uint8))


def encoder_speed(converted: Path, encoder_device: str) -> None:
    from phi4mm.audio import encoder as audio_encoder
    from phi4mm.vision import encoder as vision_encoder
    from phi4mm.vision import preprocess
    from phi4mm.weights import read_gguf

    xp = arrays.namespace_for(encoder_device)
    crops = preprocess.preprocess(make_picture(1000, 666), 36)
    n_crops = crops.pixels_nchw.shape[0]
    v = read_gguf(next(converted.glob("phi4mm-vision-*.gguf")), keys.VISION_ARCH, keep_f16=True)
    v = vision_encoder.load_weights(v.metadata, v.tensors)
    wave = make_signal(30.0, 16000, seed=5).astype(np.float32)
    a = read_gguf(next(converted.glob("phi4mm-audio-*.gguf")), keys.AUDIO_ARCH, keep_f16=True)
    a = audio_encoder.load_weights(a.metadata, a.tensors)
    sync = _synchronize(xp)
    for label, space in (("numpy", None), (encoder_device, xp)):
        vw = v if space is None else arrays.move(v, space)
        aw = a if space is None else arrays.move(a, space)
        times_v, times_a = [], []
        for _ in range(3):  # the first run warms up (CUDA kernels compile on first use)
            seconds, _ = timed(lambda vw=vw: sync(vision_encoder.encode_image(crops, vw)))
            times_v.append(seconds)
            seconds, _ = timed(lambda aw=aw: sync(audio_encoder.encode_audio(wave, 16000, aw, "speech")))
            times_a.append(seconds)
        report(encoders=label, vision_s_per_crop=statistics.median(times_v[1:]) / n_crops, n_crops=n_crops,
               conformer_s_per_30s_clip=statistics.median(times_a[1:]), warm_up_s=[times_v[0], times_a[0]])


def _synchronize(xp):
    if arrays.is_numpy(xp):
        return lambda x: x
    import cupy

    def sync(x):
        cupy.cuda.get_current_stream().synchronize()
        return x
    return sync


def aggregate_decode(model: Phi4MM, n_streams: int, n_gen: int) -> None:
    """Tokens/s of n_streams concurrent greedy text completions (a random model never stops)."""
    stamps: list[list[float]] = [[] for _ in range(n_streams)]

    def stream(i: int) -> None:
        msgs = [{"role": "user", "content": f"Stream {i}: " + " ".join(WORDS[i:i + 12])}]
        for _ in model.create_chat_completion(msgs, max_tokens=n_gen, temperature=0, stream=True):
            stamps[i].append(time.perf_counter())

    workers = [threading.Thread(target=stream, args=(i,)) for i in range(n_streams)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    start = max(s[min(8, len(s) - 1)] for s in stamps)   # every stream past its prefill
    end = min(s[-1] for s in stamps)                     # before the first one finishes
    tokens = sum(sum(1 for t in s if start < t <= end) for s in stamps)
    report(aggregate_decode_streams=n_streams, tok_s=tokens / (end - start) if end > start else math.nan,
           window_s=end - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="step", required=True)
    e = sub.add_parser("expect")
    e.add_argument("out", type=Path)
    p = sub.add_parser("parity")
    p.add_argument("expected", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--encoder-device", default="cuda", choices=arrays.DEVICES)
    p.add_argument("--gpu-layers", type=int, default=None)
    b = sub.add_parser("bench")
    b.add_argument("converted", type=Path)
    b.add_argument("--encoder-device", default="cuda", choices=arrays.DEVICES)
    b.add_argument("--budget-s", type=float, default=300)
    b.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if args.step == "expect":
        expect(args.out)
    elif args.step == "parity":
        parity(args.expected, args.work, args.encoder_device, args.gpu_layers)
    else:
        bench(args.converted, args.encoder_device, args.budget_s, args.runs)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Seconds per crop of phi4mm's numpy SigLIP tower against torch's (fp32, eager, no grad), on the
same crops and the same weights, in one run (model-spec.md §6.1).

  python scripts/bench_vision.py --checkpoint CKPT_DIR --gguf VISION_GGUF [--image 1000x666]
         [--repeats 3] [--threads N] [--also-coretype SkylakeX] [--also-workers 2]

CKPT_DIR is a full-size hub-layout checkpoint (scripts/make_checkpoint.py DIR --size full): torch
reads its `img_processor` tensors (bf16 -> fp32) into transformers' Phi4MultimodalVisionModel with
the dimensions of the GGUF (so400m at full size), truncated to the layers phi4mm runs.
VISION_GGUF is its converted vision file (f16 as shipped, e.g. `phi4mm convert`'s
phi4mm-vision-f16.gguf). The crops come from phi4mm.vision.preprocess of a random image of the
given size (1000x666: 7 crops). --also-coretype SkylakeX adds a row for our tower with OpenBLAS's
AVX-512 kernels (the environment may pin OPENBLAS_CORETYPE=Haswell); --also-workers 2 a row for
our tower with n_workers=2 threads over a single-threaded BLAS.

Each engine runs in its own spawned process with the same number of BLAS threads, so its peak RSS
(weights + activations) is its own. Times are medians of --repeats runs after one warm-up crop.
Needs the 'reference' extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
from bench_common import peak_rss_gb, spawned, timed, torch_state


def run_ours(gguf_path: str, pixels: np.ndarray, mask: np.ndarray, grid: tuple[int, int],
             n_tokens: int, repeats: int, whole_image: bool, n_workers: int = 1,
             keep_f16: bool = False) -> dict:
    """keep_f16: layer matrices stay float16 in memory, upcast per crop group (as the engine loads them)."""
    from phi4mm.vision import encoder as vision
    from phi4mm.vision.preprocess import ImageCrops
    from phi4mm.weights import read_gguf

    gguf = read_gguf(gguf_path, "phi4mm-vision", keep_f16=keep_f16)
    weights = vision.load_weights(gguf.metadata, gguf.tensors)
    del gguf
    vision.siglip_features(pixels[:1], mask[:1], weights, n_workers=n_workers)  # warm-up
    tower, features = timed(lambda: vision.siglip_features(pixels, mask, weights,
                                                            n_workers=n_workers), repeats)
    crops = ImageCrops(pixels, mask, grid, n_tokens)
    image = timed(lambda: vision.encode_image(crops, weights), repeats)[0] if whole_image else None
    return {"tower": tower, "image": image, "features": features, "rss_gb": peak_rss_gb()}


def run_torch(checkpoint: str, dims: dict, pixels: np.ndarray, mask: np.ndarray, repeats: int,
              threads: int) -> dict:
    import torch
    from transformers import Phi4MultimodalVisionConfig, Phi4MultimodalVisionModel

    torch.set_num_threads(threads)
    n_layers = dims["num_hidden_layers"]
    config = Phi4MultimodalVisionConfig(**dims)
    config._attn_implementation = "eager"  # the SDPA path is causal (reference-notes.md §5.1)
    model = Phi4MultimodalVisionModel(config).float().eval()
    prefix = "model.embed_tokens_extend.image_embed.img_processor."
    state = torch_state(checkpoint, prefix, lambda name: name if _layer_of(name) < n_layers else None)
    model.load_state_dict(state, strict=True)
    del state
    px, pm = torch.from_numpy(pixels), torch.from_numpy(mask)

    def tower():
        with torch.no_grad():
            return model(px, patch_attention_mask=pm, output_hidden_states=True).hidden_states[-1]

    with torch.no_grad():
        model(px[:1], patch_attention_mask=pm[:1])  # warm-up
    times, features = timed(tower, repeats)
    return {"tower": times, "features": features.numpy(), "rss_gb": peak_rss_gb()}


def _layer_of(name: str) -> int:
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["encoder", "layers"] else -1


def make_crops(size: str):
    from PIL import Image

    from phi4mm.vision.preprocess import preprocess

    width, height = (int(v) for v in size.lower().split("x"))
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    return preprocess(image, 36)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="full-size hub-layout checkpoint directory")
    parser.add_argument("--gguf", required=True, help="its converted vision GGUF (f16)")
    parser.add_argument("--image", default="1000x666", help="WxH of the random test image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--also-coretype", default="", help="also time our tower with this "
                        "OPENBLAS_CORETYPE (e.g. SkylakeX: AVX-512 kernels), in another process")
    parser.add_argument("--also-workers", type=int, default=0, help="also time our tower with "
                        "this many n_workers over a single-threaded BLAS")
    args = parser.parse_args()

    from phi4mm.vision.encoder import VisionConfig
    from phi4mm.weights import read_gguf
    cfg = VisionConfig.from_metadata(read_gguf(args.gguf, "phi4mm-vision").metadata)
    n_layers = cfg.n_layers
    dims = {"hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": n_layers, "num_attention_heads": cfg.n_heads,
            "layer_norm_eps": cfg.layer_norm_eps}
    crops = make_crops(args.image)
    n = len(crops.pixels_nchw)
    env = {"OPENBLAS_NUM_THREADS": str(args.threads)}
    data = (crops.pixels_nchw, crops.patch_mask)
    load = [os.getloadavg()[0]]
    ours = spawned(run_ours, args.gguf, *data, crops.grid, crops.n_tokens, args.repeats, True, env=env)
    load.append(os.getloadavg()[0])
    ours16 = spawned(run_ours, args.gguf, *data, crops.grid, crops.n_tokens, args.repeats, True, 1, True,
                      env=env)
    load.append(os.getloadavg()[0])
    ref = spawned(run_torch, args.checkpoint, dims, *data, args.repeats, args.threads, env=env)
    load.append(os.getloadavg()[0])
    coretype = os.environ.get("OPENBLAS_CORETYPE", "auto")
    rows = [("torch fp32 eager, SigLIP tower", ref["tower"], ref["rss_gb"]),
            (f"phi4mm tower ({coretype} BLAS)", ours["tower"], ours["rss_gb"]),
            ("phi4mm encode_image (+pool/proj)", ours["image"], ours["rss_gb"]),
            ("phi4mm tower, f16 weights kept", ours16["tower"], ours16["rss_gb"]),
            ("phi4mm encode_image, f16 kept", ours16["image"], ours16["rss_gb"])]
    if args.also_coretype:
        other = spawned(run_ours, args.gguf, *data, crops.grid, crops.n_tokens, args.repeats, False,
                         env={**env, "OPENBLAS_CORETYPE": args.also_coretype})
        load.append(os.getloadavg()[0])
        rows.append((f"phi4mm tower ({args.also_coretype} BLAS)", other["tower"], other["rss_gb"]))
    if args.also_workers:
        other = spawned(run_ours, args.gguf, *data, crops.grid, crops.n_tokens, args.repeats, False,
                         args.also_workers, env={"OPENBLAS_NUM_THREADS": "1"})
        load.append(os.getloadavg()[0])
        rows.append((f"phi4mm tower ({args.also_workers} workers, BLAS 1)", other["tower"],
                     other["rss_gb"]))
    diff = np.abs(ours["features"] - ref["features"]).max() / np.abs(ref["features"]).max()
    torch_s = statistics.median(ref["tower"]) / n
    print(f"image {args.image}: {n} crops, grid {crops.grid}, {crops.n_tokens} tokens; {n_layers} "
          f"layers; {args.threads} threads; 1-min load average between engines "
          f"{' '.join(f'{v:.2f}' for v in load)} on {os.cpu_count()} cores")
    print(f"{'engine':<36}{'s/crop (median)':>16}{'runs (s)':>24}{'ratio':>8}{'peak RSS':>10}")
    for name, times, rss in rows:
        per_crop = statistics.median(times) / n
        runs = " ".join(f"{t:.2f}" for t in times)
        print(f"{name:<36}{per_crop:>16.3f}{runs:>24}{per_crop / torch_s:>8.2f}{rss:>8.2f}GB")
    print(f"max |ours - torch| / max |torch| over the tower features: {diff:.2e}")


if __name__ == "__main__":
    main()

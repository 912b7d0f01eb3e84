#!/usr/bin/env python3
"""Seconds per clip of phi4mm's numpy Conformer against torch's (transformers' native
Phi4MultimodalAudioModel, fp32, eager, no grad), on the same log-mel of the same clip and the same
weights, in one run (model-spec.md §7.2).

  python scripts/bench_audio.py --checkpoint CKPT_DIR --gguf AUDIO_GGUF [--seconds 30]
         [--repeats 3] [--threads N]

CKPT_DIR is a hub-layout checkpoint (scripts/make_checkpoint.py DIR --size full): torch reads its
`audio_embed.encoder` tensors (bf16 -> fp32) into a Phi4MultimodalAudioModel with the dimensions
of the GGUF. AUDIO_GGUF is its converted audio file (f16 as shipped: `phi4mm convert`'s
phi4mm-audio-f16.gguf), read with its matrices kept in float16. The clip is a seeded mix of tones
and noise at 16 kHz; both engines get the same log-mel (phi4mm.audio.features).

Each engine runs in its own spawned process with the same number of BLAS threads, so its peak RSS
(weights + activations) is its own. Times are medians of --repeats runs after one warm-up run on
a 1 s clip. Needs the 'reference' extra (torch, transformers).
"""

from __future__ import annotations

import argparse
import os
import statistics

import numpy as np
from bench_common import peak_rss_gb, spawned, timed, torch_state

ENCODER_PREFIX = "model.embed_tokens_extend.audio_embed.encoder."
RENAMES = ((".net.0.linear.", ".gate_up_proj."), (".net.2.", ".down_proj."),
           ("self_attn.linear_q.", "self_attn.q_proj."), ("self_attn.linear_k.", "self_attn.k_proj."),
           ("self_attn.linear_v.", "self_attn.v_proj."), ("self_attn.linear_out.", "self_attn.o_proj."))


def run_ours(gguf_path: str, mel: np.ndarray, repeats: int, keep_f16: bool = True) -> dict:
    """keep_f16 False: every matrix upcast to float32 at load, as an f32 conversion
    (`phi4mm convert --encoder-type f32`) gives: same values, twice the memory, no upcasts per clip."""
    from phi4mm import keys
    from phi4mm.audio import encoder
    from phi4mm.weights import read_gguf

    gguf = read_gguf(gguf_path, keys.AUDIO_ARCH, keep_f16=keep_f16)
    weights = encoder.load_weights(gguf.metadata, gguf.tensors)
    del gguf
    encoder.encode_features(mel[:98], weights)  # warm-up
    times, hidden = timed(lambda: encoder.encode_features(mel, weights), repeats)
    return {"times": times, "hidden": hidden, "rss_gb": peak_rss_gb(), "weights_mb": weights.nbytes / 2**20}


def _renamed(name: str) -> str:
    for old, new in RENAMES:
        name = name.replace(old, new)
    return name


def run_torch(checkpoint: str, dims: dict, mel: np.ndarray, repeats: int, threads: int) -> dict:
    import torch
    from transformers import Phi4MultimodalAudioConfig, Phi4MultimodalAudioModel

    torch.set_num_threads(threads)
    config = Phi4MultimodalAudioConfig(**dims)
    config._attn_implementation = "eager"
    model = Phi4MultimodalAudioModel(config).float().eval()
    state = torch_state(checkpoint, ENCODER_PREFIX, _renamed)
    model.load_state_dict(state, strict=True)
    del state
    features = torch.from_numpy(mel)[None]

    def encode():
        with torch.no_grad():
            return model(features, None)[0]

    with torch.no_grad():
        model(features[:, :98], None)  # warm-up
    times, hidden = timed(encode, repeats)
    return {"times": times, "hidden": hidden.numpy(), "rss_gb": peak_rss_gb()}


def make_mel(seconds: float) -> np.ndarray:
    from phi4mm.audio import features

    rng = np.random.default_rng(0)
    t = np.arange(round(seconds * 16000)) / 16000
    wav = sum(rng.uniform(0.02, 0.2) * np.sin(2 * np.pi * rng.uniform(60, 7000) * t) for _ in range(4))
    wav = wav + 0.01 * rng.standard_normal(len(t))
    return features.log_mel(wav.astype(np.float32), 16000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="hub-layout checkpoint directory")
    parser.add_argument("--gguf", required=True, help="its converted audio GGUF (f16)")
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length at 16 kHz")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()

    from phi4mm import keys
    from phi4mm.audio.encoder import AudioConfig
    from phi4mm.weights import read_gguf
    cfg = AudioConfig.from_metadata(read_gguf(args.gguf, keys.AUDIO_ARCH).metadata)
    dims = {"hidden_size": cfg.attention_dim, "intermediate_size": cfg.linear_units,
            "num_blocks": cfg.n_blocks, "num_attention_heads": cfg.n_heads,
            "ext_pw_out_channel": cfg.attention_dim, "depthwise_separable_out_channel": cfg.attention_dim,
            "nemo_conv_channels": cfg.conv_channels, "bias_max_distance": cfg.bias_max_distance,
            "kernel_size": cfg.kernel_size, "input_size": cfg.input_size, "time_reduction": cfg.time_reduction}
    mel = make_mel(args.seconds)
    env = {"OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
    load = [os.getloadavg()[0]]
    ours = spawned(run_ours, args.gguf, mel, args.repeats, env=env)
    load.append(os.getloadavg()[0])
    ours32 = spawned(run_ours, args.gguf, mel, args.repeats, False, env=env)
    load.append(os.getloadavg()[0])
    ref = spawned(run_torch, args.checkpoint, dims, mel, args.repeats, args.threads, env=env)
    load.append(os.getloadavg()[0])
    diff = np.abs(ours["hidden"] - ref["hidden"]).max() / np.abs(ref["hidden"]).max()
    torch_s = statistics.median(ref["times"])
    print(f"clip {args.seconds:g} s: {len(mel)} frames -> {len(ours['hidden'])} rows; {cfg.n_blocks} blocks "
          f"x {cfg.attention_dim}; {args.threads} threads; 1-min load average between engines "
          f"{' '.join(f'{v:.2f}' for v in load)} on {os.cpu_count()} cores")
    print(f"{'engine':<34}{'s/clip (median)':>16}{'runs (s)':>24}{'ratio':>8}{'peak RSS':>10}")
    for name, res in (("torch fp32 eager, Conformer", ref), ("phi4mm encode_features (f16 w)", ours),
                      ("phi4mm encode_features (f32 w)", ours32)):
        median = statistics.median(res["times"])
        runs = " ".join(f"{t:.2f}" for t in res["times"])
        print(f"{name:<34}{median:>16.3f}{runs:>24}{median / torch_s:>8.2f}{res['rss_gb']:>8.2f}GB")
    print(f"phi4mm audio weights in memory: {ours['weights_mb']:.1f} MiB (f16), {ours32['weights_mb']:.1f} MiB (f32)")
    print(f"max |ours - torch| / max |torch| over the Conformer output: {diff:.2e} (f16 w), "
          f"{np.abs(ours32['hidden'] - ref['hidden']).max() / np.abs(ref['hidden']).max():.2e} (f32 w)")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Write a random Phi-4-multimodal-instruct checkpoint in either hub layout (numpy only).

  python scripts/make_checkpoint.py OUT_DIR --size tiny            # tests: seconds, ~100 MB
  python scripts/make_checkpoint.py OUT_DIR --size full --shards 4 # benchmarks: real shapes, 11 GB
  python scripts/make_checkpoint.py OUT_DIR --layout native        # transformers-native layout

Tensor names and shapes follow model-spec.md §2.1 (`...base_layer.weight`, `lora_A.vision`,
`embed_tokens_extend.image_embed...`); values are seeded random bf16. The tiny size has non-trivial
LongRoPE factors and non-zero LoRA B so that a port that ignores them fails its parity tests.
A smaller vision tower is described by the non-hub `vision_config` key. `--layout native` writes
the same values under the transformers-native names (model-spec.md §2.2): base weights renamed,
the LoRAs as PEFT folders `vision-lora/` and `speech-lora/`, the config as transformers writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phi4mm.converter import layouts
from phi4mm.converter.checkpoint import f32_to_bf16_bits

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ckpt_native
from ckpt_safetensors import plan_shards, write_safetensors
from ckpt_tokenizer import SPECIAL_TOKENS, o200k_bpe, synthetic_bpe, write_tokenizer_files

LAYOUTS = ("original", "native")

VOCAB = 200064
IMAGE_PREFIX = "model.embed_tokens_extend.image_embed."
AUDIO_PREFIX = "model.embed_tokens_extend.audio_embed."
LORA_TARGETS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


@dataclass(frozen=True)
class Dims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    orig_ctx: int
    v_hidden: int
    v_layers: int
    v_heads: int
    v_intermediate: int
    a_dim: int
    a_heads: int
    a_units: int
    a_blocks: int
    vision_r: int
    vision_alpha: int
    speech_r: int
    speech_alpha: int
    max_ctx: int = 131072


SIZES = {
    "tiny": Dims(hidden=256, layers=2, heads=4, kv_heads=2, intermediate=512, orig_ctx=256,
                 v_hidden=64, v_layers=3, v_heads=2, v_intermediate=160,
                 a_dim=64, a_heads=4, a_units=96, a_blocks=2,
                 vision_r=32, vision_alpha=48, speech_r=64, speech_alpha=160),
    "full": Dims(hidden=3072, layers=32, heads=24, kv_heads=8, intermediate=8192, orig_ctx=4096,
                 v_hidden=1152, v_layers=27, v_heads=16, v_intermediate=4304,
                 a_dim=1024, a_heads=16, a_units=1536, a_blocks=24,
                 vision_r=256, vision_alpha=512, speech_r=320, speech_alpha=640),
}

# Phi-4-mini's long factors (model-spec.md §1.1).
REAL_LONG_FACTOR = [
    1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817, 2.187582649,
    2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687, 4.279200023, 4.785517845,
    5.351743533, 5.984965424, 6.693110555, 7.485043894, 8.370679318, 9.36110372, 10.4687158,
    11.70738129, 13.09260651, 14.64173252, 16.37415215, 18.31155283, 20.47818807, 22.90118105,
    25.61086418, 28.64115884, 32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71,
    32.93, 32.97, 33.28, 33.49, 33.5, 44.16, 47.77,
]


def rope_factors(d: Dims, size: str, rng: np.random.Generator) -> tuple[list[float], list[float]]:
    """(short, long) factor lists: the real ones at full size, distinct random ones when tiny."""
    n = int(d.hidden // d.heads * 0.75) // 2
    if size == "full":
        return [1.0] * n, list(REAL_LONG_FACTOR)
    short = np.sort(rng.uniform(1.0, 3.0, n)).round(4).tolist()
    long = np.sort(rng.uniform(1.0, 30.0, n)).round(4).tolist()
    return short, long


def hub_config(d: Dims, size: str, rng: np.random.Generator) -> dict:
    short, long = rope_factors(d, size, rng)
    lora_layers = "layers.*((self_attn\\.(qkv_proj|o_proj))|(mlp\\.(gate_up|down)_proj))"
    config = {
        "architectures": ["Phi4MMForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_phi4mm.Phi4MMConfig",
                     "AutoModelForCausalLM": "modeling_phi4mm.Phi4MMForCausalLM",
                     "AutoTokenizer": "Xenova/gpt-4o"},
        "model_type": "phi4mm",
        "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 199999, "eos_token_id": 199999, "pad_token_id": 199999,
        "embd_pdrop": 0.0, "resid_pdrop": 0.0, "full_attn_mod": 1, "hidden_act": "silu",
        "hidden_size": d.hidden, "initializer_range": 0.02, "intermediate_size": d.intermediate,
        "interpolate_factor": 1, "lm_head_bias": False, "mlp_bias": False,
        "max_position_embeddings": d.max_ctx, "original_max_position_embeddings": d.orig_ctx,
        "num_attention_heads": d.heads, "num_hidden_layers": d.layers,
        "num_key_value_heads": d.kv_heads, "partial_rotary_factor": 0.75, "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "longrope", "short_factor": short, "long_factor": long},
        "sliding_window": 262144, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.46.1", "use_cache": True, "vocab_size": VOCAB,
        "_attn_implementation": "flash_attention_2",
        "vision_lora": {"r": d.vision_r, "lora_alpha": d.vision_alpha, "dp": 0.0, "layer": lora_layers},
        "speech_lora": {"r": d.speech_r, "lora_alpha": d.speech_alpha, "dp": 0.01,
                        "layer": "((layers.*self_attn\\.(qkv|o)_proj)|(layers.*mlp\\.(gate_up|down)_proj))"},
        "embd_layer": {
            "embedding_cls": "image_audio",
            "image_embd_layer": {"crop_size": 448, "embedding_cls": "tune_image",
                                 "enable_gradient_checkpointing": True, "hd_transform_order": "sub_glb",
                                 "image_token_compression_cls": "avg_pool_2d", "projection_cls": "mlp",
                                 "use_hd_transform": True, "with_learnable_separator": True},
            "audio_embd_layer": {"compression_rate": 8, "downsample_rate": 1, "embedding_cls": "audio",
                                 "enable_gradient_checkpointing": True, "projection_cls": "mlp",
                                 "use_conv_downsample": False, "use_qformer": False},
        },
        "audio_processor": {"name": "cascades", "config": audio_config(d)},
    }
    if size != "full":
        config["vision_config"] = {
            "hidden_size": d.v_hidden, "intermediate_size": d.v_intermediate,
            "num_hidden_layers": d.v_layers, "num_attention_heads": d.v_heads, "image_size": 448,
            "patch_size": 14, "layer_norm_eps": 1e-6, "hidden_act": "gelu_pytorch_tanh",
        }
    return config


def audio_config(d: Dims) -> dict:
    return {
        "activation": "swish",
        "activation_checkpointing": {"interval": 1, "module": "transformer", "offload": False},
        "attention_dim": d.a_dim, "attention_heads": d.a_heads, "batch_norm": False,
        "bias_in_glu": True, "causal": True, "chunk_size": -1, "cnn_layer_norm": True,
        "conv_activation": "swish", "conv_glu_type": "swish", "depthwise_multiplier": 1,
        "depthwise_seperable_out_channel": d.a_dim, "dropout_rate": 0.0,
        "encoder_embedding_config": {"input_size": 80}, "ext_pw_kernel_size": 1,
        "ext_pw_out_channel": d.a_dim, "input_layer": "nemo_conv", "input_size": 80,
        "kernel_size": 3, "left_chunk": 18, "linear_units": d.a_units,
        "nemo_conv_settings": {"conv_channels": d.a_dim}, "num_blocks": d.a_blocks,
        "relative_attention_bias_args": {"t5_bias_max_distance": 500, "type": "t5"},
        "time_reduction": 8,
    }


def tensor_shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    """Every tensor of the hub checkpoint, in file order (model-spec.md §2.1)."""
    s: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, d.hidden)}
    hd = d.hidden // d.heads
    outs = {"self_attn.qkv_proj": d.hidden + 2 * d.kv_heads * hd, "self_attn.o_proj": d.hidden,
            "mlp.gate_up_proj": 2 * d.intermediate, "mlp.down_proj": d.hidden}
    ins = {"self_attn.qkv_proj": d.hidden, "self_attn.o_proj": d.hidden,
           "mlp.gate_up_proj": d.hidden, "mlp.down_proj": d.intermediate}
    for i in range(d.layers):
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (d.hidden,)
        s[p + "post_attention_layernorm.weight"] = (d.hidden,)
        for t in LORA_TARGETS:
            s[f"{p}{t}.base_layer.weight"] = (outs[t], ins[t])
            for adapter, r in (("vision", d.vision_r), ("speech", d.speech_r)):
                s[f"{p}{t}.lora_A.{adapter}.weight"] = (r, ins[t])
                s[f"{p}{t}.lora_B.{adapter}.weight"] = (outs[t], r)
    s["model.norm.weight"] = (d.hidden,)
    s.update(_image_shapes(d))
    s.update(_audio_shapes(d))
    return s


def _image_shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    D, F, p = d.v_hidden, d.v_intermediate, IMAGE_PREFIX + "img_processor."
    s = {p + "embeddings.patch_embedding.weight": (D, 3, 14, 14), p + "embeddings.patch_embedding.bias": (D,),
         p + "embeddings.position_embedding.weight": (1024, D)}
    for j in range(d.v_layers):
        q = f"{p}encoder.layers.{j}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[f"{q}self_attn.{proj}.weight"] = (D, D)
            s[f"{q}self_attn.{proj}.bias"] = (D,)
        for ln in ("layer_norm1", "layer_norm2"):
            s[f"{q}{ln}.weight"] = (D,)
            s[f"{q}{ln}.bias"] = (D,)
        s.update({q + "mlp.fc1.weight": (F, D), q + "mlp.fc1.bias": (F,),
                  q + "mlp.fc2.weight": (D, F), q + "mlp.fc2.bias": (D,)})
    s.update({p + "post_layernorm.weight": (D,), p + "post_layernorm.bias": (D,),
              p + "head.probe": (1, 1, D), p + "head.attention.in_proj_weight": (3 * D, D),
              p + "head.attention.in_proj_bias": (3 * D,), p + "head.attention.out_proj.weight": (D, D),
              p + "head.attention.out_proj.bias": (D,), p + "head.layernorm.weight": (D,),
              p + "head.layernorm.bias": (D,), p + "head.mlp.fc1.weight": (F, D),
              p + "head.mlp.fc1.bias": (F,), p + "head.mlp.fc2.weight": (D, F), p + "head.mlp.fc2.bias": (D,)})
    H = d.hidden
    s.update({IMAGE_PREFIX + "glb_GN": (1, 1, D), IMAGE_PREFIX + "sub_GN": (1, 1, 1, D),
              IMAGE_PREFIX + "img_projection.0.weight": (H, D), IMAGE_PREFIX + "img_projection.0.bias": (H,),
              IMAGE_PREFIX + "img_projection.2.weight": (H, H), IMAGE_PREFIX + "img_projection.2.bias": (H,)})
    return s


def _audio_shapes(d: Dims) -> dict[str, tuple[int, ...]]:
    A, U, p = d.a_dim, d.a_units, AUDIO_PREFIX + "encoder."
    s = {p + "encoder_embedding.global_mean": (80,), p + "encoder_embedding.global_invstd": (80,),
         p + "embed.conv.0.weight": (A, 1, 3, 3), p + "embed.conv.0.bias": (A,),
         p + "embed.conv.2.weight": (A, 1, 3, 3), p + "embed.conv.2.bias": (A,),
         p + "embed.conv.3.weight": (A, A, 1, 1), p + "embed.conv.3.bias": (A,),
         p + "embed.conv.5.weight": (A, 1, 3, 3), p + "embed.conv.5.bias": (A,),
         p + "embed.conv.6.weight": (A, A, 1, 1), p + "embed.conv.6.bias": (A,),
         p + "embed.out.weight": (A, A * 10), p + "embed.out.bias": (A,),
         p + "relative_attention_bias_layer.bias_values.weight": (1000, d.a_heads)}
    for b in range(d.a_blocks):
        q = f"{p}encoders.{b}."
        for ff in ("feed_forward_in", "feed_forward_out"):
            s.update({f"{q}{ff}.layer_norm.weight": (A,), f"{q}{ff}.layer_norm.bias": (A,),
                      f"{q}{ff}.net.0.linear.weight": (2 * U, A), f"{q}{ff}.net.0.linear.bias": (2 * U,),
                      f"{q}{ff}.net.2.weight": (A, U), f"{q}{ff}.net.2.bias": (A,)})
        for proj in ("linear_q", "linear_k", "linear_v", "linear_out"):
            s[f"{q}self_attn.{proj}.weight"] = (A, A)
            s[f"{q}self_attn.{proj}.bias"] = (A,)
        s.update({q + "conv.layer_norm.weight": (A,), q + "conv.layer_norm.bias": (A,),
                  q + "conv.glu.ext_pw_conv_1d.weight": (2 * A, A, 1), q + "conv.glu.ext_pw_conv_1d.bias": (2 * A,),
                  q + "conv.glu.b1": (1, A, 1), q + "conv.glu.b2": (1, A, 1),
                  q + "conv.dw_sep_conv_1d.dw_conv.weight": (A, 1, 3), q + "conv.dw_sep_conv_1d.dw_conv.bias": (A,),
                  q + "conv.dw_sep_conv_1d.pw_conv.weight": (A, A, 1), q + "conv.dw_sep_conv_1d.pw_conv.bias": (A,),
                  q + "conv.ext_pw_conv_1d.weight": (A, A, 1), q + "conv.ext_pw_conv_1d.bias": (A,),
                  q + "layer_norm_att.weight": (A,), q + "layer_norm_att.bias": (A,),
                  q + "layer_norm.weight": (A,), q + "layer_norm.bias": (A,)})
    H = d.hidden
    for head in ("speech", "vision"):
        r = f"{AUDIO_PREFIX}audio_projection.{head}."
        s.update({r + "0.weight": (H, A), r + "0.bias": (H,), r + "2.weight": (H, H), r + "2.bias": (H,)})
    return s


def init_stats(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a tensor's random values: unit-scale activations for a meaningful tiny model."""
    if name.endswith("global_invstd"):
        return 1.0, 0.2
    if name.endswith(("norm.weight", "layer_norm1.weight", "layer_norm2.weight", "layernorm.weight")):
        return 1.0, 0.1
    if name.endswith(("bias", "global_mean", "conv.glu.b1", "conv.glu.b2")) or len(shape) == 1:
        return 0.0, 0.1
    if name.endswith("embed_tokens.weight"):
        return 0.0, 1.0
    if name.endswith(("_GN", "position_embedding.weight", "bias_values.weight", "head.probe")):
        return 0.0, 0.5
    fan_in = int(np.prod(shape[1:]))
    gain = 2.0 if "qkv_proj.base_layer" in name or "q_proj" in name or "k_proj" in name else 1.0
    if "o_proj.base_layer" in name or "down_proj.base_layer" in name:
        gain = 4.0  # strong residual branches: a random tied model otherwise just repeats its input
    if ".lora_B." in name:
        gain = 0.5
    return 0.0, gain / np.sqrt(fan_in)


def random_chunks(name: str, shape: tuple[int, ...], rng: np.random.Generator,
                  row_scale: np.ndarray | None = None, chunk_rows: int = 1 << 14) -> Iterator[np.ndarray]:
    """bf16 bits of seeded N(mean, std) values (rows scaled by row_scale), in bounded chunks."""
    mean, std = init_stats(name, shape)
    rows = shape[0] if len(shape) > 1 else 1
    row_values = int(np.prod(shape, dtype=np.int64)) // rows
    for start in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - start)
        values = rng.standard_normal((n, row_values), dtype=np.float32) * np.float32(std) + np.float32(mean)
        if row_scale is not None:
            values *= row_scale[start:start + n, None]
        yield f32_to_bf16_bits(values).reshape(-1)


def unused_rows_damped(vocab_ids: set[int], n_rows: int, factor: float = 0.05) -> np.ndarray:
    """Embedding rows of ids the tokenizer never emits are nearly untrained in a real model:
    damp them so a random tiny model mostly predicts real tokens."""
    scale = np.full(n_rows, factor, dtype=np.float32)
    scale[sorted(vocab_ids)] = 1.0
    return scale


def pooled_chunks(name: str, shape: tuple[int, ...], pool: np.ndarray, start: int,
                  chunk_values: int = 1 << 24) -> Iterator[np.ndarray]:
    """Fast stand-in for the full size: slices of a fixed random bf16 pool (values don't matter)."""
    mean, _ = init_stats(name, shape)
    remaining = int(np.prod(shape, dtype=np.int64))
    if mean == 1.0:
        ones = f32_to_bf16_bits(np.ones(min(remaining, chunk_values), np.float32))
        while remaining:
            n = min(remaining, chunk_values)
            yield ones[:n]
            remaining -= n
        return
    pos = start % pool.size
    while remaining:
        n = min(remaining, chunk_values, pool.size - pos)
        yield pool[pos:pos + n]
        remaining -= n
        pos = (pos + n) % pool.size


def write_checkpoint(out_dir: Path, size: str = "tiny", seed: int = 0, shards: int = 1,
                     tokenizer: str = "synthetic", verbose: bool = False, layout: str = "original") -> Path:
    """Write config, tokenizer files and safetensors of a random checkpoint into out_dir; the same
    seed gives the same values in either layout."""
    d = SIZES[size]
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    config = hub_config(d, size, rng)
    native = layout == "native"
    (out_dir / "config.json").write_text(json.dumps(ckpt_native.native_config(config) if native else config,
                                                    indent=2))
    preprocessor = ckpt_native.PREPROCESSOR_CONFIG if native else PREPROCESSOR_CONFIG
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2))
    (out_dir / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 199999, "eos_token_id": [200020, 199999], "pad_token_id": 199999}, indent=2))
    vocab, merges = o200k_bpe() if tokenizer == "o200k" else synthetic_bpe()
    write_tokenizer_files(out_dir, vocab, merges)
    embed_scale = unused_rows_damped(set(vocab.values()) | set(SPECIAL_TOKENS), VOCAB)
    shapes = tensor_shapes(d)
    pool = f32_to_bf16_bits(rng.standard_normal(1 << 24, dtype=np.float32) * np.float32(0.02))

    def source(name: str):
        shape = shapes[name]
        if size == "full":
            start = int(rng.integers(pool.size))
            return lambda: pooled_chunks(name, shape, pool, start)
        tensor_rng = np.random.default_rng([seed, _stable_hash(name)])  # keyed by the original name
        scale = embed_scale if name == "model.embed_tokens.weight" else None
        return lambda: random_chunks(name, shape, tensor_rng, scale)

    stored, adapters = _stored_names(shapes, native)
    _write_shards(out_dir, {k: shapes[n] for k, n in stored.items()}, {k: source(n) for k, n in stored.items()},
                  shards, verbose)
    for adapter, keys in adapters.items():
        folder = out_dir / f"{adapter}-lora"
        folder.mkdir(exist_ok=True)
        (folder / layouts.ADAPTER_CONFIG).write_text(json.dumps(ckpt_native.adapter_config(config, adapter), indent=2))
        write_safetensors(folder / layouts.ADAPTER_WEIGHTS, {k: shapes[n] for k, n in keys.items()},
                          {k: source(n) for k, n in keys.items()})
    return out_dir


def _stored_names(shapes: dict, native: bool) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """(stored name -> original name) of the base weights, and per LoRA adapter of its PEFT file."""
    if not native:
        return {n: n for n in shapes}, {}
    base: dict[str, str] = {}
    adapters: dict[str, dict[str, str]] = {"vision": {}, "speech": {}}
    for name in shapes:
        peft = layouts.to_peft(name)
        if peft is None:
            base[layouts.to_native(name)] = name
        else:
            adapters[peft[0]][peft[1]] = name
    return base, adapters


def _write_shards(out_dir: Path, shapes: dict, sources: dict, shards: int, verbose: bool) -> None:
    sizes = {n: int(np.prod(s, dtype=np.int64)) * 2 for n, s in shapes.items()}
    groups = plan_shards(sizes, shards)
    weight_map: dict[str, str] = {}
    for k, names in enumerate(groups, 1):
        fname = "model.safetensors" if shards == 1 else f"model-{k:05d}-of-{shards:05d}.safetensors"
        if verbose:
            print(f"writing {fname} ({sum(sizes[n] for n in names) / 1e9:.2f} GB)", flush=True)
        write_safetensors(out_dir / fname, {n: shapes[n] for n in names}, {n: sources[n] for n in names})
        weight_map.update({n: fname for n in names})
    if shards > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _stable_hash(name: str) -> int:
    h = 2166136261
    for byte in name.encode():
        h = ((h ^ byte) * 16777619) & 0xFFFFFFFF
    return h


PREPROCESSOR_CONFIG = {
    "auto_map": {"AutoFeatureExtractor": "processing_phi4mm.Phi4MMAudioFeatureExtractor",
                 "AutoImageProcessor": "processing_phi4mm.Phi4MMImageProcessor",
                 "AutoProcessor": "processing_phi4mm.Phi4MMProcessor"},
    "feature_extractor_type": "Phi4MMAudioFeatureExtractor",
    "image_processor_type": "Phi4MMImageProcessor",
    "processor_class": "Phi4MMProcessor",
    "audio_compression_rate": 8,
    "audio_downsample_rate": 1,
    "audio_feat_stride": 1,
    "dynamic_hd": 36,
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1, help="number of safetensors shards (index written when > 1)")
    ap.add_argument("--tokenizer", choices=["synthetic", "o200k"], default="synthetic",
                    help="o200k needs the bpe-openai package")
    ap.add_argument("--layout", choices=LAYOUTS, default="original",
                    help="original remote-code layout (hub main) or transformers-native (model-spec.md §2.2)")
    args = ap.parse_args(argv)
    write_checkpoint(args.out_dir, args.size, args.seed, args.shards, args.tokenizer, verbose=True,
                     layout=args.layout)
    print(f"checkpoint written to {args.out_dir}")


if __name__ == "__main__":
    main()

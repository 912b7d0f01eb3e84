"""The checkpoint maker writes the original hub layout (model-spec.md §2.1)."""

import json

import numpy as np

from phi4mm.converter.checkpoint import Checkpoint


def test_hub_layout_keys_and_dtypes(tiny_ckpt):
    ckpt = Checkpoint(tiny_ckpt)
    keys = set(ckpt.tensors)
    assert "model.layers.0.self_attn.qkv_proj.base_layer.weight" in keys
    assert "model.layers.1.mlp.gate_up_proj.lora_A.vision.weight" in keys
    assert "model.layers.1.mlp.down_proj.lora_B.speech.weight" in keys
    assert "model.embed_tokens_extend.image_embed.glb_GN" in keys
    assert "model.embed_tokens_extend.audio_embed.audio_projection.vision.2.weight" in keys
    assert "lm_head.weight" not in keys  # tied, never stored
    assert {e.dtype for e in ckpt.tensors.values()} == {"BF16"}
    index = json.loads((tiny_ckpt / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == keys
    assert len(set(index["weight_map"].values())) == 2


def test_config_is_hub_style_with_tiny_vision_override(tiny_ckpt):
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg["model_type"] == "phi4mm" and cfg["vocab_size"] == 200064
    assert cfg["vision_config"]["num_hidden_layers"] == 3
    assert cfg["original_max_position_embeddings"] % 256 == 0
    short, long = cfg["rope_scaling"]["short_factor"], cfg["rope_scaling"]["long_factor"]
    assert len(short) == len(long) == int(cfg["hidden_size"] // cfg["num_attention_heads"] * 0.75) // 2
    assert max(short) > 1.5 and max(long) > 10 and short != long  # non-trivial LongRoPE


def test_lora_b_is_nonzero(tiny_ckpt):
    b = Checkpoint(tiny_ckpt).read("model.layers.0.self_attn.qkv_proj.lora_B.vision.weight")
    assert np.abs(b).mean() > 0.01


def test_seeded_and_reproducible(tmp_path, tiny_ckpt):
    from make_checkpoint import write_checkpoint

    again = write_checkpoint(tmp_path / "again", size="tiny", seed=0, shards=1)
    name = "model.layers.1.mlp.down_proj.base_layer.weight"
    assert np.array_equal(Checkpoint(again).read(name), Checkpoint(tiny_ckpt).read(name))


def test_special_tokens_at_real_ids(tiny_ckpt):
    tok = json.loads((tiny_ckpt / "tokenizer.json").read_text())
    added = {t["id"]: t["content"] for t in tok["added_tokens"]}
    assert added[199999] == "<|endoftext|>" and added[200010] == "<|endoftext10|>"
    assert added[200020] == "<|end|>" and added[200019] == "<|assistant|>"

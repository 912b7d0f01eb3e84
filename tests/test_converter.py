"""Converter round trip: tiny checkpoint -> GGUF -> gguf.GGUFReader (names, shapes, dtypes, metadata)."""

import json
import shutil

import gguf
import numpy as np
import pytest

from phi4mm.converter.checkpoint import Checkpoint
from phi4mm.converter.convert import convert
from phi4mm.errors import ConversionError

T = gguf.GGMLQuantizationType


def reader(root, role):
    manifest = json.loads((root / "manifest.json").read_text())
    return gguf.GGUFReader(root / manifest["files"][role]["name"])


def field(r, key):
    f = r.fields[key]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[-1]).decode()
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.parts[i].tolist()[0] if f.types[-1] != gguf.GGUFValueType.STRING else bytes(f.parts[i]).decode()
                for i in f.data]
    return f.parts[-1].tolist()[0]


def test_manifest_and_files(tiny_f32):
    manifest = json.loads((tiny_f32 / "manifest.json").read_text())
    assert manifest["quant"] == "f32"
    assert set(manifest["files"]) == {"text", "tokenizer", "vision_lora", "speech_lora", "vision", "audio"}
    for entry in manifest["files"].values():
        assert (tiny_f32 / entry["name"]).stat().st_size == entry["bytes"]
    assert not list(tiny_f32.glob("*.partial"))


def test_text_decoder_round_trip(tiny_f32, tiny_ckpt):
    r = reader(tiny_f32, "text")
    tensors = {t.name: t for t in r.tensors}
    assert field(r, "general.architecture") == "phi3"
    assert field(r, "phi3.rope.dimension_count") == 48
    assert field(r, "phi3.rope.scaling.original_context_length") == 256
    assert field(r, "tokenizer.ggml.pre") == "gpt-4o"
    qkv = tensors["blk.1.attn_qkv.weight"]
    assert qkv.tensor_type == T.F32 and tuple(qkv.data.shape) == (512, 256)
    expected = Checkpoint(tiny_ckpt).read("model.layers.1.self_attn.qkv_proj.base_layer.weight")
    assert np.array_equal(np.asarray(qkv.data), expected)  # bf16 -> f32 is exact
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert np.allclose(tensors["rope_factors_long.weight"].data, cfg["rope_scaling"]["long_factor"])
    assert np.allclose(tensors["rope_factors_short.weight"].data, cfg["rope_scaling"]["short_factor"])
    assert "output.weight" not in tensors  # tied embeddings


def test_vocabulary_is_padded_and_typed(tiny_f32):
    r = reader(tiny_f32, "text")
    f = r.fields["tokenizer.ggml.token_type"]
    types = [int(f.parts[i][0]) for i in f.data]
    tokens = r.fields["tokenizer.ggml.tokens"]
    assert len(types) == len(tokens.data) == 200064
    assert types[200020] == 3 and types[199999] == 3 and types[200010] == 3  # control
    assert types[200005] == 5  # never-used id: padding


def test_lora_round_trip(tiny_f32, tiny_ckpt):
    r = reader(tiny_f32, "vision_lora")
    assert field(r, "general.type") == "adapter" and field(r, "adapter.type") == "lora"
    assert field(r, "adapter.lora.alpha") == 48.0
    t = {t.name: t for t in r.tensors}
    a, b = t["blk.0.ffn_up.weight.lora_a"], t["blk.0.ffn_up.weight.lora_b"]
    assert tuple(a.data.shape) == (32, 256) and tuple(b.data.shape) == (1024, 32)
    hub = Checkpoint(tiny_ckpt).read("model.layers.0.mlp.gate_up_proj.lora_B.vision.weight")
    assert np.array_equal(np.asarray(b.data), hub)


def test_vision_and_audio_metadata(tiny_f32):
    v = reader(tiny_f32, "vision")
    assert field(v, "general.architecture") == "phi4mm-vision"
    assert field(v, "phi4mm.vision.n_layers") == 2  # 3 stored, features from hidden_states[-2]
    assert field(v, "phi4mm.vision.dynamic_hd") == 36
    names = {t.name for t in v.tensors}
    assert "v.blk.1.attn_q.weight" in names and "v.blk.2.attn_q.weight" not in names
    a = reader(tiny_f32, "audio")
    assert field(a, "phi4mm.audio.n_blocks") == 2
    assert {"mm.speech.up.weight", "mm.vision.down.bias", "a.blk.1.conv.glu_b2"} <= {t.name for t in a.tensors}


def test_quantized_types(tiny_q4):
    text = {t.name: t.tensor_type for t in reader(tiny_q4, "text").tensors}
    assert text["blk.0.attn_norm.weight"] == T.F32
    assert text["token_embd.weight"] not in (T.F32, T.F16, T.BF16)
    assert text["blk.0.ffn_up.weight"] not in (T.F32, T.F16, T.BF16)
    lora = {t.name: t.tensor_type for t in reader(tiny_q4, "vision_lora").tensors}
    assert lora["blk.0.attn_qkv.weight.lora_a"] == T.Q8_0
    enc = {t.name: t.tensor_type for t in reader(tiny_q4, "vision").tensors}
    assert enc["v.blk.0.attn_q.weight"] == T.F16 and enc["v.blk.0.attn_q.bias"] == T.F32


def _copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unmapped_key_is_an_error(tmp_path, tiny_ckpt):
    from ckpt_safetensors import write_safetensors  # scripts/

    ckpt = _copy_ckpt(tiny_ckpt, tmp_path / "ck")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    write_safetensors(ckpt / "extra.safetensors", {"model.mystery.weight": (4,)},
                      {"model.mystery.weight": lambda: [np.zeros(4, np.uint16)]})
    index["weight_map"]["model.mystery.weight"] = "extra.safetensors"
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ConversionError, match="no mapping.*model.mystery.weight"):
        convert(ckpt, tmp_path / "out", quant="f32")


def test_shape_mismatch_is_an_error(tmp_path, tiny_ckpt):
    ckpt = _copy_ckpt(tiny_ckpt, tmp_path / "ck")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 384
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="gate_up_proj.*shape.*expected"):
        convert(ckpt, tmp_path / "out", quant="f32")


def test_interrupted_conversion_leaves_no_valid_looking_file(tmp_path, tiny_ckpt, monkeypatch):
    from phi4mm.converter import write

    calls = {"n": 0}
    original = write.convert_chunk

    def failing(raw, out_type):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        return original(raw, out_type)

    monkeypatch.setattr(write, "convert_chunk", failing)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_ckpt, out, quant="f32")
    assert not (out / "manifest.json").exists()  # so the directory is never loaded as a model
    assert not list(out.glob("*.partial"))
    written = sorted(p.name for p in out.glob("*.gguf"))
    assert "phi4mm-lora-speech-f32.gguf" not in written  # the file being written when interrupted
    for name in written:  # files finished before the interrupt are complete
        assert gguf.GGUFReader(out / name).tensors

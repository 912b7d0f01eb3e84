"""Both hub layouts (converter/layouts.py): the transformers-native layout of the same tiny checkpoint
converts to the same GGUF files as the original remote-code layout (model-spec.md §2.2)."""

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from phi4mm.converter import layouts
from phi4mm.converter.checkpoint import Checkpoint, CheckpointFileError, read_safetensors_header
from phi4mm.converter.convert import convert
from phi4mm.converter.hubconfig import parse_hub_config
from phi4mm.errors import ConversionError

PROVENANCE = {"source", "revision", "layout", "seconds"}


@pytest.fixture(scope="module")
def tiny_native(tmp_path_factory):
    from make_checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny-native"), size="tiny", seed=0, shards=2, layout="native")


@pytest.fixture(scope="module")
def tiny_native_f32(tmp_path_factory, tiny_native):
    out = tmp_path_factory.mktemp("tiny-native-f32")
    convert(tiny_native, out, quant="f32", encoder_type="f32", n_threads=2)
    return out


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_maker_writes_the_native_layout(tiny_native):
    cfg = json.loads((tiny_native / "config.json").read_text())
    assert cfg["model_type"] == "phi4_multimodal" and "audio_processor" not in cfg and "vision_lora" not in cfg
    assert cfg["audio_config"]["bias_max_distance"] == 500 and "kernel_size" not in cfg["audio_config"]  # a default
    index = json.loads((tiny_native / "model.safetensors.index.json").read_text())["weight_map"]
    assert "model.layers.0.self_attn.qkv_proj.weight" in index
    assert "model.embed_tokens_extend.image_embed.img_projection_up.weight" in index
    assert "model.embed_tokens_extend.audio_embed.encoder.encoders.1.feed_forward_in.gate_up_proj.weight" in index
    assert not [k for k in index if "lora" in k or "base_layer" in k]
    for folder in ("vision-lora", "speech-lora"):
        assert json.loads((tiny_native / folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
        assert (tiny_native / folder / "adapter_model.safetensors").is_file()


def test_both_layouts_read_as_the_same_tensors_and_config(tiny_ckpt, tiny_native):
    original, native = Checkpoint(tiny_ckpt), Checkpoint(tiny_native)
    assert (original.layout, native.layout) == (layouts.ORIGINAL, layouts.NATIVE)
    assert set(native.tensors) == set(original.tensors)
    for name in ("model.layers.1.self_attn.qkv_proj.base_layer.weight",
                 "model.layers.0.mlp.down_proj.lora_B.speech.weight",
                 "model.embed_tokens_extend.image_embed.sub_GN",
                 "model.embed_tokens_extend.audio_embed.audio_projection.vision.2.bias"):
        assert np.array_equal(native.read(name), original.read(name)), name
    assert parse_hub_config(native.config, native.preprocessor) == parse_hub_config(original.config,
                                                                                     original.preprocessor)


def test_transformers_5_rope_parameters_parse_the_same(tiny_ckpt, tiny_native):
    native = json.loads((tiny_native / "config.json").read_text())
    rope = native.pop("rope_scaling")
    native["rope_parameters"] = {"rope_type": "longrope", "short_factor": rope["short_factor"],
                                 "long_factor": rope["long_factor"], "rope_theta": native.pop("rope_theta"),
                                 "partial_rotary_factor": native.pop("partial_rotary_factor")}
    adapters = {f: json.loads((tiny_native / f / "adapter_config.json").read_text())
                for f in ("vision-lora", "speech-lora")}
    original = Checkpoint(tiny_ckpt)
    assert parse_hub_config(layouts.canonical_config(native, adapters), {}) == \
        parse_hub_config(original.config, {})


@pytest.mark.parametrize("key", [
    "base_model.model.model.layers.3.mlp.down_proj.lora_B.weight",     # PEFT around the causal LM
    "base_model.model.layers.3.mlp.down_proj.lora_B.weight",           # PEFT around the inner model
    "model.layers.3.mlp.down_proj.lora_B.weight",                      # model-spec.md §2.2's example
    "base_model.model.model.layers.3.mlp.down_proj.lora_B.speech.weight",  # adapter name kept
])
def test_peft_adapter_keys_are_read_tolerantly(key):
    assert layouts.from_peft(key, "speech") == "model.layers.3.mlp.down_proj.lora_B.speech.weight"


def test_peft_reading_rejects_other_modules():
    assert layouts.from_peft("base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight", "vision") is None


def test_the_rename_table_is_a_bijection_on_the_checkpoint(tiny_ckpt):
    keys = [k for k in Checkpoint(tiny_ckpt).tensors if layouts.to_peft(k) is None]
    native = [layouts.to_native(k) for k in keys]
    assert len(set(native)) == len(keys)
    assert [layouts.from_native(k) for k in native] == keys
    assert sum(a != b for a, b in zip(keys, native, strict=True)) == 4 * 2 + 6 + 8 + 2 * (2 * 4 + 2 * 4)


@pytest.mark.slow
def test_native_layout_converts_to_identical_gguf_files(tiny_f32, tiny_native_f32):
    original = json.loads((tiny_f32 / "manifest.json").read_text())
    native = json.loads((tiny_native_f32 / "manifest.json").read_text())
    assert (original["layout"], native["layout"]) == ("original", "native")
    assert {k: v for k, v in native.items() if k not in PROVENANCE} == \
        {k: v for k, v in original.items() if k not in PROVENANCE}
    for role, entry in original["files"].items():
        assert sha256(tiny_native_f32 / entry["name"]) == sha256(tiny_f32 / entry["name"]), role


def _copy(src, dst):
    shutil.copytree(src, dst, copy_function=os.symlink)  # a fresh directory of links: cheap
    return dst


def test_a_missing_adapter_folder_names_the_file(tmp_path, tiny_native):
    ckpt = _copy(tiny_native, tmp_path / "ck")
    (ckpt / "speech-lora" / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointFileError, match="speech-lora/adapter_model.safetensors") as err:
        Checkpoint(ckpt)
    assert err.value.path == ckpt / "speech-lora" / "adapter_model.safetensors"


def test_an_unrecognised_adapter_key_is_reported_with_its_file(tmp_path, tiny_native):
    from ckpt_safetensors import write_safetensors  # scripts/

    ckpt = _copy(tiny_native, tmp_path / "ck")
    path = ckpt / "vision-lora" / "adapter_model.safetensors"
    entries = read_safetensors_header(Path(os.path.realpath(path)))  # the real adapter, plus a DoRA vector
    path.unlink()
    name = "base_model.model.model.layers.0.self_attn.qkv_proj.lora_magnitude_vector"
    shapes = {**{k: e.shape for k, e in entries.items()}, name: (4,)}
    sources = {k: (lambda e=e: [np.fromfile(e.file, np.uint16, e.nbytes // 2, offset=e.offset)])
               for k, e in entries.items()}
    write_safetensors(path, shapes, {**sources, name: lambda: [np.zeros(4, np.uint16)]})
    with pytest.raises(ConversionError, match="vision-lora/adapter_model.safetensors:" + name.replace(".", r"\.")):
        convert(ckpt, tmp_path / "out", quant="f32")


@pytest.mark.reference
@pytest.mark.slow
def test_transformers_loads_the_native_checkpoint_as_written(tiny_native):
    """The native layout the maker writes (and this converter reads) is what transformers expects:
    every tensor name, and the config values its defaults fill in."""
    transformers = pytest.importorskip("transformers")
    model, info = transformers.Phi4MultimodalForCausalLM.from_pretrained(
        tiny_native, output_loading_info=True, attn_implementation="eager")
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert set(info["missing_keys"]) <= {"lm_head.weight"}
    cfg, ours = model.config, parse_hub_config(Checkpoint(tiny_native).config, {})
    assert (cfg.num_attention_heads, cfg.audio_config.num_attention_heads) == (ours.text.n_heads, ours.audio.n_heads)
    assert cfg.audio_config.bias_max_distance == ours.audio.bias_max_distance == 500
    assert (cfg.audio_config.kernel_size, cfg.audio_config.time_reduction) == \
        (ours.audio.kernel_size, ours.audio.time_reduction)
    assert (cfg.vision_config.num_hidden_layers, cfg.vision_config.hidden_size) == \
        (ours.vision.n_layers_stored, ours.vision.hidden_size)


@pytest.mark.reference
def test_native_defaults_are_transformers_defaults():
    transformers = pytest.importorskip("transformers")
    defaults = {"": transformers.Phi4MultimodalConfig(), "audio_config": transformers.Phi4MultimodalAudioConfig(),
                "vision_config": transformers.Phi4MultimodalVisionConfig()}
    checked = 0
    for _, native_paths, default in layouts.CONFIG_FIELDS:
        sub, _, field = native_paths[0].rpartition(".")
        if sub in defaults and default is not layouts.REQUIRED and hasattr(defaults[sub], field):
            assert getattr(defaults[sub], field) == default, native_paths[0]
            checked += 1
    assert checked >= 25

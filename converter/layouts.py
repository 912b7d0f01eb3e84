"""The two layouts Phi-4-multimodal-instruct checkpoints come in, as tables (model-spec.md §2.1-2.2,
reference-notes §2).

The original remote-code layout (`model_type` `phi4mm`, the hub's `main`) is canonical: the
converter's name tables use its tensor names and `hubconfig` its config fields. A
transformers-native checkpoint (`model_type` `phi4_multimodal`) is read through this one sanitize
step: tensor renames, PEFT adapter keys for the LoRAs in `vision-lora/` and `speech-lora/`, and
config field paths with the defaults transformers fills in for fields its config files omit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from phi4mm.errors import ConfigError


@dataclass(frozen=True)
class Layout:
    name: str
    model_type: str                          # config.json `model_type`
    weight_files: tuple[str, ...]            # hub file patterns holding the weights
    adapters: tuple[tuple[str, str], ...]    # (LoRA name, PEFT folder); empty when in the base weights


WEIGHTS = ("model.safetensors.index.json", "model*.safetensors")
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ORIGINAL = Layout("original", "phi4mm", WEIGHTS, ())
NATIVE = Layout("native", "phi4_multimodal",
                WEIGHTS + tuple(f"{d}/{f}" for d in ("vision-lora", "speech-lora") for f in (ADAPTER_CONFIG,
                                                                                            ADAPTER_WEIGHTS)),
                (("vision", "vision-lora"), ("speech", "speech-lora")))
LAYOUTS = {layout.model_type: layout for layout in (ORIGINAL, NATIVE)}

# Tensor names, (original, native); `{x}` is a placeholder matched by PLACEHOLDERS. Keys no row
# matches are the same in both layouts (model-spec.md §2.2: "All other keys are unchanged").
_T = "model.layers.{n}."
_I = "model.embed_tokens_extend.image_embed."
_P = "model.embed_tokens_extend.audio_embed."
_E = _P + "encoder.encoders.{n}."
TENSOR_RENAMES = (
    (_T + "{lora_target}.base_layer.weight", _T + "{lora_target}.weight"),
    (_I + "img_projection.0.{wb}", _I + "img_projection_up.{wb}"),
    (_I + "img_projection.2.{wb}", _I + "img_projection_down.{wb}"),
    (_I + "glb_GN", _I + "global_img_feature_extensor"),
    (_I + "sub_GN", _I + "sub_img_feature_extensor"),
    (_P + "audio_projection.speech.0.{wb}", _P + "up_proj_for_speech.{wb}"),
    (_P + "audio_projection.speech.2.{wb}", _P + "down_proj_for_speech.{wb}"),
    (_P + "audio_projection.vision.0.{wb}", _P + "up_proj_for_vision_speech.{wb}"),
    (_P + "audio_projection.vision.2.{wb}", _P + "down_proj_for_vision_speech.{wb}"),
    (_E + "feed_forward_{io}.net.0.linear.{wb}", _E + "feed_forward_{io}.gate_up_proj.{wb}"),
    (_E + "feed_forward_{io}.net.2.{wb}", _E + "feed_forward_{io}.down_proj.{wb}"),
    (_E + "self_attn.linear_{qkv}.{wb}", _E + "self_attn.{qkv}_proj.{wb}"),
    (_E + "self_attn.linear_out.{wb}", _E + "self_attn.o_proj.{wb}"),
)
# LoRA tensors: original name, and the key a PEFT adapter folder stores (what this project writes).
# Reading is tolerant (model-spec.md §10: the exact prefix is unconfirmed): with or without
# `base_model.model.`, with or without `model.`, with or without an adapter name after lora_A/B.
LORA_ORIGINAL = _T + "{lora_target}.lora_{ab}.{adapter}.weight"
LORA_PEFT = "base_model.model." + _T + "{lora_target}.lora_{ab}.weight"
LORA_PEFT_READ = (r"^(?:base_model\.model\.)?(?:model\.)?layers\.(?P<n>\d+)\.(?P<lora_target>{lora_target})"
                  r"\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")
PLACEHOLDERS = {
    "n": r"\d+", "wb": "weight|bias", "io": "in|out", "qkv": "q|k|v", "ab": "A|B", "adapter": r"[\w-]+",
    "lora_target": r"self_attn\.qkv_proj|self_attn\.o_proj|mlp\.gate_up_proj|mlp\.down_proj",
}

REQUIRED = object()
# Config fields, (original path, native paths tried in order, transformers' default). transformers
# saves sub-configs as a diff against these class defaults (configuration_phi4_multimodal.py), and
# 5.x moves rope fields into `rope_parameters`. `vision-lora.*` are the PEFT adapter_config.json.
CONFIG_FIELDS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    ("vocab_size", ("vocab_size",), 200064),
    ("hidden_size", ("hidden_size",), 3072),
    ("intermediate_size", ("intermediate_size",), 8192),
    ("num_hidden_layers", ("num_hidden_layers",), 32),
    ("num_attention_heads", ("num_attention_heads",), 32),
    ("num_key_value_heads", ("num_key_value_heads",), 8),
    ("rms_norm_eps", ("rms_norm_eps",), 1e-5),
    ("max_position_embeddings", ("max_position_embeddings",), 131072),
    ("original_max_position_embeddings",
     ("original_max_position_embeddings", "rope_parameters.original_max_position_embeddings"), 4096),
    ("rope_theta", ("rope_theta", "rope_parameters.rope_theta"), 10000.0),
    ("partial_rotary_factor", ("partial_rotary_factor", "rope_parameters.partial_rotary_factor"), 1.0),
    ("rope_scaling", ("rope_scaling", "rope_parameters"), REQUIRED),
    ("bos_token_id", ("bos_token_id",), 199999),
    ("tie_word_embeddings", ("tie_word_embeddings",), False),
    ("vision_config.hidden_size", ("vision_config.hidden_size",), 1152),
    ("vision_config.intermediate_size", ("vision_config.intermediate_size",), 4304),
    ("vision_config.num_hidden_layers", ("vision_config.num_hidden_layers",), 27),
    ("vision_config.num_attention_heads", ("vision_config.num_attention_heads",), 16),
    ("vision_config.image_size", ("vision_config.image_size",), 448),
    ("vision_config.patch_size", ("vision_config.patch_size",), 14),
    ("vision_config.layer_norm_eps", ("vision_config.layer_norm_eps",), 1e-6),
    ("vision_config.hidden_act", ("vision_config.hidden_act",), "gelu_pytorch_tanh"),
    ("vision_config.feature_layer", ("vision_config.feature_layer",), -2),
    ("embd_layer.image_embd_layer.crop_size", ("vision_config.crop_size",), 448),
    ("audio_processor.config.attention_dim", ("audio_config.hidden_size",), 1024),
    ("audio_processor.config.attention_heads", ("audio_config.num_attention_heads",), 16),
    ("audio_processor.config.linear_units", ("audio_config.intermediate_size",), 1536),
    ("audio_processor.config.num_blocks", ("audio_config.num_blocks",), 24),
    ("audio_processor.config.input_size", ("audio_config.input_size",), 80),
    ("audio_processor.config.kernel_size", ("audio_config.kernel_size",), 3),
    ("audio_processor.config.nemo_conv_settings.conv_channels", ("audio_config.nemo_conv_channels",), 1024),
    ("audio_processor.config.time_reduction", ("audio_config.time_reduction",), 8),
    ("audio_processor.config.relative_attention_bias_args.t5_bias_max_distance",
     ("audio_config.bias_max_distance",), 1000),
    ("vision_lora.r", ("vision-lora.r",), REQUIRED),
    ("vision_lora.lora_alpha", ("vision-lora.lora_alpha",), REQUIRED),
    ("speech_lora.r", ("speech-lora.r",), REQUIRED),
    ("speech_lora.lora_alpha", ("speech-lora.lora_alpha",), REQUIRED),
)


def layout_of(config: dict) -> Layout:
    model_type = config.get("model_type")
    if model_type not in LAYOUTS:
        raise ConfigError(f"config.json model_type is {model_type!r}, expected 'phi4mm' (the original "
                          "remote-code layout) or 'phi4_multimodal' (the transformers-native layout)",
                          key="model_type")
    return LAYOUTS[model_type]


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ..., literal
    body = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{PLACEHOLDERS[p]})" for i, p in enumerate(parts))
    return re.compile(f"^{body}$")


_TO_NATIVE = tuple((_compile(orig), native) for orig, native in TENSOR_RENAMES)
_FROM_NATIVE = tuple((_compile(native), orig) for orig, native in TENSOR_RENAMES)
_LORA_ORIGINAL = _compile(LORA_ORIGINAL)
_LORA_PEFT_READ = re.compile(LORA_PEFT_READ.format(lora_target=PLACEHOLDERS["lora_target"]))


def _rename(key: str, rows: tuple[tuple[re.Pattern[str], str], ...]) -> str:
    for pattern, template in rows:
        m = pattern.match(key)
        if m:
            return template.format(**m.groupdict())
    return key


def to_native(key: str) -> str:
    """An original tensor name -> its transformers-native name (LoRA tensors excepted)."""
    return _rename(key, _TO_NATIVE)


def from_native(key: str) -> str:
    """A transformers-native tensor name -> the original name the converter's tables use."""
    return _rename(key, _FROM_NATIVE)


def to_peft(key: str) -> tuple[str, str] | None:
    """An original LoRA tensor name -> (adapter name, PEFT key); None for non-LoRA names."""
    m = _LORA_ORIGINAL.match(key)
    return (m["adapter"], LORA_PEFT.format(**m.groupdict())) if m else None


def from_peft(key: str, adapter: str) -> str | None:
    """A key of adapter `adapter`'s PEFT safetensors -> the original LoRA name; None if unrecognised."""
    m = _LORA_PEFT_READ.match(key)
    return LORA_ORIGINAL.format(adapter=adapter, **m.groupdict()) if m else None


def canonical_config(native: dict, adapter_configs: dict[str, dict]) -> dict:
    """A native config.json (+ each PEFT folder's adapter_config.json, keyed by folder) -> the
    original-layout fields `hubconfig` parses, transformers' defaults filling omitted fields."""
    doc = {**native, **adapter_configs}
    out: dict[str, Any] = {"model_type": ORIGINAL.model_type}
    for original, native_paths, default in CONFIG_FIELDS:
        value = next((v for v in (_lookup(doc, p) for p in native_paths) if v is not None), default)
        if value is REQUIRED:
            raise ConfigError(f"the transformers-native config lacks {' or '.join(native_paths)}",
                              key=native_paths[0])
        _assign(out, original, value)
    return out


def _lookup(doc: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(doc, dict) or part not in doc:
            return None
        doc = doc[part]
    return doc


def _assign(doc: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    for part in parents:
        doc = doc.setdefault(part, {})
    doc[leaf] = value

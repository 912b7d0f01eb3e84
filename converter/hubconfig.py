"""The hub `config.json` (+ `preprocessor_config.json`) parsed once into frozen dataclasses.

model-spec.md §1: the hub config has no vision sub-config; the remote code hard-codes SigLIP
so400m/14 at 448. A non-hub `vision_config` key (transformers' field names) overrides it. A
transformers-native config arrives here already in these field names (`layouts.canonical_config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from phi4mm.errors import ConfigError

SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
          "num_attention_heads": 16, "image_size": 448, "patch_size": 14, "layer_norm_eps": 1e-6,
          "hidden_act": "gelu_pytorch_tanh", "feature_layer": -2}


def _get(cfg: dict, key: str, kind: type | tuple[type, ...] = (int, float, str, list, dict, bool)) -> Any:
    if key not in cfg:
        raise ConfigError(f"config.json lacks '{key}'", key=key)
    value = cfg[key]
    if not isinstance(value, kind):
        raise ConfigError(f"config.json '{key}' is {value!r}, expected {kind}", key=key)
    return value


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    intermediate_size: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    max_position_embeddings: int
    original_max_position_embeddings: int
    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def qkv_rows(self) -> int:
        return self.hidden_size + 2 * self.n_kv_heads * self.head_dim

    @property
    def attn_factor(self) -> float:
        """LongRoPE magnitude scale (model-spec.md §3.1), used with both factor sets."""
        scale = self.max_position_embeddings / self.original_max_position_embeddings
        return 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(self.original_max_position_embeddings))


@dataclass(frozen=True)
class VisionConfig:
    hidden_size: int
    intermediate_size: int
    n_layers_stored: int
    n_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    hidden_act: str
    crop_size: int
    dynamic_hd: int

    @property
    def n_layers_used(self) -> int:
        """Features are hidden_states[-2]: the output after all but the last layer (spec §6.1)."""
        return self.n_layers_stored - 1


@dataclass(frozen=True)
class AudioConfig:
    attention_dim: int
    n_heads: int
    linear_units: int
    n_blocks: int
    input_size: int
    kernel_size: int
    conv_channels: int
    time_reduction: int
    bias_max_distance: int


@dataclass(frozen=True)
class LoraConfig:
    name: str
    rank: int
    alpha: float


@dataclass(frozen=True)
class HubConfig:
    text: TextConfig
    vision: VisionConfig
    audio: AudioConfig
    loras: tuple[LoraConfig, ...]
    bos_token_id: int
    eos_token_ids: tuple[int, ...]
    tie_word_embeddings: bool = True


def parse_hub_config(cfg: dict, preprocessor: dict) -> HubConfig:
    if cfg.get("model_type") != "phi4mm":
        raise ConfigError(f"config.json model_type is {cfg.get('model_type')!r}, expected 'phi4mm' "
                          "(the original Phi-4-multimodal-instruct hub layout)", key="model_type")
    return HubConfig(
        text=_text(cfg), vision=_vision(cfg, preprocessor), audio=_audio(cfg),
        loras=tuple(_lora(cfg, name) for name in ("vision", "speech")),
        bos_token_id=_get(cfg, "bos_token_id", int),
        eos_token_ids=(200020, 199999),
        tie_word_embeddings=_tied(cfg),
    )


def _tied(cfg: dict) -> bool:
    """The phi3 GGUF reads its output head from token_embd: an untied lm_head cannot be converted."""
    tied = cfg.get("tie_word_embeddings", True)
    if tied is not True:
        raise ConfigError(f"config.json tie_word_embeddings is {tied!r}, expected true (Phi-4-multimodal "
                          "ties lm_head to the token embedding)", key="tie_word_embeddings")
    return tied


def _text(cfg: dict) -> TextConfig:
    rope = _get(cfg, "rope_scaling", dict)
    if rope.get("type", rope.get("rope_type")) != "longrope":
        raise ConfigError(f"rope_scaling type is {rope.get('type')!r}, expected 'longrope'", key="rope_scaling.type")
    text = TextConfig(
        hidden_size=_get(cfg, "hidden_size", int), n_layers=_get(cfg, "num_hidden_layers", int),
        n_heads=_get(cfg, "num_attention_heads", int), n_kv_heads=_get(cfg, "num_key_value_heads", int),
        intermediate_size=_get(cfg, "intermediate_size", int), vocab_size=_get(cfg, "vocab_size", int),
        rms_norm_eps=float(_get(cfg, "rms_norm_eps", (int, float))),
        rope_theta=float(_get(cfg, "rope_theta", (int, float))),
        partial_rotary_factor=float(cfg.get("partial_rotary_factor", 1.0)),
        max_position_embeddings=_get(cfg, "max_position_embeddings", int),
        original_max_position_embeddings=_get(cfg, "original_max_position_embeddings", int),
        short_factor=tuple(float(x) for x in _get(rope, "short_factor", list)),
        long_factor=tuple(float(x) for x in _get(rope, "long_factor", list)),
    )
    for key in ("short_factor", "long_factor"):
        n = len(getattr(text, key))
        if n != text.rotary_dim // 2:
            raise ConfigError(f"rope_scaling.{key} has {n} entries, expected rotary_dim/2 = {text.rotary_dim // 2}",
                              key=f"rope_scaling.{key}")
    if text.vocab_size <= 200011:
        raise ConfigError(f"vocab_size is {text.vocab_size}, expected > 200011 (image/audio placeholder ids)",
                          key="vocab_size")
    return text


def _vision(cfg: dict, preprocessor: dict) -> VisionConfig:
    v = {**SO400M, **cfg.get("vision_config", {})}
    image_layer = cfg.get("embd_layer", {}).get("image_embd_layer", {})
    vision = VisionConfig(
        hidden_size=int(v["hidden_size"]), intermediate_size=int(v["intermediate_size"]),
        n_layers_stored=int(v["num_hidden_layers"]), n_heads=int(v["num_attention_heads"]),
        image_size=int(v["image_size"]), patch_size=int(v["patch_size"]),
        layer_norm_eps=float(v["layer_norm_eps"]), hidden_act=str(v["hidden_act"]),
        crop_size=int(image_layer.get("crop_size", 448)),
        dynamic_hd=int(_dynamic_hd(preprocessor)),
    )
    if vision.image_size != 448 or vision.patch_size != 14 or vision.crop_size != 448:
        raise ConfigError(f"vision image/patch/crop size {vision.image_size}/{vision.patch_size}/{vision.crop_size}, "
                          "expected 448/14/448 (the dynamic-HD token formula assumes 32 patches a side)",
                          key="vision_config.image_size")
    if int(v["feature_layer"]) != -2:
        raise ConfigError(f"vision feature_layer is {v['feature_layer']}, expected -2 (model-spec.md §6.1)",
                          key="vision_config.feature_layer")
    if vision.n_layers_stored < 2:
        raise ConfigError(f"vision num_hidden_layers is {vision.n_layers_stored}, expected >= 2 "
                          "(features come from hidden_states[-2])", key="vision_config.num_hidden_layers")
    return vision


def _dynamic_hd(preprocessor: dict) -> int:
    """36 unless the processor config says otherwise, at its top level or under `image_processor`
    (transformers 5 nests the processors in one file)."""
    nested = preprocessor.get("image_processor")
    return preprocessor.get("dynamic_hd") or (nested.get("dynamic_hd") if isinstance(nested, dict) else None) or 36


def _audio(cfg: dict) -> AudioConfig:
    a = _get(_get(cfg, "audio_processor", dict), "config", dict)
    return AudioConfig(
        attention_dim=_get(a, "attention_dim", int), n_heads=_get(a, "attention_heads", int),
        linear_units=_get(a, "linear_units", int), n_blocks=_get(a, "num_blocks", int),
        input_size=_get(a, "input_size", int), kernel_size=_get(a, "kernel_size", int),
        conv_channels=int(a.get("nemo_conv_settings", {}).get("conv_channels", a["attention_dim"])),
        time_reduction=_get(a, "time_reduction", int),
        bias_max_distance=int(a.get("relative_attention_bias_args", {}).get("t5_bias_max_distance", 500)),
    )


def _lora(cfg: dict, name: str) -> LoraConfig:
    lora = _get(cfg, f"{name}_lora", dict)
    return LoraConfig(name=name, rank=_get(lora, "r", int), alpha=float(_get(lora, "lora_alpha", (int, float))))

"""The transformers-native layout's config files for the checkpoint maker (model-spec.md §2.2).

`native_config` turns an original config into what transformers' conversion script
(`convert_phi4_multimodal_weights_to_hf.py`) and `save_pretrained` write: remote-code and LoRA
fields dropped, audio fields renamed, sub-config fields equal to transformers' class defaults left
out (save_pretrained stores sub-configs as a diff). The LoRAs become PEFT folders
(`vision-lora/`, `speech-lora/`) described by `adapter_config`.
"""

from __future__ import annotations

# transformers 5.24 Phi4MultimodalAudioConfig / Phi4MultimodalVisionConfig defaults
AUDIO_DEFAULTS = {
    "hidden_size": 1024, "intermediate_size": 1536, "num_blocks": 24, "num_attention_heads": 16,
    "activation": "swish", "chunk_size": -1, "left_chunk": 18, "dropout_rate": 0.0, "ext_pw_out_channel": 1024,
    "depthwise_separable_out_channel": 1024, "depthwise_multiplier": 1, "kernel_size": 3,
    "conv_activation": "swish", "input_size": 80, "conv_glu_type": "swish", "time_reduction": 8,
    "bias_max_distance": 1000, "bias_symmetric": False, "nemo_activation": "relu", "nemo_conv_channels": 1024,
    "downsample_rate": 1, "initializer_range": 0.02, "audio_token_id": 200011, "feature_layer": -2,
}
VISION_DEFAULTS = {
    "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16,
    "num_channels": 3, "image_size": 448, "patch_size": 14, "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6, "attention_dropout": 0.0, "crop_size": 448, "image_token_id": 200010,
    "feature_layer": -2,
}
AUDIO_RENAMES = {  # native field <- original `audio_processor.config` field
    "hidden_size": "attention_dim", "num_attention_heads": "attention_heads", "intermediate_size": "linear_units",
    "depthwise_separable_out_channel": "depthwise_seperable_out_channel",
}
TEXT_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "resid_pdrop", "embd_pdrop", "attention_dropout", "hidden_act",
    "max_position_embeddings", "initializer_range", "rms_norm_eps", "use_cache", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "partial_rotary_factor", "bos_token_id", "pad_token_id",
    "original_max_position_embeddings", "sliding_window", "torch_dtype",
)

PREPROCESSOR_CONFIG = {
    "processor_class": "Phi4MultimodalProcessor",
    "image_processor_type": "Phi4MultimodalImageProcessorFast",
    "feature_extractor_type": "Phi4MultimodalFeatureExtractor",
    "dynamic_hd": 36,
    "audio_compression_rate": 8,
    "audio_downsample_rate": 1,
    "audio_feat_stride": 1,
    "feature_size": 80,
    "sampling_rate": 16000,
}


def native_config(cfg: dict) -> dict:
    """An original (remote-code) config.json -> the transformers-native one."""
    audio_src = cfg["audio_processor"]["config"]
    audio = {k: audio_src[AUDIO_RENAMES.get(k, k)] for k in AUDIO_DEFAULTS if AUDIO_RENAMES.get(k, k) in audio_src}
    audio["nemo_conv_channels"] = audio_src["nemo_conv_settings"]["conv_channels"]
    audio["bias_max_distance"] = audio_src["relative_attention_bias_args"]["t5_bias_max_distance"]
    audio["downsample_rate"] = cfg["embd_layer"]["audio_embd_layer"]["downsample_rate"]
    vision = {k: v for k, v in cfg.get("vision_config", {}).items() if k in VISION_DEFAULTS}
    vision["crop_size"] = cfg["embd_layer"]["image_embd_layer"]["crop_size"]
    return {
        "architectures": ["Phi4MultimodalForCausalLM"],
        "model_type": "phi4_multimodal",
        **{k: cfg[k] for k in TEXT_KEYS},
        "eos_token_id": [199999, 200020],
        "audio_config": {"model_type": "phi4_multimodal_audio", **_diff(audio, AUDIO_DEFAULTS)},
        "vision_config": {"model_type": "phi4_multimodal_vision", **_diff(vision, VISION_DEFAULTS)},
        "transformers_version": "4.50.0.dev0",
    }


def adapter_config(cfg: dict, adapter: str) -> dict:
    """The PEFT adapter_config.json of the `vision` or `speech` LoRA (model-spec.md §2.2)."""
    lora = cfg[f"{adapter}_lora"]
    return {
        "base_model_name_or_path": "microsoft/Phi-4-multimodal-instruct", "peft_type": "LORA",
        "task_type": "CAUSAL_LM", "r": lora["r"], "lora_alpha": lora["lora_alpha"], "lora_dropout": lora["dp"],
        "target_modules": r"model.layers.\d+.((self_attn.(qkv|o)_proj)|(mlp.(gate_up|down)_proj))",
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "use_dora": False, "use_rslora": False,
    }


def _diff(values: dict, defaults: dict) -> dict:
    return {k: v for k, v in values.items() if defaults.get(k) != v}

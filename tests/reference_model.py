"""The trusted reference: transformers' Phi4MultimodalForCausalLM loaded with a hub-layout
checkpoint's weights (reference-notes.md §2-3), eager attention, fp32, the LoRA of the mode merged.

Test-only: imports torch and transformers, which the package never does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import Phi4MultimodalConfig, Phi4MultimodalForCausalLM

RENAMES = (  # hub name fragment -> transformers-native fragment (reference-notes §2)
    ("image_embed.img_projection.0.", "image_embed.img_projection_up."),
    ("image_embed.img_projection.2.", "image_embed.img_projection_down."),
    ("image_embed.glb_GN", "image_embed.global_img_feature_extensor"),
    ("image_embed.sub_GN", "image_embed.sub_img_feature_extensor"),
    ("audio_projection.speech.0.", "up_proj_for_speech."),
    ("audio_projection.speech.2.", "down_proj_for_speech."),
    ("audio_projection.vision.0.", "up_proj_for_vision_speech."),
    ("audio_projection.vision.2.", "down_proj_for_vision_speech."),
    (".net.0.linear.", ".gate_up_proj."),
    (".net.2.", ".down_proj."),
    ("self_attn.linear_q.", "self_attn.q_proj."),
    ("self_attn.linear_k.", "self_attn.k_proj."),
    ("self_attn.linear_v.", "self_attn.v_proj."),
    ("self_attn.linear_out.", "self_attn.o_proj."),
    (".base_layer.", "."),
)


def native_config(cfg: dict) -> Phi4MultimodalConfig:
    rope = cfg["rope_scaling"]
    audio = cfg["audio_processor"]["config"]
    vision = cfg.get("vision_config", {})
    return Phi4MultimodalConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_key_value_heads"],
        max_position_embeddings=cfg["max_position_embeddings"],
        original_max_position_embeddings=cfg["original_max_position_embeddings"],
        rms_norm_eps=cfg["rms_norm_eps"], tie_word_embeddings=True,
        rope_parameters={"rope_type": "longrope", "short_factor": rope["short_factor"],
                         "long_factor": rope["long_factor"], "rope_theta": cfg["rope_theta"],
                         "partial_rotary_factor": cfg["partial_rotary_factor"],
                         "original_max_position_embeddings": cfg["original_max_position_embeddings"]},
        vision_config={k: vision[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "image_size", "patch_size",
                                               "layer_norm_eps", "hidden_act") if k in vision},
        audio_config=dict(
            hidden_size=audio["attention_dim"], intermediate_size=audio["linear_units"],
            num_blocks=audio["num_blocks"], num_attention_heads=audio["attention_heads"],
            ext_pw_out_channel=audio["ext_pw_out_channel"],
            depthwise_separable_out_channel=audio["depthwise_seperable_out_channel"],
            nemo_conv_channels=audio["nemo_conv_settings"]["conv_channels"],
            bias_max_distance=audio["relative_attention_bias_args"]["t5_bias_max_distance"],
            kernel_size=audio["kernel_size"], input_size=audio["input_size"],
            time_reduction=audio["time_reduction"]),
    )


def hub_state(root: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in sorted(root.glob("*.safetensors")):
        state.update(load_file(str(path)))
    return state


def native_state(hub: dict[str, torch.Tensor], cfg: dict, mode: str | None) -> dict[str, torch.Tensor]:
    """Rename hub keys, drop LoRA tensors and merge W + (alpha/r) B A for `mode` (None: no LoRA)."""
    out = {}
    for key, value in hub.items():
        if ".lora_" in key:
            continue
        new = key
        for old, repl in RENAMES:
            new = new.replace(old, repl)
        value = value.float()
        if mode is not None and ".base_layer." in key:
            lora = cfg[f"{mode}_lora"]
            a = hub[key.replace(".base_layer.", f".lora_A.{mode}.")].float()
            b = hub[key.replace(".base_layer.", f".lora_B.{mode}.")].float()
            value = value + (lora["lora_alpha"] / lora["r"]) * (b @ a)
        out[new] = value
    return out


class Reference:
    """Reference models of one checkpoint, one per LoRA mode, built on first use."""

    def __init__(self, root: Path, mutate: Callable[[dict, dict], None] | None = None):
        """`mutate(cfg, hub_state)` may alter the config/weights in place (negative controls)."""
        self.root = Path(root)
        self.cfg = json.loads((self.root / "config.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(self.root / "tokenizer.json"))
        self._hub = hub_state(self.root)
        if mutate is not None:
            mutate(self.cfg, self._hub)
        self._models: dict[str | None, Phi4MultimodalForCausalLM] = {}

    def model(self, mode: str | None) -> Phi4MultimodalForCausalLM:
        if mode not in self._models:
            config = native_config(self.cfg)
            config._attn_implementation = "eager"
            for sub in (config.vision_config, config.audio_config):
                sub._attn_implementation = "eager"
            model = Phi4MultimodalForCausalLM(config).float().eval()
            state = native_state(self._hub, self.cfg, mode)
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
            missing, unexpected = model.load_state_dict(state, strict=False)
            assert not unexpected, unexpected
            assert not missing, missing
            self._models[mode] = model
        return self._models[mode]

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    @torch.no_grad()
    def next_logits(self, input_ids: list[int], mode: str | None = None, **image_inputs) -> torch.Tensor:
        ids = torch.tensor([input_ids])
        out = self.model(mode)(input_ids=ids, **image_inputs)
        return out.logits[0, -1].float()

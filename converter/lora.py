"""The vision and speech LoRA adapters as GGUF LoRA plans (model-spec.md §4; llamacpp-notes §4.1).

Orientation is PEFT's: lora_a is (r, in), lora_b is (out, r); llama.cpp's scale is alpha / r.
"""

from __future__ import annotations

from phi4mm.converter import names
from phi4mm.converter.hubconfig import HubConfig, LoraConfig
from phi4mm.converter.plan import FilePlan, TensorSpec, q8_0_fits


def lora_plan(hub: HubConfig, lora: LoraConfig, out_type: str, filename: str) -> FilePlan:
    """All four targets of every decoder layer; q8_0 falls back to f16 where rows don't fit blocks."""
    t = hub.text
    dims = {  # target -> (out_features, in_features)
        "attn_qkv": (t.qkv_rows, t.hidden_size),
        "attn_output": (t.hidden_size, t.hidden_size),
        "ffn_up": (2 * t.intermediate_size, t.hidden_size),
        "ffn_down": (t.hidden_size, t.intermediate_size),
    }
    tensors = []
    for i in range(t.n_layers):
        for gguf_name, hub_name in names.expand(names.LORA_LAYER, i=i, a=lora.name):
            out_f, in_f = dims[gguf_name.split(".")[2]]
            shape = (lora.rank, in_f) if gguf_name.endswith("lora_a") else (out_f, lora.rank)
            kind = out_type if out_type != "q8_0" or q8_0_fits(shape) else "f16"
            tensors.append(TensorSpec(gguf_name, shape, kind, source=hub_name, source_shape=shape))
    metadata = {
        "general.type": "adapter",
        "general.name": f"Phi-4-multimodal-instruct {lora.name} LoRA",
        "adapter.type": "lora",
        "adapter.lora.alpha": float(lora.alpha),
        "phi4mm.lora.modality": lora.name,
        "phi4mm.lora.rank": lora.rank,
    }
    return FilePlan(filename, "phi3", metadata, tuple(tensors))

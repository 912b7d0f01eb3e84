"""The text decoder as a llama.cpp `phi3` GGUF plan (llamacpp-notes §1; model-spec.md §3)."""

from __future__ import annotations

import numpy as np

from phi4mm import keys
from phi4mm.converter import names
from phi4mm.converter.hubconfig import HubConfig
from phi4mm.converter.plan import FilePlan, TensorSpec
from phi4mm.converter.tokenizer import Vocabulary

FILE_TYPES = {"f32": 0, "f16": 1, "bf16": 32}


def text_plan(hub: HubConfig, vocab: Vocabulary, out_type: str, filename: str,
              embed_type: str | None = None) -> FilePlan:
    """phi3 metadata, the padded vocabulary and every decoder tensor, matrices stored as out_type
    (the token embedding as embed_type when given)."""
    t = hub.text
    shapes = {
        "token_embd.weight": (t.vocab_size, t.hidden_size),
        "output_norm.weight": (t.hidden_size,),
        "attn_norm": (t.hidden_size,),
        "ffn_norm": (t.hidden_size,),
        "attn_qkv": (t.qkv_rows, t.hidden_size),
        "attn_output": (t.hidden_size, t.hidden_size),
        "ffn_up": (2 * t.intermediate_size, t.hidden_size),
        "ffn_down": (t.hidden_size, t.intermediate_size),
    }
    tensors = [_spec(g, h, shapes[g], embed_type if g == "token_embd.weight" and embed_type else out_type)
               for g, h in names.TEXT_GLOBAL]
    for i in range(t.n_layers):
        for g, h in names.expand(names.TEXT_LAYER, i=i):
            tensors.append(_spec(g, h, shapes[g.split(".")[2]], out_type))
    n_factors = t.rotary_dim // 2
    for kind, factors in (("long", t.long_factor), ("short", t.short_factor)):
        values = np.asarray(factors, dtype=np.float32)
        assert values.shape == (n_factors,), (kind, values.shape, n_factors)
        tensors.append(TensorSpec(f"rope_factors_{kind}.weight", (n_factors,), "f32", values=values))
    return FilePlan(filename, "phi3", _metadata(hub, vocab, out_type), tuple(tensors))


def _spec(gguf_name: str, hub_name: str, shape: tuple[int, ...], out_type: str) -> TensorSpec:
    kind = "f32" if len(shape) == 1 else out_type
    return TensorSpec(gguf_name, shape, kind, source=hub_name, source_shape=shape)


def _metadata(hub: HubConfig, vocab: Vocabulary, out_type: str) -> dict:
    t = hub.text
    meta = {
        "general.name": "Phi-4-multimodal-instruct (text decoder)",
        "general.file_type": FILE_TYPES[out_type],
        "general.quantization_version": 2,
        "phi3.context_length": t.max_position_embeddings,
        "phi3.rope.scaling.original_context_length": t.original_max_position_embeddings,
        "phi3.embedding_length": t.hidden_size,
        "phi3.feed_forward_length": t.intermediate_size,
        "phi3.block_count": t.n_layers,
        "phi3.attention.head_count": t.n_heads,
        "phi3.attention.head_count_kv": t.n_kv_heads,
        "phi3.attention.layer_norm_rms_epsilon": float(t.rms_norm_eps),
        "phi3.rope.dimension_count": t.rotary_dim,
        "phi3.rope.freq_base": float(t.rope_theta),
        "phi3.rope.scaling.attn_factor": float(t.attn_factor),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": vocab.pre.name,
        "tokenizer.ggml.tokens": vocab.tokens,
        "tokenizer.ggml.token_type": vocab.token_types,
        "tokenizer.ggml.merges": vocab.merges,
        "tokenizer.ggml.bos_token_id": hub.bos_token_id,
        "tokenizer.ggml.eos_token_id": 199999,
        "tokenizer.ggml.unknown_token_id": 199999,
        "tokenizer.ggml.padding_token_id": 199999,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.add_eos_token": False,
        keys.IMAGE_TOKEN_KEY: keys.IMAGE_TOKEN_ID,
        keys.AUDIO_TOKEN_KEY: keys.AUDIO_TOKEN_ID,
        keys.EOS_TOKEN_IDS_KEY: list(hub.eos_token_ids),
    }
    if vocab.chat_template:
        meta["tokenizer.chat_template"] = vocab.chat_template
    return meta

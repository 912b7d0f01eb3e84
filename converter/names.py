"""Hub tensor names -> GGUF tensor names, as tables (model-spec.md §2.1; llamacpp-notes §1.2, §4.1).

No logic beyond filling in `{i}` (layer) and `{a}` (adapter). Every hub key must be claimed by a
table row or by a SKIPPED row with its reason.
"""

from __future__ import annotations

TEXT_PREFIX = "model."
IMAGE_PREFIX = "model.embed_tokens_extend.image_embed."
AUDIO_PREFIX = "model.embed_tokens_extend.audio_embed."

# Text decoder, llama.cpp `phi3` names. The fused layouts are identical (qkv = Q|K|V, gate_up = gate|up).
TEXT_GLOBAL = (
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
)
TEXT_LAYER = (
    ("blk.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blk.{i}.ffn_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blk.{i}.attn_qkv.weight", "model.layers.{i}.self_attn.qkv_proj.base_layer.weight"),
    ("blk.{i}.attn_output.weight", "model.layers.{i}.self_attn.o_proj.base_layer.weight"),
    ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.gate_up_proj.base_layer.weight"),
    ("blk.{i}.ffn_down.weight", "model.layers.{i}.mlp.down_proj.base_layer.weight"),
)

# LoRA adapters: `{a}` is `vision` or `speech`. Orientation as PEFT, no transposes.
LORA_LAYER = tuple(
    (f"blk.{{i}}.{gguf}.weight.lora_{ab.lower()}", f"model.layers.{{i}}.{hub}.lora_{ab}.{{a}}.weight")
    for gguf, hub in (("attn_qkv", "self_attn.qkv_proj"), ("attn_output", "self_attn.o_proj"),
                      ("ffn_up", "mlp.gate_up_proj"), ("ffn_down", "mlp.down_proj"))
    for ab in ("A", "B")
)

# Vision tower (SigLIP layers 0..n_used-1), separators and projector.
_V = IMAGE_PREFIX + "img_processor."
VISION_GLOBAL = (
    ("v.patch_embd.weight", _V + "embeddings.patch_embedding.weight"),
    ("v.patch_embd.bias", _V + "embeddings.patch_embedding.bias"),
    ("v.position_embd.weight", _V + "embeddings.position_embedding.weight"),
    ("v.glb_sep", IMAGE_PREFIX + "glb_GN"),
    ("v.sub_sep", IMAGE_PREFIX + "sub_GN"),
    ("mm.up.weight", IMAGE_PREFIX + "img_projection.0.weight"),
    ("mm.up.bias", IMAGE_PREFIX + "img_projection.0.bias"),
    ("mm.down.weight", IMAGE_PREFIX + "img_projection.2.weight"),
    ("mm.down.bias", IMAGE_PREFIX + "img_projection.2.bias"),
)
VISION_LAYER = tuple(
    (f"v.blk.{{i}}.{gguf}.{wb}", f"{_V}encoder.layers.{{i}}.{hub}.{wb}")
    for gguf, hub in (("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
                      ("attn_v", "self_attn.v_proj"), ("attn_out", "self_attn.out_proj"),
                      ("ln1", "layer_norm1"), ("ln2", "layer_norm2"),
                      ("ffn_up", "mlp.fc1"), ("ffn_down", "mlp.fc2"))
    for wb in ("weight", "bias")
)

# Audio: Conformer encoder and both projectors (model-spec.md §7).
_A = AUDIO_PREFIX + "encoder."
AUDIO_GLOBAL = (
    ("a.cmvn.mean", _A + "encoder_embedding.global_mean"),
    ("a.cmvn.invstd", _A + "encoder_embedding.global_invstd"),
    *((f"a.subsample.conv{k}.{wb}", f"{_A}embed.conv.{k}.{wb}") for k in (0, 2, 3, 5, 6) for wb in ("weight", "bias")),
    ("a.subsample.out.weight", _A + "embed.out.weight"),
    ("a.subsample.out.bias", _A + "embed.out.bias"),
    ("a.rel_bias.weight", _A + "relative_attention_bias_layer.bias_values.weight"),
    *((f"mm.{head}.{part}.{wb}", f"{AUDIO_PREFIX}audio_projection.{head}.{k}.{wb}")
      for head in ("speech", "vision") for part, k in (("up", 0), ("down", 2)) for wb in ("weight", "bias")),
)
AUDIO_LAYER = (
    *((f"a.blk.{{i}}.{ff}.{part}.{wb}", f"{_A}encoders.{{i}}.{hub}.{sub}.{wb}")
      for ff, hub in (("ffn_in", "feed_forward_in"), ("ffn_out", "feed_forward_out"))
      for part, sub in (("norm", "layer_norm"), ("up", "net.0.linear"), ("down", "net.2"))
      for wb in ("weight", "bias")),
    *((f"a.blk.{{i}}.attn_{p}.{wb}", f"{_A}encoders.{{i}}.self_attn.linear_{h}.{wb}")
      for p, h in (("q", "q"), ("k", "k"), ("v", "v"), ("out", "out")) for wb in ("weight", "bias")),
    *((f"a.blk.{{i}}.conv.{p}.{wb}", f"{_A}encoders.{{i}}.conv.{h}.{wb}")
      for p, h in (("norm", "layer_norm"), ("glu_pw", "glu.ext_pw_conv_1d"), ("dw", "dw_sep_conv_1d.dw_conv"),
                   ("dw_pw", "dw_sep_conv_1d.pw_conv"), ("ext_pw", "ext_pw_conv_1d"))
      for wb in ("weight", "bias")),
    ("a.blk.{i}.conv.glu_b1", _A + "encoders.{i}.conv.glu.b1"),
    ("a.blk.{i}.conv.glu_b2", _A + "encoders.{i}.conv.glu.b2"),
    *((f"a.blk.{{i}}.{p}.{wb}", f"{_A}encoders.{{i}}.{h}.{wb}")
      for p, h in (("attn_norm", "layer_norm_att"), ("out_norm", "layer_norm")) for wb in ("weight", "bias")),
)

# Keys stored in the hub checkpoint that inference never reads (model-spec.md §2.1, §6.1).
SKIPPED_PREFIXES = (
    (_V + "post_layernorm.", "SigLIP post-layernorm: features are hidden_states[-2], taken before it"),
    (_V + "head.", "SigLIP pooling head: Phi-4-MM uses patch features, not the pooled vector"),
    ("lm_head.", "tied to model.embed_tokens.weight (tie_word_embeddings is checked), stored by some exports"),
)
SKIPPED_VISION_LAYER_REASON = "SigLIP layer after the feature layer (-2): its output is never used"


def expand(table: tuple[tuple[str, str], ...], **fill: object) -> list[tuple[str, str]]:
    """Fill `{i}` / `{a}` placeholders of a table's rows."""
    return [(g.format(**fill), h.format(**fill)) for g, h in table]

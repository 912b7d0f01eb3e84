"""The vision encoder file plan: SigLIP layers used, separators, projector (model-spec.md §5-6).

Arch `phi4mm-vision`; every hyper-parameter inference needs is in `phi4mm.vision.*` metadata.
"""

from __future__ import annotations

from phi4mm import keys
from phi4mm.converter import names
from phi4mm.converter.hubconfig import HubConfig
from phi4mm.converter.plan import FilePlan, TensorSpec

ARCH = keys.VISION_ARCH


def vision_plan(hub: HubConfig, out_type: str, filename: str) -> FilePlan:
    """Tensors of the first n_layers_used SigLIP layers plus embeddings, separators and projector."""
    v, H = hub.vision, hub.text.hidden_size
    D, F = v.hidden_size, v.intermediate_size
    n_pos = (v.image_size // v.patch_size) ** 2
    global_shapes = {
        "v.patch_embd.weight": ((D, 3, v.patch_size, v.patch_size), None),
        "v.patch_embd.bias": ((D,), None),
        "v.position_embd.weight": ((n_pos, D), None),
        "v.glb_sep": ((D,), (1, 1, D)),
        "v.sub_sep": ((D,), (1, 1, 1, D)),
        "mm.up.weight": ((H, D), None), "mm.up.bias": ((H,), None),
        "mm.down.weight": ((H, H), None), "mm.down.bias": ((H,), None),
    }
    weights = {"attn_q": (D, D), "attn_k": (D, D), "attn_v": (D, D), "attn_out": (D, D),
               "ffn_up": (F, D), "ffn_down": (D, F)}
    tensors = []
    for g, h in names.VISION_GLOBAL:
        shape, stored = global_shapes[g]
        tensors.append(_spec(g, h, shape, stored or shape, out_type))
    for i in range(v.n_layers_used):
        for g, h in names.expand(names.VISION_LAYER, i=i):
            part, kind = g.split(".")[3:5]
            if part in ("ln1", "ln2"):
                shape = (D,)
            else:
                shape = weights[part] if kind == "weight" else (weights[part][0],)
            tensors.append(_spec(g, h, shape, shape, out_type))
    metadata = {
        "general.name": "Phi-4-multimodal-instruct vision encoder",
        "phi4mm.vision.hidden_size": D,
        "phi4mm.vision.intermediate_size": F,
        "phi4mm.vision.n_layers": v.n_layers_used,
        "phi4mm.vision.n_heads": v.n_heads,
        "phi4mm.vision.image_size": v.image_size,
        "phi4mm.vision.patch_size": v.patch_size,
        "phi4mm.vision.layer_norm_eps": v.layer_norm_eps,
        "phi4mm.vision.hidden_act": v.hidden_act,
        "phi4mm.vision.crop_size": v.crop_size,
        "phi4mm.vision.dynamic_hd": v.dynamic_hd,
        "phi4mm.vision.hd_transform_order": "sub_glb",
        "phi4mm.vision.projector_act": "gelu_erf",
        "phi4mm.vision.text_hidden_size": H,
        "phi4mm.vision.image_token_id": keys.IMAGE_TOKEN_ID,
    }
    return FilePlan(filename, ARCH, metadata, tuple(tensors))


def _spec(g: str, h: str, shape: tuple[int, ...], stored: tuple[int, ...], out_type: str) -> TensorSpec:
    return TensorSpec(g, shape, "f32" if len(shape) == 1 else out_type, source=h, source_shape=stored)

"""The audio encoder file plan: Conformer, NeMo subsampling and both projectors (model-spec.md §7).

Arch `phi4mm-audio`; hyper-parameters in `phi4mm.audio.*` metadata.
"""

from __future__ import annotations

from phi4mm import keys
from phi4mm.converter import names
from phi4mm.converter.hubconfig import AudioConfig, HubConfig
from phi4mm.converter.plan import FilePlan, TensorSpec

ARCH = keys.AUDIO_ARCH


def audio_plan(hub: HubConfig, out_type: str, filename: str) -> FilePlan:
    a, H = hub.audio, hub.text.hidden_size
    shapes = {**_global_shapes(a, H)}
    block = _block_shapes(a)
    tensors = [_spec(g, h, shapes[g], out_type) for g, h in names.AUDIO_GLOBAL]
    for i in range(a.n_blocks):
        prefix = f"a.blk.{i}."
        for g, h in names.expand(names.AUDIO_LAYER, i=i):
            tensors.append(_spec(g, h, block[g[len(prefix):]], out_type))
    metadata = {
        "general.name": "Phi-4-multimodal-instruct audio encoder",
        "phi4mm.audio.attention_dim": a.attention_dim,
        "phi4mm.audio.n_heads": a.n_heads,
        "phi4mm.audio.linear_units": a.linear_units,
        "phi4mm.audio.n_blocks": a.n_blocks,
        "phi4mm.audio.input_size": a.input_size,
        "phi4mm.audio.kernel_size": a.kernel_size,
        "phi4mm.audio.conv_channels": a.conv_channels,
        "phi4mm.audio.time_reduction": a.time_reduction,
        "phi4mm.audio.bias_max_distance": a.bias_max_distance,
        "phi4mm.audio.layer_norm_eps": 1e-5,
        "phi4mm.audio.sample_rate_hz": 16000,
        "phi4mm.audio.text_hidden_size": H,
        "phi4mm.audio.audio_token_id": keys.AUDIO_TOKEN_ID,
    }
    return FilePlan(filename, ARCH, metadata, tuple(tensors))


def _global_shapes(a: AudioConfig, H: int) -> dict[str, tuple[int, ...]]:
    A, C = a.attention_dim, a.conv_channels
    freq_out = a.input_size
    for _ in range(3):  # three stride-2 convolutions (spec §7.2)
        freq_out = -(-freq_out // 2)
    shapes: dict[str, tuple[int, ...]] = {
        "a.cmvn.mean": (a.input_size,), "a.cmvn.invstd": (a.input_size,),
        "a.subsample.out.weight": (A, C * freq_out), "a.subsample.out.bias": (A,),
        "a.rel_bias.weight": (2 * a.bias_max_distance, a.n_heads),
    }
    for k, w in ((0, (C, 1, 3, 3)), (2, (C, 1, 3, 3)), (3, (C, C, 1, 1)), (5, (C, 1, 3, 3)), (6, (C, C, 1, 1))):
        shapes[f"a.subsample.conv{k}.weight"] = w
        shapes[f"a.subsample.conv{k}.bias"] = (C,)
    for head in ("speech", "vision"):
        shapes.update({f"mm.{head}.up.weight": (H, A), f"mm.{head}.up.bias": (H,),
                       f"mm.{head}.down.weight": (H, H), f"mm.{head}.down.bias": (H,)})
    return shapes


def _block_shapes(a: AudioConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one Conformer block's tensors, keyed by GGUF name after `a.blk.{i}.`."""
    A, U = a.attention_dim, a.linear_units
    weights = {
        "ffn_in.up": (2 * U, A), "ffn_in.down": (A, U), "ffn_out.up": (2 * U, A), "ffn_out.down": (A, U),
        "attn_q": (A, A), "attn_k": (A, A), "attn_v": (A, A), "attn_out": (A, A),
        "conv.glu_pw": (2 * A, A, 1), "conv.dw": (A, 1, a.kernel_size), "conv.dw_pw": (A, A, 1),
        "conv.ext_pw": (A, A, 1),
    }
    shapes = {f"{k}.weight": w for k, w in weights.items()}
    shapes.update({f"{k}.bias": (w[0],) for k, w in weights.items()})
    for norm in ("ffn_in.norm", "ffn_out.norm", "conv.norm", "attn_norm", "out_norm"):
        shapes[f"{norm}.weight"] = (A,)
        shapes[f"{norm}.bias"] = (A,)
    shapes["conv.glu_b1"] = (1, A, 1)
    shapes["conv.glu_b2"] = (1, A, 1)
    return shapes


def _spec(g: str, h: str, shape: tuple[int, ...], out_type: str) -> TensorSpec:
    small = len(shape) == 1 or g.endswith(("glu_b1", "glu_b2"))
    return TensorSpec(g, shape, "f32" if small else out_type, source=h, source_shape=shape)

"""The image encoder in float32: pixels -> SigLIP-NaViT features (layer -2) -> 2x2 average pool ->
HD layout with separators -> projector rows (model-spec.md §6). The arithmetic runs in the array
namespace of the weights (NumPy by default, CuPy on a GPU: phi4mm.arrays); masks and the patch plan
stay NumPy. Pure: numpy + array_api_compat + stdlib.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from phi4mm import nn
from phi4mm.arrays import chunk_rows, is_numpy, matmul_into, namespace, scatter_rows
from phi4mm.errors import ConfigError
from phi4mm.weights import meta_value

if TYPE_CHECKING:  # only its attributes are read: importing vision must not import Pillow
    from phi4mm.vision.preprocess import ImageCrops

F32 = np.float32
Array = Any  # an array of the weights' namespace (NumPy, CuPy, ...)
KEY = "phi4mm.vision."
# Metadata values this implementation computes; anything else is a model it does not implement.
SUPPORTED = {"hidden_act": ("gelu_pytorch_tanh",), "projector_act": ("gelu_erf",),
             "hd_transform_order": ("sub_glb",)}
CROPS_PER_BATCH = 2   # crops run through the layers together (~46 MB of activations each at so400m)
GELU_ROWS = 64        # rows per in-place GELU chunk, so its temporary stays in L2


@dataclass(frozen=True)
class VisionConfig:
    """Hyper-parameters from the `phi4mm.vision.*` metadata of the vision GGUF."""

    hidden_size: int        # D
    intermediate_size: int  # F
    n_layers: int           # layers run: the feature layer is the last of them (hidden_states[-2])
    n_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    text_hidden_size: int   # H: width of the projected rows

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    @property
    def side(self) -> int:
        """Patches per crop side (32)."""
        return self.image_size // self.patch_size

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> VisionConfig:
        for name, allowed in SUPPORTED.items():
            if meta_value(metadata, KEY, name, str) not in allowed:
                raise ConfigError(f"{KEY}{name} is {metadata[KEY + name]!r}, expected one of {allowed}",
                                  key=KEY + name)
        ints = {n: meta_value(metadata, KEY, n, int) for n in ("hidden_size", "intermediate_size", "n_layers",
                                                     "n_heads", "image_size", "patch_size",
                                                     "text_hidden_size")}
        config = cls(**ints, layer_norm_eps=float(meta_value(metadata, KEY, "layer_norm_eps", (int, float))))
        c = config
        if c.hidden_size % c.n_heads or c.side % 2 or c.side * c.patch_size != c.image_size:
            raise ConfigError(f"vision hidden_size {c.hidden_size} / n_heads {c.n_heads} / image_size "
                              f"{c.image_size} / patch_size {c.patch_size} are inconsistent",
                              key=KEY + "hidden_size")
        return config


@dataclass(frozen=True)
class LayerWeights:
    """One SigLIP encoder layer, (out, in) matrices as stored (float16 from an f16 file: half the
    memory; `float32_layer` upcasts them per use); q rows pre-scaled by head_dim^-0.5 in float32
    (in a float16 layer, q is stored unscaled and the upcast scales it, giving the same values)."""

    ln1_w: np.ndarray
    ln1_b: np.ndarray
    qkv_w: np.ndarray   # (3D, D): q | k | v
    qkv_b: np.ndarray   # (3D,)
    out_w: np.ndarray   # (D, D)
    out_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray
    up_w: np.ndarray    # (F, D)
    up_b: np.ndarray
    down_w: np.ndarray  # (D, F)
    down_b: np.ndarray
    q_scale: float = 1.0  # applied to qkv_w's q rows by float32_layer (float16 layers only)


def float32_layer(w: LayerWeights) -> LayerWeights:
    """The layer with float32 matrices: itself if already float32, else upcast copies (q scaled),
    in the weights' namespace (on a GPU the float16 copy stays resident, the upcast is per use)."""
    xp = namespace(w.qkv_w)
    if w.qkv_w.dtype == xp.float32 and w.q_scale == 1.0:  # (a float16 layer moved to a namespace
        return w                                           # without float16 is float32, unscaled)
    qkv_w = xp.astype(w.qkv_w, xp.float32)
    qkv_w[:qkv_w.shape[0] // 3, ...] *= w.q_scale

    def up(m: Array) -> Array:
        return xp.astype(m, xp.float32)

    return LayerWeights(ln1_w=w.ln1_w, ln1_b=w.ln1_b, qkv_w=qkv_w, qkv_b=w.qkv_b, out_w=up(w.out_w),
                        out_b=w.out_b, ln2_w=w.ln2_w, ln2_b=w.ln2_b, up_w=up(w.up_w), up_b=w.up_b,
                        down_w=up(w.down_w), down_b=w.down_b)


@dataclass(frozen=True)
class VisionWeights:
    """The whole vision GGUF, shapes checked; layer matrices float16 or float32 as stored, the rest
    float32. Matrices stay (out, in): `x @ w.T` feeds BLAS the transposed operand directly, measured
    as fast as a pre-transposed copy (no second copy)."""

    config: VisionConfig
    patch_w: np.ndarray   # (D, 3*P*P), (channel, kh, kw) order as Conv2d
    patch_b: np.ndarray   # (D,)
    position: np.ndarray  # (side*side, D)
    layers: tuple[LayerWeights, ...]
    sub_sep: np.ndarray   # (D,) sub_GN: row separator of both blocks
    glb_sep: np.ndarray   # (D,) glb_GN: between the sub-image block and the global block
    up_w: np.ndarray      # (H, D)
    up_b: np.ndarray
    down_w: np.ndarray    # (H, H)
    down_b: np.ndarray


def load_weights(metadata: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> VisionWeights:
    """Vision GGUF metadata + tensors (see phi4mm.weights.read_gguf; float16 layer matrices are
    kept as they are) -> VisionWeights."""
    cfg = VisionConfig.from_metadata(metadata)
    D, F, H, P = cfg.hidden_size, cfg.intermediate_size, cfg.text_hidden_size, cfg.patch_size

    def get(name: str, *shape: int, f16: bool = False) -> np.ndarray:
        if name not in tensors:
            raise ConfigError(f"vision GGUF tensor {name!r} is missing", key=name)
        t = tensors[name]
        if t.shape != shape or t.dtype not in ((F32, np.float16) if f16 else (F32, np.float16)):
            raise ConfigError(f"vision GGUF tensor {name!r} is {t.dtype}{t.shape}, "
                              f"expected float32{shape}", key=name)
        return t if f16 else t.astype(F32, copy=False)

    scale = F32(cfg.head_dim ** -0.5)  # folded into q: scores = (q * scale) @ k.T
    layers = []
    for i in range(cfg.n_layers):
        b = f"v.blk.{i}."
        g = {n: (get(b + n + ".weight", *shape, f16=len(shape) == 2), get(b + n + ".bias", shape[0]))
             for n, shape in (("attn_q", (D, D)), ("attn_k", (D, D)), ("attn_v", (D, D)),
                              ("attn_out", (D, D)), ("ffn_up", (F, D)), ("ffn_down", (D, F)),
                              ("ln1", (D,)), ("ln2", (D,)))}
        dtypes = {g[n][0].dtype for n in ("attn_q", "attn_k", "attn_v", "attn_out", "ffn_up", "ffn_down")}
        if len(dtypes) != 1:
            raise ConfigError(f"vision GGUF layer {i} mixes matrix types {sorted(map(str, dtypes))}", key=b)
        f16 = dtypes == {np.dtype(np.float16)}
        q_w = g["attn_q"][0] if f16 else g["attn_q"][0] * scale
        layers.append(LayerWeights(
            ln1_w=g["ln1"][0], ln1_b=g["ln1"][1], ln2_w=g["ln2"][0], ln2_b=g["ln2"][1],
            qkv_w=np.concatenate([q_w, g["attn_k"][0], g["attn_v"][0]]),
            qkv_b=np.concatenate([g["attn_q"][1] * scale, g["attn_k"][1], g["attn_v"][1]]),
            out_w=g["attn_out"][0], out_b=g["attn_out"][1], up_w=g["ffn_up"][0], up_b=g["ffn_up"][1],
            down_w=g["ffn_down"][0], down_b=g["ffn_down"][1], q_scale=float(scale) if f16 else 1.0))
    return VisionWeights(
        config=cfg, patch_w=get("v.patch_embd.weight", D, 3, P, P).reshape(D, 3 * P * P),
        patch_b=get("v.patch_embd.bias", D), position=get("v.position_embd.weight", cfg.side ** 2, D),
        layers=tuple(layers), sub_sep=get("v.sub_sep", D), glb_sep=get("v.glb_sep", D),
        up_w=get("mm.up.weight", H, D), up_b=get("mm.up.bias", H),
        down_w=get("mm.down.weight", H, H), down_b=get("mm.down.bias", H))


# ---------------------------------------------------------------------------------------------
# SigLIP-NaViT tower (§6.1)

def position_ids(patch_mask: np.ndarray) -> np.ndarray:
    """(n_crops, side, side) bool -> (n_crops, side*side) int64 NaViT position ids (§6.1 step 2).

    Mirrors transformers' fp32 arithmetic exactly: coord = float32(k) * float32(1/n), clamped to
    1-1e-6, bucketized right-closed against k/side; masked patches get 0.
    """
    n_crops, side, _ = patch_mask.shape
    boundaries = (np.arange(1, side, dtype=np.float64) / side).astype(F32)  # exact k/32
    index = np.arange(side, dtype=F32)
    clamp = F32(1.0 - 1e-6)

    def buckets(n_valid: np.ndarray) -> np.ndarray:  # (n_crops,) -> (n_crops, side)
        step = F32(1) / np.maximum(n_valid, 1).astype(F32)
        coords = np.minimum(index[None, :] * step[:, None], clamp)
        return np.searchsorted(boundaries, coords, side="right")

    rows = buckets(patch_mask[:, :, 0].sum(axis=1))   # (n_crops, side)
    cols = buckets(patch_mask[:, 0, :].sum(axis=1))
    ids = rows[:, :, None] * side + cols[:, None, :]   # (n_crops, side, side)
    return np.where(patch_mask, ids, 0).reshape(n_crops, side * side).astype(np.int64)


def siglip_features(pixels_nchw: Array, patch_mask: np.ndarray, weights: VisionWeights,
                    crops_per_batch: int = CROPS_PER_BATCH, n_workers: int = 1,
                    use_key_mask: bool = True) -> Array:
    """(n_crops, 3, 448, 448) float32 pixels in [-1, 1] + (n_crops, 32, 32) bool mask (NumPy) ->
    (n_crops, 1024, D) float32 in the weights' namespace: the output of the last run layer
    (= reference hidden_states[-2]).

    `n_workers` > 1 spreads row blocks and attention heads over that many threads (NumPy): pair it
    with a single-threaded BLAS (see encode_image). `use_key_mask=False` lets padded patches be
    attended to (vLLM's behaviour, §9.4), for tests.
    """
    live = np.ones(patch_mask.shape, dtype=bool)
    return _tower(pixels_nchw, patch_mask, live, weights, crops_per_batch, n_workers, use_key_mask)


def _tower(pixels_nchw: Array, patch_mask: np.ndarray, live: np.ndarray,
           weights: VisionWeights, crops_per_batch: int, n_workers: int,
           use_key_mask: bool = True) -> Array:
    """Run only the `live` patches of each crop (the rest are returned as zeros), layer by layer
    over groups of crops: each layer's weights are upcast once (f16 files) and then applied to
    every group, whose activation buffers are shared (one group is computed at a time). Masks,
    positions and the plan are NumPy on the host; activations live in the weights' namespace."""
    cfg = weights.config
    xp = namespace(weights.patch_w)
    n_crops, T = pixels_nchw.shape[0], cfg.side ** 2
    features = xp.zeros((n_crops, T, cfg.hidden_size), dtype=xp.float32)  # (n_crops, T, D)
    ids = position_ids(patch_mask)
    pool = ThreadPoolExecutor(n_workers) if n_workers > 1 else None
    plans = []
    for start in range(0, n_crops, crops_per_batch):
        group = slice(start, start + crops_per_batch)
        tokens = [np.flatnonzero(m) for m in live[group].reshape(-1, T)]
        keys = [None if m.all() or not use_key_mask or not m.any() else np.flatnonzero(m[t])
                for m, t in zip(patch_mask[group].reshape(-1, T), tokens, strict=True)]
        plans.append((start, group, tokens, keys))
    buffers = _buffers(xp, max(sum(len(t) for t in tokens) for _, _, tokens, _ in plans), cfg)
    groups = []
    for start, group, tokens, keys in plans:
        x = _embed(pixels_nchw[group, ...], ids[group], tokens, weights)  # (sum of live, D)
        groups.append((start, tokens, x, _Workspace(tokens, keys, cfg, n_workers, buffers)))
    try:
        for layer in weights.layers:
            w = float32_layer(layer)
            for _, _, x, work in groups:
                _encoder_layer(x, w, cfg, work, pool)
    finally:
        if pool is not None:
            pool.shutdown()
    for start, tokens, x, work in groups:
        for c, t in enumerate(tokens):
            scatter_rows(xp, features[start + c, ...], t, x[work.spans[c], ...])
    return features


def _embed(pixels_nchw: Array, ids: np.ndarray, tokens: list[np.ndarray],
           weights: VisionWeights) -> Array:
    """Patch embedding (Conv2d k=s=P as a matmul) + position embedding, live patches only."""
    xp = namespace(weights.patch_w)
    n = pixels_nchw.shape[0]
    P, side = weights.config.patch_size, weights.config.side
    if tuple(pixels_nchw.shape[1:]) != (3, side * P, side * P):
        raise ValueError(f"pixels are {tuple(pixels_nchw.shape)}, "
                         f"expected (n_crops, 3, {side * P}, {side * P})")
    patches = xp.reshape(xp.astype(xp.asarray(pixels_nchw), xp.float32, copy=False), (n, 3, side, P, side, P))
    patches = xp.reshape(xp.permute_dims(patches, (0, 2, 4, 1, 3, 5)), (n, side * side, 3 * P * P))
    rows = xp.concat([xp.take(patches[c, ...], xp.asarray(t), axis=0) for c, t in enumerate(tokens)])
    x = rows @ weights.patch_w.T                                               # (N, D)
    x += weights.patch_b
    x += xp.take(weights.position, xp.asarray(np.concatenate([ids[c, t] for c, t in enumerate(tokens)])),
                 axis=0)
    return x


class _Workspace:
    """Activation buffers of one crop group, reused by every layer, and how its work splits over
    the workers: row blocks for the dense parts, (crop, heads) for attention. The buffers are views
    of `shared` arrays (`_buffers`), so groups computed one after another share them."""

    def __init__(self, tokens: list[np.ndarray], keys: list, cfg: VisionConfig, n_workers: int,
                 shared: dict):
        bounds = np.cumsum([0] + [len(t) for t in tokens])
        self.spans = [slice(int(a), int(b)) for a, b in pairwise(bounds)]  # rows of each crop
        cuts = np.linspace(0, bounds[-1], n_workers + 1).astype(int)
        self.row_blocks = [slice(int(a), int(b)) for a, b in pairwise(cuts)]
        heads = np.array_split(np.arange(cfg.n_heads), n_workers)
        self.attention = [(span, key_idx, h) for span, key_idx in zip(self.spans, keys, strict=True)
                          for h in heads if len(h)]
        n = int(bounds[-1])
        self.h = shared["h"][:n, ...]       # LN output, then attention output
        self.y = shared["y"][:n, ...]       # projection outputs before the residual add
        self.qkv = shared["qkv"][:n, ...]
        self.up = shared["up"][:n, ...]


def _buffers(xp: ModuleType, n_rows: int, cfg: VisionConfig) -> dict:
    """Activation buffers for the largest group (n_rows live patches), shared by every group."""
    D, F = cfg.hidden_size, cfg.intermediate_size
    return {name: xp.empty((n_rows, width), dtype=xp.float32)
            for name, width in (("h", D), ("y", D), ("qkv", 3 * D), ("up", F))}


def _encoder_layer(x: Array, w: LayerWeights, cfg: VisionConfig, work: _Workspace,
                   pool: ThreadPoolExecutor | None) -> None:
    """x += attn(LN1(x)); x += fc2(gelu_tanh(fc1(LN2(x)))), in place (pre-LN SigLIP, §6.1 step 4).
    Three phases; within one, every task writes its own rows, so they may run concurrently."""
    eps = cfg.layer_norm_eps
    xp = namespace(x)

    def qkv(rows: slice) -> None:
        nn.layer_norm(x[rows, ...], w.ln1_w, w.ln1_b, eps, out=work.h[rows, ...])
        matmul_into(xp, work.h[rows, ...], w.qkv_w.T, work.qkv[rows, ...])
        work.qkv[rows, ...] += w.qkv_b

    def attend(task: tuple) -> None:
        span, key_idx, heads = task
        _attention(work.qkv[span, ...], key_idx, heads, cfg.n_heads, out=work.h[span, ...])

    def mlp(rows: slice) -> None:
        h, y, up = work.h[rows, ...], work.y[rows, ...], work.up[rows, ...]
        matmul_into(xp, h, w.out_w.T, y)
        y += w.out_b
        x[rows, ...] += y
        nn.layer_norm(x[rows, ...], w.ln2_w, w.ln2_b, eps, out=h)
        matmul_into(xp, h, w.up_w.T, up)
        up += w.up_b
        step = chunk_rows(xp, GELU_ROWS) or max(1, up.shape[0])
        for r in range(0, up.shape[0], step):
            up[r:r + step, ...] = nn.gelu_tanh(up[r:r + step, ...])
        matmul_into(xp, up, w.down_w.T, y)
        y += w.down_b
        x[rows, ...] += y

    for fn, tasks in ((qkv, work.row_blocks), (attend, work.attention), (mlp, work.row_blocks)):
        if pool is None:
            for task in tasks:
                fn(task)
        else:
            list(pool.map(fn, tasks))


def _attention(qkv: Array, key_idx: np.ndarray | None, heads: np.ndarray, n_heads: int,
               out: Array) -> None:
    """Bidirectional MHA of one crop for `heads` (consecutive): (T, 3D) -> their columns of out
    (T, D). Keys outside `key_idx` are left out, which equals the reference's additive
    -inf/finfo.min on their columns (exp gives exactly 0). NumPy runs one head at a time (its
    scores stay in cache); other namespaces run the heads as one stacked product."""
    xp = namespace(qkv)
    T, D = out.shape
    hd = D // n_heads
    qkv_heads = xp.permute_dims(xp.reshape(qkv, (T, 3, n_heads, hd)), (1, 2, 0, 3))  # (3, heads, T, hd)
    q, k, v = qkv_heads[0, ...], qkv_heads[1, ...], qkv_heads[2, ...]
    if key_idx is not None:
        idx = xp.asarray(key_idx)
        k, v = xp.take(k, idx, axis=1), xp.take(v, idx, axis=1)          # (heads, Tk, hd)
    if is_numpy(xp):
        for h in heads:
            out[:, int(h) * hd:(int(h) + 1) * hd] = nn.attention(q[h, ...], k[h, ...], v[h, ...])
        return
    h0, h1 = int(heads[0]), int(heads[-1]) + 1
    o = nn.attention(q[h0:h1, ...], k[h0:h1, ...], v[h0:h1, ...])         # (heads, T, hd)
    out[:, h0 * hd:h1 * hd] = xp.reshape(xp.permute_dims(o, (1, 0, 2)), (T, (h1 - h0) * hd))


# ---------------------------------------------------------------------------------------------
# Compression, HD layout, projection (§6.2-6.4)

def pool_2x2(features: Array) -> Array:
    """(n_crops, side*side, D) -> (n_crops, side*side/4, D): AvgPool2d(2, 2) over the patch grid,
    regardless of the mask (§6.2), summed in torch's order."""
    xp = namespace(features)
    n, T, D = features.shape
    half = math.isqrt(T) // 2
    f = xp.reshape(features, (n, half, 2, half, 2, D))
    pooled = f[:, :, 0, :, 0, :] + f[:, :, 0, :, 1, :]
    pooled += f[:, :, 1, :, 0, :]
    pooled += f[:, :, 1, :, 1, :]
    pooled *= 0.25
    return xp.reshape(pooled, (n, half * half, D))


def _useful(patch_mask: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, int, int]:
    """Stride-2 sub-crop masks tiled to (16 gh, 16 gw), and its useful rows uh / columns uw (§6.3)."""
    gh, gw = grid
    half = patch_mask.shape[1] // 2
    ds = patch_mask[1:1 + gh * gw, 0::2, 0::2].reshape(gh, gw, half, half)
    ds = ds.transpose(0, 2, 1, 3).reshape(gh * half, gw * half)
    return ds, int(ds[:, 0].sum()), int(ds[0, :].sum())


def hd_layout(pooled: Array, patch_mask: np.ndarray, grid: tuple[int, int],
              sub_sep: Array, glb_sep: Array) -> Array:
    """Pooled (1 + gh*gw, 256, D) -> (uh*(uw+1) + 1 + 272, D) rows, `sub_glb` order (§6.3):
    [sub-crops tiled, cropped to uh x uw, sub_sep after each row] + glb_sep + [global + sub_sep]."""
    xp = namespace(pooled)
    gh, gw = grid
    n, T, D = pooled.shape
    half = math.isqrt(T)
    if n < 1 + gh * gw:
        raise ValueError(f"{n} pooled crops for a {gh}x{gw} grid, expected {1 + gh * gw}")
    glob = xp.reshape(pooled[0, ...], (half, half, D))
    _, uh, uw = _useful(patch_mask, grid)
    sub = xp.reshape(pooled[1:1 + gh * gw, ...], (gh, gw, half, half, D))
    sub = xp.reshape(xp.permute_dims(sub, (0, 2, 1, 3, 4)), (gh * half, gw * half, D))[:uh, :uw, :]

    def with_separators(block: Array) -> Array:  # (rows, cols, D) -> (rows*(cols+1), D)
        sep = xp.broadcast_to(xp.reshape(sub_sep, (1, 1, D)), (block.shape[0], 1, D))
        return xp.reshape(xp.concat([block, sep], axis=1), (-1, D))

    return xp.concat([with_separators(sub), xp.reshape(glb_sep, (1, D)), with_separators(glob)])


def project(rows: Array, weights: VisionWeights) -> Array:
    """(n_tokens, D) -> (n_tokens, H): Linear -> exact (erf) GELU -> Linear (§6.4)."""
    hidden = rows @ weights.up_w.T   # (n_tokens, H)
    hidden += weights.up_b
    nn.gelu_erf_(hidden)
    out = hidden @ weights.down_w.T
    out += weights.down_b
    return out


def encode_image(crops: ImageCrops, weights: VisionWeights, crops_per_batch: int = CROPS_PER_BATCH,
                 n_workers: int = 1) -> Array:
    """One preprocessed image -> (n_tokens, H) float32 rows to splice at its placeholders (§6.5),
    in the weights' namespace (phi4mm.arrays.move puts the weights on a device).

    Only patches that reach the output are run: the valid ones (every key) and the padded ones
    that 2x2 pooling averages into a kept cell (§6.2); the rest never influence the rows.
    `n_workers` threads share each layer (row blocks, attention heads); with more than one, limit
    BLAS to one thread (OPENBLAS_NUM_THREADS=1 or threadpoolctl): numpy's own element-wise ops
    are single-threaded, so this beats one worker over a multi-threaded BLAS.
    """
    mask, grid = crops.patch_mask, crops.grid
    live = mask | _kept_patches(mask, grid)
    pooled = pool_2x2(_tower(crops.pixels_nchw, mask, live, weights, crops_per_batch, n_workers))
    rows = hd_layout(pooled, mask, grid, weights.sub_sep, weights.glb_sep)
    if rows.shape[0] != crops.n_tokens:
        raise ValueError(f"the HD layout has {rows.shape[0]} rows, ImageCrops says {crops.n_tokens}")
    return project(rows, weights)


def _kept_patches(patch_mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(n_crops, side, side) bool: patches inside a pooled cell the HD layout keeps."""
    gh, gw = grid
    side = patch_mask.shape[1]
    ds, uh, uw = _useful(patch_mask, grid)
    kept = np.zeros(ds.shape, dtype=bool)
    kept[:uh, :uw] = True
    half = side // 2
    kept = kept.reshape(gh, half, gw, half).transpose(0, 2, 1, 3).reshape(-1, half, half)
    cells = np.concatenate([np.ones((1, half, half), bool), kept,
                            np.zeros((len(patch_mask) - 1 - gh * gw, half, half), bool)])
    return cells.repeat(2, axis=1).repeat(2, axis=2)

"""The audio encoder in float32: log-mel -> global CMVN -> NeMo dw_striding x8 subsampling ->
Conformer blocks with a shared T5 relative bias -> speech or vision projector rows
(model-spec.md §7.2-7.3). The arithmetic runs in the array namespace of the weights (NumPy by
default, CuPy on a GPU: phi4mm.arrays). Pure: numpy + array_api_compat + stdlib.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from phi4mm import keys, nn
from phi4mm.arrays import arrays_of, chunk_rows, contiguous, is_array, is_numpy, namespace, nbytes
from phi4mm.audio import features
from phi4mm.errors import ConfigError
from phi4mm.weights import meta_value

F32 = np.float32
Array = Any  # an array of the weights' namespace (NumPy, CuPy, ...)
KEY = keys.AUDIO_PREFIX
HEADS = ("speech", "vision")  # projector heads: SPEECH mode, VISION_SPEECH mode (§7.3)
CHUNK_FRAMES = 500            # §7.2 step 4: longer inputs run as independent 500-frame chunks
SUBSAMPLE_ROWS = 16           # output rows of the subsampling computed together (bounds its memory)
N_STRIDES = 3                 # stride-2 convolutions of the subsampling: time_reduction 8


@dataclass(frozen=True)
class AudioConfig:
    """Hyper-parameters from the `phi4mm.audio.*` metadata of the audio GGUF."""

    attention_dim: int      # A
    n_heads: int
    linear_units: int       # U: FFN hidden width (its up projection is 2U wide: value | gate)
    n_blocks: int
    input_size: int         # mel bins (80)
    kernel_size: int        # causal depthwise conv of the ConvModule (3)
    conv_channels: int      # C: channels of the subsampling convolutions
    time_reduction: int     # 8
    bias_max_distance: int  # M: relative positions are clamped to [-M, M-1]
    layer_norm_eps: float
    text_hidden_size: int   # H: width of the projected rows

    @property
    def head_dim(self) -> int:
        return self.attention_dim // self.n_heads

    @property
    def freq_out(self) -> int:
        """Frequency bins after the subsampling: 80 -> 40 -> 20 -> 10."""
        f = self.input_size
        for _ in range(N_STRIDES):
            f = -(-f // 2)
        return f

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> AudioConfig:
        ints = {n: meta_value(metadata, KEY, n, int) for n in (
            "attention_dim", "n_heads", "linear_units", "n_blocks", "input_size", "kernel_size",
            "conv_channels", "time_reduction", "bias_max_distance", "text_hidden_size")}
        for name, value in ints.items():
            if value < 1:
                raise ConfigError(f"{KEY}{name} is {value}, expected a positive integer", key=KEY + name)
        config = cls(**ints, layer_norm_eps=float(meta_value(metadata, KEY, "layer_norm_eps", (int, float))))
        if config.time_reduction != 2 ** N_STRIDES:
            raise ConfigError(f"{KEY}time_reduction is {config.time_reduction}, expected {2 ** N_STRIDES} "
                              "(three stride-2 convolutions)", key=KEY + "time_reduction")
        if config.attention_dim % config.n_heads:
            raise ConfigError(f"{KEY}attention_dim {config.attention_dim} is not a multiple of n_heads "
                              f"{config.n_heads}", key=KEY + "attention_dim")
        if config.input_size != features.N_MELS:
            raise ConfigError(f"{KEY}input_size is {config.input_size}, expected {features.N_MELS} "
                              "mel bins", key=KEY + "input_size")
        return config


# ---------------------------------------------------------------------------------------------
# Weights. Matrices stay (out, in) as stored, float16 when the file is f16 (upcast per block at
# compute time); vectors and small kernels are float32.

@dataclass(frozen=True)
class FFNWeights:
    norm_w: np.ndarray
    norm_b: np.ndarray
    up_w: np.ndarray    # (2U, A): value rows | gate rows
    up_b: np.ndarray
    down_w: np.ndarray  # (A, U)
    down_b: np.ndarray


@dataclass(frozen=True)
class BlockWeights:
    """One Conformer block (§7.2 step 6)."""

    ffn_in: FFNWeights
    ffn_out: FFNWeights
    attn_norm_w: np.ndarray
    attn_norm_b: np.ndarray
    q_w: np.ndarray      # (A, A)
    q_b: np.ndarray
    k_w: np.ndarray
    k_b: np.ndarray
    v_w: np.ndarray
    v_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    conv_norm_w: np.ndarray
    conv_norm_b: np.ndarray
    glu_w: np.ndarray    # (2A, A): value rows | gate rows
    glu_b: np.ndarray    # (2A,)
    glu_b1: np.ndarray   # (A,) added to the value half
    glu_b2: np.ndarray   # (A,) added to the gate half
    dw_w: np.ndarray     # (K, A) float32 causal depthwise taps, oldest input first
    dw_b: np.ndarray
    dw_pw_w: np.ndarray  # (A, A)
    dw_pw_b: np.ndarray
    ext_pw_w: np.ndarray  # (A, A)
    ext_pw_b: np.ndarray
    out_norm_w: np.ndarray
    out_norm_b: np.ndarray


@dataclass(frozen=True)
class SubsamplingWeights:
    """NeMo dw_striding x8 (§7.2 step 2); 3x3 kernels flattened in (kh, kw) order."""

    conv0_w: np.ndarray  # (C, 9) float32: 1 -> C channels
    conv0_b: np.ndarray
    dw1_w: np.ndarray    # (9, C) float32 depthwise taps, channels contiguous (broadcasts fast)
    dw1_b: np.ndarray
    pw1_w: np.ndarray    # (C, C)
    pw1_b: np.ndarray
    dw2_w: np.ndarray
    dw2_b: np.ndarray
    pw2_w: np.ndarray
    pw2_b: np.ndarray
    out_w: np.ndarray    # (A, C*F'): input index c*F' + f
    out_b: np.ndarray


@dataclass(frozen=True)
class ProjectorWeights:
    up_w: np.ndarray    # (H, A)
    up_b: np.ndarray
    down_w: np.ndarray  # (H, H)
    down_b: np.ndarray


@dataclass(frozen=True)
class AudioWeights:
    """The whole audio GGUF, shapes checked."""

    config: AudioConfig
    cmvn_mean: np.ndarray    # (80,)
    cmvn_invstd: np.ndarray  # (80,)
    subsampling: SubsamplingWeights
    rel_bias: np.ndarray     # (2M, n_heads) float32, shared by every block
    blocks: tuple[BlockWeights, ...]
    projectors: Mapping[str, ProjectorWeights]  # "speech", "vision"

    @property
    def nbytes(self) -> int:
        """Bytes held by the weight arrays (views counted once per tensor)."""
        return sum(nbytes(a) for a in arrays_of(self))


def load_weights(metadata: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> AudioWeights:
    """Audio GGUF metadata + tensors (phi4mm.weights.read_gguf, f16 kept or not) -> AudioWeights."""
    cfg = AudioConfig.from_metadata(metadata)
    A, C, H, F = cfg.attention_dim, cfg.conv_channels, cfg.text_hidden_size, cfg.freq_out
    get = _Getter(tensors)
    sub = SubsamplingWeights(
        conv0_w=get.small("a.subsample.conv0.weight", C, 1, 3, 3).reshape(C, 9),
        conv0_b=get.small("a.subsample.conv0.bias", C),
        dw1_w=_taps_first(get.small("a.subsample.conv2.weight", C, 1, 3, 3).reshape(C, 9)),
        dw1_b=get.small("a.subsample.conv2.bias", C),
        pw1_w=get.matrix("a.subsample.conv3.weight", C, C, 1, 1).reshape(C, C),
        pw1_b=get.small("a.subsample.conv3.bias", C),
        dw2_w=_taps_first(get.small("a.subsample.conv5.weight", C, 1, 3, 3).reshape(C, 9)),
        dw2_b=get.small("a.subsample.conv5.bias", C),
        pw2_w=get.matrix("a.subsample.conv6.weight", C, C, 1, 1).reshape(C, C),
        pw2_b=get.small("a.subsample.conv6.bias", C),
        out_w=get.matrix("a.subsample.out.weight", A, C * F), out_b=get.small("a.subsample.out.bias", A))
    projectors = {head: ProjectorWeights(
        up_w=get.matrix(f"mm.{head}.up.weight", H, A), up_b=get.small(f"mm.{head}.up.bias", H),
        down_w=get.matrix(f"mm.{head}.down.weight", H, H), down_b=get.small(f"mm.{head}.down.bias", H))
        for head in HEADS}
    return AudioWeights(
        config=cfg, cmvn_mean=get.small("a.cmvn.mean", cfg.input_size),
        cmvn_invstd=get.small("a.cmvn.invstd", cfg.input_size), subsampling=sub,
        rel_bias=get.small("a.rel_bias.weight", 2 * cfg.bias_max_distance, cfg.n_heads),
        blocks=tuple(_block_weights(get, cfg, i) for i in range(cfg.n_blocks)), projectors=projectors)


class _Getter:
    """Fetches tensors with a shape check: vectors and kernels as float32, matrices f32 or f16."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        self.tensors = tensors

    def small(self, name: str, *shape: int) -> np.ndarray:
        return self._get(name, shape).astype(F32, copy=False)

    def matrix(self, name: str, *shape: int) -> np.ndarray:
        return self._get(name, shape)

    def _get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.tensors:
            raise ConfigError(f"audio GGUF tensor {name!r} is missing", key=name)
        t = self.tensors[name]
        if t.shape != shape or t.dtype not in (np.float32, np.float16):
            raise ConfigError(f"audio GGUF tensor {name!r} is {t.dtype}{t.shape}, "
                              f"expected float32 or float16 {shape}", key=name)
        return t


def _block_weights(get: _Getter, cfg: AudioConfig, i: int) -> BlockWeights:
    A, U, K, b = cfg.attention_dim, cfg.linear_units, cfg.kernel_size, f"a.blk.{i}."

    def mat(name: str, rows: int, cols: int, *tail: int) -> np.ndarray:  # Linear or k=1 Conv1d
        return get.matrix(f"{b}{name}.weight", rows, cols, *tail).reshape(rows, cols)

    def vec(name: str, n: int = A) -> np.ndarray:
        return get.small(b + name, n)

    def ffn(name: str) -> FFNWeights:
        return FFNWeights(norm_w=vec(f"{name}.norm.weight"), norm_b=vec(f"{name}.norm.bias"),
                          up_w=mat(f"{name}.up", 2 * U, A), up_b=vec(f"{name}.up.bias", 2 * U),
                          down_w=mat(f"{name}.down", A, U), down_b=vec(f"{name}.down.bias"))

    return BlockWeights(
        ffn_in=ffn("ffn_in"), ffn_out=ffn("ffn_out"),
        attn_norm_w=vec("attn_norm.weight"), attn_norm_b=vec("attn_norm.bias"),
        q_w=mat("attn_q", A, A), q_b=vec("attn_q.bias"), k_w=mat("attn_k", A, A), k_b=vec("attn_k.bias"),
        v_w=mat("attn_v", A, A), v_b=vec("attn_v.bias"),
        out_w=mat("attn_out", A, A), out_b=vec("attn_out.bias"),
        conv_norm_w=vec("conv.norm.weight"), conv_norm_b=vec("conv.norm.bias"),
        glu_w=mat("conv.glu_pw", 2 * A, A, 1), glu_b=vec("conv.glu_pw.bias", 2 * A),
        glu_b1=get.small(b + "conv.glu_b1", 1, A, 1).reshape(A),
        glu_b2=get.small(b + "conv.glu_b2", 1, A, 1).reshape(A),
        dw_w=_taps_first(get.small(b + "conv.dw.weight", A, 1, K).reshape(A, K)), dw_b=vec("conv.dw.bias"),
        dw_pw_w=mat("conv.dw_pw", A, A, 1), dw_pw_b=vec("conv.dw_pw.bias"),
        ext_pw_w=mat("conv.ext_pw", A, A, 1), ext_pw_b=vec("conv.ext_pw.bias"),
        out_norm_w=vec("out_norm.weight"), out_norm_b=vec("out_norm.bias"))


def _taps_first(w_ck: np.ndarray) -> np.ndarray:
    """(C, k) depthwise kernel -> contiguous (k, C): each tap's row broadcasts over channels."""
    return np.ascontiguousarray(w_ck.T)


def _upcast(obj: Any) -> Any:
    """A copy of a weights dataclass with float16 arrays as float32 (float32 ones shared), in the
    arrays' own namespace."""
    if is_array(obj):
        xp = namespace(obj)
        return xp.astype(obj, xp.float32, copy=False)
    return type(obj)(**{f.name: _upcast(getattr(obj, f.name)) for f in fields(obj)})


# ---------------------------------------------------------------------------------------------
# Subsampling (§7.2 steps 1-2), channels-last: activations are (time, freq, C). Output rows are
# computed SUBSAMPLE_ROWS at a time on the CPU (all at once on a GPU), each stage reading the rows
# (plus a one-row halo) it needs from the one before, so the 1500 x 40 x C first stage of a 30 s
# clip is never held whole on the CPU.

def subsample(features_tf: Array, w: SubsamplingWeights, cfg: AudioConfig) -> Array:
    """(T, 80) CMVN-normalised features -> (ceil(T/8), A): three stride-2 convs, flatten, Linear."""
    xp = namespace(features_tf)
    C, F3 = cfg.conv_channels, cfg.freq_out
    lengths = _halvings(features_tf.shape[0])                      # T, T1, T2, T3 = T'
    widths = _halvings(features_tf.shape[1])                       # 80, 40, 20, 10 = F'
    padded = xp.zeros((lengths[0] + 2, widths[0] + 2), dtype=xp.float32)  # zero padding 1 on every side
    padded[1:-1, 1:-1] = features_tf
    w = _upcast(w)
    stage = _Stages(padded, w, lengths, widths, C)
    flat = xp.empty((lengths[3], C * F3), dtype=xp.float32)     # (T', C*F'), index c*F' + f
    step = chunk_rows(xp, SUBSAMPLE_ROWS) or max(1, lengths[3])
    for a in range(0, lengths[3], step):
        b = min(a + step, lengths[3])
        rows = stage.rows(3, a, b)                                # (b-a, F', C)
        flat[a:b, ...] = xp.reshape(xp.permute_dims(rows, (0, 2, 1)), (b - a, C * F3))
    return nn.linear(flat, w.out_w, w.out_b)


def _halvings(n: int) -> list[int]:
    """[n, ceil(n/2), ceil(n/4), ceil(n/8)]: sizes through the stride-2 (kernel 3, pad 1) stages."""
    sizes = [n]
    for _ in range(N_STRIDES):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


class _Stages:
    """Rows [a, b) of subsampling stage k (1: conv0, 2 and 3: depthwise + pointwise), + ReLU."""

    def __init__(self, padded: Array, w: SubsamplingWeights, lengths: list[int],
                 widths: list[int], channels: int):
        self.padded, self.w, self.lengths, self.widths, self.C = padded, w, lengths, widths, channels
        self.xp = namespace(padded)

    def rows(self, k: int, a: int, b: int) -> Array:
        """(b-a, widths[k], C) float32 output rows of stage k, all inside [0, lengths[k])."""
        if k == 1:
            return self._conv0(a, b)
        dw_w, dw_b, pw_w, pw_b = ((self.w.dw1_w, self.w.dw1_b, self.w.pw1_w, self.w.pw1_b) if k == 2
                                  else (self.w.dw2_w, self.w.dw2_b, self.w.pw2_w, self.w.pw2_b))
        inputs = self._zero_padded(k - 1, 2 * a - 1, 2 * b)       # (2(b-a)+1, widths[k-1]+2, C)
        y = _depthwise_stride2(inputs, dw_w, dw_b, b - a, self.widths[k])  # (b-a, widths[k], C)
        out = nn.relu(nn.linear(self.xp.reshape(y, (-1, self.C)), pw_w, pw_b))
        return self.xp.reshape(out, (b - a, self.widths[k], self.C))

    def _conv0(self, a: int, b: int) -> Array:
        """Conv2d(1 -> C, 3x3, stride 2, pad 1) + ReLU as a (rows*F1, 9) @ (9, C) product."""
        xp, n, width = self.xp, b - a, self.widths[1]
        window = self.padded[2 * a:2 * b + 1, :]                                      # (2(b-a)+1, 82)
        taps = [window[di:di + 2 * n - 1:2, dj:dj + 2 * width - 1:2] for di in range(3) for dj in range(3)]
        patches = xp.reshape(xp.stack(taps, axis=-1), (-1, 9))                        # (rows*F1, 9)
        out = nn.relu(nn.linear(patches, self.w.conv0_w, self.w.conv0_b))            # (rows*F1, C)
        return xp.reshape(out, (n, width, self.C))

    def _zero_padded(self, k: int, lo: int, hi: int) -> Array:
        """Rows [lo, hi) of stage k with a zero column each side and zero rows outside the signal."""
        buf = self.xp.zeros((hi - lo, self.widths[k] + 2, self.C), dtype=self.xp.float32)
        a, b = max(lo, 0), min(hi, self.lengths[k])
        if a < b:
            buf[a - lo:b - lo, 1:-1, :] = self.rows(k, a, b)
        return buf


def _depthwise_stride2(inputs: Array, w_9c: Array, b_c: Array, n_rows: int, width: int) -> Array:
    """Depthwise 3x3 stride-2 conv of zero-padded (2 n_rows + 1, W + 2, C) -> (n_rows, width, C)."""
    out = None
    for tap in range(9):
        di, dj = divmod(tap, 3)
        view = inputs[di:di + 2 * n_rows - 1:2, dj:dj + 2 * width - 1:2, :]    # (n_rows, width, C)
        if out is None:
            out = view * w_9c[tap, :]
        else:
            out += view * w_9c[tap, :]
    out += b_c
    return out


# ---------------------------------------------------------------------------------------------
# Conformer (§7.2 steps 3-7)

def relative_bias(n_frames: int, table: Array, max_distance: int) -> Array:
    """(2M, n_heads) T5 table -> (n_heads, L, L) bias: table[clamp(j - i, -M, M-1) + M] (§7.2 step 5)."""
    xp = namespace(table)
    pos = np.arange(n_frames)
    rel = np.clip(pos[None, :] - pos[:, None], -max_distance, max_distance - 1) + max_distance
    gathered = xp.take(table, xp.asarray(rel.reshape(-1)), axis=0)          # (L*L, n_heads)
    return contiguous(xp, xp.permute_dims(xp.reshape(gathered, (n_frames, n_frames, table.shape[1])), (2, 0, 1)))


def encode_features(features_tf: Array, weights: AudioWeights,
                    mask_chunk_padding: bool = False) -> Array:
    """(T, 80) float32 log-mel -> (ceil(T/8), A) float32 Conformer output (§7.2), in the weights'
    namespace (features of another namespace are moved there).

    More than 500 subsampled frames run as independent 500-frame chunks, the last one padded with
    zero rows that are attended to, as in the reference (§7.2 step 4). `mask_chunk_padding=True`
    hides those rows from attention instead (not the reference's behaviour; for tests).
    """
    cfg = weights.config
    xp = namespace(weights.cmvn_mean)
    features_tf = xp.asarray(features_tf)
    if features_tf.ndim != 2 or features_tf.shape[1] != cfg.input_size or features_tf.shape[0] == 0:
        raise ValueError(f"audio features are {tuple(features_tf.shape)}, expected (T >= 1, {cfg.input_size})")
    x = xp.astype(features_tf, xp.float32) - weights.cmvn_mean    # (T, 80)
    x *= weights.cmvn_invstd
    x = subsample(x, weights.subsampling, cfg)                     # (T', A)
    n_frames = x.shape[0]
    L = n_frames if n_frames <= CHUNK_FRAMES else CHUNK_FRAMES
    n_chunks = -(-n_frames // L)
    hidden = xp.zeros((n_chunks * L, cfg.attention_dim), dtype=xp.float32)  # (n_chunks*L, A)
    hidden[:n_frames, ...] = x
    n_keys = [L] * n_chunks
    if mask_chunk_padding:
        n_keys[-1] = n_frames - (n_chunks - 1) * L
    bias = relative_bias(L, weights.rel_bias, cfg.bias_max_distance)  # (n_heads, L, L)
    for block in weights.blocks:
        _conformer_block(hidden, _upcast(block), bias, cfg, n_keys)
    return hidden[:n_frames, ...]


def _conformer_block(x: Array, w: BlockWeights, bias: Array, cfg: AudioConfig,
                     n_keys: list[int]) -> None:
    """In place on (n_chunks*L, A): x += FFN/2; x += MHSA(LN x); x += Conv(x); x += FFN/2; LN."""
    eps = cfg.layer_norm_eps
    y = _feed_forward(x, w.ffn_in, eps)
    y *= 0.5
    x += y
    x += _self_attention(nn.layer_norm(x, w.attn_norm_w, w.attn_norm_b, eps), w, bias, cfg, n_keys)
    x += _conv_module(x, w, eps, len(n_keys))
    y = _feed_forward(x, w.ffn_out, eps)
    y *= 0.5
    x += y
    nn.layer_norm(x, w.out_norm_w, w.out_norm_b, eps, out=x)


def _feed_forward(x: Array, w: FFNWeights, eps: float) -> Array:
    """LN -> Linear(A, 2U) -> value (first U) * swish(gate (last U)) -> Linear(U, A)."""
    up = nn.linear(nn.layer_norm(x, w.norm_w, w.norm_b, eps), w.up_w, w.up_b)  # (N, 2U)
    U = up.shape[1] // 2
    value = up[:, :U]
    value *= nn.silu(up[:, U:])
    return nn.linear(value, w.down_w, w.down_b)


def _self_attention(h: Array, w: BlockWeights, bias: Array, cfg: AudioConfig,
                    n_keys: list[int]) -> Array:
    """MHSA within each chunk: softmax(q k^T / sqrt(hd) + rel bias) v, then the output Linear.
    NumPy runs one head at a time; other namespaces run a chunk's heads as one stacked product."""
    xp = namespace(h)
    n_heads, hd = cfg.n_heads, cfg.head_dim
    L = h.shape[0] // len(n_keys)
    q = nn.linear(h, w.q_w, w.q_b)                                # (N, A)
    q *= hd ** -0.5
    k, v = nn.linear(h, w.k_w, w.k_b), nn.linear(h, w.v_w, w.v_b)
    out = xp.empty_like(h)                                         # (N, A)
    for c, n in enumerate(n_keys):
        qc, kc, vc = (contiguous(xp, xp.permute_dims(xp.reshape(t[c * L:(c + 1) * L, ...], (L, n_heads, hd)),
                                                     (1, 0, 2)))
                      for t in (q, k, v))                           # (n_heads, L, hd)
        if is_numpy(xp):
            for i in range(n_heads):
                out[c * L:(c + 1) * L, i * hd:(i + 1) * hd] = nn.attention(
                    qc[i, ...], kc[i, :n, :], vc[i, :n, :], bias[i, :, :n])
        else:
            o = nn.attention(qc, kc[:, :n, :], vc[:, :n, :], bias[:, :, :n])  # (n_heads, L, hd)
            out[c * L:(c + 1) * L, :] = xp.reshape(xp.permute_dims(o, (1, 0, 2)), (L, n_heads * hd))
    return nn.linear(out, w.out_w, w.out_b)


def _conv_module(x: Array, w: BlockWeights, eps: float, n_chunks: int) -> Array:
    """LN -> GLU pointwise -> causal depthwise conv (per chunk) -> pointwise -> swish -> ext_pw."""
    xp = namespace(x)
    A = x.shape[1]
    g = nn.linear(nn.layer_norm(x, w.conv_norm_w, w.conv_norm_b, eps), w.glu_w, w.glu_b)  # (N, 2A)
    value, gate = g[:, :A], g[:, A:]
    value += w.glu_b1
    gate += w.glu_b2
    value *= nn.silu(gate)
    y = _causal_depthwise(xp.reshape(value, (n_chunks, -1, A)), w.dw_w, w.dw_b)  # (n_chunks, L, A)
    y = nn.linear(xp.reshape(y, (-1, A)), w.dw_pw_w, w.dw_pw_b)
    return nn.linear(nn.silu(y), w.ext_pw_w, w.ext_pw_b)


def _causal_depthwise(x: Array, w_ka: Array, b_a: Array) -> Array:
    """(n_chunks, L, A) -> same: out[t] = sum_k w[k] x[t - (K-1) + k] + b, zeros before t = 0
    (Conv1d with padding K-1 on both sides, last K-1 outputs dropped)."""
    K, L = w_ka.shape[0], x.shape[1]
    out = x * w_ka[K - 1, :]
    for k in range(K - 1):
        shift = K - 1 - k
        if shift < L:
            out[:, shift:, :] += x[:, :L - shift, :] * w_ka[k, :]
    out += b_a
    return out


# ---------------------------------------------------------------------------------------------
# Projection (§7.3) and the whole path

def project(hidden: Array, weights: AudioWeights, head: str) -> Array:
    """(T', A) -> (T', H): Linear -> exact GELU -> Linear of the `head` projector ("speech" for
    audio-only requests, "vision" when the request also has an image)."""
    if head not in weights.projectors:
        raise ValueError(f"audio projector head is {head!r}, expected one of {HEADS}")
    w = weights.projectors[head]
    up = nn.linear(hidden, w.up_w, w.up_b)   # (T', H)
    nn.gelu_erf_(up)
    return nn.linear(up, w.down_w, w.down_b)


def encode_audio(samples: np.ndarray, sample_rate_hz: int, weights: AudioWeights, head: str) -> Array:
    """Mono waveform (N,) at any rate -> (n_tokens, H) float32 rows to splice at the audio
    placeholders (§7.4), in the weights' namespace: to_model_rate (on the host) -> log_mel ->
    encode_features -> project."""
    wave, rate_hz = features.to_model_rate(samples, sample_rate_hz)
    xp = namespace(weights.cmvn_mean)
    return project(encode_features(features.log_mel(xp.asarray(wave), rate_hz), weights), weights, head)

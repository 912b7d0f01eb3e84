"""Numerics shared by the vision and audio encoders, float32 in any array API namespace (NumPy,
CuPy; array-api-strict in tests): layer norm, exact and tanh GELU, SiLU and softmax attention with
an optional additive bias. Under NumPy each function performs the same operations, in the same
order, as the NumPy-only version before it, so the rows are bit for bit what they were.
Pure: numpy + array_api_compat + stdlib."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from phi4mm.arrays import chunk_rows, namespace, row_sumsq

F32 = np.float32
Array = Any  # an array of the caller's namespace


def layer_norm(x: Array, w: Array, b: Array, eps: float, out: Array | None = None) -> Array:
    """LayerNorm over the last axis of x (N, D), into `out` (a new array when None; may be x)."""
    xp = namespace(x)
    mean = xp.mean(x, axis=1, keepdims=True)
    if out is None:
        out = x - mean
    else:
        if out is not x:
            out[...] = x
        out -= mean
    var = row_sumsq(xp, out)[:, None]
    var /= x.shape[1]
    var += float(eps)
    var = xp.sqrt(var)
    out /= var
    out *= w
    out += b
    return out


def gelu_tanh(u: Array) -> Array:
    """0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))) (gelu_pytorch_tanh), a new array."""
    xp = namespace(u)
    t = u * u
    t *= 0.044715
    t += 1.0
    t *= u
    t *= math.sqrt(2 / math.pi)
    t = xp.tanh(t)
    t += 1.0
    out = u * 0.5
    out *= t
    return out


def silu(x: Array) -> Array:
    """x * sigmoid(x) (Swish) as x / (1 + exp(-x)), in float32 as torch does; a new array."""
    xp = namespace(x)
    sig = xp.exp(-x)
    sig += 1.0
    return x / sig


def attention(q: Array, k: Array, v: Array, bias: Array | None = None) -> Array:
    """softmax(q k^T + bias) v for q (..., T, hd), k/v (..., Tk, hd), bias (..., T, Tk) or None
    -> (..., T, hd): one head, or a stack of heads at once. q must already carry the 1/sqrt(hd)
    scale. The softmax is normalised after the PV product (same result, one pass fewer over the
    (T, Tk) scores)."""
    xp = namespace(q)
    s = q @ xp.matrix_transpose(k)                 # (..., T, Tk)
    if bias is not None:
        s += bias
    s -= xp.max(s, axis=-1, keepdims=True)
    s = xp.exp(s)
    total = xp.sum(s, axis=-1, keepdims=True)      # (..., T, 1)
    o = s @ v                                      # (..., T, hd)
    o /= total
    return o


# ---------------------------------------------------------------------------------------------
# Exact GELU: 1 + erf(z) = erfc(-z), erfc(a) = t exp(P(t) - a^2) with t = 1/(1 + a/2), a >= 0.
# P is a degree-10 fit of log(erfc(a)/t) + a^2 (the form of Numerical Recipes' erfcc), made with
# numpy's Chebyshev interpolation against libm's erfc on a in [0, 10]: relative error < 1e-8.
# (erf is not in the array API standard: computing it here is what makes the GELU portable.)

_ERFC_POLY = (  # P(t), increasing powers of t
    -1.2655853674053887, 1.0019976466193334, 0.35131843805513263, 0.2440871248827018,
    -0.7776201041012902, 1.8217874334908788, -3.7949106130084043, 4.492053041713081,
    -2.95765260337146, 1.0375311467129082, -0.1530061436124431)
_ERFC_MAX_ARG = 10.0   # erfc(10) = 2e-45: beyond it the value no longer matters in float32
_GELU_CHUNK = 1 << 15  # elements per float64 chunk of the GELU on the CPU (fits in L2)


def one_plus_erf(z: Array) -> Array:
    """1 + erf(z) in float64, relative error < 1e-8 for |z| <= 10 (also where it is tiny)."""
    xp = namespace(z)
    z = xp.astype(z, xp.float64)
    a = xp.minimum(xp.abs(z), _ERFC_MAX_ARG)
    t = 0.5 * a
    t += 1.0
    t = 1.0 / t
    poly = xp.full_like(t, _ERFC_POLY[-1])
    for coef in _ERFC_POLY[-2::-1]:
        poly *= t
        poly += coef
    a *= a
    poly -= a
    poly = xp.exp(poly)
    poly *= t                                   # erfc(|z|)
    return xp.where(z < 0, poly, 2.0 - poly)


def gelu_erf_(x: Array) -> None:
    """In place on (N, D) float32: x = 0.5 x (1 + erf(x / sqrt 2)) (nn.GELU default), evaluated in
    float64."""
    xp = namespace(x)
    rows = chunk_rows(xp, max(1, _GELU_CHUNK // max(1, x.shape[1]))) or max(1, x.shape[0])
    for r in range(0, x.shape[0], rows):
        wide = xp.astype(x[r:r + rows, ...], xp.float64)
        x[r:r + rows, ...] = xp.astype(0.5 * wide * one_plus_erf(wide * math.sqrt(0.5)), xp.float32)


def linear(x: Array, w: Array, b: Array | None = None) -> Array:
    """x (N, in) @ w (out, in)^T + b -> (N, out) float32; w may be stored as float16 (upcast here)."""
    xp = namespace(x)
    y = x @ (w if w.dtype == xp.float32 else xp.astype(w, xp.float32)).T
    if b is not None:
        y += b
    return y


def relu(x: Array) -> Array:
    """max(x, 0), a new array."""
    xp = namespace(x)
    return xp.maximum(x, xp.zeros((), dtype=x.dtype))

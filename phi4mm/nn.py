"""Numerics shared by the vision and audio encoders, in numpy float32: layer norm, exact and tanh
GELU, SiLU and softmax attention with an optional additive bias. Pure: numpy + stdlib only."""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """LayerNorm over the last axis of x (N, D), into `out` (a new array when None)."""
    out = np.empty_like(x) if out is None else out
    mean = x.mean(axis=1, keepdims=True)
    np.subtract(x, mean, out=out)
    var = np.einsum("ij,ij->i", out, out)[:, None]
    var /= x.shape[1]
    var += F32(eps)
    np.sqrt(var, out=var)
    out /= var
    out *= w
    out += b
    return out


def gelu_tanh_(u: np.ndarray, tmp: np.ndarray) -> None:
    """In place: u = 0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))) (gelu_pytorch_tanh);
    `tmp` is scratch space with at least len(u) rows."""
    t = tmp[:len(u)]
    np.multiply(u, u, out=t)
    t *= F32(0.044715)
    t += F32(1)
    t *= u
    t *= F32(math.sqrt(2 / math.pi))
    np.tanh(t, out=t)
    t += F32(1)
    u *= F32(0.5)
    u *= t


def silu_(x: np.ndarray) -> np.ndarray:
    """In place: x = x * sigmoid(x) (Swish), the sigmoid computed in float32 as torch does."""
    sig = np.negative(x)
    np.exp(sig, out=sig)
    sig += F32(1)
    np.divide(x, sig, out=x)
    return x


def attention_head(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray | None = None,
                   out: np.ndarray | None = None) -> np.ndarray:
    """One head: softmax(q k^T + bias) v for q (T, hd), k/v (Tk, hd), bias (T, Tk) or None
    -> (T, hd). q must already carry the 1/sqrt(hd) scale. The softmax is normalised after the PV
    product (same result, one pass fewer over the (T, Tk) scores)."""
    s = q @ k.T                                    # (T, Tk)
    if bias is not None:
        s += bias
    s -= s.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    total = s.sum(axis=1, keepdims=True)           # (T, 1)
    o = s @ v                                      # (T, hd)
    o /= total
    if out is not None:
        out[...] = o
        return out
    return o


# ---------------------------------------------------------------------------------------------
# Exact GELU: 1 + erf(z) = erfc(-z), erfc(a) = t exp(P(t) - a^2) with t = 1/(1 + a/2), a >= 0.
# P is a degree-10 fit of log(erfc(a)/t) + a^2 (the form of Numerical Recipes' erfcc), made with
# numpy's Chebyshev interpolation against libm's erfc on a in [0, 10]: relative error < 1e-8.

_ERFC_POLY = (  # P(t), increasing powers of t
    -1.2655853674053887, 1.0019976466193334, 0.35131843805513263, 0.2440871248827018,
    -0.7776201041012902, 1.8217874334908788, -3.7949106130084043, 4.492053041713081,
    -2.95765260337146, 1.0375311467129082, -0.1530061436124431)
_ERFC_MAX_ARG = 10.0   # erfc(10) = 2e-45: beyond it the value no longer matters in float32
_GELU_CHUNK = 1 << 15  # elements per float64 chunk of the GELU (fits in L2)


def one_plus_erf(z: np.ndarray) -> np.ndarray:
    """1 + erf(z) in float64, relative error < 1e-8 for |z| <= 10 (also where it is tiny)."""
    z = np.asarray(z, dtype=np.float64)
    a = np.minimum(np.abs(z), _ERFC_MAX_ARG)
    t = 0.5 * a
    t += 1.0
    np.reciprocal(t, out=t)
    poly = np.full_like(t, _ERFC_POLY[-1])
    for coef in _ERFC_POLY[-2::-1]:
        poly *= t
        poly += coef
    a *= a
    poly -= a
    np.exp(poly, out=poly)
    poly *= t                                   # erfc(|z|)
    return np.where(z < 0, poly, 2.0 - poly)


def gelu_erf_(x: np.ndarray) -> None:
    """In place on (N, D): x = 0.5 x (1 + erf(x / sqrt 2)) (nn.GELU default), evaluated in float64."""
    rows = max(1, _GELU_CHUNK // max(1, x.shape[1]))
    for r in range(0, len(x), rows):
        part = x[r:r + rows]
        wide = part.astype(np.float64)
        part[...] = 0.5 * wide * one_plus_erf(wide * math.sqrt(0.5))


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x (N, in) @ w (out, in)^T + b -> (N, out) float32; w may be stored as float16 (upcast here)."""
    y = x @ (w.T if w.dtype == F32 else w.astype(F32).T)
    if b is not None:
        y += b
    return y

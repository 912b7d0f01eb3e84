"""Where the encoders compute: the array namespace (NumPy on the CPU, CuPy on an NVIDIA GPU, any
library of the Python array API standard in tests), moving weights there and rows back, and the
few operations the standard lacks, one named fallback each. Pure: numpy + array_api_compat."""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from types import MappingProxyType, ModuleType
from typing import Any

import array_api_compat as compat
import numpy as np

from phi4mm.errors import ConfigError
from phi4mm.keys import ENCODER_DEVICES

DEVICES = ENCODER_DEVICES  # --encoder-device: NumPy ("cpu"), or CuPy on the current CUDA device ("cuda")


def namespace_for(device: str) -> ModuleType:
    """The array namespace of an encoder device: NumPy ("cpu") or CuPy ("cuda")."""
    if device == "cpu":
        return compat.array_namespace(np.empty(0))
    if device == "cuda":
        try:
            import cupy
        except ImportError as exc:
            raise ConfigError("encoder device 'cuda' needs CuPy: pip install 'phi4mm[cuda]' "
                              f"(or the cupy-cuda12x / cupy-cuda13x wheel that matches your driver): {exc}",
                              key="encoder_device") from exc
        try:
            cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError without a driver or a device
            raise ConfigError(f"encoder device 'cuda': CuPy finds no usable CUDA device ({exc})",
                              key="encoder_device") from exc
        return compat.array_namespace(cupy.empty(0))
    raise ConfigError(f"encoder device is {device!r}, expected one of {DEVICES}", key="encoder_device")


def namespace(*arrays: Any) -> ModuleType:
    """The (array_api_compat-wrapped) namespace of arrays."""
    return compat.array_namespace(*arrays)


def is_numpy(xp: ModuleType) -> bool:
    return compat.is_numpy_namespace(xp)


def has_float16(xp: ModuleType) -> bool:
    """float16 is not in the standard; NumPy and CuPy have it (weights stored at half the memory)."""
    return hasattr(xp, "float16")


def to_host(x: Any) -> np.ndarray:
    """An array of any namespace as a NumPy array (a copy off a GPU; NumPy arrays as they are)."""
    if isinstance(x, np.ndarray):
        return x
    if compat.is_cupy_array(x):
        return x.get()
    return np.from_dlpack(x)


def move(obj: Any, xp: ModuleType) -> Any:
    """A copy of a weights dataclass (nested dataclasses, tuples and mappings included) with every
    NumPy array in namespace xp: float16 stays float16 where xp has it, else becomes float32.
    Under NumPy the same arrays are kept, not copied."""
    if isinstance(obj, np.ndarray):
        if is_numpy(xp):
            return obj
        if obj.dtype == np.float16 and not has_float16(xp):
            obj = obj.astype(np.float32)
        return xp.asarray(np.ascontiguousarray(obj))
    if isinstance(obj, tuple):
        return tuple(move(v, xp) for v in obj)
    if isinstance(obj, MappingProxyType | dict):
        return {k: move(v, xp) for k, v in obj.items()}
    if is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: move(getattr(obj, f.name), xp) for f in fields(obj)})
    return obj


def arrays_of(obj: Any) -> list[Any]:
    """Every array held by a weights dataclass (nested dataclasses, tuples and mappings included)."""
    if is_array(obj):
        return [obj]
    if isinstance(obj, MappingProxyType | dict):
        return [a for v in obj.values() for a in arrays_of(v)]
    if isinstance(obj, tuple):
        return [a for v in obj for a in arrays_of(v)]
    if is_dataclass(obj) and not isinstance(obj, type):
        return [a for f in fields(obj) for a in arrays_of(getattr(obj, f.name))]
    return []


# ---------------------------------------------------------------------------------------------
# Named fallbacks: what the standard does not have, or has in a form that would change NumPy's bits.

def row_sumsq(xp: ModuleType, x: Any) -> Any:
    """(N, D) -> (N,): sum of squares per row. NumPy: einsum (its own summation order, which
    today's rows were computed with); elsewhere: the standard's vecdot."""
    if is_numpy(xp):
        return np.einsum("ij,ij->i", x, x)
    return xp.vecdot(x, x)


def matmul_into(xp: ModuleType, a: Any, b: Any, out: Any) -> Any:
    """out[...] = a @ b. NumPy writes the product in place (no temporary); the standard has no out=."""
    if is_numpy(xp):
        return np.matmul(a, b, out=out)
    out[...] = a @ b
    return out


def contiguous(xp: ModuleType, x: Any) -> Any:
    """A C-contiguous copy (or x itself when it already is, under NumPy and CuPy)."""
    if is_numpy(xp):
        return np.ascontiguousarray(x)
    if compat.is_cupy_namespace(xp):
        import cupy
        return cupy.ascontiguousarray(x)
    return xp.asarray(x, copy=True)


def chunk_rows(xp: ModuleType, cpu_rows: int) -> int | None:
    """Rows per chunk of an element-wise pass: `cpu_rows` under NumPy (the temporaries stay in L2),
    None (the whole array at once) on a GPU, where each chunk costs kernel launches."""
    return cpu_rows if is_numpy(xp) else None


def scatter_rows(xp: ModuleType, target: Any, index: np.ndarray, rows: Any) -> None:
    """target[index, ...] = rows for a NumPy integer index (n,), rows (n, ...). NumPy and CuPy
    assign directly; the standard has no integer-array __setitem__, so elsewhere the whole target
    is rebuilt by one gather from [rows; target]."""
    if is_numpy(xp) or compat.is_cupy_namespace(xp):
        target[xp.asarray(index), ...] = rows
        return
    source = np.arange(target.shape[0]) + rows.shape[0]
    source[index] = np.arange(rows.shape[0])
    target[...] = xp.take(xp.concat([rows, target]), xp.asarray(source), axis=0)


def is_array(obj: Any) -> bool:
    """Whether obj is an array of a namespace the encoders can compute in."""
    return compat.is_array_api_obj(obj)


def nbytes(x: Any) -> int:
    """Bytes held by an array of any namespace (the standard's arrays have no nbytes)."""
    held = getattr(x, "nbytes", None)
    if held is not None:
        return int(held)
    xp = namespace(x)
    if xp.isdtype(x.dtype, "real floating"):
        bits = xp.finfo(x.dtype).bits
    elif xp.isdtype(x.dtype, "integral"):
        bits = xp.iinfo(x.dtype).bits
    else:
        bits = 8
    return math.prod(x.shape) * bits // 8

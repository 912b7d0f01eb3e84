"""The array namespaces the encoders' parity tests run in: NumPy (what ships on the CPU) and
array-api-strict, which refuses anything outside the Python array API standard, so code that passes
under it runs on CuPy (or any other conforming library) without a GPU having to prove it here."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from phi4mm import arrays

NAMESPACES = ("numpy", "array_api_strict")


def on(name: str, weights: Any) -> Any:
    """The weights moved to namespace `name` (NumPy: the weights themselves)."""
    return arrays.move(weights, arrays.namespace(importlib.import_module(name).asarray([0.0])))


def host(x: Any, name: str) -> np.ndarray:
    """A result as NumPy, after checking it was computed in namespace `name` (not silently NumPy)."""
    if name == "numpy":
        assert isinstance(x, np.ndarray), type(x)
    else:
        assert type(x).__module__.startswith(name), type(x)
    return arrays.to_host(x)

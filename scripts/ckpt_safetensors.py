"""Streaming safetensors writer for the checkpoint maker: bf16 data written chunk by chunk.

The safetensors format is an 8-byte little-endian header length, a JSON header with dtype,
shape and byte offsets per tensor, then the raw data. numpy has no bfloat16, so tensors
arrive as uint16 bit patterns and the header says "BF16".
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

ChunkSource = Callable[[], Iterable[np.ndarray]]


def plan_shards(sizes: dict[str, int], n_shards: int) -> list[list[str]]:
    """Split tensor names (in order) into n_shards groups of roughly equal byte size."""
    total = sum(sizes.values())
    target = total / n_shards
    shards: list[list[str]] = [[]]
    acc = 0
    for name, size in sizes.items():
        if acc >= target * len(shards) and len(shards) < n_shards:
            shards.append([])
        shards[-1].append(name)
        acc += size
    return shards


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]],
                      sources: dict[str, ChunkSource]) -> int:
    """Write one bf16 safetensors file; each source yields uint16 chunks in row-major order."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape, dtype=np.int64)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape in shapes.items():
            expected = int(np.prod(shape, dtype=np.int64))
            written = 0
            for chunk in _checked(sources[name]()):
                f.write(chunk.tobytes())
                written += chunk.size
            if written != expected:
                raise ValueError(f"{name}: wrote {written} values, shape {shape} needs {expected}")
    os.replace(tmp, path)
    return offset


def _checked(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    for chunk in chunks:
        if chunk.dtype != np.uint16:
            raise TypeError(f"chunks must be uint16 bf16 bits, got {chunk.dtype}")
        yield np.ascontiguousarray(chunk)

"""Read-only access to a hub-layout checkpoint: config files and safetensors, lazily, bf16-aware.

Tensors are read with plain file reads (no mmap), row chunk by row chunk, so converting an
11 GB checkpoint holds about one chunk in memory. Every key read is recorded, so the converter
can prove each key was used once or skipped with a reason (model-spec.md §2.1).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phi4mm.errors import ConfigError, ConversionError

_DTYPES = {"BF16": (np.uint16, 2), "F16": (np.float16, 2), "F32": (np.float32, 4)}
CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint16 bf16 bit patterns, rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return ((bits + rounding) >> np.uint32(16)).astype(np.uint16)


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bit patterns -> float32 (exact)."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def read_safetensors_header(path: Path) -> dict[str, TensorEntry]:
    """Parse one safetensors file's header into entries with absolute offsets."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or n > 100 << 20:
            raise ConversionError(f"{path}: not a safetensors file (header length {n})")
        header = json.loads(f.read(n))
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ConversionError(f"{path}: tensor {name} has dtype {info['dtype']}, expected one of {sorted(_DTYPES)}")
        begin, end = info["data_offsets"]
        entries[name] = TensorEntry(path, info["dtype"], tuple(info["shape"]), 8 + n + begin, end - begin)
    return entries


class Checkpoint:
    """A hub-layout directory: `config.json`, tokenizer files, one or more safetensors files."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.config = self._json("config.json", required=True)
        self.preprocessor = self._json("preprocessor_config.json", required=False)
        self.tensors = self._index()
        self.used: list[str] = []

    def _json(self, name: str, required: bool) -> dict:
        path = self.root / name
        if not path.exists():
            if required:
                raise ConfigError(f"{self.root} has no {name}; expected a Phi-4-multimodal checkpoint "
                                  "in hub layout", key=name)
            return {}
        return json.loads(path.read_text())

    def _index(self) -> dict[str, TensorEntry]:
        index = self.root / "model.safetensors.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in self.root.glob("*.safetensors"))
        if not files:
            raise ConfigError(f"{self.root} holds no *.safetensors files", key="model.safetensors")
        entries: dict[str, TensorEntry] = {}
        for name in files:
            entries.update(read_safetensors_header(self.root / name))
        return entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name).shape

    def _entry(self, name: str) -> TensorEntry:
        if name not in self.tensors:
            raise ConversionError(f"checkpoint {self.root} lacks tensor {name}")
        return self.tensors[name]

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 in its stored shape."""
        rows = list(self.iter_rows(name))
        return np.concatenate(rows).reshape(self.shape(name))

    def iter_rows(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """float32 chunks of whole rows along axis 0 (flattened trailing axes), in order."""
        for raw in self.iter_raw(name, chunk_bytes):
            yield bf16_bits_to_f32(raw) if raw.dtype == np.uint16 else raw.astype(np.float32)

    def iter_raw(self, name: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
        """Stored values (bf16 as uint16 bits), as 2-D chunks of whole rows."""
        e = self._entry(name)
        self.used.append(name)
        dtype, size = _DTYPES[e.dtype]
        rows = e.shape[0] if e.shape else 1
        row_values = int(np.prod(e.shape[1:], dtype=np.int64)) if len(e.shape) > 1 else 1
        if rows * row_values * size != e.nbytes:
            raise ConversionError(f"{name}: {e.nbytes} bytes stored, shape {e.shape} needs {rows * row_values * size}")
        step = max(1, chunk_bytes // (row_values * size))
        with open(e.file, "rb") as f:
            f.seek(e.offset)
            for start in range(0, rows, step):
                n = min(step, rows - start)
                buf = f.read(n * row_values * size)
                yield np.frombuffer(buf, dtype=dtype).reshape(n, row_values)

"""Read an encoder GGUF file (vision or audio) into float32 numpy arrays and a metadata dict.

The I/O shell of the numpy encoders (model-spec.md §6, §7): f16/bf16/quantized tensors are upcast
to float32 once, here; the pure modules `vision` and `audio` never open files. `meta_value` reads
their hyper-parameters out of the metadata, checked.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from phi4mm.errors import ConfigError, ModelNotFoundError

ARCH_KEY = "general.architecture"


@dataclass(frozen=True)
class GGUFContents:
    """Everything in one GGUF file: metadata values and float32 tensors in numpy (row-major) shape."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, np.ndarray]

    def value(self, key: str) -> Any:
        """The metadata value under `key`; ConfigError naming the key if absent."""
        if key not in self.metadata:
            raise ConfigError(f"{self.path}: GGUF metadata key {key!r} is missing", key=key)
        return self.metadata[key]

    def tensor(self, name: str) -> np.ndarray:
        """The float32 tensor `name`; ConfigError naming the tensor if absent."""
        if name not in self.tensors:
            raise ConfigError(f"{self.path}: GGUF tensor {name!r} is missing", key=name)
        return self.tensors[name]


def meta_value(metadata: Mapping[str, Any], prefix: str, name: str, kind: type | tuple[type, ...]) -> Any:
    """metadata[prefix + name], checked to be of `kind` (a bool is never an int); ConfigError naming
    the key if it is missing or of another type."""
    key = prefix + name
    if key not in metadata:
        raise ConfigError(f"GGUF metadata key {key!r} is missing", key=key)
    if not isinstance(metadata[key], kind) or isinstance(metadata[key], bool):
        raise ConfigError(f"GGUF metadata {key!r} is {metadata[key]!r}, expected {kind}", key=key)
    return metadata[key]


def read_gguf(path: str | Path, arch: str | None = None, keep_f16: bool = False) -> GGUFContents:
    """Load `path` fully into memory; with `arch`, require `general.architecture == arch`.
    `keep_f16=True` keeps F16 tensors as float16 (half the memory; the audio encoder upcasts them
    per block); every other type is still upcast to float32."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path} is not a readable GGUF file: {exc}", key=str(path)) from exc
    metadata = {name: field.contents() for name, field in reader.fields.items()
                if not name.startswith("GGUF.")}
    tensors = {}
    for t in reader.tensors:
        tensors[t.name] = _to_float32(t, keep_f16)
        _release_pages(reader.data, t.data_offset, t.n_bytes)
    contents = GGUFContents(path, metadata, tensors)
    if arch is not None and contents.value(ARCH_KEY) != arch:
        raise ConfigError(f"{path} holds architecture {contents.value(ARCH_KEY)!r}, expected {arch!r}",
                          key=ARCH_KEY)
    return contents


def _to_float32(tensor: gguf.ReaderTensor, keep_f16: bool = False) -> np.ndarray:
    """Copy one tensor out of the memory map as float32 (or float16 if it is F16 and `keep_f16`)
    with its numpy shape (ggml ne reversed)."""
    shape = tuple(int(n) for n in reversed(tensor.shape))
    kind = tensor.tensor_type
    if kind == gguf.GGMLQuantizationType.F32:
        data = np.array(tensor.data, dtype=np.float32)
    elif kind == gguf.GGMLQuantizationType.F16:
        data = tensor.data.astype(np.float16 if keep_f16 else np.float32)
    else:
        data = gguf.quants.dequantize(tensor.data, kind)
    return data.reshape(shape)


def _release_pages(mapped: np.ndarray, offset: int, n_bytes: int) -> None:
    """Drop the mapped pages of a tensor already copied out: they leave this process's resident
    set at once (the page cache keeps them), so loading never holds the file and its copy together."""
    raw = getattr(mapped, "_mmap", None)
    if raw is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = offset - offset % mmap.PAGESIZE
    end = min(offset + n_bytes, len(raw))
    if end > start:
        raw.madvise(mmap.MADV_DONTNEED, start, end - start)

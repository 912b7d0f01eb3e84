"""Read-only access to a checkpoint in either hub layout: config files and safetensors, lazily,
bf16-aware, under the original layout's names (`layouts`, model-spec.md §2.1-2.2).

Tensors are read with plain file reads (no mmap), row chunk by row chunk, so converting an
11 GB checkpoint holds about one chunk in memory. Every key read is recorded, so the converter
can prove each key was used once or skipped with a reason. A missing, truncated or corrupt file
raises CheckpointFileError naming it, before any tensor is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from phi4mm.converter import layouts
from phi4mm.converter.layouts import Layout
from phi4mm.errors import ConfigError, ConversionError

_DTYPES = {"BF16": (np.uint16, 2), "F16": (np.float16, 2), "F32": (np.float32, 4)}
CHUNK_BYTES = 64 << 20
MAX_HEADER_BYTES = 100 << 20
REQUIRED_FILES = ("config.json", "tokenizer.json")
OPTIONAL_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
                  "generation_config.json")


class CheckpointFileError(ConversionError):
    """A checkpoint file is missing, truncated or corrupt; `path` names it."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = Path(path)


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
    """Parse one safetensors file's header into entries with absolute offsets; the file must hold
    all the data its header describes."""
    if not path.is_file():
        raise CheckpointFileError(f"{path} is missing; download it again or copy the complete checkpoint", path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little") if size >= 8 else 0
        if n <= 0 or n > MAX_HEADER_BYTES or 8 + n > size:
            raise CheckpointFileError(f"{path}: not a complete safetensors file ({size} bytes, header length {n}); "
                                      "download it again", path)
        try:
            header = json.loads(f.read(n))
        except ValueError as exc:
            raise CheckpointFileError(f"{path}: unreadable safetensors header ({exc}); download it again",
                                      path) from exc
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise ConversionError(f"{path}: tensor {name} has dtype {info['dtype']}, expected one of {sorted(_DTYPES)}")
        begin, end = info["data_offsets"]
        entries[name] = TensorEntry(path, info["dtype"], tuple(info["shape"]), 8 + n + begin, end - begin)
    needed = max((e.offset + e.nbytes for e in entries.values()), default=8 + n)
    if size < needed:
        raise CheckpointFileError(f"{path} is truncated: {size} bytes, its header describes {needed}; "
                                  "the download was interrupted or the copy is incomplete; download it again", path)
    return entries


def weight_files(root: Path, layout: Layout) -> list[str]:
    """The safetensors files (relative to root) the checkpoint's index or folder names, adapters included."""
    index = root / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as exc:
            raise CheckpointFileError(f"{index} is not a readable safetensors index ({exc})", index) from exc
    else:
        files = sorted(p.name for p in root.glob("*.safetensors"))
    return files + [f"{folder}/{layouts.ADAPTER_WEIGHTS}" for _, folder in layout.adapters]


def missing_files(root: Path) -> list[str]:
    """Files conversion needs that root lacks (relative names); empty when complete."""
    root = Path(root)
    if not (root / "config.json").is_file():
        return ["config.json"]
    layout = layouts.layout_of(json.loads((root / "config.json").read_text()))
    needed = [*REQUIRED_FILES, *(f"{folder}/{layouts.ADAPTER_CONFIG}" for _, folder in layout.adapters)]
    weights = weight_files(root, layout)
    if not any(w.endswith(".safetensors") and "/" not in w for w in weights):
        needed.append("model.safetensors")
    return [f for f in needed + weights if not (root / f).is_file()]


class Checkpoint:
    """A checkpoint directory in either layout; `tensors` and `config` use the original layout's names."""

    def __init__(self, root: Path):
        self.root = Path(root)
        raw = self._json("config.json", required=True)
        self.layout = layouts.layout_of(raw)
        missing = missing_files(self.root)
        if missing:
            raise CheckpointFileError(f"{self.root} lacks {', '.join(missing)}, which conversion needs "
                                      f"({self.layout.name} layout); download or copy the complete checkpoint",
                                      self.root / missing[0])
        adapters = {folder: self._json(f"{folder}/{layouts.ADAPTER_CONFIG}", required=True)
                    for _, folder in self.layout.adapters}
        self.config = raw if self.layout is layouts.ORIGINAL else layouts.canonical_config(raw, adapters)
        self.preprocessor = (self._json("preprocessor_config.json", required=False)
                             or self._json("processor_config.json", required=False))
        self.files = [self.root / f for f in (*REQUIRED_FILES, *OPTIONAL_FILES) if (self.root / f).is_file()]
        self.tensors = self._index()
        self.used: list[str] = []

    def _json(self, name: str, required: bool) -> dict:
        path = self.root / name
        if not path.exists():
            if required:
                raise ConfigError(f"{self.root} has no {name}; expected a Phi-4-multimodal checkpoint", key=name)
            return {}
        try:
            return json.loads(path.read_text())
        except ValueError as exc:
            raise CheckpointFileError(f"{path} is not valid JSON ({exc})", path) from exc

    def _index(self) -> dict[str, TensorEntry]:
        adapter_of = {f"{folder}/{layouts.ADAPTER_WEIGHTS}": name for name, folder in self.layout.adapters}
        entries: dict[str, TensorEntry] = {}
        for name in weight_files(self.root, self.layout):
            path = self.root / name
            self.files.append(path)
            for key, entry in read_safetensors_header(path).items():
                canonical = self._canonical(key, name, adapter_of.get(name))
                if canonical in entries:
                    raise ConversionError(f"{path}: tensor {key} is also stored as {canonical} in "
                                          f"{entries[canonical].file}")
                entries[canonical] = entry
        self._check_index(entries)
        return entries

    def _canonical(self, key: str, file: str, adapter: str | None) -> str:
        if self.layout is layouts.ORIGINAL:
            return key
        if adapter is None:
            return layouts.from_native(key)
        return layouts.from_peft(key, adapter) or f"{file}:{key}"  # unrecognised: reported as unmapped

    def _check_index(self, entries: dict[str, TensorEntry]) -> None:
        index = self.root / "model.safetensors.index.json"
        if not index.exists():
            return
        stored = {(e.file.name, k) for k, e in entries.items()}
        for key, file in json.loads(index.read_text())["weight_map"].items():
            canonical = key if self.layout is layouts.ORIGINAL else layouts.from_native(key)
            if (file, canonical) not in stored:
                raise CheckpointFileError(f"{self.root / file} lacks tensor {key}, which "
                                          "model.safetensors.index.json places there; download it again",
                                          self.root / file)

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
                if len(buf) != n * row_values * size:
                    raise CheckpointFileError(f"{e.file} ended while reading {name}: it was truncated "
                                              "after conversion started", e.file)
                yield np.frombuffer(buf, dtype=dtype).reshape(n, row_values)

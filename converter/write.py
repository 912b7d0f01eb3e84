"""The only module of the converter that writes files: executes a FilePlan with gguf.GGUFWriter.

Header, metadata and tensor infos go through GGUFWriter; tensor data is streamed chunk by chunk
so a 1.2 GB embedding never sits in memory twice. Files are written as `NAME.partial` and renamed
when complete, so an interrupted conversion never leaves a file that looks valid.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from phi4mm.converter.checkpoint import Checkpoint, bf16_bits_to_f32, f32_to_bf16_bits
from phi4mm.converter.plan import FilePlan, TensorSpec
from phi4mm.errors import ConversionError

Progress = Callable[[str, int, int], None]
DISK_MARGIN_BYTES = 64 << 20  # headers, vocabulary strings, the journal: small next to the tensors
GGML_TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
              "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}


class DiskSpaceError(ConversionError):
    """The output directory's file system lacks the space a conversion needs."""

    def __init__(self, message: str, needed_bytes: int, free_bytes: int):
        super().__init__(message)
        self.needed_bytes = needed_bytes
        self.free_bytes = free_bytes


def ensure_free_space(out_dir: Path, needed_bytes: int) -> None:
    """Raise DiskSpaceError before writing anything when out_dir's file system has too little room."""
    needed = needed_bytes + DISK_MARGIN_BYTES
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise DiskSpaceError(f"converting needs about {needed / 1e9:.2f} GB free in {out_dir}, but only "
                             f"{free / 1e9:.2f} GB are free; free some space or choose another output "
                             "directory (for the conversion cache: PHI4MM_CACHE)", needed, free)


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def write_plan(plan: FilePlan, path: Path, ckpt: Checkpoint, progress: Progress | None = None,
               stage: str = "") -> int:
    """Write plan to path atomically; returns the file size in bytes."""
    tmp = partial_path(path)
    writer = gguf.GGUFWriter(tmp, plan.arch)
    for key, value in plan.metadata.items():
        _add_metadata(writer, key, value)
    for t in plan.tensors:
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=GGML_TYPES[t.out_type])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout = writer.fout[0]
    done, total = 0, plan.nbytes
    try:
        for t in plan.tensors:
            _pad(fout, writer.data_alignment)
            written = 0
            for chunk in _tensor_chunks(t, ckpt):
                fout.write(chunk.tobytes())
                written += chunk.nbytes
                done += chunk.nbytes
                if progress:
                    progress(stage or plan.filename, done, total)
            if written != t.nbytes:
                raise ConversionError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
            _pad(fout, writer.data_alignment)
        writer.close()
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path.stat().st_size


def write_json_atomic(path: Path, document: dict) -> None:
    tmp = partial_path(path)
    tmp.write_text(json.dumps(document, indent=2))
    os.replace(tmp, path)


def copy_atomic(src: Path, dst: Path) -> dict:
    """Copy a file under a temporary name, then rename; returns its manifest entry."""
    tmp = partial_path(dst)
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return {"name": dst.name, "bytes": dst.stat().st_size}


def _pad(fout: Any, alignment: int) -> None:
    fout.write(b"\0" * (-fout.tell() % alignment))


def _tensor_chunks(t: TensorSpec, ckpt: Checkpoint) -> Iterator[np.ndarray]:
    if t.values is not None:
        yield convert_chunk(np.ascontiguousarray(t.values, dtype=np.float32).reshape(1, -1), t.out_type)
        return
    assert t.source is not None
    row = t.shape[-1]
    for raw in ckpt.iter_raw(t.source):
        yield convert_chunk(raw.reshape(-1, row), t.out_type)


def convert_chunk(raw: np.ndarray, out_type: str) -> np.ndarray:
    """Rows of stored values (bf16 bits as uint16, f16 or f32) -> bytes-ready array of out_type."""
    if out_type == "bf16":
        return raw if raw.dtype == np.uint16 else f32_to_bf16_bits(raw)
    values = bf16_bits_to_f32(raw) if raw.dtype == np.uint16 else raw.astype(np.float32)
    if out_type == "f32":
        return values
    if out_type == "f16":
        half = values.astype(np.float16)
        if not np.isfinite(half).all() and np.isfinite(values).all():
            raise ConversionError("a value exceeds the float16 range; convert with --encoder-type f32 or --quant bf16")
        return half
    if out_type == "q8_0":
        return gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
    raise ConversionError(f"unknown output type {out_type!r}")



def _add_metadata(writer: gguf.GGUFWriter, key: str, value: Any) -> None:
    """Python value -> typed GGUF key: ints are u32 (i32 if negative), floats f32, lists arrays."""
    T = gguf.GGUFValueType
    if key == "general.type":
        writer.add_type(value)
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        writer.add_key_value(key, value, T.UINT32 if value >= 0 else T.INT32)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        writer.add_array(key, list(value))
    else:
        raise ConversionError(f"metadata {key}: unsupported value type {type(value).__name__}")

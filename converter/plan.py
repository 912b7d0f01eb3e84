"""What an output GGUF file holds: metadata and an ordered list of tensors with their sources.

Plans are pure data: the text/lora/vision/audio modules build them, `write` executes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

OUT_TYPES = ("f32", "f16", "bf16", "q8_0")
BYTES_PER_VALUE = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32}
# Rough output/input size of llama.cpp quantizing a bf16 file: progress and disk-space estimates only.
QUANT_SIZE_RATIO = {"q8_0": 0.53, "q6_k": 0.42, "q5_k_m": 0.36, "q4_k_m": 0.32, "f16": 1.0, "bf16": 1.0, "f32": 2.0}


@dataclass(frozen=True)
class TensorSpec:
    name: str                                  # GGUF tensor name
    shape: tuple[int, ...]                     # numpy shape as written (ggml ne is reversed)
    out_type: str                              # one of OUT_TYPES
    source: str | None = None                  # hub key, read in row chunks
    source_shape: tuple[int, ...] | None = None  # asserted against the checkpoint before writing
    values: np.ndarray | None = field(default=None, compare=False)  # generated tensors

    @property
    def n_values(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return int(self.n_values * BYTES_PER_VALUE[self.out_type])


@dataclass(frozen=True)
class FilePlan:
    filename: str
    arch: str
    metadata: dict[str, Any]
    tensors: tuple[TensorSpec, ...]

    @property
    def sources(self) -> list[str]:
        return [t.source for t in self.tensors if t.source is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def q8_0_fits(shape: tuple[int, ...]) -> bool:
    """Q8_0 packs blocks of 32 along the innermost (ggml ne0) axis."""
    return shape[-1] % 32 == 0

"""Shared fixtures: a tiny random checkpoint in the hub layout, written by the project's own
checkpoint maker, its conversions, and the transformers reference (reference tests only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

TINY_N_ORIG = 256  # original_max_position_embeddings of the tiny checkpoint

# Tolerance of tests that compare our logits with our own: the same prompt decoded whole, then again
# from its cached KV prefix (only the last token decoded again, so the batch shapes differ and
# llama.cpp's kernels round differently, by an amount that depends on the CPU). Measured with
# scripts/measure_drift.py on the tiny f32 conversion (Xeon with AVX-512 and AMX, 1 and 2 threads):
# at most 8.1e-5 of max|logit| over 22 cases (a 200x100 image; median 2.4e-7), and 1.24e-5 for
# tests/test_parity_image.py's 640x360 picture, here and on a second machine of our kind. The
# nearest different prompts are 3.5e-2 (another 1.5 s clip) to 7.1e-1 (another image of the same
# size) apart. 1e-3: 12x the largest drift measured, 35x below the nearest control.
REUSE_TOLERANCE = 1e-3


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from make_checkpoint import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), size="tiny", seed=0, shards=2)


def _converted(tmp_path_factory: pytest.TempPathFactory, ckpt: Path, quant: str, encoder_type: str) -> Path:
    from phi4mm.converter.convert import convert

    out = tmp_path_factory.mktemp(f"tiny-{quant}")
    convert(ckpt, out, quant=quant, encoder_type=encoder_type, n_threads=2)
    return out


@pytest.fixture(scope="session")
def tiny_f32(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> Path:
    return _converted(tmp_path_factory, tiny_ckpt, "f32", "f32")


@pytest.fixture(scope="session")
def tiny_q4(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> Path:
    return _converted(tmp_path_factory, tiny_ckpt, "q4_k_m", "f16")


@pytest.fixture(scope="session")
def model_f32(tiny_f32: Path):
    from phi4mm import Phi4MM

    model = Phi4MM.from_pretrained(tiny_f32, n_ctx=1024, n_threads=2)
    yield model
    model.close()


@pytest.fixture(scope="session")
def reference(tiny_ckpt: Path):
    from reference_model import Reference  # needs the 'reference' extra: torch, transformers

    return Reference(tiny_ckpt)

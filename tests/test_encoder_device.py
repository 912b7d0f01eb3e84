"""The encoder device (--encoder-device, EngineSettings.encoder_device): the namespace it names,
its errors, and the engine's encoders running in a namespace other than NumPy. No GPU is needed:
array-api-strict stands in for CuPy, so what the engine does around the encoders (moving the
weights once, bringing the rows back as NumPy for the row cache and llama.cpp) is proven here."""

from __future__ import annotations

import sys

import array_api_strict
import numpy as np
import pytest
from PIL import Image

from phi4mm import arrays, media
from phi4mm.engine.encoders import Encoders
from phi4mm.errors import ConfigError
from phi4mm.files import ModelFiles
from phi4mm.modes import mode_for
from phi4mm.prompt import MediaRef


def test_cpu_is_numpy():
    assert arrays.is_numpy(arrays.namespace_for("cpu"))


def test_cuda_without_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError, installed or not
    with pytest.raises(ConfigError, match=r"phi4mm\[cuda\]"):
        arrays.namespace_for("cuda")


def test_unknown_device_is_a_config_error():
    with pytest.raises(ConfigError, match="expected one of"):
        arrays.namespace_for("tpu")


@pytest.fixture(scope="module")
def strict_encoders(tiny_q4):
    """The engine's Encoders with "cuda" mapped to array-api-strict (f16 files, as shipped)."""
    patch = pytest.MonkeyPatch()
    strict = arrays.namespace(array_api_strict.asarray([0.0]))
    patch.setattr(arrays, "namespace_for", lambda device: strict if device == "cuda" else np)
    try:
        yield Encoders(ModelFiles.from_dir(tiny_q4), 64 << 20, device="cuda")
    finally:
        patch.undo()


def test_engine_encoders_in_another_namespace_give_the_cpu_rows(tiny_q4, strict_encoders):
    cpu = Encoders(ModelFiles.from_dir(tiny_q4), 64 << 20)
    rng = np.random.default_rng(5)
    picture = Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    clip = media.Waveform(rng.standard_normal(16000).astype(np.float32) * 0.1, 16000)
    limits = media.MediaLimits()
    for ref, mode in ((MediaRef("image", picture), mode_for(1, 0)),
                      (MediaRef("audio", clip), mode_for(0, 1))):
        ours = strict_encoders.encode(ref, mode, None, limits).rows
        expected = cpu.encode(ref, mode, None, limits).rows
        assert isinstance(ours, np.ndarray) and ours.dtype == np.float32   # back on the host
        assert ours.shape == expected.shape
        assert np.abs(ours - expected).max() <= 1e-5 * np.abs(expected).max()
    # the weights live in the device namespace (float32 there: the standard has no float16)
    assert type(strict_encoders.vision.patch_w).__module__.startswith("array_api_strict")
    assert set(strict_encoders.weight_bytes()) == {"vision", "audio"}

"""phi4mm.audio.features: resampling, log-mel and token counts (model-spec.md §7.1), the log-mel
against the original extractor's numerics (tests/reference_audio.py; reference-notes.md §5.2, §5.4).

Tolerance: log-mel values (0 to ~28) as max |ours - reference|, MEL_TOL = 2e-5 absolute (observed
1.9e-6, one float32 ulp at ~20, at 16 kHz, 48 kHz stereo and 8 kHz, every length). Negative
controls: no pre-emphasis moves them by 13.2; the native bank's unfixed bin 246 moves mel channel
79 by 6.8e-3 (and no other channel).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from phi4mm.audio import features
from phi4mm.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from namespaces import NAMESPACES, host  # noqa: E402
from reference_audio import make_signal  # noqa: E402  (numpy only; torch is imported lazily)

MEL_TOL = 2e-5
LENGTHS_16K = {"one-frame": 400, "1s": 16000, "3s-ragged": 3 * 16000 + 123}


@pytest.fixture(scope="module")
def ref():
    import reference_audio  # torch + transformers

    reference_audio.native_extractor()  # fail here, not in the middle of a test, when missing
    return reference_audio


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.mark.reference
@pytest.mark.parametrize("namespace", NAMESPACES)
@pytest.mark.parametrize("n_samples", LENGTHS_16K.values(), ids=LENGTHS_16K.keys())
def test_log_mel_16k_matches_reference(ref, n_samples, namespace):
    wav = make_signal(n_samples / 16000, 16000, seed=n_samples)
    wave, rate_hz = features.to_model_rate(wav, 16000)
    ours = host(features.log_mel(importlib.import_module(namespace).asarray(wave), rate_hz), namespace)
    expected = ref.reference_log_mel(wav, 16000)
    assert ours.shape == ((n_samples - 400) // 160 + 1, 80) and ours.dtype == np.float32
    assert max_abs(ours, expected) < MEL_TOL


def test_hamming_is_numpys_bit_for_bit():
    """The window computed by hand (not in the array API standard) is numpy.hamming exactly."""
    for win in (1, 2, 200, 400):
        np.testing.assert_array_equal(features.hamming(np, win), np.hamming(win))


@pytest.mark.reference
@pytest.mark.parametrize("seconds", [1.0, 2.345])
def test_log_mel_48k_stereo_matches_reference(ref, seconds):
    """48 kHz stereo: the decoder's channel mean, then resample_poly(1, 3) = the original's call."""
    stereo = make_signal(seconds, 48000, seed=7, channels=2)          # (N, 2)
    ours = features.log_mel(*features.to_model_rate(stereo.mean(axis=1), 48000))
    assert max_abs(ours, ref.reference_log_mel(stereo, 48000)) < MEL_TOL


@pytest.mark.reference
@pytest.mark.parametrize("n_samples", [200, 8000, 2 * 8000 + 77])
def test_log_mel_8k_fillzero_matches_reference(ref, n_samples):
    wav = make_signal(n_samples / 8000, 8000, seed=n_samples)
    wave, rate_hz = features.to_model_rate(wav, 8000)
    assert rate_hz == 8000
    ours = features.log_mel(wave, rate_hz)
    assert ours.shape == ((n_samples - 200) // 80 + 1, 80)
    assert max_abs(ours, ref.reference_log_mel(wav, 8000)) < MEL_TOL


@pytest.mark.reference
def test_without_pre_emphasis_the_comparison_fails(ref):
    wav = make_signal(1.0, 16000, seed=3)
    ours = features.log_mel(*features.to_model_rate(wav, 16000), pre_emphasis=0.0)
    assert max_abs(ours, ref.reference_log_mel(wav, 16000)) > 1000 * MEL_TOL


@pytest.mark.reference
def test_unfixed_native_bank_differs_in_channel_79_only(ref):
    """reference-notes §5.2: the native bank's weight on FFT bin 246 is visible, and only there."""
    wav = make_signal(1.0, 16000, seed=4)
    ours = features.log_mel(*features.to_model_rate(wav, 16000))
    native = ref.reference_log_mel(wav, 16000, extractor=ref.native_extractor(fix_bin_246=False))
    assert max_abs(ours[:, :79], native[:, :79]) < MEL_TOL
    assert max_abs(ours[:, 79], native[:, 79]) > 10 * MEL_TOL


@pytest.mark.reference
def test_mel_bank_equals_fixed_native_bank(ref):
    bank = ref.native_extractor().mel_filters                # (257, 80)
    np.testing.assert_allclose(features.mel_bank(), bank.T, rtol=0, atol=1e-6)
    assert (features.mel_bank()[:, 246:] == 0).all() and (features.mel_bank()[:, 0] == 0).all()


@pytest.mark.parametrize("seconds, tokens", [(1, 13), (10, 125), (30, 375)])
def test_token_count(seconds, tokens):
    frames = features.n_frames(seconds * 16000, 16000)
    assert features.n_audio_tokens(frames) == tokens
    assert len(features.log_mel(np.zeros(seconds * 16000, np.float32), 16000)) == frames


def test_token_count_formula_edges():
    assert [features.n_audio_tokens(n) for n in (1, 7, 8, 9, 16, 17)] == [1, 1, 1, 2, 2, 3]
    assert features.n_frames(400, 16000) == 1 and features.n_frames(559, 16000) == 1
    assert features.n_frames(560, 16000) == 2 and features.n_frames(280, 8000) == 2


@pytest.mark.parametrize("rate_hz", [16000, 8000])
def test_model_rates_are_kept(rate_hz):
    wav = make_signal(0.5, rate_hz, seed=1)
    out, out_rate = features.to_model_rate(wav, rate_hz)
    assert out_rate == rate_hz and out.dtype == np.float32
    np.testing.assert_array_equal(out, wav.astype(np.float32))


@pytest.mark.parametrize("rate_hz", [44100, 22050, 11025, 48000, 32000, 12000, 6000])
def test_other_rates_resample_to_16k_keeping_the_pitch(rate_hz):
    """A 1 kHz tone stays at 1 kHz: the rate is converted, not relabelled (§7.1 step 2)."""
    t = np.arange(rate_hz) / rate_hz                      # 1 s
    out, out_rate = features.to_model_rate(np.sin(2 * np.pi * 1000.0 * t), rate_hz)
    assert out_rate == 16000 and abs(len(out) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(out[1000:-1000] * np.hanning(len(out) - 2000)))
    peak_hz = np.argmax(spectrum) * 16000 / (len(out) - 2000)
    assert abs(peak_hz - 1000.0) < 2.0


@pytest.mark.parametrize("samples, rate_hz, message", [
    (np.zeros((1600, 2)), 16000, r"shape \(1600, 2\).*1-D"),
    (np.zeros(0), 16000, "0 samples"),
    (np.zeros(399), 16000, "399 samples at 16000 Hz.*at least 400"),
    (np.zeros(199), 8000, "199 samples at 8000 Hz.*at least 200"),
    (np.zeros(1099), 44100, "399 samples at 16000 Hz.*1099 at 44100 Hz"),
    (np.zeros(1600), 0, "sample rate is 0"),
    (np.zeros(1600), 16000.0, "sample rate is 16000.0"),
])
def test_to_model_rate_rejects(samples, rate_hz, message):
    with pytest.raises(InputError, match=message):
        features.to_model_rate(samples, rate_hz)


def test_log_mel_rejects_other_rates_and_short_input():
    with pytest.raises(InputError, match="44100 Hz, expected one of"):
        features.log_mel(np.zeros(4000, np.float32), 44100)
    with pytest.raises(InputError, match="at least 400 samples"):
        features.log_mel(np.zeros(300, np.float32), 16000)


def test_log_mel_floor_and_chunking(monkeypatch):
    """Silence hits the log(max(., 1)) floor exactly; chunked FFT batches equal one batch (up to
    the BLAS rounding of the mel product, which depends on the number of rows)."""
    assert (features.log_mel(np.zeros(1600, np.float32), 16000) == 0).all()
    wav = make_signal(2.0, 16000, seed=5).astype(np.float32)
    whole = features.log_mel(wav, 16000)
    monkeypatch.setattr(features, "FRAMES_PER_CHUNK", 37)
    np.testing.assert_allclose(features.log_mel(wav, 16000), whole, rtol=1e-6, atol=0)

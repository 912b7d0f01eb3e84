"""Waveform -> log-mel features: resampling to the model rate (NumPy, on the host) and the SpeechLib
80-bin log-mel of `Phi4MMAudioFeatureExtractor` (model-spec.md §7.1) in any array API namespace.
Pure: numpy + scipy.signal + array_api_compat, no I/O.
"""

from __future__ import annotations

import math
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from phi4mm.arrays import is_array, namespace
from phi4mm.errors import InputError

F32 = np.float32
Array = Any  # an array of the caller's namespace
MODEL_RATES_HZ = (16000, 8000)   # rates the extractor takes as they are (§7.1 step 2)
N_MELS = 80
MEL_FMAX_HZ = 7690.0             # SpeechLib bank: fmin 0, fmax 7690 Hz (§7.1 step 5)
N_FFT_16K = 512                  # the mel bank is laid out on the 257 bins of a 512-point FFT
FRAMES_PER_TOKEN = 8             # subsampling x8 in the Conformer (§7.2 step 2)
FRAMES_PER_CHUNK = 4096          # frames per FFT batch: bounds the float64 spectrum at ~17 MB


# (win, hop, n_fft) per model rate; both rates give 100 frames a second (§7.1 steps 3, 7)
FRAMING = {16000: (400, 160, 512), 8000: (200, 80, 256)}


def to_model_rate(samples: np.ndarray, sample_rate_hz: int) -> tuple[np.ndarray, int]:
    """Mono waveform (N,) at any rate -> (float32 (N',), 16000 or 8000).

    16 kHz and 8 kHz are kept as they are (8 kHz takes the "fillzero" path of §7.1 step 7). Any
    other rate is resampled to 16 kHz with `resample_poly` at the exact reduced ratio. For integer
    multiples of 16 kHz (32k, 48k) this is the reference's own call; for 44.1k, 22.05k and
    11.025k it deliberately departs from the reference, which mislabels the rate (§7.1 step 2).
    Rates below 8 kHz, which the reference refuses, are resampled up to 16 kHz as well.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise InputError(f"audio samples have shape {samples.shape}, expected a 1-D mono waveform "
                         "(mix channels down first)", param="audio")
    if isinstance(sample_rate_hz, bool) or not isinstance(sample_rate_hz, (int, np.integer)) \
            or sample_rate_hz <= 0:
        raise InputError(f"audio sample rate is {sample_rate_hz!r}, expected a positive integer "
                         "in Hz", param="audio")
    if samples.size == 0:
        raise InputError("the audio clip has 0 samples, expected at least 25 ms of audio", param="audio")
    rate_hz = int(sample_rate_hz)
    if rate_hz in MODEL_RATES_HZ:
        out = samples.astype(F32, copy=False)
    else:
        g = math.gcd(16000, rate_hz)
        out = resample_poly(samples.astype(np.float64), 16000 // g, rate_hz // g).astype(F32)
        rate_hz = 16000
    win = FRAMING[rate_hz][0]
    if len(out) < win:
        raise InputError(f"the audio clip has {len(out)} samples at {rate_hz} Hz (from {samples.size} "
                         f"at {sample_rate_hz} Hz), expected at least {win} (one 25 ms frame)",
                         param="audio")
    return out, rate_hz


def n_frames(n_samples: int, sample_rate_hz: int) -> int:
    """Feature frames of a clip of `n_samples` at a model rate: (N - win) // hop + 1 (§7.1 step 3)."""
    win, hop, _ = FRAMING[sample_rate_hz]
    return max(0, (n_samples - win) // hop + 1)


def n_audio_tokens(n_frames: int) -> int:
    """Audio placeholder tokens (= Conformer output rows) for `n_frames` feature frames: ceil(T/8)."""
    return -(-n_frames // FRAMES_PER_TOKEN)


@cache
def mel_bank() -> np.ndarray:
    """(80, 257) float32 SpeechLib triangular filters in mel space over FFT bins [1, 246) (§7.1 step 5)."""
    sample_rate_hz = 16000

    def mel(f_hz: np.ndarray | float) -> np.ndarray | float:
        return 1127.0 * np.log(1.0 + np.asarray(f_hz) / 700.0)

    k_lo = int(0 * N_FFT_16K / sample_rate_hz + 0.5) + 1             # 1
    k_hi = int(MEL_FMAX_HZ * N_FFT_16K / sample_rate_hz + 0.5)        # 246, exclusive
    centres = np.linspace(mel(0.0), mel(MEL_FMAX_HZ), N_MELS + 2)     # (82,)
    spacing = (mel(MEL_FMAX_HZ) - mel(0.0)) / (N_MELS + 1)
    bins = np.arange(k_lo, k_hi)
    bin_mel = 1127.0 * np.log(1.0 + bins * sample_rate_hz / (N_FFT_16K * 700.0))  # (245,)
    left, centre, right = centres[:-2, None], centres[1:-1, None], centres[2:, None]
    inside = (left < bin_mel) & (bin_mel < right)                     # (80, 245)
    bank = np.zeros((N_MELS, N_FFT_16K // 2 + 1), dtype=F32)
    bank[:, k_lo:k_hi] = np.where(inside, 1.0 - np.abs(centre - bin_mel) / spacing, 0.0)
    bank.flags.writeable = False
    return bank


def hamming(xp: ModuleType, win: int) -> Array:
    """Symmetric Hamming window 0.54 + 0.46 cos(pi n / (win - 1)), n = 1-win, 3-win, ..., win-1,
    in float64 as the reference's; computed here (not in the array API standard) with the operations
    and order of numpy.hamming, so under NumPy it is that window bit for bit."""
    if win == 1:
        return xp.ones(1, dtype=xp.float64)
    n = xp.arange(1 - win, win, 2, dtype=xp.float64)
    return 0.54 + 0.46 * xp.cos(math.pi * n / (win - 1))


def log_mel(samples: Array, sample_rate_hz: int, pre_emphasis: float = 0.97) -> Array:
    """Mono waveform (N,) at 16000 or 8000 Hz -> (T, 80) float32 log-mel, T = (N - win) // hop + 1,
    in the samples' array namespace (NumPy for anything that is not an array).

    §7.1 steps 3-7: per-frame pre-emphasis (y'[0] = y[0] - 0.97 y[0]), x32768, symmetric Hamming,
    power spectrum, SpeechLib mel bank, log(max(., 1)). `pre_emphasis=0` disables it (for tests).
    Precision follows the reference: frames in float32, window and FFT in float64, the spectrum
    rounded to complex64, power and mel product in float32.
    """
    if sample_rate_hz not in FRAMING:
        raise InputError(f"log-mel sample rate is {sample_rate_hz!r} Hz, expected one of {MODEL_RATES_HZ} "
                         "(call to_model_rate first)", param="audio")
    if not is_array(samples):
        samples = np.asarray(samples)
    xp = namespace(samples)
    samples = xp.astype(samples, xp.float32, copy=False)
    win, hop, _ = FRAMING[sample_rate_hz]
    if samples.ndim != 1 or samples.shape[0] < win:
        raise InputError(f"audio samples have shape {tuple(samples.shape)}, expected a 1-D waveform of at "
                         f"least {win} samples at {sample_rate_hz} Hz", param="audio")
    n_frames = (samples.shape[0] - win) // hop + 1
    bank_t = xp.asarray(np.ascontiguousarray(mel_bank().T))                   # (257, 80)
    window = hamming(xp, win)
    out = xp.empty((n_frames, N_MELS), dtype=xp.float32)                      # (T, 80)
    for start in range(0, n_frames, FRAMES_PER_CHUNK):
        stop = min(start + FRAMES_PER_CHUNK, n_frames)
        starts = np.arange(start, stop) * hop                                 # frame t: samples [t hop, t hop + win)
        index = (starts[:, None] + np.arange(win)[None, :]).reshape(-1)
        frames = xp.reshape(xp.take(samples, xp.asarray(index)), (stop - start, win))  # (t, win)
        power = _power_spectrum(frames, sample_rate_hz, float(np.float32(pre_emphasis)), window)  # (t, 257)
        fbank = power @ bank_t
        out[start:stop, ...] = xp.log(xp.maximum(fbank, xp.ones((), dtype=xp.float32)))
    return out


def _power_spectrum(frames: Array, sample_rate_hz: int, pre_emphasis: float, window: Array) -> Array:
    """(t, win) float32 frames -> (t, 257) float32 |rfft|^2 on the 16 kHz bin layout (§7.1 step 4)."""
    xp = namespace(frames)
    win, _, n_fft = FRAMING[sample_rate_hz]
    y = xp.empty(frames.shape, dtype=xp.float32)                # (t, win)
    y[:, 1:] = frames[:, 1:] - pre_emphasis * frames[:, :-1]
    y[:, 0] = frames[:, 0] - pre_emphasis * frames[:, 0]
    y *= 32768.0
    spectrum = xp.astype(xp.fft.rfft(y * window, n=n_fft, axis=1), xp.complex64)  # (t, n_fft/2+1)
    magnitude = xp.abs(spectrum)                                # float32
    power = xp.zeros((frames.shape[0], N_FFT_16K // 2 + 1), dtype=xp.float32)
    if n_fft == N_FFT_16K:
        power[...] = magnitude * magnitude
    else:  # 8 kHz fillzero: keep bins 0..127 (0-3969 Hz), zeros up to 8 kHz, Nyquist dropped (§7.1 step 7)
        keep = n_fft // 2
        power[:, :keep] = magnitude[:, :keep] * magnitude[:, :keep]
    return power

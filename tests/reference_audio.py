"""The audio reference for tests: log-mel features as the original extractor computes them
(model-spec.md §7.1) and the Conformer / projector outputs of transformers' native model.

Test-only: imports torch and transformers (inside the functions that need them, so that
`make_signal` works without them), which the package never does.
* 16 kHz log-mel: transformers' `Phi4MultimodalFeatureExtractor`, with its mel bank's FFT bin 246
  zeroed in channel 79 (reference-notes.md §5.2) to equal the original SpeechLib bank.
* The mono mixdown and the resampling as the ORIGINAL extractor does them (§7.1 steps 1-2),
  since the native extractor refuses anything but 16 kHz mono (reference-notes.md §5.4).
* 8 kHz "fillzero" (§7.1 step 7): written here in torch from the spec text, independently of
  phi4mm.audio.features.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.signal import resample_poly

AUDIO_TOKEN_ID = 200011


def make_signal(seconds: float, rate_hz: int, seed: int, channels: int = 1) -> np.ndarray:
    """Seeded float64 waveform, (N,) or (N, channels): four tones below 0.45 * rate plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    out = np.zeros((len(t), channels))
    for c in range(channels):
        for _ in range(4):
            f_hz, amp, phase = rng.uniform(60, 0.45 * rate_hz), rng.uniform(0.02, 0.2), rng.uniform(0, 6.3)
            out[:, c] += amp * np.sin(2 * np.pi * f_hz * t + phase)
        out[:, c] += 0.01 * rng.standard_normal(len(t))
    return out[:, 0] if channels == 1 else out


def native_extractor(fix_bin_246: bool = True) -> Any:
    """transformers' Phi4MultimodalFeatureExtractor with (default) or without the SpeechLib fix
    of its mel bank."""
    from transformers import Phi4MultimodalFeatureExtractor
    extractor = Phi4MultimodalFeatureExtractor()
    if fix_bin_246:
        bank = np.array(extractor.mel_filters, copy=True)   # (257, 80)
        bank[246, 79] = 0.0
        extractor.mel_filters = bank
    return extractor


def original_mono_and_rate(wav: np.ndarray, fs: int) -> tuple[np.ndarray, int]:
    """§7.1 steps 1-2 exactly as the original: squeeze, channel mean, resample_poly(wav, 1, fs // r)."""
    wav = np.squeeze(wav)
    if wav.ndim == 2:
        wav = wav.mean(1)
    if fs > 16000:
        return resample_poly(wav, 1, fs // 16000), 16000
    if 8000 < fs < 16000:
        return resample_poly(wav, 1, fs // 8000), 8000
    if fs < 8000:
        raise ValueError(f"the original extractor refuses {fs} Hz")
    return wav, fs


def reference_log_mel(wav: np.ndarray, fs: int, extractor: Any = None) -> np.ndarray:
    """(N,) or (N, channels) waveform at fs -> (T, 80) float32 log-mel as the original computes it."""
    extractor = native_extractor() if extractor is None else extractor
    mono, rate_hz = original_mono_and_rate(wav, fs)
    if rate_hz == 8000:
        return log_mel_8k(mono, np.asarray(extractor.mel_filters, dtype=np.float32))
    batch = extractor(mono, sampling_rate=16000, return_tensors="pt")
    return batch["audio_input_features"][0].numpy()


def log_mel_8k(wav: np.ndarray, bank_fm: np.ndarray) -> np.ndarray:
    """§7.1 step 7 in torch: 200-sample frames every 80, in-frame pre-emphasis, x32768, Hamming(200),
    rfft n=256; the first 128 bins then 129 zero bins give the 16 kHz layout; bank (257, 80)."""
    import torch
    frames = torch.tensor(wav, dtype=torch.float32).unfold(0, 200, 80)       # (T, 200)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)            # y[n-1], y[0] for n = 0
    frames = (frames - 0.97 * previous) * 32768
    window = torch.hamming_window(200, periodic=False, dtype=torch.float64)
    spectrum = torch.fft.rfft(window * frames, n=256, dim=1).to(torch.complex64)  # (T, 129)
    spectrum = torch.cat([spectrum[:, :128], torch.zeros(len(spectrum), 129, dtype=torch.complex64)], dim=1)
    power = torch.abs(spectrum) ** 2                                          # (T, 257)
    return torch.log(torch.clamp(power @ torch.from_numpy(bank_fm), min=1.0)).numpy()


def conformer_output(audio_embed: Any, features_tf: np.ndarray) -> np.ndarray:
    """(T, 80) log-mel -> (ceil(T/8), A): the native Conformer (`audio_embed.encoder`), one clip."""
    import torch
    with torch.no_grad():
        return audio_embed.encoder(torch.from_numpy(features_tf)[None], None)[0].numpy()


def projected_rows(audio_embed: Any, features_tf: np.ndarray, head: str) -> np.ndarray:
    """(T, 80) log-mel -> (ceil(T/8), H): the rows the native model splices at the audio tokens,
    with the `speech` or `vision` projector (audio_projection_mode)."""
    import torch
    n_tokens = math.ceil(len(features_tf) / 8)
    hidden = audio_embed.up_proj_for_speech.out_features
    with torch.no_grad():
        spliced = audio_embed(input_ids=torch.full((1, n_tokens), AUDIO_TOKEN_ID),
                              inputs_embeds=torch.zeros(1, n_tokens, hidden),
                              audio_input_features=torch.from_numpy(features_tf)[None],
                              audio_embed_sizes=torch.tensor([n_tokens]), audio_attention_mask=None,
                              audio_projection_mode=head)
    return spliced[0].numpy()

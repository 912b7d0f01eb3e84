"""phi4mm.audio.encoder (+ phi4mm.weights) against transformers' Phi4MultimodalAudioEmbedding, stage
by stage, on the tiny checkpoint's audio GGUF (model-spec.md §7.2-7.3; reference-notes.md §5-6).

Tolerances (the tiny Conformer: width 64, 2 blocks; outputs of scale ~3.5, projected rows ~2), as
max |error| over max |reference| of the compared stage, with f32 weights: TOL = 2e-5 (observed:
Conformer <= 7.4e-7, projected rows of both heads <= 1.2e-6, the whole path from a 48 kHz stereo
waveform 8.3e-7). Negative controls must miss it by 100x (observed: the other head 1.1-1.3,
masking the chunk padding 7.3e-2, value/gate swapped 0.35). f16 weights against f32 weights:
F16_TOL = 1e-3 (observed 2.0e-7 Conformer, 4.6e-7 rows: the tiny checkpoint's bf16 values are
nearly all exact in f16, so this pins the f16 code path more than f16 rounding).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from phi4mm import keys
from phi4mm.audio import encoder, features
from phi4mm.errors import ConfigError
from phi4mm.weights import read_gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from namespaces import NAMESPACES, host, on  # noqa: E402
from reference_audio import make_signal  # noqa: E402  (numpy only; torch is imported lazily)

TOL = 2e-5
F16_TOL = 1e-3
# seconds at 16 kHz -> frames -> Conformer rows: 98 -> 13; 998 -> 125; 4328 -> 541 rows, run as two
# 500-row chunks, the second one padded with 459 zero rows that its 41 real rows attend to.
CLIPS = {"1s": 1.0, "10s": 10.0, "chunked-43s": 43.3}
HEADS = ("speech", "vision")


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def load(directory: Path, encoder_type: str, keep_f16: bool = False) -> encoder.AudioWeights:
    gguf = read_gguf(directory / f"phi4mm-audio-{encoder_type}.gguf", keys.AUDIO_ARCH, keep_f16=keep_f16)
    return encoder.load_weights(gguf.metadata, gguf.tensors)


@pytest.fixture(scope="module")
def weights(tiny_f32) -> encoder.AudioWeights:
    return load(tiny_f32, "f32")


@pytest.fixture(scope="module")
def clips() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per clip: the 16 kHz waveform and its log-mel (ours; the feature tests pin it to the reference)."""
    out = {}
    for i, (name, seconds) in enumerate(CLIPS.items()):
        wav = make_signal(seconds, 16000, seed=10 + i).astype(np.float32)
        out[name] = (wav, features.log_mel(wav, 16000))
    return out


@pytest.fixture(scope="module")
def audio_embed(reference):
    return reference.model(None).model.embed_tokens_extend.audio_embed


@pytest.fixture(scope="module")
def expected(audio_embed, clips) -> dict[str, dict[str, np.ndarray]]:
    """Per clip: the native Conformer output and the rows of both projector heads."""
    import reference_audio as ref

    return {name: {"conformer": ref.conformer_output(audio_embed, mel),
                   **{head: ref.projected_rows(audio_embed, mel, head) for head in HEADS}}
            for name, (_, mel) in clips.items()}


@pytest.fixture(scope="module")
def hidden(weights, clips) -> dict[str, np.ndarray]:
    return {name: encoder.encode_features(mel, weights) for name, (_, mel) in clips.items()}


@pytest.mark.reference
@pytest.mark.parametrize("clip", CLIPS)
def test_conformer_matches_reference(clip, weights, hidden, clips, expected):
    assert hidden[clip].shape == (features.n_audio_tokens(len(clips[clip][1])), weights.config.attention_dim)
    assert rel_err(hidden[clip], expected[clip]["conformer"]) < TOL


@pytest.mark.reference
@pytest.mark.parametrize("clip", ["1s", "chunked-43s"])
def test_conformer_and_projectors_under_array_api_strict(clip, weights, clips, expected):
    """The same stages under array-api-strict (the GPU path's portability proof): the subsampling,
    chunked attention with the relative bias, and both projector heads."""
    strict = on("array_api_strict", weights)
    hidden = encoder.encode_features(clips[clip][1], strict)
    assert rel_err(host(hidden, "array_api_strict"), expected[clip]["conformer"]) < TOL
    for head in HEADS:
        rows = host(encoder.project(hidden, strict, head), "array_api_strict")
        assert rel_err(rows, expected[clip][head]) < TOL


@pytest.mark.reference
@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("clip", CLIPS)
def test_projected_rows_match_reference(clip, head, weights, hidden, expected):
    rows = encoder.project(hidden[clip], weights, head)
    assert rows.shape == (len(hidden[clip]), weights.config.text_hidden_size)
    assert rel_err(rows, expected[clip][head]) < TOL


@pytest.mark.reference
def test_whole_path_from_48k_stereo_matches_reference(weights, audio_embed):
    """encode_audio from a 48 kHz stereo clip (mixed down as the decoder does) against the reference
    on the original extractor's features of the same clip."""
    import reference_audio as ref

    stereo = make_signal(2.5, 48000, seed=21, channels=2)
    expected = ref.projected_rows(audio_embed, ref.reference_log_mel(stereo, 48000), "speech")
    for namespace in NAMESPACES:  # the log-mel (its FFT and window) under the standard too
        rows = encoder.encode_audio(stereo.mean(axis=1), 48000, on(namespace, weights), "speech")
        assert rel_err(host(rows, namespace), expected) < TOL


@pytest.mark.reference
def test_wrong_projector_head_fails(weights, hidden, expected):
    rows = encoder.project(hidden["10s"], weights, "vision")
    assert rel_err(rows, expected["10s"]["speech"]) > 100 * TOL


@pytest.mark.reference
def test_masking_the_chunk_padding_fails(weights, clips, expected):
    """§7.2 step 4: the reference lets the last chunk's real rows attend to its zero padding."""
    masked = encoder.encode_features(clips["chunked-43s"][1], weights, mask_chunk_padding=True)
    ref = expected["chunked-43s"]["conformer"]
    assert rel_err(masked[:500], ref[:500]) < TOL          # the full first chunk is unaffected
    assert rel_err(masked, ref) > 100 * TOL


@pytest.mark.reference
def test_swapping_value_and_gate_fails(weights, clips, expected):
    """§7.2 step 6: value = FIRST half, gate = SECOND half (the opposite of the text MLP)."""
    def swap(ffn: encoder.FFNWeights) -> encoder.FFNWeights:
        U = ffn.up_w.shape[0] // 2
        return dataclasses.replace(ffn, up_w=np.roll(ffn.up_w, U, axis=0), up_b=np.roll(ffn.up_b, U))

    blocks = tuple(dataclasses.replace(b, ffn_in=swap(b.ffn_in), ffn_out=swap(b.ffn_out)) for b in weights.blocks)
    swapped = encoder.encode_features(clips["1s"][1], dataclasses.replace(weights, blocks=blocks))
    assert rel_err(swapped, expected["1s"]["conformer"]) > 100 * TOL


def test_f16_weights_agree_with_f32(tiny_q4, weights, clips):
    """The f16 encoder file read with keep_f16: matrices stay float16 (half the bytes)."""
    f16 = load(tiny_q4, "f16", keep_f16=True)
    assert f16.blocks[0].ffn_in.up_w.dtype == np.float16 and f16.projectors["speech"].down_w.dtype == np.float16
    assert f16.nbytes < 0.6 * weights.nbytes
    mel = clips["10s"][1]
    ours, exact = encoder.encode_features(mel, f16), encoder.encode_features(mel, weights)
    assert np.isfinite(ours).all() and rel_err(ours, exact) < F16_TOL
    rows = encoder.project(ours, f16, "speech")
    assert rel_err(rows, encoder.project(exact, weights, "speech")) < F16_TOL


@pytest.mark.parametrize("rows", [1, 3, 1000])
def test_subsampling_independent_of_row_blocks(weights, clips, rows, monkeypatch):
    """The halo logic: computing the subsampling a few rows at a time equals one block."""
    mel = clips["10s"][1][:517]                                   # 517 frames: ragged at every stride
    whole = encoder.subsample(mel, weights.subsampling, weights.config)
    monkeypatch.setattr(encoder, "SUBSAMPLE_ROWS", rows)
    blocked = encoder.subsample(mel, weights.subsampling, weights.config)
    assert blocked.shape == (65, weights.config.attention_dim)
    np.testing.assert_allclose(blocked, whole, rtol=0, atol=1e-5 * np.abs(whole).max())


def test_short_inputs_and_rows(weights):
    for n_frames in (1, 2, 8, 9):
        out = encoder.encode_features(np.ones((n_frames, 80), np.float32), weights)
        assert out.shape == (features.n_audio_tokens(n_frames), weights.config.attention_dim)
        assert np.isfinite(out).all()


def test_relative_bias_clamps_and_indexes():
    table = np.arange(20, dtype=np.float32).reshape(10, 2)       # M = 5, 2 heads: row r = [2r, 2r+1]
    bias = encoder.relative_bias(8, table, 5)                    # (2, 8, 8)
    rel = np.clip(np.arange(8)[None, :] - np.arange(8)[:, None], -5, 4) + 5
    np.testing.assert_array_equal(bias[0], 2 * rel)
    np.testing.assert_array_equal(bias[1], 2 * rel + 1)


def test_project_rejects_unknown_head(weights):
    with pytest.raises(ValueError, match="'text'"):
        encoder.project(np.zeros((2, weights.config.attention_dim), np.float32), weights, "text")


def test_config_errors_name_the_key(tiny_f32):
    gguf = read_gguf(tiny_f32 / "phi4mm-audio-f32.gguf", keys.AUDIO_ARCH)
    metadata = dict(gguf.metadata)
    del metadata["phi4mm.audio.n_heads"]
    with pytest.raises(ConfigError, match="phi4mm.audio.n_heads") as err:
        encoder.load_weights(metadata, gguf.tensors)
    assert err.value.key == "phi4mm.audio.n_heads"
    bad = {**gguf.metadata, "phi4mm.audio.time_reduction": 4}
    with pytest.raises(ConfigError, match="time_reduction"):
        encoder.load_weights(bad, gguf.tensors)
    tensors = dict(gguf.tensors)
    tensors["a.blk.1.conv.dw.weight"] = tensors["a.blk.1.conv.dw.weight"][:, :, :2]
    with pytest.raises(ConfigError, match=r"'a.blk.1.conv.dw.weight'.*, 1, 2\)") as err:
        encoder.load_weights(gguf.metadata, tensors)
    assert err.value.key == "a.blk.1.conv.dw.weight"
    del tensors["mm.vision.down.bias"]
    tensors["a.blk.1.conv.dw.weight"] = gguf.tensors["a.blk.1.conv.dw.weight"]
    with pytest.raises(ConfigError, match="'mm.vision.down.bias' is missing"):
        encoder.load_weights(gguf.metadata, tensors)

"""Audio loading refusals (phi4mm/media/audio.py): broken, truncated, empty and non-audio files,
bad in-memory sources and limit settings, each with a clear AudioError (a MediaError). The encoded
test clips come from test_media_audio."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from PIL import Image
from test_media_audio import LOSSLESS, LOSSY, MP3, WAV, _lossy, av_encode, sf_encode, tones

from phi4mm.errors import ConfigError, MediaError
from phi4mm.media import MediaLimits, Waveform, load_audio

# ------------------------------------------------------------------------------ broken files

def test_truncated_wav_data_chunk():
    cut = WAV[:len(WAV) // 2]
    with pytest.raises(MediaError, match=rf"truncated: its WAV data chunk declares 32000 bytes "
                                         rf"but only {len(cut) - 44} are present"):
        load_audio(cut)


@pytest.mark.parametrize("data, message", [
    pytest.param(MP3, "truncated: its header declares 1.00 s but only", id="mp3-xing"),
    pytest.param(_lossy("webm", "libopus", 48000), "truncated: its header declares", id="webm"),
    pytest.param(sf_encode(tones(16000, 1.0), 16000, "FLAC", "PCM_16"),  # 4 frames of 4096
                 r"truncated or corrupt: decoding failed after 0\.[1-9]\d s", id="flac"),
    pytest.param(_lossy("ipod", "aac", 44100), "not a readable audio file.*cut off before its "
                 "header ends", id="m4a-index-at-the-end"),
])
def test_truncated_in_the_middle(data, message):
    with pytest.raises(MediaError, match=message):
        load_audio(data[:len(data) // 2])


ALL_FORMATS = [p.values[0] for p in LOSSLESS + LOSSY]


@pytest.mark.parametrize("data", ALL_FORMATS, ids=[p.id for p in LOSSLESS + LOSSY])
def test_no_cut_point_lets_a_pyav_error_escape(data):
    for fraction in (0.0005, 0.01, 0.05, 0.2, 0.5, 0.9, 0.999):
        cut = data[:max(1, int(len(data) * fraction))]
        try:
            load_audio(cut)
        except MediaError:
            pass  # anything else (av.error.*, ValueError, ...) fails the test
    corrupt = bytearray(data)
    corrupt[len(data) // 3:len(data) // 3 + 64] = bytes(range(64))
    try:
        load_audio(bytes(corrupt))
    except MediaError:
        pass


@pytest.mark.parametrize("source", [b"", "data:audio/wav;base64,"])
def test_empty_input(source):
    with pytest.raises(MediaError, match=r"empty \(0 bytes\)"):
        load_audio(source)


def test_empty_file(tmp_path):
    (tmp_path / "empty.mp3").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty \(0 bytes\)"):
        load_audio(tmp_path / "empty.mp3")


@pytest.mark.parametrize("data", [
    pytest.param(sf_encode(np.zeros((0, 1), np.int16), 16000, "WAV", "PCM_16"), id="wav"),
    pytest.param(av_encode(np.zeros((0, 2), np.float32), 16000, "flac", "flac"), id="flac"),
])
def test_zero_samples(data):
    with pytest.raises(MediaError, match=r"no audio samples \(0 s\)"):
        load_audio(data)


def test_sample_rate_change_mid_stream():
    first = _lossy("mp3", "libmp3lame", 44100, write_xing="0")
    second = _lossy("mp3", "libmp3lame", 48000, write_xing="0")
    with pytest.raises(MediaError, match=r"changes sample rate mid-stream, from \d+ Hz to \d+ Hz"):
        load_audio(first + second)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def _video_only() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpeg") as out:
        stream = out.add_stream("mpeg1video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()


@pytest.mark.parametrize("data", [
    pytest.param(_png(), id="png"),
    pytest.param(b"hello, this is plain text and not audio at all\n" * 4, id="text"),
    pytest.param(b"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/secret.ts\n#EXT-X-ENDLIST\n",
                 id="hls-playlist"),
    pytest.param(np.random.default_rng(4).integers(0, 256, 4000, np.uint8).tobytes(), id="noise"),
])
def test_not_audio(data):
    with pytest.raises(MediaError, match="not a readable audio file.*expected WAV, MP3"):
        load_audio(data)


def test_video_without_audio():
    with pytest.raises(MediaError, match=r"mpeg file with no audio stream \(streams: video "
                                         r"\(mpeg1video\)\)"):
        load_audio(_video_only())


# ------------------------------------------------------------------------------ bad tuples, types

@pytest.mark.parametrize("source, message", [
    pytest.param((np.zeros(100, np.float32), 0), "sample rate must be an int >= 1", id="rate-0"),
    pytest.param((np.zeros(100, np.float32), 16000.0), "received 16000.0", id="rate-float"),
    pytest.param((np.zeros(100, np.float32), True), "received True", id="rate-bool"),
    pytest.param((np.zeros(100, np.float32), "16000"), "received '16000'", id="rate-str"),
    pytest.param((np.zeros((100, 2, 2), np.float32), 16000), "of shape \\(100, 2, 2\\)", id="3d"),
    pytest.param((np.zeros(100, np.int8), 16000), r"received int8 of shape \(100,\)$", id="int8"),
    pytest.param((np.zeros((2, 16000), np.int16), 16000), "transpose a \\(channels, samples\\)",
                 id="channels-first"),
    pytest.param((np.zeros(100, np.float32),), "tuple of 1 items", id="one-item"),
    pytest.param(([0.0] * 100, 16000), "types \\['list', 'int'\\]", id="list-samples"),
    pytest.param((np.zeros(0, np.float32), 16000), r"tuple holds no samples \(0 s\)", id="empty"),
    pytest.param((np.array([0.0, np.nan], np.float32), 16000), "1 NaN or infinite", id="nan"),
    pytest.param(np.zeros(100, np.float32), "needs its sample rate", id="bare-array"),
    pytest.param(42, "unsupported audio source of type int", id="int"),
])
def test_bad_in_memory_sources(source, message):
    with pytest.raises(MediaError, match=message):
        load_audio(source)


@pytest.mark.parametrize("samples, rate, message", [
    pytest.param(np.zeros(10, np.float64), 16000, "float64 of shape", id="float64"),
    pytest.param(np.zeros((10, 1), np.float32), 16000, "shape \\(10, 1\\)", id="2d"),
    pytest.param([0.0], 16000, "received list", id="list"),
    pytest.param(np.zeros(10, np.float32), 0, "int >= 1, received 0", id="rate"),
])
def test_waveform_validates(samples, rate, message):
    with pytest.raises(MediaError, match=message):
        Waveform(samples, rate)


@pytest.mark.parametrize("settings", [{"max_audio_bytes": 0}, {"max_audio_s": -1.0},
                                      {"max_audio_s": True}, {"max_audio_bytes": "big"}])
def test_invalid_audio_limits_are_config_errors(settings):
    with pytest.raises(ConfigError, match=f"MediaLimits.{next(iter(settings))}"):
        MediaLimits(**settings)


def test_default_audio_limits():
    limits = MediaLimits()
    assert (limits.max_audio_bytes, limits.max_audio_s) == (50 << 20, 1800.0)


def test_audio_errors_are_audio_errors_even_when_fetching_fails():
    """Fetching is shared with images; what it refuses for an audio source is an AudioError (the
    server answers code invalid_audio), still a MediaError for callers that catch that."""
    from phi4mm.errors import AudioError, MediaError

    for source in ("data:audio/wav;base64,@@@@", "ftp://example.com/a.wav", b""):
        with pytest.raises(AudioError) as err:
            load_audio(source)
        assert isinstance(err.value, MediaError)


def test_a_stream_whose_codec_is_unknown_is_an_audio_error():
    """Found by tests/test_fuzz.py: a mutated WebM whose audio stream names no decoder PyAV knows
    (its codec context is None) raised AttributeError while the error message was being written."""
    from pathlib import Path

    from phi4mm.errors import AudioError
    from phi4mm.media import decode_audio

    data = (Path(__file__).parent / "data" / "webm-stream-without-codec.webm").read_bytes()
    with pytest.raises(AudioError, match="could not be decoded as unknown audio"):
        decode_audio(data)

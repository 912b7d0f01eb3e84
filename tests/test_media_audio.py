"""Audio loading (phi4mm/media/audio.py): every container OpenAI accepts, encoded here from numpy
tones (soundfile for WAV/FLAC/OGG Vorbis, PyAV for the rest), every source kind, the format hint,
the byte and duration limits. Broken files and bad sources: test_media_audio_errors.py. The only
network is a local http.server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from phi4mm.errors import MediaError
from phi4mm.media import MediaLimits, Waveform, audio, decode_audio, load_audio, load_image

LOCAL = MediaLimits(allow_private_urls=True)  # the test server lives on 127.0.0.1


def tones(rate: int, duration_s: float, freqs_hz=(440.0,), amplitude=0.5) -> np.ndarray:
    """(N, C) float32: channel c is a sine at freqs_hz[c]."""
    t = np.arange(round(rate * duration_s)) / rate
    return np.stack([amplitude * np.sin(2 * np.pi * f * t) for f in freqs_hz], 1).astype(np.float32)


def noise_int16(n: int, channels: int, seed: int = 0) -> np.ndarray:
    """(N, C) int16 covering the full range, so scaling and mixdown are checked exactly."""
    return np.random.default_rng(seed).integers(-32768, 32768, (n, channels), dtype=np.int16)


def sf_encode(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


class _Pipe:
    """A write-only, unseekable output: muxers cannot go back to fill in sizes and durations, as
    when a browser's MediaRecorder or `ffmpeg ... -` streams a file."""

    def __init__(self):
        self.parts = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)


def _frames(samples: np.ndarray, rate: int, layout: str, resampler) -> list:
    if not len(samples):
        return []  # a file with headers and no samples
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp", layout=layout)
    frame.sample_rate = rate
    return resampler.resample(frame) + resampler.resample(None)


def av_encode(samples: np.ndarray, rate: int, container: str, codec: str, seekable=True,
              **options) -> bytes:
    """(N, C) float32 -> a file encoded by PyAV (FFmpeg's encoders from its wheel)."""
    output = io.BytesIO() if seekable else _Pipe()
    layout = {1: "mono", 2: "stereo"}[samples.shape[1]]
    with av.open(output, "w", format=container, options=options) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = layout
        sample_format = stream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=sample_format, layout=layout, rate=rate)
        for chunk in _frames(samples, rate, layout, resampler):
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return output.getvalue() if seekable else b"".join(output.parts)


def expected_mono(samples: np.ndarray, scale: float = 1.0) -> np.ndarray:
    return (samples.astype(np.float32) * np.float32(scale)).mean(axis=1, dtype=np.float32)


def amplitude_at(waveform: Waveform, freq_hz: float) -> float:
    """The amplitude of the sine at freq_hz, from a Hann-windowed 0.5 s from the middle."""
    n = waveform.sample_rate_hz // 2  # 2 Hz bins: the test frequencies fall on a bin
    start = (len(waveform.samples) - n) // 2
    window = np.hanning(n)
    spectrum = np.abs(np.fft.rfft(waveform.samples[start:start + n] * window))
    return float(spectrum[round(freq_hz * n / waveform.sample_rate_hz)] * 2 / window.sum())


STEREO_HZ = (440.0, 1000.0)  # left, right: the mono mix holds each at half the amplitude


# ------------------------------------------------------------------------------ lossless formats

INT16_STEREO = noise_int16(8000, 2)
INT16_SIX = noise_int16(4000, 6, seed=1)
FLOATS = tones(16000, 0.25, (300.0, 700.0)) * np.float32(1.5)  # float WAV may exceed 1.0: kept
U8 = np.random.default_rng(2).integers(0, 256, (3000, 2), dtype=np.uint8)


def _int24(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2 ** 23, 2 ** 23, (5000, 2)).astype(np.int32) << 8


INT24 = _int24(3)

LOSSLESS = [  # (encoded bytes, sample rate, expected samples)
    pytest.param(sf_encode(INT16_STEREO, 16000, "WAV", "PCM_16"), 16000,
                 expected_mono(INT16_STEREO, 2 ** -15), id="wav-pcm16-stereo"),
    pytest.param(sf_encode(INT16_SIX, 48000, "WAV", "PCM_16"), 48000,
                 expected_mono(INT16_SIX, 2 ** -15), id="wav-pcm16-six-channels-averaged"),
    pytest.param(sf_encode(INT24, 44100, "WAV", "PCM_24"), 44100,
                 expected_mono(INT24, 2 ** -31), id="wav-pcm24"),
    pytest.param(sf_encode(FLOATS, 16000, "WAV", "FLOAT"), 16000, expected_mono(FLOATS),
                 id="wav-float32-over-one-kept"),
    pytest.param(sf_encode(((U8.astype(np.int32) - 128) * 256).astype(np.int16), 8000, "WAV", "PCM_U8"), 8000,
                 expected_mono(U8.astype(np.float32) - 128, 1 / 128), id="wav-pcm-u8"),
    pytest.param(sf_encode(INT16_STEREO, 22050, "FLAC", "PCM_16"), 22050,
                 expected_mono(INT16_STEREO, 2 ** -15), id="flac-16bit"),
    pytest.param(sf_encode(INT24, 96000, "FLAC", "PCM_24"), 96000,
                 expected_mono(INT24, 2 ** -31), id="flac-24bit"),
    pytest.param(av_encode(INT16_STEREO / np.float32(32768), 16000, "wav", "pcm_s16le",
                           seekable=False), 16000,
                 expected_mono(INT16_STEREO, 2 ** -15), id="wav-streamed-unknown-sizes"),
]


@pytest.mark.parametrize("data, rate, expected", LOSSLESS)
def test_lossless_formats_decode_exactly(data, rate, expected):
    waveform = load_audio(data)
    assert waveform.sample_rate_hz == rate
    assert waveform.samples.dtype == np.float32 and waveform.samples.ndim == 1
    np.testing.assert_array_equal(waveform.samples, expected)


# ------------------------------------------------------------------------------ lossy formats

def _lossy(container, codec, rate, **options):
    return av_encode(tones(rate, 1.0, STEREO_HZ), rate, container, codec, **options)


LOSSY = [  # (encoded bytes, native sample rate)
    pytest.param(_lossy("mp3", "libmp3lame", 24000), 24000, id="mp3-mpeg2-24k"),
    pytest.param(_lossy("mp3", "libmp3lame", 44100, write_xing="0"), 44100, id="mp3-no-xing"),
    pytest.param(_lossy("ipod", "aac", 32000), 32000, id="m4a-aac"),
    pytest.param(_lossy("mp4", "aac", 44100), 44100, id="mp4-aac"),
    pytest.param(_lossy("adts", "aac", 22050), 22050, id="aac-adts"),
    pytest.param(_lossy("webm", "libopus", 48000), 48000, id="webm-opus"),
    pytest.param(av_encode(tones(48000, 1.0, STEREO_HZ), 48000, "webm", "libopus",
                           seekable=False), 48000, id="webm-opus-mediarecorder-no-duration"),
    pytest.param(_lossy("ogg", "libopus", 48000), 48000, id="ogg-opus"),
    pytest.param(sf_encode(tones(44100, 1.0, STEREO_HZ), 44100, "OGG", "VORBIS"), 44100,
                 id="ogg-vorbis"),
    pytest.param(_lossy("mp2", "mp2", 48000), 48000, id="mpga-layer2"),
    pytest.param(_lossy("mpeg", "mp2", 44100), 44100, id="mpeg-program-stream"),
]


@pytest.mark.parametrize("data, rate", LOSSY)
def test_lossy_formats_decode_at_native_rate_mixed_to_mono(data, rate):
    waveform = load_audio(data)
    assert waveform.sample_rate_hz == rate
    assert waveform.samples.dtype == np.float32 and waveform.samples.ndim == 1
    assert waveform.duration_s == pytest.approx(1.0, abs=0.08)  # encoder delay and padding
    for freq in STEREO_HZ:  # each channel's tone at half its amplitude: a mean, not a sum or one side
        assert amplitude_at(waveform, freq) == pytest.approx(0.25, rel=0.1)
    assert amplitude_at(waveform, 700.0) < 0.01


# ------------------------------------------------------------------------------ source kinds

WAV = sf_encode(INT16_STEREO, 16000, "WAV", "PCM_16")
WAV_MONO = expected_mono(INT16_STEREO, 2 ** -15)


def assert_wav(waveform: Waveform):
    assert waveform.sample_rate_hz == 16000
    np.testing.assert_array_equal(waveform.samples, WAV_MONO)


def test_paths_and_file_urls(tmp_path):
    path = tmp_path / "with space.wav"
    path.write_bytes(WAV)
    for source in (path, str(path), path.as_uri()):
        assert_wav(load_audio(source))


@pytest.mark.parametrize("text", [
    pytest.param("data:audio/wav;base64," + base64.b64encode(WAV).decode(), id="data-url"),
    pytest.param(base64.b64encode(WAV).decode(), id="bare-base64"),
    pytest.param(base64.urlsafe_b64encode(WAV).decode().rstrip("="), id="bare-urlsafe-unpadded"),
])
def test_base64_text(text):
    assert_wav(load_audio(text))


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_raw_bytes(kind):
    assert_wav(load_audio(kind(WAV)))


def test_waveform_is_returned_as_is():
    waveform = Waveform(np.zeros(160, np.float32), 16000)
    assert load_audio(waveform) is waveform
    assert waveform.duration_s == 0.01


@pytest.mark.parametrize("array, scale", [
    pytest.param(INT16_STEREO, 2 ** -15, id="int16-stereo"),
    pytest.param(INT16_STEREO[:, :1], 2 ** -15, id="int16-n-by-1"),
    pytest.param(INT24, 2 ** -31, id="int32"),
    pytest.param(FLOATS, 1.0, id="float32-kept"),
    pytest.param(FLOATS.astype(np.float64), 1.0, id="float64"),
    pytest.param(INT16_STEREO[::2], 2 ** -15, id="non-contiguous"),
])
def test_tuples(array, scale):
    waveform = load_audio((array, np.int64(8000)))
    assert waveform.sample_rate_hz == 8000 and type(waveform.sample_rate_hz) is int
    np.testing.assert_array_equal(waveform.samples, expected_mono(array, scale))


def test_one_dimensional_tuple_is_kept():
    samples = tones(16000, 0.1)[:, 0]
    np.testing.assert_array_equal(load_audio((samples, 16000)).samples, samples)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.accepts.append(self.headers.get("Accept"))
        status, content_type, body = self.server.routes.get(self.path, (404, "text/plain", b"no"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads, httpd.routes, httpd.accepts = True, {}, []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def serve(httpd, path: str, body: bytes, status=200, content_type="audio/wav") -> str:
    httpd.routes[path] = (status, content_type, body)
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def test_http_url_asks_for_audio(server):
    assert_wav(load_audio(serve(server, "/a.wav", WAV), LOCAL))
    assert server.accepts == ["audio/*"]


def test_http_url_to_a_private_address_is_refused_by_default(server):
    with pytest.raises(MediaError, match="allow_private_urls"):
        load_audio(serve(server, "/a.wav", WAV))


def test_http_errors_say_audio(server):
    with pytest.raises(MediaError, match="HTTP 404"):
        load_audio(serve(server, "/gone.wav", b"", status=404), LOCAL)
    with pytest.raises(MediaError, match="not a readable audio file"):
        load_audio(serve(server, "/page", b"<html>hi</html>", content_type="text/html"), LOCAL)


def test_missing_file_says_audio(tmp_path):
    with pytest.raises(MediaError, match="cannot read audio file .*No such file"):
        load_audio(tmp_path / "absent.wav")


def test_local_files_and_allowed_dirs_apply_to_audio(tmp_path):
    (tmp_path / "in").mkdir()
    path = tmp_path / "a.wav"
    path.write_bytes(WAV)
    with pytest.raises(MediaError, match="allow_local_files"):
        load_audio(path, MediaLimits(allow_local_files=False))
    with pytest.raises(MediaError, match="outside allowed_dirs"):
        load_audio(str(path), MediaLimits(allowed_dirs=(tmp_path / "in",)))


# ------------------------------------------------------------------------------ format hint

MP3 = _lossy("mp3", "libmp3lame", 44100)


def test_format_hint_is_tried_when_content_detection_fails():
    junk_first = b"junk" * 50 + MP3  # FFmpeg's probe gives up on 200 bytes of junk
    with pytest.raises(MediaError, match="not a readable audio file"):
        decode_audio(junk_first)
    waveform = decode_audio(junk_first, format_hint="mp3")
    assert waveform.sample_rate_hz == 44100
    assert amplitude_at(waveform, 440.0) == pytest.approx(0.25, rel=0.1)


@pytest.mark.parametrize("hint", ["wav", "webm", "nonsense", None])
def test_content_wins_over_a_wrong_hint(hint):
    assert decode_audio(MP3, format_hint=hint).sample_rate_hz == 44100


def test_error_names_the_hint():
    with pytest.raises(MediaError, match="format hint 'wav'"):
        decode_audio(b"plain text, not audio at all", format_hint="wav")


# ------------------------------------------------------------------------------ byte limit

def test_too_many_audio_bytes_everywhere(server, tmp_path):
    small = MediaLimits(max_audio_bytes=1000, allow_private_urls=True)
    path = tmp_path / "big.wav"
    path.write_bytes(WAV)
    sources = [WAV, str(path), path, "data:audio/wav;base64," + base64.b64encode(WAV).decode(),
               base64.b64encode(WAV).decode(), serve(server, "/big.wav", WAV)]
    for source in sources:
        with pytest.raises(MediaError, match=r"\d+ bytes or more, over max_audio_bytes=1000"):
            load_audio(source, small)
    with pytest.raises(MediaError, match="over max_audio_bytes=1000"):
        decode_audio(WAV, small)


def test_byte_limits_are_per_kind():
    assert_wav(load_audio(WAV, MediaLimits(max_bytes=100)))  # the image limit
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    assert load_image(png.getvalue(), MediaLimits(max_audio_bytes=10)).size == (4, 4)


# ------------------------------------------------------------------------------ duration limit

HEADER_DECLARED = [  # formats whose header states the duration: refused before decoding
    pytest.param(sf_encode(tones(16000, 1.0), 16000, "WAV", "PCM_16"), " in its WAV header", id="wav"),
    pytest.param(sf_encode(tones(16000, 1.0), 16000, "FLAC", "PCM_16"), "", id="flac"),
    pytest.param(_lossy("mp3", "libmp3lame", 44100), "", id="mp3-xing"),
    pytest.param(_lossy("ipod", "aac", 44100), "", id="m4a"),
    pytest.param(_lossy("webm", "libopus", 48000), "", id="webm"),
    pytest.param(_lossy("ogg", "libopus", 48000), "", id="ogg-opus"),
]


@pytest.mark.parametrize("data, where", HEADER_DECLARED)
def test_declared_duration_is_refused_before_decoding(data, where, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded although the header is over the limit")

    monkeypatch.setattr(audio, "_decode", no_decoding)
    with pytest.raises(MediaError, match=rf"declares 1\.0\d s of audio{where}, over max_audio_s=0\.5"):
        load_audio(data, MediaLimits(max_audio_s=0.5))


UNDECLARED = [  # no trustworthy duration in the header: the decoder stops at the limit
    pytest.param(av_encode(tones(16000, 3.0), 16000, "wav", "pcm_s16le", seekable=False),
                 id="wav-streamed"),
    pytest.param(_lossy("mp3", "libmp3lame", 44100, write_xing="0"), id="mp3-no-xing"),
    pytest.param(av_encode(tones(48000, 3.0), 48000, "webm", "libopus", seekable=False),
                 id="webm-mediarecorder"),
    pytest.param(_lossy("adts", "aac", 44100), id="aac-adts"),
]


@pytest.mark.parametrize("data", UNDECLARED)
def test_duration_is_checked_while_decoding(data):
    with pytest.raises(MediaError, match=r"longer than max_audio_s=0\.25: decoding stopped at "
                                         r"\d\.\d{3} s") as caught:
        load_audio(data, MediaLimits(max_audio_s=0.25))
    seconds = float(re.search(r"stopped at (\S+) s", str(caught.value)).group(1))
    assert 0.25 < seconds < 0.4  # stopped at the first frame past the limit, not at the end


def test_a_header_that_understates_the_length_cannot_lift_the_limit():
    data = bytearray(av_encode(tones(16000, 3.0), 16000, "wav", "pcm_s16le", seekable=False))
    offset = data.index(b"data")
    data[offset + 4:offset + 8] = struct.pack("<I", 3 * 16000 * 2)  # 3 s declared, as it is
    data[offset + 8 + 2 * 16000 * 2:] = b""  # only 2 s present: truncated, but the limit comes first
    with pytest.raises(MediaError, match=r"declares 3\.00 s .*over max_audio_s=1\.0"):
        load_audio(bytes(data), MediaLimits(max_audio_s=1.0))


def test_duration_limit_for_tuples_and_waveforms():
    limits = MediaLimits(max_audio_s=1.0)
    with pytest.raises(MediaError, match=r"tuple is 1\.50 s long \(24000 samples at 16000 Hz\), "
                                         r"over max_audio_s=1\.0"):
        load_audio((np.zeros(24000, np.float32), 16000), limits)
    with pytest.raises(MediaError, match=r"the Waveform is 1\.50 s long, over max_audio_s=1\.0"):
        load_audio(Waveform(np.zeros(24000, np.float32), 16000), limits)
    assert load_audio((np.zeros(16000, np.float32), 16000), limits).duration_s == 1.0

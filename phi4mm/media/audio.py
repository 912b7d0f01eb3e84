"""Audio sources (path, file/http(s)/data URL, base64, bytes, `Waveform`, (array, rate)) -> a mono
float32 `Waveform` at the file's own sample rate, within `MediaLimits`. PyAV (FFmpeg's decoders,
shipped in its wheel) decodes every container; resampling to 16 kHz is the features module's."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from phi4mm.errors import AudioError, MediaError
from phi4mm.media.fetch import check_bytes, describe, read_source
from phi4mm.media.limits import DEFAULT_LIMITS, MediaLimits

EXPECTED_FORMATS = "WAV, MP3, FLAC, OGG (Opus/Vorbis), M4A/MP4 (AAC), WebM or MPEG audio"
# Demuxers FFmpeg may pick (by content) for untrusted bytes: audio containers only, none of those
# that open further files or URLs (hls, dash, concat, image2, ...).
_DEMUXERS = "wav,w64,mp3,flac,ogg,mov,matroska,aac,mpeg,aiff"
# OpenAI's input_audio.format and file extensions -> the demuxer tried when probing fails
_HINT_DEMUXERS = {"wav": "wav", "wave": "wav", "mp3": "mp3", "mpeg": "mp3", "mpga": "mp3",
                  "flac": "flac", "ogg": "ogg", "oga": "ogg", "opus": "ogg", "m4a": "mov",
                  "mp4": "mov", "aac": "aac", "webm": "matroska", "mka": "matroska"}
_INT_SCALES = {"s16": 2.0 ** -15, "s32": 2.0 ** -31, "s64": 2.0 ** -63}  # like soundfile/torchaudio
_TUPLE_SCALES = {np.dtype(np.int16): 2.0 ** -15, np.dtype(np.int32): 2.0 ** -31}
_MAX_CHANNELS = 64
_UNKNOWN_WAV_SIZE = 0xFFFFFFFF  # written by streaming writers (ffmpeg to a pipe, RF64)
_TUPLE = "the (samples, rate) tuple"  # how messages name a tuple source


@dataclass(frozen=True, eq=False)
class Waveform:
    """Decoded mono audio: float32 samples, nominally in [-1, 1] (lossy decoders may overshoot a
    little; not clipped, like the reference loaders), at the source's own sample rate."""

    samples: np.ndarray  # (n_samples,) float32
    sample_rate_hz: int

    def __post_init__(self):
        rate, samples = self.sample_rate_hz, self.samples
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < 1:
            raise AudioError(f"a Waveform's sample_rate_hz must be an int >= 1, received {rate!r}")
        object.__setattr__(self, "sample_rate_hz", int(rate))
        if not isinstance(samples, np.ndarray) or samples.dtype != np.float32 or samples.ndim != 1:
            received = (f"{samples.dtype} of shape {samples.shape}" if isinstance(samples, np.ndarray)
                        else type(samples).__name__)
            raise AudioError(f"a Waveform's samples must be a 1-D float32 numpy array, received "
                             f"{received}")
        if not np.isfinite(samples).all():
            raise AudioError(f"a Waveform's samples must be finite, received "
                             f"{int((~np.isfinite(samples)).sum())} NaN or infinite values")

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz


AudioSource = str | Path | bytes | bytearray | memoryview | Waveform | tuple


def load_audio(source: AudioSource, limits: MediaLimits = DEFAULT_LIMITS) -> Waveform:
    """Any supported source -> mono float32 `Waveform` at its own rate; AudioError (a MediaError) if refused.

    A str is a data URL, an http(s):// or file:// URL, bare base64 or a local path (see
    fetch.read_source); a tuple is (numpy samples (N,) or (N, channels), sample rate in Hz).
    """
    if isinstance(source, Waveform):
        return _within_limits(source, limits, "the Waveform")
    if isinstance(source, tuple):
        return _from_tuple(source, limits)
    if isinstance(source, np.ndarray):
        raise AudioError(f"a numpy array needs its sample rate: pass (samples, sample_rate_hz), "
                         f"received a bare array of shape {source.shape}")
    if isinstance(source, (bytes, bytearray, memoryview, Path, str)):
        return decode_audio(read_audio_bytes(source, limits), limits, describe(source, "audio"))
    raise AudioError(f"unsupported audio source of type {type(source).__name__}; expected a path, "
                     f"a URL, base64 text, bytes, a Waveform or a (numpy samples, sample rate) tuple")


def read_audio_bytes(source: bytes | bytearray | memoryview | Path | str, limits: MediaLimits) -> bytes:
    """The encoded bytes an audio source names (fetch.read_source), refusals as AudioError."""
    try:
        return read_source(source, limits, "audio")
    except AudioError:
        raise
    except MediaError as exc:  # fetching is shared with images; the error is about audio here
        raise AudioError(str(exc), getattr(exc, "param", None)) from exc


def decode_audio(data: bytes, limits: MediaLimits = DEFAULT_LIMITS, origin: str = "the audio bytes",
                 format_hint: str | None = None) -> Waveform:
    """Encoded audio bytes -> mono float32 `Waveform`. The container is detected from the content;
    `format_hint` (e.g. OpenAI's input_audio.format: "wav", "mp3") is tried only if that fails."""
    check_bytes(len(data), limits, "audio", origin)
    if not data:
        raise AudioError(f"{origin} is empty (0 bytes); expected {EXPECTED_FORMATS}")
    _check_wav_header(data, limits, origin)
    with _open(data, origin, format_hint) as container:
        stream, container_name = _audio_stream(container, origin), container.format.name
        declared_s = _declared_duration_s(container, stream, data)
        if declared_s is not None and declared_s > limits.max_audio_s:
            raise AudioError(f"{origin} declares {declared_s:.2f} s of audio, over "
                             f"max_audio_s={limits.max_audio_s}")
        samples, rate = _decode(container, stream, limits, origin)  # (n_samples,) float32
    if not len(samples):
        raise AudioError(f"{origin} is a {container_name} file with no audio samples "
                         f"(0 s); expected a non-empty clip")
    if declared_s is not None and len(samples) / rate < declared_s - max(0.2, 0.05 * declared_s):
        raise AudioError(f"{origin} is truncated: its header declares {declared_s:.2f} s but only "
                         f"{len(samples) / rate:.2f} s could be decoded")
    return Waveform(samples, rate)


def _within_limits(waveform: Waveform, limits: MediaLimits, origin: str) -> Waveform:
    if not len(waveform.samples):
        raise _no_samples(origin)
    if waveform.duration_s > limits.max_audio_s:
        raise AudioError(f"{origin} is {waveform.duration_s:.2f} s long, over "
                         f"max_audio_s={limits.max_audio_s}")
    return waveform


def _no_samples(origin: str) -> AudioError:
    return AudioError(f"{origin} holds no samples (0 s); expected a non-empty clip")


def _from_tuple(source: tuple, limits: MediaLimits) -> Waveform:
    """(samples (N,) or (N, C), rate) -> Waveform: int16/int32 scaled to [-1, 1], floats kept,
    channels averaged."""
    if len(source) != 2 or not isinstance(source[0], np.ndarray):
        raise AudioError(f"an audio tuple must be (numpy samples, sample_rate_hz), received a tuple "
                         f"of {len(source)} items of types {[type(x).__name__ for x in source]}")
    array, rate = source
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate < 1:
        raise AudioError(f"an audio tuple's sample rate must be an int >= 1 (Hz), received {rate!r}")
    shape_ok = array.ndim == 1 or (array.ndim == 2 and 1 <= array.shape[1] <= _MAX_CHANNELS)
    dtype_ok = array.dtype in _TUPLE_SCALES or np.issubdtype(array.dtype, np.floating)
    if not (shape_ok and dtype_ok):
        flipped = array.ndim == 2 and array.shape[0] < array.shape[1]
        raise AudioError(f"audio samples must be int16, int32 or float of shape (n_samples,) or "
                         f"(n_samples, n_channels <= {_MAX_CHANNELS}), received {array.dtype} of "
                         f"shape {array.shape}" + ("; transpose a (channels, samples) array"
                                                   if flipped else ""))
    if not len(array):
        raise _no_samples(_TUPLE)
    if len(array) / rate > limits.max_audio_s:
        raise AudioError(f"{_TUPLE} is {len(array) / rate:.2f} s long ({len(array)} samples at "
                         f"{rate} Hz), over max_audio_s={limits.max_audio_s}")
    samples_nc = array.reshape(len(array), -1).astype(np.float32)  # (N, C), a copy
    samples_nc *= np.float32(_TUPLE_SCALES.get(array.dtype, 1.0))
    mono = samples_nc.mean(axis=1, dtype=np.float32)  # (N,)
    return _within_limits(Waveform(mono, int(rate)), limits, _TUPLE)


def _check_wav_header(data: bytes, limits: MediaLimits, origin: str) -> None:
    """For RIFF/WAVE: the data chunk's declared duration against max_audio_s, then truncation
    (FFmpeg silently decodes what is there when the data chunk declares more bytes)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    offset, byte_rate = 12, 0
    while offset + 8 <= len(data):
        chunk_id, size = data[offset:offset + 4], struct.unpack_from("<I", data, offset + 4)[0]
        if chunk_id == b"fmt " and size >= 12 and offset + 20 <= len(data):
            byte_rate = struct.unpack_from("<I", data, offset + 16)[0]  # bytes per second
        if chunk_id == b"data":
            break
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    else:
        return  # no data chunk header: FFmpeg says what is wrong
    if size == _UNKNOWN_WAV_SIZE:
        return
    if byte_rate and size / byte_rate > limits.max_audio_s:
        raise AudioError(f"{origin} declares {size / byte_rate:.2f} s of audio in its WAV header, "
                         f"over max_audio_s={limits.max_audio_s}")
    present = len(data) - (offset + 8)
    if size > present:
        raise AudioError(f"{origin} is truncated: its WAV data chunk declares {size} bytes but "
                         f"only {present} are present")


def _open(data: bytes, origin: str, format_hint: str | None):
    """An open PyAV input container, probed by content, else with the hint's demuxer."""
    demuxer = _HINT_DEMUXERS.get((format_hint or "").strip().lower().lstrip("."))
    failure = None
    for forced in (None, demuxer) if demuxer else (None,):
        try:
            return av.open(io.BytesIO(data), "r", format=forced, metadata_errors="replace",
                           options={"format_whitelist": _DEMUXERS})
        except Exception as exc:  # av.error.*: InvalidDataError, ArgumentError (not whitelisted)
            failure = exc
    hint = f" (format hint {format_hint!r})" if format_hint else ""
    raise AudioError(f"{origin} is not a readable audio file{hint}, or is cut off before its "
                     f"header ends ({len(data)} bytes starting {data[:12]!r}): {failure}; expected "
                     f"{EXPECTED_FORMATS}") from failure


def _audio_stream(container, origin: str):
    if container.streams.audio:
        return container.streams.audio[0]
    found = ", ".join(f"{s.type} ({_codec_name(s)})" for s in container.streams) or "none"
    raise AudioError(f"{origin} is a {container.format.name} file with no audio stream (streams: "
                     f"{found}); expected {EXPECTED_FORMATS}")


def _declared_duration_s(container, stream, data: bytes) -> float | None:
    """The duration the file's header states, or None where FFmpeg would only estimate it from
    the bitrate (MP3 without a Xing/Info/VBRI header, ADTS AAC) or the container does not say.
    WAV is left to _check_wav_header: FFmpeg's figure is clamped to the bytes present."""
    name = container.format.name
    if name in ("aac", "wav") or (name == "mp3" and not _has_mp3_length_header(data)):
        return None
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _has_mp3_length_header(data: bytes) -> bool:
    """A Xing/Info (LAME) or VBRI tag in the first MPEG frame, after any ID3v2 tag."""
    start = 0
    if data[:3] == b"ID3" and len(data) >= 10:
        syncsafe = data[6:10]
        start = 10 + (syncsafe[0] << 21 | syncsafe[1] << 14 | syncsafe[2] << 7 | syncsafe[3])
    head = data[start:start + 200]  # the tag sits 4 + 9..32 (Xing) or 4 + 32 (VBRI) bytes in
    return any(tag in head for tag in (b"Xing", b"Info", b"VBRI"))


def _decode(container, stream, limits: MediaLimits, origin: str) -> tuple[np.ndarray, int]:
    """Decode every frame of `stream` to mono float32, stopping once past max_audio_s."""
    chunks: list[np.ndarray] = []
    n_samples, rate = 0, 0
    try:
        for frame in container.decode(stream):
            if not rate:
                rate = frame.sample_rate
            elif frame.sample_rate != rate:
                raise AudioError(f"{origin} changes sample rate mid-stream, from {rate} Hz to "
                                 f"{frame.sample_rate} Hz; expected one rate")
            chunks.append(_frame_to_mono(frame))
            n_samples += len(chunks[-1])
            if n_samples > limits.max_audio_s * rate:
                raise AudioError(f"{origin} is longer than max_audio_s={limits.max_audio_s}: "
                                 f"decoding stopped at {n_samples / rate:.3f} s")
    except MediaError:
        raise
    except Exception as exc:  # av.error.* (InvalidDataError, ...) and PyAV's own ValueErrors
        if not n_samples:
            raise AudioError(f"{origin} could not be decoded as {_codec_name(stream)} audio "
                             f"(corrupt or truncated): {exc}") from exc
        raise AudioError(f"{origin} is truncated or corrupt: decoding failed after "
                         f"{n_samples / rate:.2f} s: {exc}") from exc
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)  # (n_samples,)
    return samples, rate or stream.sample_rate or 1


def _codec_name(stream) -> str:
    """The stream's codec, or "unknown" where a corrupt file left PyAV without a codec context."""
    context = getattr(stream, "codec_context", None)
    return getattr(context, "name", None) or "unknown"


def _frame_to_mono(frame) -> np.ndarray:
    """One decoded PyAV frame -> (n_samples,) float32: integers scaled, channels averaged."""
    array = frame.to_ndarray()  # planar: (channels, n); packed: (1, n * channels)
    if not frame.format.is_planar:
        array = array.reshape(-1, len(frame.layout.channels)).T
    name = frame.format.name.rstrip("p")
    if name == "u8":
        samples_cn = (array.astype(np.float32) - np.float32(128)) * np.float32(1 / 128)
    else:
        samples_cn = array.astype(np.float32) * np.float32(_INT_SCALES.get(name, 1.0))
    return samples_cn.mean(axis=0, dtype=np.float32)

"""A Transcript in OpenAI's response formats: json, text, srt, vtt and verbose_json."""

from __future__ import annotations

import re
import zlib

from phi4mm.errors import InputError
from phi4mm.transcribe.results import Segment, Transcript

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")


def render(transcript: Transcript, response_format: str) -> str | dict:
    """One of FORMATS -> the response body: a dict (json, verbose_json) or text."""
    if response_format == "json":
        return {"text": transcript.text, "usage": transcript.usage}
    if response_format == "text":
        return transcript.text
    if response_format == "srt":
        return to_srt(transcript.segments)
    if response_format == "vtt":
        return to_vtt(transcript.segments)
    if response_format == "verbose_json":
        return to_verbose_json(transcript)
    raise InputError(f"response_format is {response_format!r}, expected one of {', '.join(FORMATS)}",
                     param="response_format")


def timestamp(seconds: float, decimal: str) -> str:
    """Seconds -> HH:MM:SS,mmm (srt, decimal ',') or HH:MM:SS.mmm (vtt, '.')."""
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{decimal}{ms % 1000:03d}"


def to_srt(segments: tuple[Segment, ...] | list[Segment]) -> str:
    """SubRip: one numbered cue per segment, each followed by a blank line."""
    return "".join(f"{i}\n{timestamp(s.start_s, ',')} --> {timestamp(s.end_s, ',')}\n{_cue(s.text)}\n\n"
                   for i, s in enumerate(segments, 1))


def to_vtt(segments: tuple[Segment, ...] | list[Segment]) -> str:
    """WebVTT: the header, then one cue per segment, each followed by a blank line."""
    return "WEBVTT\n\n" + "".join(
        f"{timestamp(s.start_s, '.')} --> {timestamp(s.end_s, '.')}\n{_cue(s.text)}\n\n" for s in segments)


def _cue(text: str) -> str:
    """Cue text that cannot end its cue early: no blank lines, no '-->'."""
    return re.sub(r"\s*\n\s*", "\n", text).replace("-->", "->")


def to_verbose_json(transcript: Transcript) -> dict:
    """OpenAI's verbose_json: task, language, duration, text, segments. `avg_logprob` and
    `no_speech_prob` are null (not computed); `seek` is the start in 10 ms frames as Whisper's."""
    return {"task": transcript.task, "language": transcript.language,
            "duration": round(transcript.duration_s, 3), "text": transcript.text,
            "segments": [{"id": s.id, "seek": round(s.start_s * 100), "start": round(s.start_s, 3),
                          "end": round(s.end_s, 3), "text": s.text, "tokens": list(s.tokens),
                          "temperature": transcript.temperature, "avg_logprob": None,
                          "compression_ratio": compression_ratio(s.text), "no_speech_prob": None}
                         for s in transcript.segments],
            "usage": transcript.usage}


def compression_ratio(text: str) -> float:
    """UTF-8 length over zlib-compressed length, as Whisper reports it (high: repetitive text)."""
    data = text.encode()
    return round(len(data) / len(zlib.compress(data)), 4) if data else 0.0

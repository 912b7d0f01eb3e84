"""Long-audio transcription and translation, the pure parts: windows of at most 30 s cut at quiet
points, the model card's instructions, one transcript text built from streamed pieces, and the
OpenAI output formats (text, srt, vtt, verbose_json). numpy and the standard library only."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

import numpy as np

from phi4mm.errors import InputError

MAX_WINDOW_S = 30.0   # the speech LoRA was trained on clips of at most 30 s (model card)
SEARCH_S = 5.0        # a window's cut is searched in its last 5 s ...
MIN_TAIL_S = 1.0      # ... but never leaves a last window shorter than 1 s
FRAME_S = 0.1         # loudness is the RMS of a 100 ms frame centred on the candidate cut
HOP_S = 0.01          # candidate cuts every 10 ms
DEFAULT_MAX_TOKENS_PER_WINDOW = 512  # ~30 s of fast speech is ~150 tokens; translations run longer

TRANSCRIBE = "Transcribe the audio clip into text."
TRANSLATE = "Translate the audio to {language}."
LANGUAGE_HINT = " The audio is in {language}."
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")

LANGUAGES = {  # ISO-639-1 code -> the English name the instruction uses
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "es": "Spanish", "fi": "Finnish", "fr": "French", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian",
    "id": "Indonesian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "th": "Thai",
    "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}


# -- windows -------------------------------------------------------------------------------------

def plan_windows(samples: np.ndarray, sample_rate_hz: int, max_window_s: float = MAX_WINDOW_S,
                 search_s: float = SEARCH_S, min_tail_s: float = MIN_TAIL_S) -> list[tuple[int, int]]:
    """float (n,) mono samples -> [(start_sample, end_sample)] covering all of them, in order.

    Rule: while more than `max_window_s` remains after `start`, the window ends at the quietest
    point within its last `search_s` seconds (the centre of the 100 ms frame with the lowest RMS,
    candidates every 10 ms; ties go to the latest, so windows stay long), never closer than
    `min_tail_s` to the end of the clip; the rest is the last window.
    """
    if not 0 < min_tail_s < search_s < max_window_s:
        raise InputError(f"window settings must satisfy 0 < min_tail_s < search_s < max_window_s, "
                         f"got {min_tail_s}, {search_s}, {max_window_s}")
    n = len(samples)
    max_len, search_len = int(max_window_s * sample_rate_hz), int(search_s * sample_rate_hz)
    tail = int(min_tail_s * sample_rate_hz)
    windows, start = [], 0
    while n - start > max_len:
        lo = start + max_len - search_len
        cut = quietest_point(samples, lo, min(start + max_len, n - tail), sample_rate_hz)
        windows.append((start, cut))
        start = cut
    return windows + [(start, n)] if n else []


def quietest_point(samples: np.ndarray, lo: int, hi: int, sample_rate_hz: int) -> int:
    """The sample in [lo, hi] (a 10 ms grid) at the centre of the lowest-RMS 100 ms frame; the
    latest on ties. Frames are clipped at the ends of the clip."""
    half = max(1, int(FRAME_S * sample_rate_hz) // 2)
    hop = max(1, int(HOP_S * sample_rate_hz))
    first = max(0, lo - half)
    region = np.asarray(samples[first:hi + half], dtype=np.float64)
    energy = np.concatenate([[0.0], np.cumsum(region * region)])  # (len(region) + 1,)
    cuts = np.arange(lo, hi + 1, hop)                              # (n_candidates,)
    left = np.maximum(cuts - half, first) - first
    right = np.minimum(cuts + half, first + len(region)) - first
    mean_square = (energy[right] - energy[left]) / np.maximum(right - left, 1)
    latest = len(cuts) - 1 - int(np.argmin(mean_square[::-1]))
    return int(cuts[latest])


# -- instructions --------------------------------------------------------------------------------

def language_name(value: str, param: str = "language") -> str:
    """An ISO-639-1 code ("de") or a language name ("german") -> the name used in instructions."""
    text = value.strip() if isinstance(value, str) else ""
    if text.lower() in LANGUAGES:
        return LANGUAGES[text.lower()]
    if len(text) > 3 and len(text) <= 40 and re.fullmatch(r"[^\W\d_]+(?:[ -][^\W\d_]+)*", text):
        return text[0].upper() + text[1:]
    raise InputError(f"{param} is {value!r}; expected an ISO-639-1 code ({', '.join(sorted(LANGUAGES))}) "
                     "or a language name such as 'German'", param=param)


def instruction(translate_to: str | None = None, language: str | None = None) -> str:
    """The model card's instruction for one window: transcribe, or translate to `translate_to`;
    a `language` hint (the spoken language) is added as one more sentence."""
    if translate_to is None:
        text = TRANSCRIBE
    else:
        text = TRANSLATE.format(language=language_name(translate_to, "translate_to"))
    if language is not None:
        text += LANGUAGE_HINT.format(language=language_name(language))
    return text


# -- results -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Window:
    """Emitted before a window is transcribed (progress)."""
    index: int
    n_windows: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Delta:
    """New transcript text; the deltas of a transcription concatenate to its `text`."""
    index: int
    text: str


@dataclass(frozen=True)
class Segment:
    """One window's transcript (stripped; may be empty)."""
    id: int
    start_s: float
    end_s: float
    text: str
    tokens: tuple[int, ...] = ()
    usage: dict = field(default_factory=dict)   # the window's chat completion usage


@dataclass(frozen=True)
class Transcript:
    task: str                      # "transcribe" or "translate"
    language: str                  # the hint (transcribe) or the target (translate), else "unknown"
    duration_s: float
    segments: tuple[Segment, ...]
    temperature: float = 0.0

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments if s.text)

    @property
    def usage(self) -> dict:
        """OpenAI's token usage of a transcription, summed over the windows."""
        total = {name: sum(s.usage.get(name) or 0 for s in self.segments)
                 for name in ("prompt_tokens", "completion_tokens")}
        audio = sum((s.usage.get("prompt_tokens_details") or {}).get("audio_tokens") or 0
                    for s in self.segments)
        return {"type": "tokens", "input_tokens": total["prompt_tokens"],
                "input_token_details": {"audio_tokens": audio, "text_tokens": total["prompt_tokens"] - audio},
                "output_tokens": total["completion_tokens"],
                "total_tokens": total["prompt_tokens"] + total["completion_tokens"]}


class TranscriptText:
    """Joins windows' streamed pieces: each window's text stripped, non-empty windows separated by
    one space. `feed` returns the text to emit now (trailing whitespace is held back until more
    text follows), so the emitted deltas concatenate exactly to the joined transcript."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._window: list[str] = []
        self._held = ""

    def feed(self, piece: str) -> str:
        text = self._held + piece
        body = text.rstrip()
        self._held = text[len(body):]
        prefix = ""
        if not self._window:
            body = body.lstrip()
            prefix = " " if any(self.texts) else ""
        if not body:
            return ""
        self._window.append(body)
        return prefix + body

    def end_window(self) -> str:
        """The finished window's text."""
        text = "".join(self._window)
        self.texts.append(text)
        self._window, self._held = [], ""
        return text


# -- output formats ------------------------------------------------------------------------------

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

"""Transcription and translation of audio of any length: windows cut at quiet points (windows), the
model card's instructions (instructions), what a transcription produces (results), OpenAI's output
formats (formats), and the loop that runs one chat completion per window (events)."""

from phi4mm.transcribe.events import DEFAULT_MAX_TOKENS_PER_WINDOW, ChatModel, Event, final, transcribe_events
from phi4mm.transcribe.formats import FORMATS, compression_ratio, render, timestamp, to_srt, to_verbose_json, to_vtt
from phi4mm.transcribe.instructions import LANGUAGES, instruction, language_name
from phi4mm.transcribe.results import Delta, Segment, Transcript, TranscriptText, Window
from phi4mm.transcribe.windows import MAX_WINDOW_S, plan_windows, quietest_point

__all__ = [
    "DEFAULT_MAX_TOKENS_PER_WINDOW",
    "FORMATS",
    "LANGUAGES",
    "MAX_WINDOW_S",
    "ChatModel",
    "Delta",
    "Event",
    "Segment",
    "Transcript",
    "TranscriptText",
    "Window",
    "compression_ratio",
    "final",
    "instruction",
    "language_name",
    "plan_windows",
    "quietest_point",
    "render",
    "timestamp",
    "to_srt",
    "to_verbose_json",
    "to_vtt",
    "transcribe_events",
]

"""Transcription and translation of audio of any length on top of chat completions: the clip is
split into windows of at most 30 s (windows.plan_windows) and each window is one chat
completion with the window's audio and the model card's instruction (the speech LoRA, since the
request holds audio only). Windows are independent: no text carries over from one to the next."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from phi4mm import media
from phi4mm.errors import InputError
from phi4mm.media import MediaLimits, Waveform
from phi4mm.params import make_params
from phi4mm.transcribe.instructions import instruction, language_name
from phi4mm.transcribe.results import Delta, Segment, Transcript, TranscriptText, Window
from phi4mm.transcribe.windows import plan_windows

DEFAULT_MAX_TOKENS_PER_WINDOW = 512  # ~30 s of fast speech is ~150 tokens; translations run longer
Event = Window | Delta | Segment | Transcript


class ChatModel(Protocol):
    def create_chat_completion(self, messages: Any, **options: Any) -> Any: ...

    def tokenize(self, text: str) -> list[int]: ...


def transcribe_events(model: ChatModel, audio: Any, limits: MediaLimits, *, translate_to: str | None = None,
                      language: str | None = None, prompt: str | None = None, temperature: float = 0.0,
                      max_tokens_per_window: int = DEFAULT_MAX_TOKENS_PER_WINDOW,
                      should_stop: Callable[[], bool] | None = None,
                      load_audio: Callable[[Any, MediaLimits], Waveform] = media.load_audio) -> Iterator[Event]:
    """Check the arguments and load `audio` now (InputError / MediaError before any output), then
    return a generator of events: per window a Window, its Deltas and its Segment; last the
    Transcript. `prompt` becomes the system message of every window's chat."""
    text = instruction(translate_to, language)
    make_params(max_tokens=max_tokens_per_window, temperature=temperature)
    if prompt is not None and not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}", param="prompt")
    waveform = load_audio(audio, limits)
    task = "transcribe" if translate_to is None else "translate"
    target = translate_to if translate_to is not None else language
    transcript = Transcript(task, language_name(target).lower() if target is not None else "unknown",
                            waveform.duration_s, (), temperature)
    options = {"max_tokens": max_tokens_per_window, "temperature": temperature, "media_limits": limits,
               "should_stop": should_stop}
    return _events(model, waveform, text, prompt, transcript, options)


def _events(model: ChatModel, waveform: Waveform, text: str, prompt: str | None, transcript: Transcript,
            options: dict) -> Iterator[Event]:
    rate = waveform.sample_rate_hz
    windows = plan_windows(waveform.samples, rate)
    joined, segments = TranscriptText(), []
    for index, (start, end) in enumerate(windows):
        yield Window(index, len(windows), start / rate, end / rate)
        clip = Waveform(waveform.samples[start:end], rate)
        usage: dict = {}
        for chunk in model.create_chat_completion(_messages(clip, text, prompt), stream=True, **options):
            if delta := joined.feed(chunk["choices"][0]["delta"].get("content") or ""):
                yield Delta(index, delta)
            usage = chunk.get("usage") or usage
        said = joined.end_window()
        segments.append(Segment(index, start / rate, end / rate, said, tuple(model.tokenize(said)), usage))
        yield segments[-1]
    yield Transcript(transcript.task, transcript.language, transcript.duration_s, tuple(segments),
                     transcript.temperature)


def _messages(clip: Waveform, text: str, prompt: str | None) -> list[dict]:
    user = {"role": "user", "content": [{"type": "audio", "audio": clip}, {"type": "text", "text": text}]}
    return ([{"role": "system", "content": prompt}] if prompt else []) + [user]


def final(events: Iterator[Event]) -> Transcript:
    """The Transcript that ends `events`."""
    for event in events:
        if isinstance(event, Transcript):
            return event
    raise RuntimeError("the transcription events ended without a Transcript")

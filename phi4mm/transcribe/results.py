"""What a transcription produces: progress (Window), streamed text (Delta), one window's transcript
(Segment), the whole Transcript, and TranscriptText, which joins streamed pieces into it."""

from __future__ import annotations

from dataclasses import dataclass, field


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

"""What a request used: tokens by kind, cache hits, and seconds by stage (OpenAI's usage object
plus the extras a local engine can tell)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Usage:
    prompt_tokens: int = 0
    image_tokens: int = 0
    audio_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    image_seconds: float = 0.0
    audio_seconds: float = 0.0
    prompt_seconds: float = 0.0
    completion_seconds: float = 0.0
    queue_seconds: float = 0.0         # waiting for a free sequence slot

    def as_dict(self) -> dict:
        decoded = self.prompt_tokens - self.cached_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "image_tokens": self.image_tokens,
                                      "audio_tokens": self.audio_tokens},
            "image_seconds": round(self.image_seconds, 4),
            "audio_seconds": round(self.audio_seconds, 4),
            "prompt_seconds": round(self.prompt_seconds, 4),
            "completion_seconds": round(self.completion_seconds, 4),
            "queue_seconds": round(self.queue_seconds, 4),
            "prompt_tokens_per_second": _rate(decoded, self.prompt_seconds),
            "completion_tokens_per_second": _rate(self.completion_tokens, self.completion_seconds),
        }


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if seconds > 0 and n > 0 else None


def _rate(n: int, seconds: float) -> float | None:
    return round(n / seconds, 2) if seconds > 0 and n > 0 else None

"""The engine's chunk dicts -> what OpenAI clients expect: stream chunks with OpenAI's usage
semantics (`stream_options.include_usage`), or one `chat.completion` collected from the chunks."""

from __future__ import annotations

from typing import Any


def stream_chunks(chunk: dict, include_usage: bool, model: str) -> list[dict]:
    """One engine chunk -> the chunks to send. The engine puts `usage` on its last chunk; OpenAI
    sends it only with include_usage, as an extra chunk with no choices (others carry null)."""
    out = {key: value for key, value in chunk.items() if key != "usage"} | {"model": model}
    if not include_usage:
        return [out]
    out["usage"] = None
    usage = chunk.get("usage")
    return [out] if usage is None else [out, out | {"choices": [], "usage": usage}]


class Completion:
    """Accumulates engine chunks into one `chat.completion` dict."""

    def __init__(self, model: str):
        self.model = model
        self.parts: list[str] = []
        self.head: dict[str, Any] = {}
        self.finish_reason: str | None = None
        self.usage: dict | None = None

    def add(self, chunk: dict) -> None:
        self.head = self.head or chunk
        choice = chunk["choices"][0]
        self.parts.append(choice["delta"].get("content") or "")
        self.finish_reason = choice["finish_reason"] or self.finish_reason
        self.usage = chunk.get("usage") or self.usage

    def as_dict(self) -> dict:
        message = {"role": "assistant", "content": "".join(self.parts)}
        return {"id": self.head.get("id"), "object": "chat.completion",
                "created": self.head.get("created"), "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": None,
                             "finish_reason": self.finish_reason}],
                "usage": self.usage}

"""Request bodies -> plain frozen dataclasses, validated before a request takes a queue slot.
Unknown fields are ignored; every error is an InputError naming the field (-> HTTP 400)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from phi4mm.errors import InputError
from phi4mm.params import make_params
from phi4mm.prompt import build_prompt

# create_chat_completion keywords taken from the body as they are (OpenAI names plus llama.cpp's)
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
            "repeat_penalty", "stop", "seed", "dynamic_hd")
_JSON_NAMES = {str: "string", bool: "boolean", dict: "object"}


@dataclass(frozen=True)
class ChatRequest:
    messages: list
    stream: bool = False
    include_usage: bool = False                   # stream_options.include_usage
    options: dict = field(default_factory=dict)   # create_chat_completion keywords


def parse_chat_request(body: Any) -> ChatRequest:
    """A decoded JSON body -> ChatRequest, or InputError."""
    if not isinstance(body, dict):
        raise InputError(f"the request body must be a JSON object, got {type(body).__name__}")
    messages = _required(body, "messages")
    build_prompt(messages)  # roles, content parts, <|image_N|> tags against the images given
    _typed(body, "model", str)
    _typed(body, "user", str)
    _check_n(body.get("n"))
    stream = bool(_typed(body, "stream", bool))
    options = {name: body.get(name) for name in SAMPLING}
    options["max_tokens"] = _max_tokens(body)
    make_params(**options)  # types and ranges, before the request takes a queue slot
    options["response_format"] = _typed(body, "response_format", dict)
    return ChatRequest(messages, stream, _include_usage(body.get("stream_options"), stream), options)


def _required(body: dict, name: str) -> Any:
    if body.get(name) is None:
        raise InputError(f"'{name}' is required", param=name)
    return body[name]


def _typed(body: dict, name: str, kind: type, where: str = "") -> Any:
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise InputError(f"{where}{name} must be a {_JSON_NAMES[kind]}, got {type(value).__name__} "
                         f"{value!r:.60}", param=where + name)
    return value


def _check_n(n: Any) -> None:
    if n is not None and (isinstance(n, bool) or n != 1):
        raise InputError(f"n is {n!r}, but this server generates one choice per request; "
                         "send n=1 or omit it", param="n")


def _max_tokens(body: dict) -> Any:
    """max_completion_tokens (the current OpenAI name) wins over max_tokens."""
    value = body.get("max_completion_tokens")
    return body.get("max_tokens") if value is None else value


def _include_usage(options: Any, stream: bool) -> bool:
    if options is None:
        return False
    if not stream:
        raise InputError("stream_options is only allowed when stream is true", param="stream_options")
    if not isinstance(options, dict):
        raise InputError(f"stream_options must be an object, got {type(options).__name__}",
                         param="stream_options")
    return bool(_typed(options, "include_usage", bool, "stream_options."))

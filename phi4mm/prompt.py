"""Chat messages -> prompt text with one placeholder per media item, the media references in
placeholder order and the mode (model-spec.md §4, §8). Pure: no I/O; sources are passed through
as the caller gave them.

Tags, one table row per kind (`<|image_N|>`, `<|audio_N|>`), numbered from 1 per kind in order of
appearance over the conversation. Where a user message has no tag of any kind, its media tags are
inserted before its text, images first, then audio, each in order; where the user wrote tags,
each N must name a given item of that kind and each item must be named exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from phi4mm import keys
from phi4mm.errors import InputError
from phi4mm.modes import Mode, mode_for

ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class MediaKind:
    name: str           # "image" or "audio"
    placeholder: str    # the token the tag becomes, repeated once per row after tokenizing
    token_id: int


KINDS = {
    "image": MediaKind("image", keys.IMAGE_PLACEHOLDER, keys.IMAGE_TOKEN_ID),
    "audio": MediaKind("audio", keys.AUDIO_PLACEHOLDER, keys.AUDIO_TOKEN_ID),
}
TAG = re.compile(r"<\|(image|audio)_(\d+)\|>")
RESERVED = tuple(kind.placeholder for kind in KINDS.values())
# kept for callers that name the image placeholder directly
IMAGE_PLACEHOLDER = keys.IMAGE_PLACEHOLDER
AUDIO_PLACEHOLDER = keys.AUDIO_PLACEHOLDER


@dataclass(frozen=True)
class MediaRef:
    kind: str                 # a key of KINDS
    source: Any               # str (URL, path, base64), bytes, or an already decoded object
    detail: str | None = None  # images: "low" = one crop, "auto"/"high" = dynamic HD


@dataclass(frozen=True)
class Prompt:
    text: str                      # the full prompt; one placeholder per media item, in order
    media: tuple[MediaRef, ...]    # in the order their placeholders appear in `text`
    mode: Mode

    @property
    def images(self) -> tuple[MediaRef, ...]:
        return tuple(m for m in self.media if m.kind == "image")

    @property
    def audios(self) -> tuple[MediaRef, ...]:
        return tuple(m for m in self.media if m.kind == "audio")


def build_prompt(messages: Any) -> Prompt:
    """Validate messages and render Phi-4's chat format with the generation prompt appended."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"messages must be a non-empty list of messages, got {_describe(messages)}",
                         param="messages")
    given: dict[str, list[MediaRef]] = {name: [] for name in KINDS}
    turns: list[str] = []
    for i, message in enumerate(messages):
        role, text, refs = _parse_message(message, i)
        if refs and not TAG.search(text):
            text = _inserted_tags(refs, given) + text
        for ref in refs:
            given[ref.kind].append(ref)
        turns.append(f"<|{role}|>{text}<|end|>")
    body = "".join(turns) + "<|assistant|>"
    order = _tag_order(body, {name: len(refs) for name, refs in given.items()})
    media = tuple(given[kind][n - 1] for kind, n in order)
    text = TAG.sub(lambda m: KINDS[m.group(1)].placeholder, body)
    return Prompt(text, media, mode_for(len(given["image"]), len(given["audio"])))


def _inserted_tags(refs: list[MediaRef], given: dict[str, list[MediaRef]]) -> str:
    """Tags for a message's media, images first, then audio, numbered after those given so far."""
    tags = []
    for name in KINDS:
        first = len(given[name]) + 1
        count = sum(ref.kind == name for ref in refs)
        tags.extend(f"<|{name}_{n}|>" for n in range(first, first + count))
    return "".join(tags)


def _tag_order(body: str, counts: dict[str, int]) -> list[tuple[str, int]]:
    """(kind, number) of each tag in order; per kind each of 1..count exactly once."""
    order = [(m.group(1), int(m.group(2))) for m in TAG.finditer(body)]
    for name, count in counts.items():
        numbers = [n for kind, n in order if kind == name]
        if sorted(numbers) != list(range(1, count + 1)):
            raise InputError(
                f"the messages contain {len(numbers)} {name} tag(s) {[f'<|{name}_{n}|>' for n in numbers]} "
                f"but {count} {name}(s) were given; expected each of <|{name}_1|>..<|{name}_{count}|> "
                "exactly once (or no tags at all, and they are inserted for you)", param="messages")
    return order


def _parse_message(message: Any, index: int) -> tuple[str, str, list[MediaRef]]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InputError(f"{where} must be an object with 'role' and 'content', got {_describe(message)}",
                         param=where)
    role = message.get("role")
    if role not in ROLES:
        raise InputError(f"{where}.role is {role!r}, expected one of {', '.join(ROLES)}", param=f"{where}.role")
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        text, refs = content, []
    elif isinstance(content, (list, tuple)):
        text, refs = _parse_parts(content, f"{where}.content")
    else:
        raise InputError(f"{where}.content must be a string or a list of content parts, "
                         f"got {_describe(content)}", param=f"{where}.content")
    if refs and role != "user":
        raise InputError(f"{where} has role {role!r} but images and audio can only be sent in user "
                         "messages", param=f"{where}.content")
    for token in RESERVED:
        if token in text:
            raise InputError(f"{where}.content contains the reserved token {token}; refer to media "
                             "with <|image_N|> / <|audio_N|> tags instead", param=f"{where}.content")
    return role, text, refs


PART_TYPES = ("text", "image_url", "input_audio", "audio_url")


def _parse_parts(parts: list | tuple, where: str) -> tuple[str, list[MediaRef]]:
    texts: list[str] = []
    refs: list[MediaRef] = []
    for j, part in enumerate(parts):
        here = f"{where}[{j}]"
        kind = part_type(part)
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InputError(f"{here}.text must be a string, got {_describe(part.get('text'))}", param=here)
            texts.append(part["text"])
        elif kind in PART_PARSERS:
            refs.append(PART_PARSERS[kind](part, here))
        else:
            got = repr(kind) if kind is not None else (_describe(part.get("type")) if isinstance(part, dict)
                                                        else f"none ({_describe(part)})")
            raise InputError(f"{here} has type {got}, expected one of {', '.join(map(repr, PART_TYPES))}",
                             param=here)
    return "".join(texts), refs


def part_type(part: Any) -> str | None:
    """A content part's "type" when the part is an object and its type a string, else None."""
    kind = part.get("type") if isinstance(part, dict) else None
    return kind if isinstance(kind, str) else None


def _image_url(part: dict, where: str) -> MediaRef:
    value = part.get("image_url")
    if isinstance(value, str) and value:
        return MediaRef("image", value)
    if isinstance(value, dict) and isinstance(value.get("url"), str) and value["url"]:
        detail = value.get("detail")
        if detail is not None and detail not in ("auto", "low", "high"):
            raise InputError(f"{where}.image_url.detail is {detail!r}, expected 'auto', 'low' or 'high'",
                             param=f"{where}.image_url.detail")
        return MediaRef("image", value["url"], detail)
    raise InputError(f"{where}.image_url must be an object with a non-empty 'url' string, "
                     f"got {_describe(value)}", param=f"{where}.image_url")


def _audio_url(part: dict, where: str) -> MediaRef:
    value = part.get("audio_url")
    url = value.get("url") if isinstance(value, dict) else value
    if isinstance(url, str) and url:
        return MediaRef("audio", url)
    raise InputError(f"{where}.audio_url must be an object with a non-empty 'url' string, "
                     f"got {_describe(value)}", param=f"{where}.audio_url")


def _input_audio(part: dict, where: str) -> MediaRef:
    """OpenAI's shape: base64 `data` and its `format` -> a data URL naming the format."""
    value = part.get("input_audio")
    data = value.get("data") if isinstance(value, dict) else None
    fmt = value.get("format") if isinstance(value, dict) else None
    if not isinstance(data, str) or not data:
        raise InputError(f"{where}.input_audio.data must be a non-empty base64 string, got "
                         f"{_describe(data)}", param=f"{where}.input_audio.data")
    if fmt is not None and (not isinstance(fmt, str) or not re.fullmatch(r"[A-Za-z0-9.+-]{1,16}", fmt)):
        raise InputError(f"{where}.input_audio.format is {fmt!r}, expected a format name such as 'wav', "
                         "'mp3', 'flac', 'ogg', 'm4a' or 'webm'", param=f"{where}.input_audio.format")
    return MediaRef("audio", f"data:audio/{(fmt or 'wav').lower()};base64,{data}")


def _python_media(part: dict, where: str) -> MediaRef:
    """Python API parts: {"type": "image", "image": ...} and {"type": "audio", "audio": ...}."""
    kind = part["type"]
    if kind not in part:
        raise InputError(f"{where} has type {kind!r} but no {kind!r} field", param=where)
    return MediaRef(kind, part[kind], part.get("detail") if kind == "image" else None)


PART_PARSERS: dict[str, Callable[[dict, str], MediaRef]] = {
    "image_url": _image_url, "audio_url": _audio_url, "input_audio": _input_audio,
    "image": _python_media, "audio": _python_media,
}


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def map_media_sources(messages: list, load: Callable[[MediaRef], Any]) -> list:
    """Validated messages with each media part replaced by a Python part holding `load(ref)`, e.g.
    to fetch and decode media before a request waits for the engine. Text parts are kept."""
    out = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            where = f"messages[{index}].content"
            message = {**message, "content": [_mapped_part(p, f"{where}[{j}]", load)
                                               for j, p in enumerate(content)]}
        out.append(message)
    return out


def _mapped_part(part: Any, where: str, load: Callable[[MediaRef], Any]) -> Any:
    kind = part_type(part)
    if kind not in PART_PARSERS:
        return part
    ref = PART_PARSERS[kind](part, where)
    loaded = replace(ref, source=load(ref))
    return {"type": loaded.kind, loaded.kind: loaded.source, "detail": loaded.detail}

"""Chat messages -> prompt text with one image placeholder per image, plus the images in order
(model-spec.md §8). Pure: no I/O; images are passed through as the caller gave them.

`<|image_N|>` tags: where a user message has none, its images' tags are inserted in order before
its text; where the user wrote them, each N must name a given image (numbered from 1 in order of
appearance over the conversation) and each image must be named exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from phi4mm.errors import InputError

ROLES = ("system", "user", "assistant", "tool")
IMAGE_PLACEHOLDER = "<|endoftext10|>"  # id 200010, repeated once per image row after tokenizing
AUDIO_PLACEHOLDER = "<|endoftext11|>"
RESERVED = (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER)
IMAGE_TAG = re.compile(r"<\|image_(\d+)\|>")


@dataclass(frozen=True)
class ImageInput:
    source: Any               # str (URL, path, base64), bytes, PIL image or numpy array
    detail: str | None = None


@dataclass(frozen=True)
class Prompt:
    text: str                        # the full prompt; one IMAGE_PLACEHOLDER per image, in order
    images: tuple[ImageInput, ...]   # in the order their placeholders appear in `text`


def build_prompt(messages: Any) -> Prompt:
    """Validate messages and render Phi-4's chat format with the generation prompt appended."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"messages must be a non-empty list of messages, got {_describe(messages)}",
                         param="messages")
    images: list[ImageInput] = []
    turns: list[tuple[str, str, bool]] = []  # (role, text with tags, has explicit tags)
    for i, message in enumerate(messages):
        role, text, message_images = _parse_message(message, i)
        first = len(images) + 1
        images.extend(message_images)
        explicit = bool(IMAGE_TAG.search(text))
        if not explicit and message_images:
            text = "".join(f"<|image_{n}|>" for n in range(first, len(images) + 1)) + text
        turns.append((role, text, explicit))
    body = "".join(f"<|{role}|>{text}<|end|>" for role, text, _ in turns) + "<|assistant|>"
    order = _tag_order(body, len(images))
    return Prompt(IMAGE_TAG.sub(IMAGE_PLACEHOLDER, body), tuple(images[n - 1] for n in order))


def _tag_order(body: str, n_images: int) -> list[int]:
    """Image numbers in order of their tags; each of 1..n_images exactly once."""
    order = [int(m.group(1)) for m in IMAGE_TAG.finditer(body)]
    if sorted(order) != list(range(1, n_images + 1)):
        raise InputError(
            f"the messages contain {len(order)} image tag(s) {[f'<|image_{n}|>' for n in order]} but "
            f"{n_images} image(s) were given; expected each of <|image_1|>..<|image_{n_images}|> exactly "
            "once (or no tags at all, and they are inserted for you)", param="messages")
    return order


def _parse_message(message: Any, index: int) -> tuple[str, str, list[ImageInput]]:
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
        text, images = content, []
    elif isinstance(content, (list, tuple)):
        text, images = _parse_parts(content, f"{where}.content")
    else:
        raise InputError(f"{where}.content must be a string or a list of content parts, "
                         f"got {_describe(content)}", param=f"{where}.content")
    if images and role != "user":
        raise InputError(f"{where} has role {role!r} but images can only be sent in user messages",
                         param=f"{where}.content")
    for token in RESERVED:
        if token in text:
            raise InputError(f"{where}.content contains the reserved token {token}; refer to images "
                             "with <|image_N|> tags instead", param=f"{where}.content")
    return role, text, images


def _parse_parts(parts: list | tuple, where: str) -> tuple[str, list[ImageInput]]:
    texts: list[str] = []
    images: list[ImageInput] = []
    for j, part in enumerate(parts):
        here = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise InputError(f"{here}.text must be a string, got {_describe(part.get('text'))}", param=here)
            texts.append(part["text"])
        elif kind == "image_url":
            images.append(_image_url(part.get("image_url"), here))
        elif kind == "image" and "image" in part:  # Python API: PIL image, array, bytes or path
            images.append(ImageInput(part["image"], part.get("detail")))
        else:
            raise InputError(f"{here} has type {kind!r}, expected 'text' or 'image_url'", param=here)
    return "".join(texts), images


def _image_url(value: Any, where: str) -> ImageInput:
    if isinstance(value, str):
        return ImageInput(value)
    if isinstance(value, dict) and isinstance(value.get("url"), str) and value["url"]:
        detail = value.get("detail")
        if detail is not None and detail not in ("auto", "low", "high"):
            raise InputError(f"{where}.image_url.detail is {detail!r}, expected 'auto', 'low' or 'high'",
                             param=f"{where}.image_url.detail")
        return ImageInput(value["url"], detail)
    raise InputError(f"{where}.image_url must be an object with a non-empty 'url' string, "
                     f"got {_describe(value)}", param=f"{where}.image_url")


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


def map_image_sources(messages: list, load: Callable[[Any], Any]) -> list:
    """Validated messages with each image part's source replaced by `load(source)`, e.g. to fetch
    and decode images before a request waits for the engine. Other parts are kept as they are."""
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, (list, tuple)):
            message = {**message, "content": [_mapped_part(p, load) for p in content]}
        out.append(message)
    return out


def _mapped_part(part: Any, load: Callable[[Any], Any]) -> Any:
    if not isinstance(part, dict):
        return part
    if part.get("type") == "image":
        return {**part, "image": load(part["image"])}
    if part.get("type") != "image_url":
        return part
    image = _image_url(part.get("image_url"), "image part")
    return {"type": "image", "image": load(image.source), "detail": image.detail}

"""The hub tokenizer files -> llama.cpp `gpt2` BPE vocabulary metadata (llamacpp-notes §1.1, spec §8).

The token list is padded to the model's vocab size with `[PAD{id}]` entries typed unused; special
tokens are typed control, so llama.cpp parses them in prompts and stops on `<|end|>`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from phi4mm.converter.pretokenizer import O200K_REGEX, Detection, detect
from phi4mm.errors import ConversionError

__all__ = ["O200K_REGEX", "Vocabulary", "read_vocabulary"]
log = logging.getLogger(__name__)

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: Detection
    chat_template: str | None


def read_vocabulary(root: Path, vocab_size: int) -> Vocabulary:
    """Read tokenizer.json (+ tokenizer_config.json's chat template) into padded GGUF vocab lists."""
    path = root / "tokenizer.json"
    if not path.exists():
        raise ConversionError(f"{root} has no tokenizer.json; it is needed to build the GGUF vocabulary")
    doc = json.loads(path.read_text(encoding="utf-8"))
    model = doc.get("model", {})
    if model.get("type") != "BPE":
        raise ConversionError(f"tokenizer.json model type is {model.get('type')!r}, expected 'BPE'")
    by_id: dict[int, tuple[str, int]] = {i: (t, NORMAL) for t, i in model["vocab"].items()}
    for added in doc.get("added_tokens", []):
        by_id[added["id"]] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    too_big = [i for i in by_id if i >= vocab_size]
    if too_big:
        raise ConversionError(f"tokenizer ids up to {max(too_big)} exceed the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    if not merges:
        raise ConversionError("tokenizer.json has no BPE merges; llama.cpp cannot load a BPE vocab without them")
    return Vocabulary(tokens, types, merges, _pre_tokenizer(doc), _chat_template(root))


def _pre_tokenizer(doc: dict) -> Detection:
    found = detect(doc.get("pre_tokenizer"))
    if not found.matched:
        log.warning(
            "tokenizer.json's pre-tokenizer is not one llama.cpp knows (%s); writing tokenizer.ggml.pre = %r "
            "and converting anyway. llama.cpp tools outside this package (llama-cli, llama-server) may split "
            "text differently from the reference; this package is unaffected, it tokenizes prompts with the "
            "shipped tokenizer.json.", found.detail, found.name)
    return found


def _chat_template(root: Path) -> str | None:
    path = root / "tokenizer_config.json"
    if not path.exists():
        return None
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) else None

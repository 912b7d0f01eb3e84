"""The hub tokenizer files -> llama.cpp `gpt2` BPE vocabulary metadata (llamacpp-notes §1.1, spec §8).

The token list is padded to the model's vocab size with `[PAD{id}]` entries typed unused; special
tokens are typed control, so llama.cpp parses them in prompts and stops on `<|end|>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from phi4mm.errors import ConversionError

NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# Pre-tokenizer regexes llama.cpp knows, by the name its `tokenizer.ggml.pre` key takes.
O200K_REGEX = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
KNOWN_PRE_TOKENIZERS = {O200K_REGEX: "gpt-4o"}


@dataclass(frozen=True)
class Vocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    pre: str
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


def _pre_tokenizer(doc: dict) -> str:
    pre = doc.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre])
    regexes = [s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {})]
    for regex in regexes:
        if regex in KNOWN_PRE_TOKENIZERS:
            return KNOWN_PRE_TOKENIZERS[regex]
    raise ConversionError(f"tokenizer.json pre-tokenizer split regex {regexes!r} is not one llama.cpp knows; "
                          "expected the o200k (gpt-4o) pattern")


def _chat_template(root: Path) -> str | None:
    path = root / "tokenizer_config.json"
    if not path.exists():
        return None
    template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    return template if isinstance(template, str) else None

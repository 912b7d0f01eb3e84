"""Which llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) a tokenizer.json's split behaves like
(model-spec.md §8; llamacpp-notes §1.1).

The name only tells llama.cpp how to split text; this package tokenizes prompts with `tokenizers`
from the shipped tokenizer.json, so a wrong guess never changes its own outputs. Detection is by
behaviour: the tokenizer.json's own pre-tokenizer and each known pattern split a probe corpus, and
the first pattern that splits every probe the same way names it. An identical regex string is a
shortcut. When nothing matches, the closest pattern is used and the caller is told why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

O200K_REGEX = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])

# llama.cpp `tokenizer.ggml.pre` name -> the split regex its tokenizer.json form uses (llama.cpp
# src/llama-vocab.cpp, "original regex from tokenizer.json"). Order: preference on a tie.
KNOWN_PATTERNS = (
    ("gpt-4o", O200K_REGEX),
    ("llama-bpe", r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                  r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""),
    ("qwen2", r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
              r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""),
    ("tekken", r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
               r"""|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
               r"""|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"""),
    ("gpt-2", r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""),
)
FALLBACK = "gpt-4o"  # the o200k family's name, used when even the closest match is unclear

# Text where the known patterns split differently: case changes inside words, contractions in
# both cases, digit runs, whitespace runs and newlines, code, scripts without case, emoji and
# combining marks (including a titlecase letter).
PROBES = (
    "Hello World! HelloWorld, CamelCaseWords, XMLHttpRequest and UPPER lower MiXeD.",
    "I'm sure they'RE here; we'VE seen it, it'll rain, I'D go, don't, DON'T, she's, 's",
    "1 12 123 1234 12345 1234567 3.14159 1,000,000 2024-05-01 0x1F ١٢٣٤ 一二三",
    "def f(x):\n\treturn x**2  # comment\n    if a<=b: pass /* c */ foo_bar.baz()\n",
    "a  b   c\n\n\n  d \t\t e\r\n f   \n   ",
    "path/to/file.txt\n// comment\n\"quoted\" (paren) ...\n!?/\n--//--",
    "Der schnelle Fuchs. Les élèves étaient là. Привет, мир! Γειά σου Κόσμε.",
    "你好，世界！ こんにちは世界 안녕하세요 مرحبا بالعالم नमस्ते दुनिया ภาษาไทย",
    "I ❤️ 🍕! 👨‍👩‍👧 ok 🚀🚀 ☃︎ 🇫🇷",
    "e\u0301 cafe\u0301 Z\u0351\u0362a\u0354lgo \u01c5emal \u01c8ubljana n\u0303o\u0308",
)


@dataclass(frozen=True)
class Detection:
    name: str        # the `tokenizer.ggml.pre` value to write
    how: str         # "regex" (identical string), "behaviour" (all probes agree) or "closest"
    agreed: int      # probes split identically by the named pattern
    detail: str = ""  # why nothing matched, when how == "closest"

    @property
    def matched(self) -> bool:
        return self.how != "closest"


def split_regexes(pre_tokenizer: dict | None) -> list[str]:
    """The Split regexes of a tokenizer.json `pre_tokenizer` section (a Sequence or a single step)."""
    pre = pre_tokenizer or {}
    steps = pre.get("pretokenizers", [pre])
    return [s["pattern"]["Regex"] for s in steps if s.get("type") == "Split" and "Regex" in s.get("pattern", {})]


def detect(pre_tokenizer: dict | None) -> Detection:
    """Name the llama.cpp pre-tokenizer that splits like this tokenizer.json `pre_tokenizer`."""
    for regex in split_regexes(pre_tokenizer):
        for name, known in KNOWN_PATTERNS:
            if regex == known:
                return Detection(name, "regex", len(PROBES))
    try:
        ours = _splits(_pre_tokenizer_of(pre_tokenizer))
    except Exception as exc:  # any failure of `tokenizers` here means "unknown"
        return Detection(FALLBACK, "closest", 0, f"`tokenizers` could not run it ({type(exc).__name__}: {exc})")
    scores = []
    for name, regex in KNOWN_PATTERNS:
        agreed = sum(a == b for a, b in zip(ours, _splits(_split_step(regex)), strict=True))
        if agreed == len(PROBES):
            return Detection(name, "behaviour", agreed)
        scores.append((agreed, name))
    best_agreed = max(a for a, _ in scores)
    best = next(n for a, n in scores if a == best_agreed)
    return Detection(best, "closest", best_agreed,
                     f"no known pattern splits all {len(PROBES)} probe texts like it; {best} agrees on {best_agreed}")


def _splits(pre) -> list[list[tuple[int, int]]]:
    """Character offsets of the pieces of each probe text."""
    return [[offsets for _, offsets in pre.pre_tokenize_str(text)] for text in PROBES]


def _split_step(regex: str):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


def _pre_tokenizer_of(section: dict | None):
    """A `tokenizers` pre-tokenizer built from the JSON section alone (no vocabulary needed)."""
    from tokenizers import Tokenizer

    doc = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": section, "post_processor": None, "decoder": None,
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": {}, "merges": []}}
    pre = Tokenizer.from_str(json.dumps(doc)).pre_tokenizer
    if pre is None:
        raise ValueError("tokenizer.json has no pre_tokenizer")
    return pre

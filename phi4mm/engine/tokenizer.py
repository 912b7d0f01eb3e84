"""Prompt tokenization with HF `tokenizers` from the checkpoint's own tokenizer.json.

llama.cpp's built-in `gpt-4o` pre-tokenizer approximates the o200k split regex (it ignores
combining marks and treats non-ASCII capitals as both cases), so Hindi, Bengali or all-caps
accented words tokenize differently from the reference. Token ids are computed here instead and
fed to llama.cpp, whose vocabulary is identical; llama.cpp still renders generated tokens.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from phi4mm.errors import ConfigError


class Tokenizer:
    def __init__(self, path: Path):
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on unreadable files
            raise ConfigError(f"cannot read the tokenizer {path}: {exc}", key=str(path)) from exc

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, special tokens recognised (as the HF processor does), no BOS."""
        return self._tok.encode(text, add_special_tokens=False).ids

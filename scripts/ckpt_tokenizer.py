"""Tokenizer files for generated checkpoints: a small synthetic byte-level BPE, or the real o200k.

Both use the o200k split regex and GPT-2's byte-to-unicode alphabet, so llama.cpp's `gpt-4o`
pre-tokenizer and HF `tokenizers` see the same pieces. Special tokens sit at their real ids
(model-spec.md §8); ids nobody uses stay out of the vocab, as in the hub files.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from phi4mm.converter.tokenizer import O200K_REGEX

SPECIAL_TOKENS = {
    199999: "<|endoftext|>",
    200010: "<|endoftext10|>",
    200011: "<|endoftext11|>",
    200018: "<|endofprompt|>",
    200019: "<|assistant|>",
    200020: "<|end|>",
    200021: "<|user|>",
    200022: "<|system|>",
    200023: "<|tool|>",
    200024: "<|/tool|>",
    200025: "<|tool_call|>",
    200026: "<|/tool_call|>",
    200027: "<|tool_response|>",
    200028: "<|tag|>",
}

# Phi-4-mini's chat template (model-spec.md §8).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + "
    "message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

_TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. Phi-4-multimodal reads images, text and speech.
A picture of a mountain with snow on it; the chart shows revenue by quarter, rising in 2024.
def encode_image(pixels_nchw):\n    return projector(pool(siglip(pixels_nchw)))\n
for i in range(10): print(i * 2, "hello world")  # numbers 0123456789
Describe the image in detail. What is shown in this image? Summarize the text below.
Les montagnes sont belles en hiver. Der schnelle braune Fuchs. El perro come manzanas.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def synthetic_bpe(n_merges: int = 600) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a small byte-level BPE on a fixed text: (vocab token->id, merges in priority order)."""
    byte_char = bytes_to_unicode()
    vocab = {byte_char[b]: b for b in range(256)}
    words = Counter(re.findall(r" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+", _TRAINING_TEXT * 3))
    splits = {w: [byte_char[b] for b in w.encode()] for w in words}
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, parts in splits.items():
            for a, b in zip(parts, parts[1:], strict=False):
                pairs[(a, b)] += words[w]
        if not pairs:
            break
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        vocab[best[0] + best[1]] = len(vocab)
        for w, parts in splits.items():
            splits[w] = _merge_pair(parts, best)
    return vocab, merges


def _merge_pair(parts: list[str], pair: tuple[str, str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(parts):
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
            out.append(parts[i] + parts[i + 1])
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


def o200k_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The real o200k ranks from the `bpe-openai` package as (vocab, merges) in HF form.

    Each multi-byte token's merge is recovered by running BPE on its bytes with lower ranks only.
    """
    from bpe_openai import registry  # reference extra; imported only when asked for

    ranks: dict[bytes, int] = registry.o200k_base()["mergeable_ranks"]
    byte_char = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_char[b] for b in token)

    vocab = {to_str(token): rank for token, rank in ranks.items()}
    merged: list[tuple[int, str, str]] = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        left, right = _split_by_lower_ranks(token, rank, ranks)
        merged.append((rank, to_str(left), to_str(right)))
    merged.sort()
    return vocab, [(a, b) for _, a, b in merged]


def _split_by_lower_ranks(token: bytes, max_rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best_i, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_i, best_rank = i, r
        if best_i < 0:
            raise ValueError(f"token {token!r} cannot be built from lower-ranked merges")
        parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


def tokenizer_json(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict:
    """The HF `tokenizers` document for a byte-level BPE with the o200k split and our specials."""
    full_vocab = dict(vocab)
    for token_id, text in SPECIAL_TOKENS.items():
        full_vocab[text] = token_id
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for i, t in SPECIAL_TOKENS.items()
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": O200K_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": False, "vocab": full_vocab, "merges": [list(m) for m in merges],
        },
    }


def write_tokenizer_files(out_dir: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """Write tokenizer.json, tokenizer_config.json, vocab.json, merges.txt and the token maps."""
    eot = SPECIAL_TOKENS[199999]
    (out_dir / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab, merges), ensure_ascii=False))
    config = {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": True}
            for i, t in SPECIAL_TOKENS.items()
        },
        "bos_token": eot, "eos_token": eot, "pad_token": eot, "unk_token": eot,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "tokenizer_class": "GPT2Tokenizer",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (out_dir / "added_tokens.json").write_text(json.dumps({t: i for i, t in SPECIAL_TOKENS.items()}, indent=2))
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": eot, "eos_token": eot, "pad_token": eot, "unk_token": eot}, indent=2))

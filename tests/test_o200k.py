"""The real o200k tokenizer (ranks from the bpe-openai package), built into a checkpoint by the
checkpoint maker and converted, tokenizes exactly as HF `tokenizers` and as tiktoken's ranks do."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.reference

CORPUS = [
    "Hello world! Don't stop; I'll see you at 10:45 — ok?",
    "The quick brown fox jumps over the lazy dog.\n\nNew paragraph\twith\ttabs.",
    "Ünïcödé: Größe, façade, naïve café, smörgåsbord, Ærøskøbing.",
    "日本語のテキストと漢字、カタカナ。中文文本测试，包括标点符号！",
    "한국어 문장입니다. Русский текст с цифрами 12345 и знаками.",
    "العربية نص تجريبي مع أرقام ١٢٣ — हिन्दी पाठ भी यहाँ है।",
    "Emoji: 😀👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️‍🔥 and flags 🇫🇷🇯🇵",
    "def encode(x: int) -> list[int]:\n    return [x ** 2 for _ in range(10)]  # comment\n",
    "    indented    spaces   \n\n\n   trailing   ",
    "URL https://example.com/path?q=1&r=2#frag and e-mail a.b@c.de, $19.99, 3.14159",
    "CamelCaseIdentifiers and snake_case_names, HTTPServerError, x86_64, 1e-5",
    "{\"json\": [1, 2, 3], \"nested\": {\"k\": null, \"t\": true}}",
    "Mixed<|user|>special<|end|><|assistant|>tokens",
]


@pytest.fixture(scope="module")
def o200k(tmp_path_factory):
    from make_checkpoint import write_checkpoint
    from tokenizers import Tokenizer as HFTokenizer

    from phi4mm.converter.convert import convert
    from phi4mm.engine.llama import Model
    from phi4mm.engine.tokenizer import Tokenizer
    from phi4mm.files import ModelFiles

    ckpt = write_checkpoint(tmp_path_factory.mktemp("o200k-ckpt"), size="tiny", tokenizer="o200k")
    out = tmp_path_factory.mktemp("o200k-gguf")
    convert(ckpt, out, quant="f32", encoder_type="f32")
    files = ModelFiles.from_dir(out)
    model = Model(files.text)
    yield Tokenizer(files.tokenizer), model, HFTokenizer.from_file(str(ckpt / "tokenizer.json"))
    model.close()


@pytest.mark.parametrize("text", CORPUS)
def test_converted_tokenizer_matches_hf_tokenizers(o200k, text):
    ours, _, hf = o200k
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("text", [t for t in CORPUS if "<|" not in t])
def test_matches_tiktoken_ranks(o200k, text):
    import bpe_openai

    ours, _, _ = o200k
    assert ours.encode(text) == bpe_openai.get_encoding("o200k_base").encode(text)


def test_gguf_vocabulary_renders_every_token_as_the_tokenizer_does(o200k):
    """llama.cpp renders generated ids: its GGUF vocabulary must give each id the same bytes."""
    from ckpt_tokenizer import bytes_to_unicode

    _, model, hf = o200k
    unicode_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = hf.get_vocab()
    assert model.n_vocab == 200064 and len(vocab) > 199_990
    mismatches = []
    for token, token_id in vocab.items():
        if token.startswith("<|"):
            continue
        expected = bytes(unicode_to_byte[c] for c in token)
        if model.piece(token_id) != expected:
            mismatches.append(token_id)
    assert not mismatches, mismatches[:10]


def test_round_trip(o200k):
    ours, model, _ = o200k
    text = CORPUS[6] + CORPUS[3] + CORPUS[5]
    assert b"".join(model.piece(t) for t in ours.encode(text)).decode() == text

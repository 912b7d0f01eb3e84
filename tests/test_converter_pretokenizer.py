"""Pre-tokenizer detection by behaviour (converter/pretokenizer.py): equivalent regexes are
recognised however they are spelled; an unknown one converts with a warning, never refuses."""

import itertools
import json
import logging

import gguf
import pytest

from phi4mm.converter import pretokenizer
from phi4mm.converter.convert import convert
from phi4mm.converter.pretokenizer import KNOWN_PATTERNS, O200K_REGEX, PROBES, detect
from phi4mm.converter.tokenizer import read_vocabulary

LLAMA3_REGEX = dict(KNOWN_PATTERNS)["llama-bpe"]
CONTRACTIONS = "(?i:'s|'t|'re|'ve|'m|'ll|'d)"
SPELLED_OUT = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"  # llama.cpp's own rewrite


def split_section(regex: str) -> dict:
    """A pre_tokenizer section as the hub tokenizer.json has it: the split, then byte-level mapping."""
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}


def re_escaped_o200k() -> str:
    """The o200k regex spelled differently: contractions without (?i:), \\x escapes, reordered classes."""
    regex = (O200K_REGEX.replace(CONTRACTIONS, SPELLED_OUT)
             .replace(r"[\r\n/]*", r"[\x0a\x0d/]*")
             .replace(r"\s*[\r\n]+", r"\s*[\n\r]+")
             .replace(r"\p{N}{1,3}", r"(?:\p{N}{1,3})"))
    assert regex != O200K_REGEX
    return regex


def test_the_exact_o200k_string_is_a_shortcut():
    assert detect(split_section(O200K_REGEX)) == pretokenizer.Detection("gpt-4o", "regex", len(PROBES))


def test_a_re_escaped_equivalent_regex_is_detected_as_gpt_4o():
    found = detect(split_section(re_escaped_o200k()))
    assert (found.name, found.how, found.agreed) == ("gpt-4o", "behaviour", len(PROBES))


def test_another_family_is_told_apart_by_behaviour():
    found = detect(split_section(LLAMA3_REGEX.replace(CONTRACTIONS, SPELLED_OUT)))
    assert (found.name, found.how) == ("llama-bpe", "behaviour")


def test_a_byte_level_pre_tokenizer_without_split_is_gpt_2():
    found = detect({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True})
    assert (found.name, found.how) == ("gpt-2", "behaviour")


def test_the_probes_tell_every_known_pattern_apart():
    splits = {name: pretokenizer._splits(pretokenizer._split_step(regex)) for name, regex in KNOWN_PATTERNS}
    for a, b in itertools.combinations(splits, 2):
        assert splits[a] != splits[b], f"no probe text splits {a} and {b} differently"


def test_a_near_miss_gets_the_closest_name():
    found = detect(split_section(O200K_REGEX.replace(r"\p{N}{1,3}", r"\p{N}{1,4}")))
    assert (found.name, found.how) == ("gpt-4o", "closest")
    assert 0 < found.agreed < len(PROBES)


@pytest.mark.slow
def test_an_unknown_regex_converts_with_the_warning(tmp_path, tiny_ckpt, caplog):
    ckpt = tmp_path / "ck"
    ckpt.mkdir()
    for f in tiny_ckpt.iterdir():
        (ckpt / f.name).symlink_to(f)
    doc = json.loads((tiny_ckpt / "tokenizer.json").read_text())
    doc["pre_tokenizer"] = split_section(r"\w+|[^\w\s]+|\s+")
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="phi4mm.converter"):
        assert read_vocabulary(ckpt, 200064).pre.how == "closest"
        manifest = convert(ckpt, tmp_path / "out", quant="f32", encoder_type="f32")
    warnings = [r.getMessage() for r in caplog.records if "pre-tokenizer" in r.getMessage()]
    assert warnings and "llama.cpp tools outside this package" in warnings[0] and "unaffected" in warnings[0]
    assert manifest["pre_tokenizer"]["detected_by"] == "closest"
    text = gguf.GGUFReader(tmp_path / "out" / manifest["files"]["text"]["name"])
    written = bytes(text.fields["tokenizer.ggml.pre"].parts[-1]).decode()
    assert written == manifest["pre_tokenizer"]["name"] and written in dict(KNOWN_PATTERNS)
    assert (tmp_path / "out" / "tokenizer.json").read_text() == json.dumps(doc)  # the runtime's own tokenizer

"""Chat messages -> prompt text and image order (model-spec.md §8)."""

import pytest

from phi4mm.errors import InputError
from phi4mm.prompt import IMAGE_PLACEHOLDER as PH
from phi4mm.prompt import build_prompt


def img(url):
    return {"type": "image_url", "image_url": {"url": url}}


def text(t):
    return {"type": "text", "text": t}


def test_text_only_chat_format():
    p = build_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert p.text == "<|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>"
    assert p.images == ()


def test_tags_inserted_before_text_when_absent():
    p = build_prompt([{"role": "user", "content": [text("Compare."), img("a"), img("b")]}])
    assert p.text == f"<|user|>{PH}{PH}Compare.<|end|><|assistant|>"
    assert [i.source for i in p.images] == ["a", "b"]


def test_numbering_continues_across_messages():
    msgs = [{"role": "user", "content": [img("a"), text("one")]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [img("b"), text("two")]}]
    p = build_prompt(msgs)
    assert p.text.count(PH) == 2
    assert [i.source for i in p.images] == ["a", "b"]


def test_user_tags_are_kept_and_order_follows_tags():
    p = build_prompt([{"role": "user", "content": [img("a"), img("b"), text("<|image_2|> then <|image_1|>")]}])
    assert p.text == f"<|user|>{PH} then {PH}<|end|><|assistant|>"
    assert [i.source for i in p.images] == ["b", "a"]


def test_seed_style_tag_with_newline():
    p = build_prompt([{"role": "user", "content": [img("u"), text("<|image_1|>\nWhat is shown?")]}])
    assert p.text == f"<|user|>{PH}\nWhat is shown?<|end|><|assistant|>"


@pytest.mark.parametrize("parts, reason", [
    ([img("a"), text("<|image_2|>")], "tag names an image that was not given"),
    ([img("a"), text("<|image_1|><|image_1|>")], "tag used twice"),
    ([text("<|image_1|> but no image")], "tag without an image"),
    ([img("a"), img("b"), text("<|image_1|> only")], "an image without a tag"),
])
def test_tag_mismatch_names_both_counts(parts, reason):
    with pytest.raises(InputError, match=r"image tag\(s\).*image\(s\) were given"):
        build_prompt([{"role": "user", "content": parts}])


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "wizard", "content": "x"}], "role is 'wizard', expected one of"),
    (["not a dict"], "must be an object"),
    ([{"role": "user", "content": 5}], "string or a list"),
    ([{"role": "user", "content": [{"type": "audio"}]}], "type 'audio', expected"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "non-empty 'url'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a", "detail": "x"}}]}], "detail"),
    ([{"role": "assistant", "content": [img("a")]}], "only be sent in user messages"),
    ([{"role": "user", "content": f"sneaky {PH}"}], "reserved token"),
])
def test_bad_messages_raise_input_error(messages, match):
    with pytest.raises(InputError, match=match):
        build_prompt(messages)

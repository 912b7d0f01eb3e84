"""Chat messages -> prompt text and image order (model-spec.md §8)."""

import pytest

from phi4mm import modes
from phi4mm.errors import InputError
from phi4mm.prompt import AUDIO_PLACEHOLDER as APH
from phi4mm.prompt import IMAGE_PLACEHOLDER as PH
from phi4mm.prompt import MediaRef, build_prompt, map_media_sources


def img(url):
    return {"type": "image_url", "image_url": {"url": url}}


def text(t):
    return {"type": "text", "text": t}


def test_text_only_chat_format():
    p = build_prompt([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    assert p.text == "<|system|>Be brief.<|end|><|user|>Hi<|end|><|assistant|>"
    assert p.images == ()
    assert p.media == ()
    assert p.mode is modes.TEXT


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
    ([{"role": "user", "content": [{"type": "video"}]}], "type 'video', expected one of"),
    ([{"role": "user", "content": [{"type": "audio"}]}], "type 'audio' but no 'audio' field"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"format": "wav"}}]}],
     "input_audio.data must be a non-empty base64 string"),
    ([{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "w a v"}}]}],
     "input_audio.format"),
    ([{"role": "user", "content": [{"type": "audio_url", "audio_url": {"url": ""}}]}], "audio_url must be"),
    ([{"role": "assistant", "content": [{"type": "audio_url", "audio_url": "a.wav"}]}], "only be sent in user"),
    ([{"role": "user", "content": f"sneaky {APH}"}], "reserved token"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "non-empty 'url'"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a", "detail": "x"}}]}], "detail"),
    ([{"role": "assistant", "content": [img("a")]}], "only be sent in user messages"),
    ([{"role": "user", "content": f"sneaky {PH}"}], "reserved token"),
])
def test_bad_messages_raise_input_error(messages, match):
    with pytest.raises(InputError, match=match):
        build_prompt(messages)


def aud(url):
    return {"type": "audio_url", "audio_url": {"url": url}}


def test_audio_tags_inserted_after_image_tags():
    p = build_prompt([{"role": "user", "content": [aud("s1"), text("Both?"), img("a"), aud("s2")]}])
    assert p.text == f"<|user|>{PH}{APH}{APH}Both?<|end|><|assistant|>"
    assert [(m.kind, m.source) for m in p.media] == [("image", "a"), ("audio", "s1"), ("audio", "s2")]
    assert p.mode is modes.VISION_SPEECH


def test_audio_numbering_per_kind_across_messages_and_explicit_order():
    msgs = [{"role": "user", "content": [aud("x"), text("first")]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [aud("y"), img("i"), text("<|image_1|> vs <|audio_2|>")]}]
    p = build_prompt(msgs)
    assert p.text == f"<|user|>{APH}first<|end|><|assistant|>ok<|end|><|user|>{PH} vs {APH}<|end|><|assistant|>"
    assert [(m.kind, m.source) for m in p.media] == [("audio", "x"), ("image", "i"), ("audio", "y")]


@pytest.mark.parametrize("n_images, n_audios, mode", [
    (0, 0, modes.TEXT), (2, 0, modes.VISION), (0, 1, modes.SPEECH), (1, 1, modes.VISION_SPEECH)])
def test_mode_picks_adapter_and_head(n_images, n_audios, mode):
    parts = [img(f"i{k}") for k in range(n_images)] + [aud(f"a{k}") for k in range(n_audios)] + [text("q")]
    assert build_prompt([{"role": "user", "content": parts}]).mode is mode
    assert mode.lora == {"text": None, "vision": "vision", "speech": "speech", "vision_speech": "vision"}[mode.name]
    assert mode.audio_head == {"text": None, "vision": None, "speech": "speech", "vision_speech": "vision"}[mode.name]


def test_input_audio_becomes_a_data_url_with_its_format():
    part = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "MP3"}}
    p = build_prompt([{"role": "user", "content": [part]}])
    assert p.media == (MediaRef("audio", "data:audio/mp3;base64,UklGRg=="),)
    assert p.mode is modes.SPEECH


def test_python_audio_part_keeps_its_source():
    clip = ([0.0, 0.1], 16000)
    p = build_prompt([{"role": "user", "content": [{"type": "audio", "audio": clip}, text("hi")]}])
    assert p.audios[0].source is clip


@pytest.mark.parametrize("parts", [
    [aud("a"), text("<|audio_2|>")],
    [aud("a"), aud("b"), text("<|audio_1|> only")],
    [img("i"), aud("a"), text("<|image_1|> but the audio is untagged")],
    [text("<|audio_1|> without audio")],
])
def test_audio_tag_mismatch_names_both_counts(parts):
    with pytest.raises(InputError, match=r"audio tag\(s\).*audio\(s\) were given"):
        build_prompt([{"role": "user", "content": parts}])


def test_map_media_sources_loads_each_kind():
    msgs = [{"role": "user", "content": [img("pic"), text("t"),
                                         {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]
    seen = []

    def load(ref):
        seen.append((ref.kind, ref.source))
        return f"loaded-{ref.kind}"

    out = map_media_sources(msgs, load)
    assert seen == [("image", "pic"), ("audio", "data:audio/wav;base64,AAAA")]
    assert out[0]["content"][0] == {"type": "image", "image": "loaded-image", "detail": None}
    assert out[0]["content"][1] == text("t")
    assert out[0]["content"][2] == {"type": "audio", "audio": "loaded-audio", "detail": None}
    assert build_prompt(out).mode is modes.VISION_SPEECH

"""End-to-end audio parity: `prompt_logits` with audio (numpy log-mel + Conformer + projector rows
injected into llama.cpp, the speech LoRA active for audio-only prompts, the vision LoRA and the
vision head with an image) against transformers' Phi4MultimodalForCausalLM with the mode's LoRA
merged, fed by the original extractor's features (tests/reference_audio.py).

Tolerance (issue 7): max|Δlogit| / max|logit| <= 5e-3, same argmax. The negative controls (no
speech LoRA, the wrong projector head, no pre-emphasis) must exceed it.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from reference_audio import make_signal, projected_rows, reference_log_mel
from reference_image import make_picture, reference_grid, reference_preprocess

from phi4mm.audio import features
from phi4mm.prompt import build_prompt

pytestmark = pytest.mark.reference
TOLERANCE = 5e-3
IMAGE_ID, AUDIO_ID = 200010, 200011
QUESTION = "Transcribe the audio clip into text."


@pytest.fixture(scope="module")
def audio_model(tiny_f32):
    from phi4mm import Phi4MM

    model = Phi4MM.from_pretrained(tiny_f32, n_ctx=4096, n_threads=2)
    yield model
    model.close()


def clip(seconds: float, rate_hz: int, seed: int, channels: int = 1) -> tuple[np.ndarray, int]:
    return make_signal(seconds, rate_hz, seed, channels).astype(np.float32), rate_hz


def user(clips, text=QUESTION, pictures=()):
    parts = [*({"type": "image", "image": p} for p in pictures),
             *({"type": "audio", "audio": c} for c in clips), {"type": "text", "text": text}]
    return [{"role": "user", "content": parts}]


def expand(reference, messages, rows_per_item: list[int]) -> list[int]:
    """Reference token ids with each placeholder repeated once per row of its item, in order."""
    rows = iter(rows_per_item)
    ids: list[int] = []
    for tok in reference.encode(build_prompt(messages).text):
        ids.extend([tok] * next(rows) if tok in (IMAGE_ID, AUDIO_ID) else [tok])
    return ids


def image_inputs(pictures, dynamic_hd):
    prepared = [reference_preprocess(p, dynamic_hd) for p in pictures]
    c_max = max(crops.shape[0] for crops, _, _ in prepared)
    pixels = torch.zeros(len(pictures), c_max, 3, 448, 448)
    masks = torch.ones(len(pictures), c_max, 32, 32)
    for i, (crops, mask, _) in enumerate(prepared):
        pixels[i, :crops.shape[0]] = torch.from_numpy(crops)
        masks[i, :mask.shape[0]] = torch.from_numpy(mask.astype(np.float32))
    grids = [reference_grid(*p.size, dynamic_hd) for p in pictures]
    sizes = torch.tensor([[448 * gh, 448 * gw] for gw, gh in grids])
    return [n for _, _, n in prepared], {"image_pixel_values": pixels, "image_sizes": sizes,
                                         "image_attention_mask": masks}


def reference_logits(reference, messages, clips, pictures=(), dynamic_hd=4) -> np.ndarray:
    """The native model's own forward: one clip (its projector head chosen by the model itself)."""
    feats = reference_log_mel(*clips[0])
    n_audio = math.ceil(len(feats) / 8)
    image_rows, inputs = image_inputs(pictures, dynamic_hd) if pictures else ([], {})
    ids = expand(reference, messages, image_rows + [n_audio])
    inputs.update(audio_input_features=torch.from_numpy(feats)[None], audio_embed_sizes=torch.tensor([n_audio]))
    mode = "vision" if pictures else "speech"
    with torch.no_grad():
        out = reference.model(mode)(input_ids=torch.tensor([ids]), **inputs)
    return out.logits[0, -1].float().numpy()


def spliced_logits(reference, messages, clips, mode="speech", head="speech") -> np.ndarray:
    """Each clip embedded alone (model-spec §7.2 step 4) and spliced into the token embeddings."""
    model = reference.model(mode)
    audio_embed = model.model.embed_tokens_extend.audio_embed
    rows = [projected_rows(audio_embed, reference_log_mel(*c), head) for c in clips]
    ids = expand(reference, messages, [len(r) for r in rows])
    with torch.no_grad():
        embeds = model.model.embed_tokens(torch.tensor([ids]))
        embeds[0, torch.tensor(ids) == AUDIO_ID] = torch.from_numpy(np.concatenate(rows))
        out = model(inputs_embeds=embeds)
    return out.logits[0, -1].float().numpy()


def error(ours: np.ndarray, ref: np.ndarray) -> tuple[float, bool]:
    return float(np.abs(ours - ref).max() / np.abs(ref).max()), int(ours.argmax()) == int(ref.argmax())


CASES = {  # name -> (clips, tagged text); every clip differs, so no case reuses another's rows
    "16k": ([clip(1.3, 16000, 1)], f"<|audio_1|>{QUESTION}"),
    "48k-stereo": ([clip(1.1, 48000, 2, channels=2)], f"<|audio_1|>{QUESTION}"),
    "8k": ([clip(1.2, 8000, 3)], f"<|audio_1|>{QUESTION}"),
    "chunked": ([clip(41.5, 16000, 4)], f"<|audio_1|>{QUESTION}"),  # 4148 frames -> 519 > 500 rows
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_audio_only_matches_reference(audio_model, reference, name):
    clips, text = CASES[name]
    messages = user(clips, text)
    err, same = error(audio_model.prompt_logits(messages), reference_logits(reference, messages, clips))
    assert err <= TOLERANCE and same, (name, err, same)


def test_untagged_audio_is_inserted_and_matches(audio_model, reference):
    clips = [clip(1.0, 16000, 5)]
    untagged = user(clips)
    assert build_prompt(untagged).text == build_prompt(user(clips, f"<|audio_1|>{QUESTION}")).text
    err, same = error(audio_model.prompt_logits(untagged), reference_logits(reference, untagged, clips))
    assert err <= TOLERANCE and same, (err, same)


def test_chunked_clip_really_is_chunked():
    feats = features.log_mel(*features.to_model_rate(*CASES["chunked"][0][0]))
    assert math.ceil(len(feats) / 8) > 500


def test_two_clips_in_one_message(audio_model, reference):
    clips = [clip(0.9, 16000, 6), clip(1.7, 16000, 7)]
    messages = user(clips, f"<|audio_2|> then <|audio_1|>: {QUESTION}")
    ours = audio_model.prompt_logits(messages)
    ordered = [clips[1], clips[0]]  # placeholder order follows the tags
    err, same = error(ours, spliced_logits(reference, messages, ordered))
    assert err <= TOLERANCE and same, (err, same)
    swapped, _ = error(ours, spliced_logits(reference, messages, clips))
    assert swapped > TOLERANCE, swapped  # the clips are told apart: their order matters


def test_image_and_audio_use_vision_lora_and_vision_head(audio_model, reference):
    clips, pictures = [clip(1.4, 16000, 8)], [make_picture(500, 300)]
    messages = user(clips, "<|image_1|><|audio_1|>What is said about the picture?", pictures)
    ours = audio_model.prompt_logits(messages, dynamic_hd=4)
    err, same = error(ours, reference_logits(reference, messages, clips, pictures, dynamic_hd=4))
    assert err <= TOLERANCE and same, (err, same)


def test_negative_control_without_speech_lora(audio_model, reference):
    clips, text = CASES["16k"]
    messages = user(clips, text)
    err, _ = error(audio_model.prompt_logits(messages), _no_lora(reference, messages, clips))
    assert err > TOLERANCE, err


def _no_lora(reference, messages, clips):
    """The reference forward with the base weights only (no adapter merged)."""
    feats = reference_log_mel(*clips[0])
    n = math.ceil(len(feats) / 8)
    ids = expand(reference, messages, [n])
    with torch.no_grad():
        out = reference.model(None)(input_ids=torch.tensor([ids]), audio_input_features=torch.from_numpy(feats)[None],
                                    audio_embed_sizes=torch.tensor([n]))
    return out.logits[0, -1].float().numpy()


def test_negative_control_wrong_projector_head(audio_model, reference):
    clips, text = CASES["16k"]
    messages = user(clips, text)
    ours = audio_model.prompt_logits(messages)
    right, _ = error(ours, spliced_logits(reference, messages, clips, head="speech"))
    wrong, _ = error(ours, spliced_logits(reference, messages, clips, head="vision"))
    assert right <= TOLERANCE < wrong, (right, wrong)


def test_negative_control_without_pre_emphasis(audio_model, reference, monkeypatch):
    clips = [clip(1.3, 16000, 9)]
    messages = user(clips, f"<|audio_1|>{QUESTION}")
    monkeypatch.setattr(features, "log_mel", functools.partial(features.log_mel, pre_emphasis=0.0))
    err, _ = error(audio_model.prompt_logits(messages), reference_logits(reference, messages, clips))
    assert err > TOLERANCE, err


def test_audio_rows_cached_by_content_and_head(audio_model):
    stats = audio_model.engine.encoders.cache.stats
    clips = [clip(0.8, 16000, 10)]
    audio_model.prompt_logits(user(clips))
    misses, hits = stats.misses, stats.hits
    audio_model.prompt_logits(user(clips, "Again?"))
    assert (stats.misses, stats.hits) == (misses, hits + 1)
    audio_model.prompt_logits(user(clips, pictures=[make_picture(64, 64)]), dynamic_hd=1)
    assert stats.misses == misses + 2  # the image, and the clip again under the vision head

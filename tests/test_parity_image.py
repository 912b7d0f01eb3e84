"""End-to-end image parity: `prompt_logits` with images (numpy encoder rows injected into llama.cpp
with the vision LoRA active) against transformers' Phi4MultimodalForCausalLM with the vision LoRA
merged, fed by an independent torch port of the HF processor (tests/reference_image.py).

Tolerance (issue: images end to end): max|Δlogit| / max|logit| <= 5e-3, same argmax.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REUSE_TOLERANCE
from reference_image import make_picture, reference_grid, reference_preprocess

from phi4mm.errors import InputError
from phi4mm.prompt import IMAGE_PLACEHOLDER, build_prompt

pytestmark = pytest.mark.reference
TOLERANCE = 5e-3
IMAGE_ID = 200010


@pytest.fixture(scope="module")
def image_model(tiny_f32):
    from phi4mm import Phi4MM

    model = Phi4MM.from_pretrained(tiny_f32, n_ctx=4096, n_threads=2)
    yield model
    model.close()


def reference_inputs(reference, messages, pictures, dynamic_hd):
    """input_ids with each placeholder expanded, and the processor's batch tensors (spec §5.2)."""
    prepared = [reference_preprocess(p, dynamic_hd) for p in pictures]
    ids = []
    counts = iter([n for _, _, n in prepared])
    for tok in reference.encode(build_prompt(messages).text):
        ids.extend([IMAGE_ID] * next(counts) if tok == IMAGE_ID else [tok])
    c_max = max(crops.shape[0] for crops, _, _ in prepared)
    pixels = torch.zeros(len(pictures), c_max, 3, 448, 448)
    masks = torch.ones(len(pictures), c_max, 32, 32)  # padding crops: all ones, as the processor
    for i, (crops, mask, _) in enumerate(prepared):
        pixels[i, :crops.shape[0]] = torch.from_numpy(crops)
        masks[i, :mask.shape[0]] = torch.from_numpy(mask.astype(np.float32))
    grids = [reference_grid(*p.size, dynamic_hd) for p in pictures]  # (columns, rows)
    sizes = torch.tensor([[448 * gh, 448 * gw] for gw, gh in grids])  # [TH, TW] canvas
    return ids, {"image_pixel_values": pixels, "image_sizes": sizes, "image_attention_mask": masks}


def compare(model, reference, messages, pictures, dynamic_hd, mode="vision"):
    ours = model.prompt_logits(messages, dynamic_hd=dynamic_hd)
    ids, inputs = reference_inputs(reference, messages, pictures, dynamic_hd)
    with torch.no_grad():
        ref = reference.model(mode)(input_ids=torch.tensor([ids]), **inputs).logits[0, -1].float().numpy()
    err = float(np.abs(ours - ref).max() / np.abs(ref).max())
    return err, int(ours.argmax()) == int(ref.argmax())


def user(pictures, text="Describe the image."):
    return [{"role": "user", "content": [*({"type": "image", "image": p} for p in pictures),
                                         {"type": "text", "text": text}]}]


@pytest.mark.parametrize("width, height, dynamic_hd", [
    pytest.param(448, 448, 36, id="exactly-448"),
    pytest.param(640, 360, 36, id="wide-pad-ge-14"),
    pytest.param(300, 700, 36, id="tall"),
    pytest.param(200, 100, 36, id="smaller-than-one-crop"),
    pytest.param(449, 448, 36, id="pad-447-columns-odd-valid-count"),
    pytest.param(1000, 666, 4, id="search-path-lower-dynamic-hd"),
    pytest.param(3200, 2400, 36, id="search-path-over-36-crops"),
    pytest.param(448, 10, 1, id="edge-10px-still-valid"),
    pytest.param(1, 1, 36, id="1x1-upscaled-to-one-crop"),
])
def test_image_prompt_matches_reference(image_model, reference, width, height, dynamic_hd):
    picture = make_picture(width, height)
    err, same_argmax = compare(image_model, reference, user([picture]), [picture], dynamic_hd)
    assert err <= TOLERANCE and same_argmax, err


def test_two_images_each_with_its_own_grid(image_model, reference):
    pictures = [make_picture(500, 300), make_picture(200, 450)]
    msgs = user(pictures, "<|image_1|> vs <|image_2|>: which is taller?")
    err, same_argmax = compare(image_model, reference, msgs, pictures, 4)
    assert err <= TOLERANCE and same_argmax, err


def test_fails_without_the_vision_lora(image_model, reference):
    """Negative control: a reference without the vision LoRA disagrees far beyond the tolerance,
    so the parity tests above prove the LoRA is applied."""
    picture = make_picture(448, 448)
    err, _ = compare(image_model, reference, user([picture]), [picture], 36, mode=None)
    assert err > 10 * TOLERANCE, err


@pytest.mark.parametrize("width, height, dynamic_hd", [(1, 1000, 36), (3000, 10, 1), (2000, 5, 4)])
def test_extreme_aspect_ratio_is_a_clear_input_error(image_model, width, height, dynamic_hd):
    """The reference raises on these too ("aspect ratio is very extreme")."""
    with pytest.raises(InputError, match=f"aspect ratio of a {width}x{height} px image"):
        image_model.prompt_logits(user([make_picture(width, height)]), dynamic_hd=dynamic_hd)


def test_image_rows_are_cached_and_reused(image_model):
    picture = make_picture(640, 360)
    first = image_model.prompt_logits(user([picture]))
    hits = image_model.engine.encoders.cache.stats.hits
    again = image_model.prompt_logits(user([picture]))
    assert image_model.engine.encoders.cache.stats.hits == hits + 1
    # the KV prefix is reused too: only the last token is decoded again (batch shape differs;
    # REUSE_TOLERANCE in conftest.py says what that costs, measured)
    assert _rel(again, first) <= REUSE_TOLERANCE
    # negative control: another picture of the same size (this one upside down) is told apart
    other = image_model.prompt_logits(user([picture.rotate(180)]))
    assert _rel(other, first) > 10 * REUSE_TOLERANCE


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_placeholder_is_not_accepted_as_text(image_model):
    with pytest.raises(InputError, match="reserved token"):
        image_model.prompt_logits([{"role": "user", "content": f"x {IMAGE_PLACEHOLDER}"}])

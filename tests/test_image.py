"""Dynamic-HD preprocessing (model-spec.md §5): crop plans, canvases, masks, token counts, pixels,
and parity with a literal torch port of the HF remote processor (marker `reference`)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from reference_image import make_picture, reference_preprocess

from phi4mm.errors import InputError
from phi4mm.vision.preprocess import (
    CROP_PX,
    ImageCrops,
    _aspect_candidates,
    _closest_aspect_grid,
    content_key,
    count_tokens,
    plan_crops,
    plan_layout,
    preprocess,
)

# (width, height, dynamic_hd) -> grid (gh, gw), canvas (TH, TW), resized (w, h), pad (w, h), tokens
LAYOUTS = [
    # model-spec.md §5.3 worked examples, dynamic_hd = 36
    pytest.param(448, 448, 36, (1, 1), (448, 448), (448, 448), (0, 0), 545,
                 id="448x448-one-exact-crop"),
    pytest.param(1000, 666, 36, (2, 3), (896, 1344), (1344, 895), (0, 1), 1841,
                 id="1000x666-pad-1px-unmasked"),
    pytest.param(1000, 300, 36, (1, 3), (448, 1344), (1344, 403), (0, 45), 1008,
                 id="1000x300-pad-45px-3-rows-masked"),
    pytest.param(200, 100, 36, (1, 1), (448, 448), (448, 224), (0, 224), 409,
                 id="200x100-upscaled"),
    pytest.param(640, 480, 36, (2, 2), (896, 896), (896, 672), (0, 224), 1065, id="640x480-vga"),
    pytest.param(1920, 1080, 36, (3, 5), (1344, 2240), (2240, 1260), (0, 84), 3918,
                 id="1920x1080-full-hd"),
    pytest.param(4000, 3000, 36, (3, 4), (1344, 1792), (1792, 1344), (0, 0), 3393,
                 id="4000x3000-search-4:3"),
    pytest.param(3000, 3000, 36, (6, 6), (2688, 2688), (2688, 2688), (0, 0), 9585,
                 id="3000x3000-search-square-tie-area-rule"),
    pytest.param(448, 16128, 36, (36, 1), (16128, 448), (448, 16128), (0, 0), 10065,
                 id="448x16128-max-tokens"),
    # padding: >= 14 px masks floor(pad/14) patch rows, < 14 px masks nothing
    pytest.param(448, 435, 36, (1, 1), (448, 448), (448, 435), (0, 13), 545,
                 id="pad-13px-not-masked"),
    pytest.param(448, 434, 36, (1, 1), (448, 448), (448, 434), (0, 14), 545,
                 id="pad-14px-1-row-masked-odd-rows-round-up"),
    pytest.param(448, 420, 36, (1, 1), (448, 448), (448, 420), (0, 28), 528,
                 id="pad-28px-2-rows-masked"),
    pytest.param(50, 40, 36, (1, 1), (448, 448), (448, 358), (0, 90), 494,
                 id="smaller-than-one-crop"),
    pytest.param(449, 448, 36, (1, 2), (448, 896), (449, 448), (447, 0), 561,
                 id="one-px-over-a-crop-pads-447-columns"),
    pytest.param(4480, 10, 36, (1, 10), (448, 4480), (4480, 10), (0, 438), 434,
                 id="10px-edge-still-allowed"),
    # aspect-ratio search with other dynamic_hd values
    pytest.param(600, 800, 2, (2, 1), (896, 448), (448, 597), (0, 299), 647,
                 id="tie-1:1-vs-1:2-later-wins-by-area"),
    pytest.param(1000, 1000, 4, (2, 2), (896, 896), (896, 896), (0, 0), 1329,
                 id="square-tie-2x2-by-area"),
    pytest.param(3000, 3000, 16, (4, 4), (1792, 1792), (1792, 1792), (0, 0), 4433,
                 id="lower-dynamic-hd-16"),
    pytest.param(1920, 1080, 4, (1, 2), (448, 896), (796, 448), (100, 0), 753,
                 id="lower-dynamic-hd-4-search"),
    pytest.param(1920, 1080, 1, (1, 1), (448, 448), (448, 252), (0, 196), 426,
                 id="dynamic-hd-1-single-crop"),
]


@pytest.mark.parametrize("width, height, hd, grid, canvas_hw, resized_wh, pad_wh, n_tokens",
                         LAYOUTS)
def test_layout_and_token_count(width, height, hd, grid, canvas_hw, resized_wh, pad_wh, n_tokens):
    layout = plan_layout(width, height, hd)
    assert plan_crops(width, height, hd) == grid
    assert (layout.grid, layout.canvas_hw, layout.resized_wh, layout.pad_wh) == (
        grid, canvas_hw, resized_wh, pad_wh)
    assert count_tokens(width, height, hd) == n_tokens


@pytest.mark.parametrize("width, height, hd", [
    pytest.param(1, 1000, 36, id="1x1000-resized-to-1px-wide"),
    pytest.param(4480, 9, 36, id="9px-edge-after-resize"),
    pytest.param(100_000, 1, 36, id="panorama-search-then-0px"),
    pytest.param(10, 2000, 1, id="dynamic-hd-1-squeezes-to-2px"),
])
def test_extreme_aspect_ratio_is_an_input_error(width, height, hd):
    with pytest.raises(InputError, match=rf"aspect ratio of a {width}x{height} px image.*10 px"):
        count_tokens(width, height, hd)
    with pytest.raises(InputError, match="too extreme"):
        preprocess(Image.new("RGB", (width, height)), hd)


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, "36", None])
def test_dynamic_hd_must_be_a_positive_int(bad):
    with pytest.raises(InputError, match=f"dynamic_hd must be an integer >= 1.*{bad!r}"):
        count_tokens(448, 448, bad)


@pytest.mark.parametrize("width, height", [(0, 10), (10, -1), (1.5, 10)])
def test_image_size_must_be_positive_ints(width, height):
    with pytest.raises(InputError, match="positive integer"):
        plan_crops(width, height, 36)


@pytest.mark.parametrize("max_num", [1, 2, 7, 16, 36, 64])
def test_candidate_order_is_the_reference_set_order(max_num):
    literal = {(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1)
               for j in range(1, n + 1) if i * j <= max_num and i * j >= 1}
    assert _aspect_candidates(max_num) == tuple(sorted(literal, key=lambda x: x[0] * x[1]))


def test_equal_ratio_tie_keeps_the_smaller_grid_when_the_image_is_small():
    # 500x500 area 250000 <= 0.5*448^2*4: (2, 2) ties (1, 1) at d = 0 but loses the area rule
    assert _closest_aspect_grid(500, 500, 4) == (1, 1)
    assert _closest_aspect_grid(1000, 1000, 4) == (2, 2)


def mask_token_count(crops: ImageCrops) -> int:
    """§5.1 step 10 literally: stride-2 downsample of each sub-mask, reassembled row-major."""
    gh, gw = crops.grid
    ds = crops.patch_mask[1:, 0::2, 0::2].reshape(gh, gw, 16, 16).transpose(0, 2, 1, 3)
    ds = ds.reshape(16 * gh, 16 * gw)
    return 256 + 1 + int(ds.sum()) + int(ds[:, 0].sum()) + 16


@pytest.mark.parametrize("width, height, hd", [
    (448, 448, 36), (1000, 300, 36), (448, 434, 36), (449, 448, 36), (50, 40, 36), (600, 800, 2),
    (1920, 1080, 4), (4480, 10, 36),
])
def test_preprocess_shapes_masks_and_counts_agree(width, height, hd):
    crops = preprocess(Image.new("RGB", (width, height), (10, 200, 30)), hd)
    layout = plan_layout(width, height, hd)
    n_crops = 1 + layout.grid[0] * layout.grid[1]
    assert crops.pixels_nchw.shape == (n_crops, 3, CROP_PX, CROP_PX)
    assert crops.pixels_nchw.dtype == np.float32
    assert crops.patch_mask.shape == (n_crops, 32, 32) and crops.patch_mask.dtype == bool
    assert crops.patch_mask[0].all()
    assert crops.grid == layout.grid
    assert crops.n_tokens == count_tokens(width, height, hd) == mask_token_count(crops)
    rows, cols = layout.valid_patches_hw
    assert crops.patch_mask[1:].sum() == rows * cols


def test_sub_crops_are_row_major_normalised_and_padding_is_white():
    colours = {(0, 0): (0, 0, 0), (0, 1): (255, 0, 0), (1, 0): (0, 255, 0), (1, 1): (0, 0, 255)}
    canvas = np.zeros((896, 800, 3), dtype=np.uint8)  # 800 wide: 96 px of white padding at right
    for (row, col), rgb in colours.items():
        canvas[row * 448:(row + 1) * 448, col * 448:(col + 1) * 448] = rgb
    crops = preprocess(Image.fromarray(canvas), 36)
    assert crops.grid == (2, 2)
    for (row, col), rgb in colours.items():
        crop = crops.pixels_nchw[1 + row * 2 + col]
        expected = np.asarray(rgb, np.float32)[:, None] / 255 * 2 - 1  # (3, 1)
        assert np.array_equal(crop[:, :, 0], np.broadcast_to(expected, (3, 448)))
    right = crops.pixels_nchw[2]  # top-right crop: 352 image columns, then 96 white ones
    assert (right[:, :, 352:] == 1.0).all()
    # 96 // 14 = 6 masked patch columns: the last 6 of the top-right crop
    assert crops.patch_mask[2][:, :26].all() and not crops.patch_mask[2][:, 26:].any()


def test_global_view_of_a_flat_image_is_flat():
    crops = preprocess(Image.new("RGB", (1344, 896), (51, 102, 204)), 36)
    expected = (np.array([51, 102, 204], np.float32) / 255 - 0.5) / 0.5
    assert np.abs(crops.pixels_nchw[0] - expected[:, None, None]).max() < 1e-6


def test_preprocess_wants_rgb():
    with pytest.raises(InputError, match="mode 'RGBA'"):
        preprocess(Image.new("RGBA", (10, 10)), 36)


def test_content_key_follows_pixels_mode_and_size():
    base = Image.new("RGB", (20, 10), (1, 2, 3))
    changed = base.copy()
    changed.putpixel((19, 9), (1, 2, 4))
    assert content_key(base) == content_key(base.copy())
    assert len({content_key(base), content_key(changed), content_key(base.resize((10, 20))),
                content_key(Image.new("L", (60, 10), 1))}) == 4


# ---------------------------------------------------------------------------------------------
# Reference parity: an independent torch port of the HF remote processor, step by step.

@pytest.mark.reference
@pytest.mark.parametrize("width, height, hd", [
    pytest.param(448, 448, 36, id="identity-size"),
    pytest.param(1000, 666, 36, id="downscale-pad-under-14"),
    pytest.param(200, 100, 36, id="upscale-pad-224"),
    pytest.param(1000, 300, 36, id="pad-45"),
    pytest.param(449, 448, 36, id="pad-447-columns"),
    pytest.param(1920, 1080, 36, id="full-hd-15-crops"),
    pytest.param(600, 800, 2, id="search-tie"),
    pytest.param(2000, 1500, 4, id="search-lower-dynamic-hd"),
    pytest.param(3200, 2400, 36, id="search-over-36-crops"),
])
def test_matches_reference_processor(width, height, hd):
    picture = make_picture(width, height)
    want_crops, want_masks, want_tokens = reference_preprocess(picture, hd)
    got = preprocess(picture, hd)
    assert got.n_tokens == want_tokens
    np.testing.assert_array_equal(got.patch_mask, want_masks)  # masks: exact
    assert got.pixels_nchw.shape == want_crops.shape
    np.testing.assert_array_equal(got.pixels_nchw[1:], want_crops[1:])  # sub-crops: exact
    # global view: same float32 taps; the kernel's summation order may differ by a few ulp
    assert np.abs(got.pixels_nchw[0] - want_crops[0]).max() <= 1e-6

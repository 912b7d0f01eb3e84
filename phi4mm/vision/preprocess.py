"""Dynamic-HD image preprocessing, pure numpy (+ Pillow resize as the reference does): crop-grid
choice, bilinear resize, white right/bottom padding, patch mask, [-1, 1] normalisation, bicubic
global view, crops, masks and token counts (model-spec.md §5)."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from phi4mm.errors import InputError

CROP_PX = 448   # S: crop / base resolution
PATCH_PX = 14   # P: SigLIP patch size
MASK_SIDE = CROP_PX // PATCH_PX  # M = 32 patches a side
MIN_RESIZED_PX = 10  # a resized side under 10 px: the reference's "aspect ratio is very extreme"
GLOBAL_TOKENS = 1 + 16 * 17  # glb_GN separator + the 16x17 rows of the global view (§5.1 step 10)
CUBIC_A = -0.75  # torch's bicubic convolution constant

# uint8 -> ToTensor (/255) -> Normalize(0.5, 0.5), float32 in torch's operation order (§5.1 step 6)
_HALF = np.float32(0.5)
_NORMALIZE_LUT = (np.arange(256, dtype=np.float32) / np.float32(255) - _HALF) / _HALF


@dataclass(frozen=True)
class ImageCrops:
    """One image ready for the vision encoder."""

    pixels_nchw: np.ndarray  # (1 + gh*gw, 3, 448, 448) float32; crop 0 = bicubic global view
    patch_mask: np.ndarray   # (1 + gh*gw, 32, 32) bool; crop 0 all True
    grid: tuple[int, int]    # (gh, gw): crop rows, crop columns
    n_tokens: int            # uh*(uw+1) + 1 + 272: rows this image takes in the prompt


@dataclass(frozen=True)
class CropLayout:
    """Where an image of a given size lands on its HD canvas (§5.1 steps 1-5); no pixels."""

    grid: tuple[int, int]        # (gh, gw): crop rows, crop columns
    resized_wh: tuple[int, int]  # (new_w, new_h) px after the aspect-keeping resize
    pad_wh: tuple[int, int]      # (pad_w, pad_h) px of white on the right / bottom

    @property
    def canvas_hw(self) -> tuple[int, int]:
        """(TH, TW) px: the padded canvas, multiples of 448."""
        return CROP_PX * self.grid[0], CROP_PX * self.grid[1]

    @property
    def valid_patches_hw(self) -> tuple[int, int]:
        """(rows, cols) of unmasked 14 px patches: floor(pad/14) masked, none under 14 px (§5.1)."""
        (gh, gw), (pad_w, pad_h) = self.grid, self.pad_wh
        return MASK_SIDE * gh - pad_h // PATCH_PX, MASK_SIDE * gw - pad_w // PATCH_PX

    @property
    def n_tokens(self) -> int:
        """Prompt rows of the image: uh*(uw+1) + 273 (closed form of §5.1 step 10)."""
        rows, cols = self.valid_patches_hw
        uh, uw = -(-rows // 2), -(-cols // 2)
        return uh * (uw + 1) + GLOBAL_TOKENS


def plan_crops(width: int, height: int, dynamic_hd: int) -> tuple[int, int]:
    """Image size in px -> (gh, gw) crop grid of at most dynamic_hd crops (§5.1 step 1)."""
    _check_size(width, height)
    _check_dynamic_hd(dynamic_hd)
    gw, gh = int(-(-width // CROP_PX)), int(-(-height // CROP_PX))
    if gw * gh > dynamic_hd:
        gw, gh = _closest_aspect_grid(width, height, dynamic_hd)
    return gh, gw


def plan_layout(width: int, height: int, dynamic_hd: int) -> CropLayout:
    """Image size in px -> grid, resized size, padding; InputError if the aspect is too extreme."""
    gh, gw = plan_crops(width, height, dynamic_hd)
    canvas_w, canvas_h = CROP_PX * gw, CROP_PX * gh
    scale_w, scale_h = canvas_w / width, canvas_h / height
    if scale_w < scale_h:  # ties take the else branch, as in the reference
        new_w, new_h = canvas_w, int(height * scale_w)
    else:
        new_w, new_h = int(width * scale_h), canvas_h
    if min(new_h, canvas_h) < MIN_RESIZED_PX or min(new_w, canvas_w) < MIN_RESIZED_PX:
        raise InputError(
            f"the aspect ratio of a {width}x{height} px image (width x height) is too extreme: "
            f"fitting it to a {gw}x{gh} grid of {CROP_PX} px crops (dynamic_hd={dynamic_hd}) "
            f"resizes it to {new_w}x{new_h} px, but both sides must stay at least "
            f"{MIN_RESIZED_PX} px; crop or pad the image to a less elongated shape")
    return CropLayout(grid=(gh, gw), resized_wh=(new_w, new_h),
                      pad_wh=(canvas_w - new_w, canvas_h - new_h))


def count_tokens(width: int, height: int, dynamic_hd: int) -> int:
    """Image size in px -> prompt rows the image takes, without touching pixels."""
    return plan_layout(width, height, dynamic_hd).n_tokens


def preprocess(image: Image.Image, dynamic_hd: int) -> ImageCrops:
    """RGB PIL image -> global view + row-major 448 px sub-crops in [-1, 1], masks, token count."""
    is_image = isinstance(image, Image.Image)
    if not is_image or image.mode != "RGB":
        received = f"mode {image.mode!r}" if is_image else type(image).__name__
        raise InputError(f"preprocess expects an RGB PIL image but received {received}; "
                         f"load it with phi4mm.media.load_image or call .convert('RGB')")
    layout = plan_layout(image.width, image.height, dynamic_hd)
    canvas_hwc = _resize_and_pad(image, layout)  # (TH, TW, 3) uint8
    return ImageCrops(
        pixels_nchw=_normalized_crops(canvas_hwc, layout.grid),
        patch_mask=_crop_masks(_patch_mask(layout), layout.grid),
        grid=layout.grid,
        n_tokens=layout.n_tokens,
    )


def content_key(image: Image.Image) -> str:
    """PIL image -> sha256 hex digest over its mode, size and pixel bytes (a cache key)."""
    digest = hashlib.sha256()
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def _is_positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if not _is_positive_int(value):
            raise InputError(f"image {name} must be a positive integer number of pixels, "
                             f"received {value!r}")


def _check_dynamic_hd(dynamic_hd: int) -> None:
    if not _is_positive_int(dynamic_hd):
        raise InputError(f"dynamic_hd must be an integer >= 1 (the maximum number of crops), "
                         f"received {dynamic_hd!r}", param="dynamic_hd")


@lru_cache(maxsize=32)
def _aspect_candidates(max_num: int) -> tuple[tuple[int, int], ...]:
    """(columns, rows) grids with 1 <= i*j <= max_num, in the reference's order (§5.1 step 1).

    The reference sorts the set `{(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1)
    for j in range(1, n + 1) if 1 <= i * j <= max_num}` by i*j; the stable sort keeps that set's
    iteration order among equal products (§9.10). A set's order depends only on the order in which
    distinct elements are first added; (i, j) first appears at n = max(i, j), so adding the pairs
    in that order builds the identical set in O(max_num log max_num) instead of O(max_num^3).
    """
    grids: set[tuple[int, int]] = set()
    for n in range(1, max_num + 1):
        for i in range(1, n + 1):
            for j in range(1, n + 1) if i == n else (n,):
                if i * j > max_num:
                    break
                grids.add((i, j))
    return tuple(sorted(grids, key=lambda grid: grid[0] * grid[1]))


def _closest_aspect_grid(width: int, height: int, max_num: int) -> tuple[int, int]:
    """(gw, gh) whose ratio is closest to width/height; equal distance: the later, larger grid
    wins only if the image area exceeds half the grid's pixel area (§5.1 step 1.3)."""
    aspect = width / height
    best, best_diff = (1, 1), math.inf
    for cols, rows in _aspect_candidates(max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * CROP_PX * CROP_PX * cols * rows:
            best = (cols, rows)
    return best


def _resize_and_pad(image: Image.Image, layout: CropLayout) -> np.ndarray:
    """RGB image -> (TH, TW, 3) uint8: PIL bilinear resize (what torchvision's resize does on a
    PIL image, antialiased when shrinking), then white right/bottom padding (§5.1 steps 3-4)."""
    new_w, new_h = layout.resized_wh
    resized = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas_hwc = np.full((*layout.canvas_hw, 3), 255, dtype=np.uint8)  # (TH, TW, 3)
    canvas_hwc[:new_h, :new_w] = np.asarray(resized)
    return canvas_hwc


def _patch_mask(layout: CropLayout) -> np.ndarray:
    """(32*gh, 32*gw) bool: False on the last floor(pad/14) patch rows / columns (§5.1 step 5)."""
    gh, gw = layout.grid
    rows, cols = layout.valid_patches_hw
    mask_hw = np.zeros((MASK_SIDE * gh, MASK_SIDE * gw), dtype=bool)
    mask_hw[:rows, :cols] = True
    return mask_hw


def _crop_masks(mask_hw: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(32*gh, 32*gw) mask -> (1 + gh*gw, 32, 32): all-True global mask, then row-major tiles."""
    gh, gw = grid
    tiles = mask_hw.reshape(gh, MASK_SIDE, gw, MASK_SIDE).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(gh * gw, MASK_SIDE, MASK_SIDE)  # (gh*gw, 32, 32)
    return np.concatenate([np.ones((1, MASK_SIDE, MASK_SIDE), dtype=bool), tiles])


def _normalized_crops(canvas_hwc: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(TH, TW, 3) uint8 canvas -> (1 + gh*gw, 3, 448, 448) float32: bicubic global view, then
    row-major tiles (§5.1 steps 6-9). Works one channel at a time: one float plane, no full copy."""
    gh, gw = grid
    pixels_nchw = np.empty((1 + gh * gw, 3, CROP_PX, CROP_PX), dtype=np.float32)
    tiles = pixels_nchw[1:].reshape(gh, gw, 3, CROP_PX, CROP_PX)  # a view: rows, cols, c, y, x
    for channel in range(3):
        plane_hw = _NORMALIZE_LUT[canvas_hwc[:, :, channel]]  # (TH, TW) float32 in [-1, 1]
        tiles[:, :, channel] = plane_hw.reshape(gh, CROP_PX, gw, CROP_PX).transpose(0, 2, 1, 3)
        pixels_nchw[0, channel] = _bicubic_to_crop(plane_hw)
    return pixels_nchw


def _bicubic_to_crop(plane_hw: np.ndarray) -> np.ndarray:
    """(H, W) float32 -> (448, 448) like torch interpolate(mode='bicubic', align_corners=False),
    no antialias: torch's taps and weights exactly, float32 sums (within a few ulp of torch).
    Four gathers per axis instead of dense (448 x H) matmuls: ~4*448*W multiply-adds."""
    cols_idx, cols_w = _cubic_taps(plane_hw.shape[1], CROP_PX)
    rows_idx, rows_w = _cubic_taps(plane_hw.shape[0], CROP_PX)
    narrow_hw = _apply_taps(plane_hw, cols_idx, cols_w, axis=1)  # (H, 448)
    return _apply_taps(narrow_hw, rows_idx, rows_w, axis=0)      # (448, 448)


def _apply_taps(values: np.ndarray, taps_idx: np.ndarray, taps_w: np.ndarray,
                axis: int) -> np.ndarray:
    """Sum over the 4 taps of weight * gathered line along `axis` (separable cubic convolution)."""
    out = None
    for k in range(taps_idx.shape[1]):
        weight = taps_w[:, k] if axis == 1 else taps_w[:, k, None]
        term = np.take(values, taps_idx[:, k], axis=axis) * weight
        out = term if out is None else np.add(out, term, out=out)
    return out


@lru_cache(maxsize=64)
def _cubic_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (out, 4) int64 and weights (out, 4) float32 of torch's CPU bicubic kernel:
    float32 scale in/out, src = scale*(i+0.5)-0.5, a = -0.75, indices clamped to the border."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    base = np.minimum(np.floor(src), np.float32(in_size - 1))
    t = np.clip(src - base, np.float32(0), np.float32(1))  # (out,) float32
    taps_idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, in_size - 1)
    t_opp = 1 - t  # torch computes the two right taps from 1 - t
    taps_w = np.stack(
        [_cubic_far(t + 1), _cubic_near(t), _cubic_near(t_opp), _cubic_far(t_opp + 1)], axis=1)
    taps_w = taps_w.astype(np.float32)
    taps_idx.flags.writeable = taps_w.flags.writeable = False  # cached: shared by every call
    return taps_idx, taps_w


def _cubic_near(x: np.ndarray) -> np.ndarray:
    """Cubic convolution kernel for |x| <= 1."""
    a = np.float32(CUBIC_A)
    return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_far(x: np.ndarray) -> np.ndarray:
    """Cubic convolution kernel for 1 < |x| < 2."""
    a = np.float32(CUBIC_A)
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

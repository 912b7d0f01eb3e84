"""Dynamic-HD image preprocessing, pure numpy (+ Pillow resize as the reference does): crop-grid
choice, bilinear resize, white right/bottom padding, patch mask, [-1, 1] normalisation, bicubic
global view, crops, masks and token counts (model-spec.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CROP_PX = 448   # S: crop / base resolution
PATCH_PX = 14   # P: SigLIP patch size
MASK_SIDE = CROP_PX // PATCH_PX  # M = 32 patches a side


@dataclass(frozen=True)
class ImageCrops:
    """One image ready for the vision encoder."""

    pixels_nchw: np.ndarray  # (1 + gh*gw, 3, 448, 448) float32; crop 0 = bicubic global view
    patch_mask: np.ndarray   # (1 + gh*gw, 32, 32) bool; crop 0 all True
    grid: tuple[int, int]    # (gh, gw): crop rows, crop columns
    n_tokens: int            # uh*(uw+1) + 1 + 272: rows this image takes in the prompt

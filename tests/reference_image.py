"""Reference image preprocessing for parity tests: an independent torch port of the HF remote
processor (`processing_phi4mm.py`, model-spec.md §5), step by step, plus seeded test pictures."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image


def reference_grid(width, height, max_num, image_size=448):
    w_crop, h_crop = math.ceil(width / float(image_size)), math.ceil(height / float(image_size))
    if w_crop * h_crop <= max_num:
        return w_crop, h_crop
    ratios = {(i, j) for n in range(1, max_num + 1) for i in range(1, n + 1)
              for j in range(1, n + 1) if i * j <= max_num and i * j >= 1}
    best_diff, best, area = float("inf"), (1, 1), width * height
    for ratio in sorted(ratios, key=lambda x: x[0] * x[1]):
        diff = abs(width / height - ratio[0] / ratio[1])
        if diff < best_diff:
            best_diff, best = diff, ratio
        elif diff == best_diff and area > 0.5 * image_size * image_size * ratio[0] * ratio[1]:
            best = ratio
    return best


def reference_preprocess(image: Image.Image, max_num: int):
    """-> crops (n, 3, 448, 448), masks (n, 32, 32), num_img_tokens, like processing_phi4mm.py."""
    import torch
    import torch.nn.functional as F

    width, height = image.size
    gw, gh = reference_grid(width, height, max_num)
    target_w, target_h = 448 * gw, 448 * gh
    ratio_w, ratio_h = target_w / width, target_h / height
    if ratio_w < ratio_h:
        new_size = (target_w, int(height * ratio_w))
        pad_w, pad_h = 0, target_h - int(height * ratio_w)
    else:
        new_size = (int(width * ratio_h), target_h)
        pad_w, pad_h = target_w - int(width * ratio_h), 0
    mask = torch.ones((32 * gh, 32 * gw))
    if pad_w >= 14:
        mask[:, -math.floor(pad_w / 14):] = 0
    if pad_h >= 14:
        mask[-math.floor(pad_h / 14):, :] = 0
    resized = image.resize(new_size, Image.BILINEAR)  # torchvision resize of a PIL image
    hd = torch.from_numpy(np.array(resized)).permute(2, 0, 1).float().div(255)  # ToTensor
    hd = F.pad(hd, (0, pad_w, 0, pad_h), value=1.0)  # white (255 / 255) right and bottom
    hd = (hd - torch.tensor([0.5] * 3)[:, None, None]) / torch.tensor([0.5] * 3)[:, None, None]
    glb = F.interpolate(hd[None], size=(448, 448), mode="bicubic", align_corners=False)
    subs = hd.reshape(1, 3, gh, 448, gw, 448).permute(0, 2, 4, 1, 3, 5).reshape(-1, 3, 448, 448)
    sub_masks = mask.reshape(gh, 32, gw, 32).permute(0, 2, 1, 3).reshape(-1, 32, 32)
    ds = sub_masks[:, 0::2, 0::2].reshape(gh, gw, 16, 16).transpose(1, 2).reshape(16 * gh, 16 * gw)
    n_tokens = 256 + 1 + int(ds.sum().item()) + int(ds[:, 0].sum().item()) + 16
    crops = torch.cat([glb, subs]).numpy()
    masks = torch.cat([torch.ones(1, 32, 32), sub_masks]).numpy().astype(bool)
    return crops, masks, n_tokens


def make_picture(width: int, height: int) -> Image.Image:
    """Seeded noise over a smooth gradient: exercises both the resize and the bicubic taps."""
    rng = np.random.default_rng(width * 7919 + height)
    ys, xs = np.mgrid[0:height, 0:width]
    smooth = np.stack([xs * 255 // max(width - 1, 1), ys * 255 // max(height - 1, 1),
                       (xs + ys) % 256], axis=-1)
    noisy = smooth + rng.integers(-40, 41, smooth.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))

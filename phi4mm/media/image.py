"""Image sources (path, file/http(s)/data URL, base64, bytes, PIL, numpy) -> decoded RGB PIL
images within `MediaLimits`. Decoding follows the reference: `.convert('RGB')`, alpha dropped, not
composited (model-spec.md §5.1). Fetching is fetch.py's."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from phi4mm.errors import MediaError
from phi4mm.media.fetch import check_bytes, describe, read_source
from phi4mm.media.limits import DEFAULT_LIMITS, MediaLimits

ImageSource = str | Path | bytes | bytearray | memoryview | Image.Image | np.ndarray


def load_image(source: ImageSource, limits: MediaLimits = DEFAULT_LIMITS) -> Image.Image:
    """Any supported source -> RGB PIL image (alpha dropped); MediaError if refused or undecodable.

    A str is a data URL, an http(s):// or file:// URL, bare base64 (only base64 characters and at
    least 64 of them), or else a local path; pass a pathlib.Path to force a path.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, limits, "the PIL image")
        return _to_rgb(source, "the PIL image")
    if isinstance(source, np.ndarray):
        return _from_array(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview, Path, str)):
        return decode_image(read_source(source, limits, "image"), limits, describe(source, "image"))
    raise MediaError(f"unsupported image source of type {type(source).__name__}; expected a path, "
                     f"a URL, base64 text, bytes, a PIL image or a uint8 numpy array")


def decode_image(data: bytes, limits: MediaLimits = DEFAULT_LIMITS,
                 origin: str = "the image bytes") -> Image.Image:
    """Encoded image bytes -> RGB PIL image, checking the byte and pixel limits before decoding."""
    check_bytes(len(data), limits, "image", origin)
    try:
        opened = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as exc:
        raise MediaError(f"{origin} declares more pixels than max_pixels={limits.max_pixels} "
                         f"allows ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise MediaError(f"{origin} is not an image ({len(data)} bytes starting {data[:12]!r}); "
                         f"expected JPEG, PNG, WebP, GIF, BMP or TIFF") from exc
    except Exception as exc:  # a corrupt header: Pillow's plugins raise many types
        raise MediaError(f"{origin} has a corrupt image header: {exc}") from exc
    with opened:
        _check_pixels(opened.size, limits, origin)
        return _to_rgb(opened, origin)


def _to_rgb(image: Image.Image, origin: str) -> Image.Image:
    """Decode fully (truncated data is an error) and convert to RGB like the reference."""
    try:
        image.load()
        return image.convert("RGB")
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, ValueError, ...
        raise MediaError(f"{origin} is truncated or corrupt and could not be decoded: {exc}")\
            from exc


def _from_array(array: np.ndarray, limits: MediaLimits) -> Image.Image:
    shape_ok = array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))
    if array.dtype != np.uint8 or not shape_ok:
        raise MediaError(f"a numpy image must be uint8 of shape (H, W), (H, W, 3) or (H, W, 4), "
                         f"received {array.dtype} of shape {array.shape}")
    _check_pixels((array.shape[1], array.shape[0]), limits, "the numpy image")
    return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")


def _check_pixels(size_wh: tuple[int, int], limits: MediaLimits, origin: str) -> None:
    width, height = size_wh
    if width * height > limits.max_pixels:
        raise MediaError(f"{origin} is {width}x{height} = {width * height} pixels, over "
                         f"max_pixels={limits.max_pixels}")

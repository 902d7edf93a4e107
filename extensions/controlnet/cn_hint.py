"""Control images: decoding a unit's image, fitting the preprocessed map to a pass's size with the
A1111 extension's resize modes, pixel perfect's processor resolution, and the hint tensor.

The fitting follows the A1111 extension's ``detectmap_proc``: "Just Resize" stretches, "Crop and
Resize" scales to cover and crops the middle, "Resize and Fill" scales to fit and fills the rest
with the median colour of the map's border. Maps with few colours (segmentation, poses) are
resized with nearest neighbour so their colours stay exact, shrinking uses area averaging and
enlarging cubic, as there. (Its thinning of one-pixel edges after enlarging is not done here.)
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import TYPE_CHECKING

import cv2
import numpy as np
from cn_units import ResizeMode
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:  # torch is imported where used: loading the extension must not import it
    import torch

MAX_PIXELS = 4096 * 4096  # as the generation tabs' own image limit


def decode_image(text: str, key: str = "image") -> Image.Image:
    """A base64 image (PNG, JPEG, WEBP) as RGB; ValueError naming ``key`` when it is not one or
    is larger than the limit."""
    try:
        data = base64.b64decode(text, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{key}: is not base64 text") from exc
    try:
        image = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{key}: is not a readable image (PNG, JPEG or WEBP expected)") from exc
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ValueError(f"{key}: is {width}x{height} pixels; the limit is {MAX_PIXELS:,} pixels")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"{key}: cannot be decoded ({exc.__class__.__name__})") from exc
    if image.mode in ("RGBA", "LA", "P"):
        # The A1111 extension reads a transparent pixel as the colour under it, on black.
        image = image.convert("RGBA")
        flat = Image.new("RGBA", image.size, (0, 0, 0, 255))
        flat.alpha_composite(image)
        image = flat
    return image.convert("RGB")


def pixel_perfect_resolution(size: tuple[int, int], target: tuple[int, int], mode: ResizeMode) -> int:
    """The processor resolution that makes the map exactly as fine as the pass (the A1111
    extension's ``pixel_perfect_resolution``): the image's short side scaled as the mode scales it."""
    raw_w, raw_h = size
    k_h, k_w = target[1] / raw_h, target[0] / raw_w
    k = min(k_h, k_w) if mode is ResizeMode.RESIZE_AND_FILL else max(k_h, k_w)
    return int(np.round(k * min(raw_h, raw_w)))


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    if array.shape[0] == height and array.shape[1] == width:
        return array
    colours = len(np.unique(array.reshape(-1, array.shape[2]), axis=0))
    if 2 < colours < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < array.shape[0] * array.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    return cv2.resize(array, (width, height), interpolation=interpolation)


def fit(image: Image.Image, width: int, height: int, mode: ResizeMode) -> np.ndarray:
    """The map fitted to ``width`` x ``height`` (HWC uint8 RGB) as the resize mode says."""
    array = np.asarray(image.convert("RGB"))
    if mode is ResizeMode.JUST_RESIZE:
        return _resize(array, width, height)
    old_h, old_w = array.shape[:2]
    k_h, k_w = height / old_h, width / old_w
    if mode is ResizeMode.RESIZE_AND_FILL:
        k = min(k_h, k_w)
        borders = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]], axis=0)
        out = np.tile(np.median(borders, axis=0).astype(np.uint8)[None, None], (height, width, 1))
        inner = _resize(array, int(np.round(old_w * k)), int(np.round(old_h * k)))
        new_h, new_w = inner.shape[:2]
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        out[top:top + new_h, left:left + new_w] = inner[:height, :width]
        return out
    k = max(k_h, k_w)
    inner = _resize(array, int(np.round(old_w * k)), int(np.round(old_h * k)))
    new_h, new_w = inner.shape[:2]
    top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(inner[top:top + height, left:left + width])


def hint_tensor(array: np.ndarray) -> torch.Tensor:
    """An HWC uint8 map as the ControlNet's input: (1, 3, H, W) floats in 0..1."""
    import torch

    return torch.from_numpy(array.copy()).float().div(255.0).permute(2, 0, 1).unsqueeze(0)

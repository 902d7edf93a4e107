"""The ControlNet preprocessors that need no model weights (numpy/OpenCV), and the image helpers all
preprocessors share. Each function follows the A1111 ControlNet extension's own (sd-webui-controlnet
``scripts/processor.py``), so a control map made here matches one made there pixel for pixel where
the libraries agree. Images are HxWx3 uint8 RGB arrays in and out."""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np


def hwc3(image: np.ndarray) -> np.ndarray:
    """Any uint8 grey, RGB or RGBA array as HxWx3 (RGBA composited over white, as A1111 does)."""
    if image.dtype != np.uint8:
        image = image.clip(0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    channels = image.shape[2]
    if channels == 3:
        return image
    if channels == 1:
        return np.concatenate([image] * 3, axis=2)
    color = image[:, :, :3].astype(np.float32)
    alpha = image[:, :, 3:4].astype(np.float32) / 255.0
    return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)


def _pad64(size: int) -> int:
    return int(np.ceil(float(size) / 64.0) * 64 - size)


def resize_with_pad(image: np.ndarray, resolution: int) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """A1111's ``resize_image_with_pad``: the shorter side scaled to ``resolution``, then the edges
    repeated up to multiples of 64 (what the annotator networks need); the returned function crops a
    result of the padded size back to the scaled size."""
    image = hwc3(image)
    height, width = image.shape[:2]
    scale = float(resolution) / float(min(height, width))
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    target_h = int(np.round(float(height) * scale))
    target_w = int(np.round(float(width) * scale))
    image = cv2.resize(image, (target_w, target_h), interpolation=interpolation)
    padded = np.pad(image, [[0, _pad64(target_h)], [0, _pad64(target_w)], [0, 0]], mode="edge")

    def remove_pad(result: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(result[:target_h, :target_w]).copy()

    return np.ascontiguousarray(padded), remove_pad


def canny(image: np.ndarray, resolution: int, low: float, high: float) -> np.ndarray:
    padded, remove_pad = resize_with_pad(image, resolution)
    return remove_pad(hwc3(cv2.Canny(padded, int(low), int(high))))


def scribble_xdog(image: np.ndarray, resolution: int, threshold: float) -> np.ndarray:
    padded, remove_pad = resize_with_pad(image, resolution)
    g1 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    g2 = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(g2 - g1, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(padded, dtype=np.uint8)
    result[2 * (255 - dog) > threshold] = 255
    return remove_pad(result)


def threshold(image: np.ndarray, resolution: int, level: float) -> np.ndarray:
    padded, remove_pad = resize_with_pad(image, resolution)
    result = np.zeros_like(padded, dtype=np.uint8)
    result[np.min(padded, axis=2) > level] = 255
    return remove_pad(result)


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - hwc3(image)


def blur_gaussian(image: np.ndarray, resolution: int, sigma: float) -> np.ndarray:
    padded, remove_pad = resize_with_pad(image, resolution)
    return cv2.GaussianBlur(remove_pad(padded), (0, 0), float(sigma))


def tile_resample(image: np.ndarray, rate: float) -> np.ndarray:
    """Downsampled by ``rate`` (A1111 leaves the image alone below 1.1)."""
    image = hwc3(image)
    if rate < 1.1:
        return image
    height = int(float(image.shape[0]) / float(rate))
    width = int(float(image.shape[1]) / float(rate))
    return cv2.resize(image, (max(width, 1), max(height, 1)), interpolation=cv2.INTER_AREA)


def lineart_standard(image: np.ndarray, resolution: int) -> np.ndarray:
    padded, remove_pad = resize_with_pad(image, resolution)
    x = padded.astype(np.float32)
    g = cv2.GaussianBlur(x, (0, 0), 6.0)
    intensity = np.min(g - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    # np.median of nothing is nan (a flat image): A1111 would then write zeros, so 16 keeps that
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    intensity *= 127
    return remove_pad(hwc3(intensity.clip(0, 255).astype(np.uint8)))


def _noise_disk(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    noise = rng.uniform(low=0, high=1, size=((height // cell) + 2, (width // cell) + 2))
    noise = cv2.resize(noise, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = noise[cell: cell + height, cell: cell + width]
    noise -= np.min(noise)
    noise /= max(float(np.max(noise)), 1e-8)
    return noise[:, :, None]


def shuffle(image: np.ndarray, resolution: int, seed: int | None) -> np.ndarray:
    """ContentShuffleDetector's remap by two smooth noise fields (cell size 256). A1111 draws from
    numpy's global generator; a seed here makes the same seed give the same map."""
    padded, remove_pad = resize_with_pad(image, resolution)
    picture = remove_pad(padded)
    height, width = picture.shape[:2]
    rng = np.random.default_rng(seed)
    x = _noise_disk(rng, height, width, 256) * float(width - 1)
    y = _noise_disk(rng, height, width, 256) * float(height - 1)
    flow = np.concatenate([x, y], axis=2).astype(np.float32)
    return cv2.remap(picture, flow, None, cv2.INTER_LINEAR)


def recolor_luminance(image: np.ndarray, gamma: float) -> np.ndarray:
    # A1111 converts its RGB array with the BGR constant; kept so the maps agree
    lab = cv2.cvtColor(hwc3(image), cv2.COLOR_BGR2LAB)
    return _gamma_grey(lab[:, :, 0], gamma)


def recolor_intensity(image: np.ndarray, gamma: float) -> np.ndarray:
    hsv = cv2.cvtColor(hwc3(image), cv2.COLOR_BGR2HSV)
    return _gamma_grey(hsv[:, :, 2], gamma)


def _gamma_grey(channel: np.ndarray, gamma: float) -> np.ndarray:
    result = (channel.astype(np.float32) / 255.0) ** gamma
    return cv2.cvtColor((result * 255.0).clip(0, 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)


def color_grid(image: np.ndarray, resolution: int) -> np.ndarray:
    """T2I-Adapter's colour map: the shorter side to ``resolution``, then 64x64 cells of one colour."""
    image = hwc3(image)
    height, width = image.shape[:2]
    if height < width:
        size = (int(round(width / height * resolution)), resolution)
    else:
        size = (resolution, int(round(height / width * resolution)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    small = cv2.resize(image, (max(size[0] // 64, 1), max(size[1] // 64, 1)), interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, size, interpolation=cv2.INTER_NEAREST)

"""Fitting and preparing input images for img2img and inpainting (PIL only, no model).

A1111's four resize modes, its "fill" masked content, the "only masked" crop, and outpainting's
extended canvas. Every function takes and returns PIL images, so each is easy to test alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps

from modules.params import ResizeMode

LATENT_SCALE = 8


Resize = Callable[[Image.Image, int, int], Image.Image]  # (image, width, height) -> that size


def lanczos(image: Image.Image, width: int, height: int) -> Image.Image:
    """A1111's resize when no img2img upscaler is chosen."""
    return image if image.size == (width, height) else image.resize((width, height), Image.Resampling.LANCZOS)


def fit_image(image: Image.Image, width: int, height: int, mode: ResizeMode, resize: Resize = lanczos) -> Image.Image:
    """``image`` fitted to width x height; ``resize`` does the resizing (an upscaler model for an
    enlargement: A1111's ``upscaler_for_img2img``). Latent upscale keeps the image (rounded to
    multiples of 8): the engine resizes its latent instead."""
    if mode is ResizeMode.LATENT_UPSCALE:
        w, h = (max(LATENT_SCALE, v - v % LATENT_SCALE) for v in image.size)
        return image if image.size == (w, h) else image.resize((w, h), Image.Resampling.LANCZOS)
    if image.size == (width, height):
        return image
    if mode is ResizeMode.JUST_RESIZE:
        return resize(image, width, height)
    if mode is ResizeMode.CROP_AND_RESIZE:
        return _crop_and_resize(image, width, height, resize)
    return _resize_and_fill(image, width, height, resize)


def _crop_and_resize(image: Image.Image, width: int, height: int, resize: Resize) -> Image.Image:
    """A1111's order: resized to cover width x height (keeping its aspect), then the centre cut out."""
    ratio, source_ratio = width / height, image.width / image.height
    cover_w = width if ratio > source_ratio else image.width * height // image.height
    cover_h = height if ratio <= source_ratio else image.height * width // image.width
    covered = resize(image, cover_w, cover_h)
    result = Image.new("RGB", (width, height))
    result.paste(covered, box=(width // 2 - cover_w // 2, height // 2 - cover_h // 2))
    return result


def _resize_and_fill(image: Image.Image, width: int, height: int, resize: Resize = lanczos) -> Image.Image:
    """Fit inside, then fill the bars by stretching the image's own edge rows or columns (A1111)."""
    scale = min(width / image.width, height / image.height)
    inner = resize(image, max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    canvas = image.resize((width, height), Image.Resampling.LANCZOS)  # under the bars, not visible after
    left, top = (width - inner.width) // 2, (height - inner.height) // 2
    if left > 0:
        canvas.paste(inner.crop((0, 0, 1, inner.height)).resize((left, inner.height)), (0, top))
        right = width - left - inner.width
        canvas.paste(inner.crop((inner.width - 1, 0, inner.width, inner.height)).resize((right, inner.height)),
                     (left + inner.width, top))
    if top > 0:
        canvas.paste(inner.crop((0, 0, inner.width, 1)).resize((inner.width, top)), (left, 0))
        bottom = height - top - inner.height
        canvas.paste(inner.crop((0, inner.height - 1, inner.width, inner.height)).resize((inner.width, bottom)),
                     (left, top + inner.height))
    canvas.paste(inner, (left, top))
    return canvas


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area takes the colours around it, smeared by growing blurs."""
    image = image.convert("RGB")
    keep = ImageOps.invert(mask.convert("L").point(lambda v: 255 if v > 127 else 0))
    filled = Image.new("RGB", image.size, (127, 127, 127))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = Image.composite(image, filled, keep).filter(ImageFilter.GaussianBlur(radius))
        for _ in range(repeats):
            filled = Image.composite(image, blurred, keep)
    return Image.composite(image, filled, keep)


@dataclass(frozen=True)
class Crop:
    """The region "only masked" inpaints: the mask's box plus padding, at the output's aspect ratio."""

    box: tuple[int, int, int, int]

    @staticmethod
    def around(mask: Image.Image, padding: int, width: int, height: int) -> Crop | None:
        bbox = mask.convert("L").point(lambda v: 255 if v > 0 else 0).getbbox()
        if bbox is None:
            return None
        x1, y1, x2, y2 = bbox[0] - padding, bbox[1] - padding, bbox[2] + padding, bbox[3] + padding
        # Grow the short side so the crop has the processing size's aspect ratio (no distortion).
        target = width / height
        w, h = x2 - x1, y2 - y1
        if w / h < target:
            grow = round(h * target) - w
            x1, x2 = x1 - grow // 2, x2 + grow - grow // 2
        else:
            grow = round(w / target) - h
            y1, y2 = y1 - grow // 2, y2 + grow - grow // 2
        # Slide back inside the image where possible, then clip.
        iw, ih = mask.size
        shift_x = max(0, -x1) - max(0, x2 - iw)
        shift_y = max(0, -y1) - max(0, y2 - ih)
        x1, x2, y1, y2 = x1 + shift_x, x2 + shift_x, y1 + shift_y, y2 + shift_y
        return Crop((max(0, x1), max(0, y1), min(iw, x2), min(ih, y2)))

    def cut(self, image: Image.Image, width: int, height: int) -> Image.Image:
        return image.crop(self.box).resize((width, height), Image.Resampling.LANCZOS)

    def paste(self, result: Image.Image, onto: Image.Image) -> Image.Image:
        x1, y1, x2, y2 = self.box
        out = onto.convert("RGB").copy()
        out.paste(result.convert("RGB").resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS), (x1, y1))
        return out


def outpaint_canvas(image: Image.Image, left: int, right: int, up: int, down: int) -> tuple[Image.Image, Image.Image]:
    """A larger canvas (sides grown so both dimensions are multiples of 8) pre-filled from the
    image's edges, and the mask of the new area (white) that inpainting then paints."""
    image = image.convert("RGB")
    w, h = image.width + left + right, image.height + up + down
    extra_w, extra_h = (-w) % LATENT_SCALE, (-h) % LATENT_SCALE
    right, down = right + extra_w, down + extra_h  # round up on the far sides
    canvas = _resize_and_fill(image, image.width, image.height)  # a copy
    canvas = ImageOps.expand(canvas, border=(left, up, right, down), fill=(127, 127, 127))
    mask = Image.new("L", canvas.size, 255)
    mask.paste(0, (left, up, left + image.width, up + image.height))
    return fill_masked(canvas, mask), mask

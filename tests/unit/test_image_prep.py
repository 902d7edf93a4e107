"""Resize modes, "fill", the only-masked crop and the outpainting canvas (PIL only)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.params import ResizeMode
from modules.services.image_prep import Crop, fill_masked, fit_image, outpaint_canvas


def striped(w: int, h: int) -> Image.Image:
    image = Image.new("RGB", (w, h), (200, 30, 30))
    ImageDraw.Draw(image).rectangle((0, 0, w // 2, h), fill=(30, 30, 200))
    return image


@pytest.mark.parametrize("mode", [ResizeMode.JUST_RESIZE, ResizeMode.CROP_AND_RESIZE, ResizeMode.RESIZE_AND_FILL])
def test_pixel_resize_modes_give_the_requested_size(mode: ResizeMode) -> None:
    assert fit_image(striped(100, 50), 64, 96, mode).size == (64, 96)


def test_crop_and_resize_keeps_the_aspect_and_fill_stretches_edges() -> None:
    cropped = np.asarray(fit_image(striped(200, 100), 64, 64, ResizeMode.CROP_AND_RESIZE))
    assert abs(int(cropped[32, 0, 2]) - 200) < 10 and abs(int(cropped[32, 63, 0]) - 200) < 10  # centre crop
    filled = np.asarray(fit_image(striped(200, 100), 64, 64, ResizeMode.RESIZE_AND_FILL))
    # The bar above the picture repeats its top row, not black.
    assert np.abs(filled[0].astype(int) - filled[20].astype(int)).mean() < 20 and filled[0].max() > 100


def test_latent_upscale_leaves_pixels_to_the_engine() -> None:
    assert fit_image(striped(100, 50), 64, 64, ResizeMode.LATENT_UPSCALE).size == (96, 48)


def test_fill_takes_colours_from_around_the_mask() -> None:
    image = Image.new("RGB", (64, 64), (0, 200, 0))
    image.paste((255, 0, 255), (24, 24, 40, 40))  # a magenta square to be "filled" away
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 44, 44))
    out = np.asarray(fill_masked(image, mask)).astype(int)
    assert abs(out[32, 32] - np.array([0, 200, 0])).max() < 30
    assert np.array_equal(out[:10], np.asarray(image)[:10])  # outside the mask: untouched


def test_only_masked_crop_has_the_output_aspect_and_stays_inside() -> None:
    mask = Image.new("L", (200, 100), 0)
    mask.paste(255, (150, 40, 170, 60))
    crop = Crop.around(mask, padding=10, width=64, height=64)
    x1, y1, x2, y2 = crop.box
    assert (x2 - x1) == (y2 - y1) and x1 <= 140 and x2 >= 180 and 0 <= x1 and x2 <= 200
    assert Crop.around(Image.new("L", (10, 10), 0), 4, 8, 8) is None


def test_outpaint_canvas_grows_to_multiples_of_8_and_masks_only_the_new_area() -> None:
    canvas, mask = outpaint_canvas(striped(64, 64), left=64, right=0, up=0, down=5)
    assert canvas.size == (128, 72) and canvas.width % 8 == 0 and canvas.height % 8 == 0
    assert np.array_equal(np.asarray(canvas)[:64, 64:], np.asarray(striped(64, 64)))
    m = np.asarray(mask)
    assert m[:64, 64:].max() == 0 and m[:, :64].min() == 255 and m[64:].min() == 255

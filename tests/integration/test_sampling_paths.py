"""Every sampler through txt2img, img2img and inpainting on tiny models, via the one service path."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.errors import ValidationError
from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest, MaskedContent, ResizeMode
from modules.samplers import SAMPLERS, RngSource
from modules.services.outpaint import OutpaintSides, outpaint_request

BASE = GenerationRequest(prompt="a small house", negative_prompt="ugly", steps=4, width=64, height=64,
                         seed=11, cfg_scale=5.0, checkpoint="tiny-sd15.safetensors")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def init_png() -> bytes:
    image = Image.new("RGB", (64, 64), (200, 60, 40))
    ImageDraw.Draw(image).ellipse((16, 16, 48, 48), fill=(30, 90, 220))
    return png(image)


@pytest.fixture(scope="module")
def mask_png() -> bytes:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 23, 63), fill=255)  # repaint the left 24 columns
    return png(mask)


@pytest.mark.parametrize("spec", SAMPLERS, ids=[s.name for s in SAMPLERS])
def test_every_sampler_runs_txt2img_img2img_and_inpaint_reproducibly(services, spec, init_png, mask_png) -> None:
    for request in (replace(BASE, sampler=spec.name),
                    replace(BASE, sampler=spec.name, init_image=init_png, denoising_strength=0.6),
                    replace(BASE, sampler=spec.name, init_image=init_png, mask=mask_png, denoising_strength=0.9)):
        first = services.generation.generate(request).images[0]
        again = services.generation.generate(request).images[0]
        assert np.array_equal(pixels(first.path), pixels(again.path)), f"{spec.name}: same seed, different pixels"
        assert f"Sampler: {spec.name}," in first.infotext


def test_img2img_strength_zero_keeps_the_image_and_one_ignores_it(services, init_png) -> None:
    original = np.asarray(Image.open(io.BytesIO(init_png)).convert("RGB")).astype(np.int16)
    # Strength 0 is the init image through the VAE only: the seed plays no part. (A random tiny VAE
    # is a poor autoencoder, so the round trip itself is what the result is compared with.)
    kept = services.generation.generate(replace(BASE, init_image=init_png, denoising_strength=0.0)).images[0]
    other_seed = services.generation.generate(replace(BASE, init_image=init_png, denoising_strength=0.0, seed=999))
    assert np.array_equal(pixels(kept.path), pixels(other_seed.images[0].path))
    # Strength 1 starts from (almost) pure noise: two very different inits give near-equal results.
    white = np.full_like(original, 255)
    full = services.generation.generate(replace(BASE, init_image=init_png, denoising_strength=1.0)).images[0]
    other = services.generation.generate(replace(BASE, init_image=png(Image.fromarray(white.astype(np.uint8))),
                                                 denoising_strength=1.0)).images[0]
    assert np.abs(pixels(full.path) - pixels(other.path)).mean() < 0.25 * np.abs(original - white).mean()
    assert "Denoising strength: 1," in full.infotext and "img2img-images" in str(full.path)


def test_inpaint_leaves_pixels_outside_the_blurred_mask_unchanged(services, init_png, mask_png) -> None:
    result = services.generation.generate(replace(BASE, init_image=init_png, mask=mask_png, mask_blur=4,
                                                  denoising_strength=1.0)).images[0]
    out = pixels(result.path)
    original = np.asarray(Image.open(io.BytesIO(init_png)).convert("RGB")).astype(np.int16)
    assert np.array_equal(out[:, 24 + 12:], original[:, 24 + 12:])  # beyond the mask plus 3 x blur
    assert np.abs(out[:, :16] - original[:, :16]).mean() > 5  # the masked area was repainted
    assert "Mask blur: 4," in result.infotext


def test_inpainting_checkpoint_runs_txt2img_img2img_and_inpaint(services, init_png, mask_png) -> None:
    inpaint = replace(BASE, checkpoint="tiny-sd15-inpainting.safetensors")
    for request in (inpaint, replace(inpaint, init_image=init_png),
                    replace(inpaint, init_image=init_png, mask=mask_png, denoising_strength=1.0)):
        result = services.generation.generate(request)
        assert result.images and "Model: tiny-sd15-inpainting," in result.images[0].infotext


def test_sdxl_runs_through_the_loop(services, init_png) -> None:
    for request in (replace(BASE, checkpoint="tiny-sdxl", sampler="DPM++ 2M SDE"),
                    replace(BASE, checkpoint="tiny-sdxl", init_image=init_png, sampler="Euler a")):
        assert services.generation.generate(request).images


def test_variation_strength_zero_equals_the_plain_seed_and_strength_changes_it(services) -> None:
    plain = services.generation.generate(BASE).images[0]
    zero = services.generation.generate(replace(BASE, variation_seed=5, variation_strength=0.0)).images[0]
    assert np.array_equal(pixels(plain.path), pixels(zero.path))
    varied = services.generation.generate(replace(BASE, variation_seed=5, variation_strength=0.5, batch_size=2))
    assert [i.seed for i in varied.images] == [11, 11]
    assert "Variation seed: 5, Variation seed strength: 0.5," in varied.images[0].infotext
    assert "Variation seed: 6," in varied.images[1].infotext
    assert not np.array_equal(pixels(varied.images[0].path), pixels(plain.path))


def test_ensd_changes_ancestral_samplers_only_and_cpu_rng_is_recorded(services) -> None:
    ancestral = replace(BASE, sampler="Euler a")
    a = services.generation.generate(ancestral).images[0]
    b = services.generation.generate(replace(ancestral, eta_noise_seed_delta=31337)).images[0]
    assert not np.array_equal(pixels(a.path), pixels(b.path)) and "ENSD: 31337," in b.infotext
    c = services.generation.generate(replace(BASE, sampler="Euler", eta_noise_seed_delta=31337)).images[0]
    d = services.generation.generate(replace(BASE, sampler="Euler")).images[0]
    assert np.array_equal(pixels(c.path), pixels(d.path)) and "ENSD" not in c.infotext
    cpu = services.generation.generate(replace(BASE, rng=RngSource.CPU)).images[0]
    assert "RNG: CPU," in cpu.infotext


@pytest.mark.parametrize("mode", list(ResizeMode), ids=[m.name for m in ResizeMode])
def test_each_resize_mode_gives_the_requested_size(services, mode: ResizeMode) -> None:
    odd = png(Image.new("RGB", (100, 40), (90, 140, 10)))
    result = services.generation.generate(replace(BASE, init_image=odd, resize_mode=mode, width=64, height=96))
    with Image.open(result.images[0].path) as image:
        assert image.size == (64, 96)


@pytest.mark.parametrize("content", list(MaskedContent), ids=[m.name for m in MaskedContent])
def test_masked_content_modes_run_and_are_recorded(services, init_png, mask_png, content: MaskedContent) -> None:
    result = services.generation.generate(replace(BASE, init_image=init_png, mask=mask_png, masked_content=content,
                                                  denoising_strength=0.8))
    assert f"Masked content: {content.value}," in result.images[0].infotext
    original = np.asarray(Image.open(io.BytesIO(init_png)).convert("RGB")).astype(np.int16)
    assert np.array_equal(pixels(result.images[0].path)[:, 40:], original[:, 40:])


def test_only_masked_keeps_the_whole_picture_and_changes_only_the_masked_area(services) -> None:
    big = Image.new("RGB", (128, 96), (40, 160, 60))
    mask = Image.new("L", (128, 96), 0)
    ImageDraw.Draw(mask).rectangle((90, 30, 105, 45), fill=255)
    result = services.generation.generate(replace(BASE, init_image=png(big), mask=png(mask), inpaint_only_masked=True,
                                                  only_masked_padding=8, denoising_strength=1.0, mask_blur=2))
    out = pixels(result.images[0].path)
    assert out.shape[:2] == (96, 128)  # the whole picture comes back, not the crop
    assert np.array_equal(out[:, :80], np.asarray(big).astype(np.int16)[:, :80])
    assert np.abs(out[32:44, 92:104] - np.asarray(big).astype(np.int16)[32:44, 92:104]).mean() > 5
    assert "Inpaint area: Only masked, Masked area padding: 8," in result.images[0].infotext


def test_inverted_mask_repaints_the_other_side(services, init_png, mask_png) -> None:
    result = services.generation.generate(replace(BASE, init_image=init_png, mask=mask_png, invert_mask=True,
                                                  denoising_strength=1.0))
    original = np.asarray(Image.open(io.BytesIO(init_png)).convert("RGB")).astype(np.int16)
    assert np.array_equal(pixels(result.images[0].path)[:, :12], original[:, :12])
    assert "Mask mode: Inpaint not masked," in result.images[0].infotext


def test_empty_and_mismatched_masks_are_answered_clearly(services, init_png) -> None:
    with pytest.raises(ValidationError, match="mask: is empty"):
        services.generation.submit(replace(BASE, init_image=init_png, mask=png(Image.new("L", (64, 64), 0))))
    odd_mask = Image.new("L", (32, 32), 0)
    ImageDraw.Draw(odd_mask).rectangle((0, 0, 10, 31), fill=255)
    result = services.generation.generate(replace(BASE, init_image=init_png, mask=png(odd_mask)))
    assert result.warnings and "resized to 64x64" in result.warnings[0]
    with pytest.raises(ValidationError, match="init_image: is not a readable image"):
        services.generation.submit(replace(BASE, init_image=b"not an image"))


def test_outpaint_by_64_pixels_on_one_side_keeps_the_original(services, init_png) -> None:
    request = outpaint_request(replace(BASE, init_image=init_png, denoising_strength=1.0), OutpaintSides(right=64),
                               max_size=2048)
    result = services.generation.generate(request)
    out = pixels(result.images[0].path)
    assert out.shape[:2] == (64, 128)
    original = np.asarray(Image.open(io.BytesIO(init_png)).convert("RGB")).astype(np.int16)
    assert np.array_equal(out[:, :48], original[:, :48])  # the old region, away from the blurred seam
    with pytest.raises(ValidationError, match="choose at least one side"):
        outpaint_request(replace(BASE, init_image=init_png), OutpaintSides(), max_size=2048)


def test_new_inpaint_keys_round_trip_through_the_parser(services, init_png, mask_png) -> None:
    request = replace(BASE, init_image=init_png, mask=mask_png, masked_content=MaskedContent.LATENT_NOTHING,
                      inpaint_only_masked=True, only_masked_padding=16, invert_mask=True, mask_blur=3,
                      denoising_strength=0.55)
    text = services.generation.generate(request).images[0].infotext
    back, warnings = request_from_infotext(parse_infotext(text))
    assert warnings == []
    assert (back.masked_content, back.inpaint_only_masked, back.only_masked_padding, back.invert_mask,
            back.mask_blur, back.denoising_strength) == (MaskedContent.LATENT_NOTHING, True, 16, True, 3, 0.55)

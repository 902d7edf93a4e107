"""Hires fix, the refiner and "resize seed from", through the one service path on tiny models."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest, HiresFix, Refiner
from modules.services.images import OutputKind

BASE = GenerationRequest(prompt="a red cube, studio light", negative_prompt="blurry", steps=3, width=64, height=64,
                         seed=77, sampler="Euler", checkpoint="tiny-sd15.safetensors", save_images=False)


def png_pixels(data: bytes) -> np.ndarray:
    import io

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def first(services, request: GenerationRequest):
    result = services.generation.generate(request)
    return result, png_pixels(result.images[0].png)


@pytest.mark.parametrize(("hires", "size"), [
    (HiresFix(scale=1.5, steps=2), (96, 96)),
    (HiresFix(scale=2.0, upscaler="Lanczos", steps=2, denoising_strength=0.5), (128, 128)),
    (HiresFix(resize_width=128, resize_height=80, upscaler="Latent (bicubic antialiased)", steps=2), (128, 80)),
    (HiresFix(resize_width=96, steps=2, upscaler="Nearest"), (96, 96)),
], ids=["scale-latent", "scale-lanczos", "resize-both-cropped", "resize-width"])
def test_hires_fix_gives_the_requested_final_size(services, hires: HiresFix, size: tuple[int, int]) -> None:
    result, pixels = first(services, replace(BASE, hires=hires))
    assert pixels.shape[:2] == (size[1], size[0])
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed.params["Size"] == "64x64"  # A1111 writes the first pass's size
    assert parsed.params["Hires upscaler"] == hires.upscaler
    assert float(parsed.params["Denoising strength"]) == hires.denoising_strength
    back, warnings = request_from_infotext(parsed)
    assert warnings == [] and back.hires == replace(hires, save_first_pass=None)  # the infotext does not say; the server decides


def test_hires_second_pass_changes_the_image_and_its_prompt_matters(services) -> None:
    _, plain = first(services, replace(BASE, width=64, height=64))
    _, hires = first(services, replace(BASE, hires=HiresFix(scale=1.0, steps=2, denoising_strength=0.6)))
    _, hires_prompt = first(services, replace(BASE, hires=HiresFix(scale=1.0, steps=2, denoising_strength=0.6,
                                                                   prompt="a blue sphere at night")))
    assert not np.array_equal(plain, hires)
    assert not np.array_equal(hires, hires_prompt)
    # Denoising 0: the second pass leaves the (re-encoded) latents alone; the size is still right.
    _, none = first(services, replace(BASE, hires=HiresFix(scale=2.0, denoising_strength=0.0)))
    assert none.shape[:2] == (128, 128)


def test_hires_first_pass_is_saved_when_asked(services) -> None:
    folder = services.outputs.saver.folder(OutputKind.TXT2IMG)
    before = set(folder.glob("*.png")) if folder.exists() else set()
    result = services.generation.generate(replace(BASE, save_images=True,
                                                  hires=HiresFix(scale=2.0, steps=2, save_first_pass=True)))
    added = set(folder.glob("*.png")) - before
    sizes = sorted(Image.open(p).size for p in added)
    assert sizes == [(64, 64), (128, 128)]
    assert result.images[0].path in added


def test_hires_is_refused_for_img2img_and_for_sizes_past_the_limit(services) -> None:
    with pytest.raises(ValidationError, match="hr_scale"):
        services.generation.prepare(replace(BASE, width=1024, height=1024, hires=HiresFix(scale=4.0)))
    with pytest.raises(ValidationError, match="hr_upscaler"):
        services.generation.prepare(replace(BASE, hires=HiresFix(upscaler="R-ESRGAN 4x+")))


def test_refiner_takes_over_and_is_named_in_the_infotext(services) -> None:
    _, plain = first(services, BASE)
    result, refined = first(services, replace(BASE, refiner=Refiner("tiny-sd15-b.safetensors", 0.5)))
    assert not np.array_equal(plain, refined)
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed.params["Refiner"].startswith("tiny-sd15-b [")
    assert parsed.params["Refiner switch at"] == "0.5"
    back, _ = request_from_infotext(parsed)
    assert back.refiner == Refiner("tiny-sd15-b", 0.5)
    # Switching at 1.0 never switches: the base model's image, bit for bit.
    _, never = first(services, replace(BASE, refiner=Refiner("tiny-sd15-b.safetensors", 1.0)))
    assert np.array_equal(plain, never)
    # The main model stays the loaded one.
    assert services.models.current().name == "tiny-sd15.safetensors"


def test_unknown_refiner_is_refused_before_queuing(services) -> None:
    with pytest.raises(ValidationError, match="refiner_checkpoint"):
        services.generation.prepare(replace(BASE, refiner=Refiner("no-such-model")))


def test_variation_strength_zero_equals_the_plain_seed(services) -> None:
    _, plain = first(services, BASE)
    _, zero = first(services, replace(BASE, variation_seed=5, variation_strength=0.0))
    _, some = first(services, replace(BASE, variation_seed=5, variation_strength=0.3))
    assert np.array_equal(plain, zero) and not np.array_equal(plain, some)


def test_seed_resize_from_keeps_the_composition_of_the_other_size(services) -> None:
    _, plain = first(services, BASE)
    same, same_pixels = first(services, replace(BASE, seed_resize_from_width=64, seed_resize_from_height=64))
    assert np.array_equal(plain, same_pixels)  # resizing from the same size changes nothing
    result, resized = first(services, replace(BASE, seed_resize_from_width=96, seed_resize_from_height=48))
    assert not np.array_equal(plain, resized)
    parsed = parse_infotext(result.images[0].infotext)
    assert parsed.params["Seed resize from"] == "96x48"
    back, _ = request_from_infotext(parsed)
    assert (back.seed_resize_from_width, back.seed_resize_from_height) == (96, 48)
    # The noise of a 64x64 seed resized from 64x64 at 96x96 is that seed's 64x64 noise in the centre.
    import torch

    from modules.engine.sampling.noise import ImageNoise
    small = ImageNoise((4, 8, 8), [77], torch.device("cpu")).first()
    centred = ImageNoise((4, 12, 12), [77], torch.device("cpu"), resize_from=(8, 8)).first()
    assert torch.equal(centred[0, :, 2:10, 2:10], small[0])

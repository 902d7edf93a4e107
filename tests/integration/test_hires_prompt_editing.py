"""Prompt editing in hires fix's second pass follows A1111: the pass has its own schedule over its
own steps, counting on from the first pass (whole numbers) or from 1.0 (numbers with a ".").
Through the one service path on the tiny SD1.5 model; also the emphasis mode in the infotext."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
from PIL import Image

from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest, HiresFix

HIRES = HiresFix(scale=1.0, steps=4, denoising_strength=0.7, upscaler="Latent")
BASE = GenerationRequest(prompt="a cat", steps=4, width=64, height=64, seed=21, sampler="Euler",
                         checkpoint="tiny-sd15.safetensors", save_images=False, hires=HIRES)


def made(services, request: GenerationRequest) -> tuple[np.ndarray, str]:
    image = services.generation.generate(request).images[0]
    with Image.open(io.BytesIO(image.png)) as opened:
        return np.asarray(opened.convert("RGB")).astype(int), image.infotext


def test_second_pass_switches_on_its_own_schedule(services) -> None:
    # "[cat:dog:6]" over 4 + 4 steps: the whole first pass is "cat" (min(4, 6) = 4), and the second
    # pass switches at step 6 - 4 = 2 of its 4, which a hires prompt "[cat:dog:1.5]" also says.
    counted_on, _ = made(services, replace(BASE, prompt="[cat:dog:6]"))
    half_of_pass, _ = made(services, replace(BASE, prompt="cat", hires=replace(HIRES, prompt="[cat:dog:1.5]")))
    assert np.array_equal(counted_on, half_of_pass)
    never, _ = made(services, replace(BASE, prompt="cat"))
    assert not np.array_equal(counted_on, never)  # the switch did happen, in the second pass
    # A fraction below 1 is over before the second pass: "dog" throughout it.
    early, _ = made(services, replace(BASE, prompt="cat", hires=replace(HIRES, prompt="[cat:dog:0.5]")))
    dog, _ = made(services, replace(BASE, prompt="cat", hires=replace(HIRES, prompt="dog")))
    assert np.array_equal(early, dog)


def test_emphasis_mode_changes_the_image_and_is_written_back(services) -> None:
    request = replace(BASE, prompt="a (cat:1.4)", hires=None)
    original, original_text = made(services, replace(request, emphasis="Original"))
    no_norm, no_norm_text = made(services, replace(request, emphasis="No norm"))
    ignored, _ = made(services, replace(request, emphasis="Ignore"))
    plain, _ = made(services, replace(request, prompt="a cat", emphasis="Original"))
    assert not np.array_equal(no_norm, ignored) and not np.array_equal(original, ignored)
    assert np.array_equal(ignored, plain)  # "Ignore" reads the brackets, not the weight
    assert "Emphasis" not in parse_infotext(original_text).params  # A1111 leaves out its default
    parsed = parse_infotext(no_norm_text)
    assert parsed.params["Emphasis"] == "No norm"
    back, warnings = request_from_infotext(parsed, GenerationRequest())
    assert back.emphasis == "No norm" and warnings == []

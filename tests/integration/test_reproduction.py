"""Parameters round-trip: an image's infotext, read back, makes the same image again."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from modules.infotext import parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest
from modules.samplers import ScheduleType
from modules.services.images import read_infotext
from modules.services.styles import PromptStyle


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_png_info_to_txt2img_reproduces_identical_pixels(services) -> None:
    first = services.generation.generate(GenerationRequest(
        prompt="a quiet harbour, dawn: soft light", negative_prompt="people, \"text\"", sampler="DPM++ 2M SDE",
        schedule=ScheduleType.EXPONENTIAL, steps=5, cfg_scale=6.5, width=64, height=64, seed=31337, clip_skip=2,
        checkpoint="tiny-sd15.safetensors")).images[0]
    request, warnings = request_from_infotext(parse_infotext(read_infotext(first.path)))
    assert warnings == [] and request.checkpoint == "tiny-sd15"
    again = services.generation.generate(request).images[0]
    assert np.array_equal(pixels(first.path), pixels(again.path))


def test_styles_are_applied_once_and_named_in_the_infotext(services) -> None:
    services.styles.save(PromptStyle("Cinematic", "{prompt}, cinematic lighting", "washed out"))
    made = services.generation.generate(GenerationRequest(prompt="a fox", steps=3, width=64, height=64, seed=4,
                                                          styles=("Cinematic", "None-existent")))
    parsed = parse_infotext(made.images[0].infotext)
    assert parsed.prompt == "a fox, cinematic lighting" and parsed.negative_prompt == "washed out"
    assert parsed.params["Styles array"] == '["Cinematic"]'
    # Reproducing from the infotext does not apply the style a second time.
    request, _ = request_from_infotext(parsed)
    again = services.generation.generate(replace(request, checkpoint=None)).images[0]
    assert parse_infotext(again.infotext).prompt == "a fox, cinematic lighting"
    assert np.array_equal(pixels(made.images[0].path), pixels(again.path))

"""The prompt language changes what is generated, on the tiny models, through the whole service."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.params import GenerationRequest

BASE = GenerationRequest(steps=6, width=64, height=64, seed=8, sampler="Euler", checkpoint="tiny-sd15.safetensors")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def make(services):
    def generate(prompt: str, **changes: object) -> np.ndarray:
        return pixels(services.generation.generate(replace(BASE, prompt=prompt, **changes)).images[0].path)

    return generate


def test_emphasis_changes_the_image(make) -> None:
    assert not np.array_equal(make("a cat"), make("a (cat:1.5)"))
    assert np.array_equal(make("a cat"), make("a cat"))


def test_prompt_editing_differs_from_both_ends(make) -> None:
    edited = make("a [cat:dog:0.5]")
    assert not np.array_equal(edited, make("a cat")) and not np.array_equal(edited, make("a dog"))


def test_alternation_and_composition_change_the_image(make) -> None:
    assert not np.array_equal(make("[cat|dog]"), make("cat"))
    assert not np.array_equal(make("cat AND dog"), make("cat"))
    assert not np.array_equal(make("cat AND dog :0.3"), make("cat AND dog"))


def test_long_prompts_use_every_chunk(make) -> None:
    words = " ".join(f"word{i}" for i in range(200))  # several 75-token chunks
    assert not np.array_equal(make(words + " castle"), make(words + " forest"))  # the tail matters


def test_break_starts_a_new_chunk(make) -> None:
    assert not np.array_equal(make("red house BREAK blue sky"), make("red house blue sky"))


def test_sdxl_reads_the_prompt_language_too(make) -> None:
    assert not np.array_equal(make("a (cat:1.5)", checkpoint="tiny-sdxl"), make("a cat", checkpoint="tiny-sdxl"))

"""SD1 / SD1 inpainting / SDXL make the same bytes as before the family registry.

The constants were computed from the release before the registry (same tiny models, same
requests, one torch thread); a change in loading, conditioning or sampling of the Stable
Diffusion UNet families shows up here as a different hash.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import replace

import pytest
from PIL import Image, ImageDraw

from modules.params import GenerationRequest, HiresFix

BASE = GenerationRequest(prompt="a lighthouse on a cliff, (storm:1.2)", negative_prompt="blurry", steps=4,
                         width=64, height=64, seed=20240611, cfg_scale=6.0, sampler="DPM++ 2M",
                         checkpoint="tiny-sd15.safetensors", save_images=False)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _init_png() -> bytes:
    image = Image.new("RGB", (64, 64), (40, 120, 200))
    ImageDraw.Draw(image).rectangle((8, 20, 56, 44), fill=(230, 210, 40))
    return _png(image)


def _mask_png() -> bytes:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse((12, 12, 52, 52), fill=255)
    return _png(mask)


CASES: dict[str, GenerationRequest] = {
    "sd15-txt2img": BASE,
    "sd15-img2img": replace(BASE, sampler="Euler a", init_image=_init_png(), denoising_strength=0.7),
    "sd15-inpainting": replace(BASE, checkpoint="tiny-sd15-inpainting.safetensors", steps=3, init_image=_init_png(),
                               mask=_mask_png(), denoising_strength=1.0),
    "sdxl-txt2img": replace(BASE, checkpoint="tiny-sdxl.safetensors", sampler="Euler", steps=3),
    "sd15-hires": replace(BASE, steps=3, hires=HiresFix(scale=1.5, steps=2, denoising_strength=0.55)),
}

# sha256 of the RGB pixels (and size) of each case's image, from the release before the registry.
GOLDEN: dict[str, str] = {
    "sd15-txt2img": "90145d49d07c6dec05081e18b1b1771872491dbf30c3deafcb32e2aac4dfb772",
    "sd15-img2img": "687c08ba0f7dfa8117f568369e1896438a6ec09548d6c1b905c6609dd1264599",
    "sd15-inpainting": "e0b4a259f909e37366f8999955a1ecbdf4aab74a461c08f19101e5ccf1d7edbc",
    "sdxl-txt2img": "77c57dc0f0a3c8823e87534218289f88c9d2cd7143732081479f19a40b2155ba",
    "sd15-hires": "a46c193a256ffc747507f070f0da75777e7f4a506f83b5cbc3d0979bd8929efd",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Pinned like the other bit-exact tests: the thread count changes float summation order."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pixel_digest(png: bytes) -> str:
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
        return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


@pytest.mark.parametrize("case", list(CASES))
def test_stable_diffusion_outputs_are_unchanged(services, case: str) -> None:
    result = services.generation.generate(CASES[case])
    assert len(result.images) == 1
    assert pixel_digest(result.images[0].png) == GOLDEN[case], f"{case}: the image changed"

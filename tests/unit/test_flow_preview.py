"""Cheap live previews of flow families' latents: each family's own colours, at image size."""

from __future__ import annotations

import pytest
import torch

from modules.engine.model_detect import ModelArch
from modules.engine.preview import latent_rgb, latents_to_preview


@pytest.mark.parametrize(("arch", "channels", "side"), [
    (ModelArch.SD35_LARGE, 16, 8), (ModelArch.FLUX_DEV, 16, 8), (ModelArch.ZIMAGE, 16, 8),
    (ModelArch.FLUX2_KLEIN, 128, 4),  # 64 px: 4 cells of 16 px, unpatchified to 8 of 8 px
])
def test_flow_latents_preview_at_image_size(arch, channels, side):
    latents = torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(0))
    image = latents_to_preview(latents, arch, index=1)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_families_use_their_own_latent_colours():
    latents = torch.zeros(1, 16, 4, 4)
    latents[0, 15] = 2.0
    sd3 = latents_to_preview(latents, ModelArch.SD35_MEDIUM).getpixel((0, 0))
    flux = latents_to_preview(latents, ModelArch.FLUX_DEV).getpixel((0, 0))
    assert sd3 != flux  # the 16th channel is not SD's: its colour is per family
    assert latent_rgb(ModelArch.ZIMAGE) is latent_rgb(ModelArch.FLUX_SCHNELL)  # Z-Image uses FLUX's autoencoder


def test_sd_previews_unchanged():
    latents = torch.ones(1, 4, 2, 2)
    # the SD 1.x factors' column sums: (0.143, 0.411, 0.172) -> ((x + 1) * 127.5)
    assert latents_to_preview(latents, ModelArch.SD1).getpixel((0, 0)) == (145, 179, 149)

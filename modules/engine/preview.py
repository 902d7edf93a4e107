"""Live previews as pictures: the cheap one (latents projected to RGB with a fixed linear map, no VAE
involved), and the picture of a decoder's output, which the TAESD and Full previews share."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from modules.engine.model_detect import ModelArch

# Least-squares fits of VAE-decoded colour against the four latent channels, per latent space.
_SD_LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473))
_SDXL_LATENT_RGB = ((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                    (-0.3112, -0.2359, -0.2076))
CHEAP_PREVIEW_SCALE = 8  # the cheap preview is one colour per latent cell, enlarged by nearest neighbour


def latents_to_preview(latents: torch.Tensor, arch: ModelArch, index: int = 0) -> Image.Image:
    """RGB approximation of image ``index`` of a latent batch, at latent resolution x 8."""
    factors = torch.tensor(_SDXL_LATENT_RGB if arch.is_sdxl else _SD_LATENT_RGB)
    latent = latents[index].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", latent[:4], factors)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    size = (image.width * CHEAP_PREVIEW_SCALE, image.height * CHEAP_PREVIEW_SCALE)
    return image.resize(size, Image.Resampling.NEAREST)


def pixels_to_preview(pixels: torch.Tensor) -> Image.Image:
    """A decoder's (3, H, W) output in [-1, 1] as an RGB picture."""
    scaled = ((pixels.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    array = scaled.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")

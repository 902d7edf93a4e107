"""Live previews as pictures: the cheap one (latents projected to RGB with a fixed linear map, no VAE
involved), and the picture of a decoder's output, which the TAESD and Full previews share.

The linear maps are least-squares fits of VAE-decoded colour against the latent channels, one per
latent space (the values ComfyUI publishes in ``comfy/latent_formats.py``), applied to the latents
as the sampler holds them (scaled and shifted for the denoiser). FLUX.2's 128-channel latents are
its 32 VAE channels patchified 2x2 (diffusers ``Flux2Pipeline._patchify_latents``): they are
unpatchified first, so its preview has the VAE's resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from modules.engine.model_detect import ModelArch

CHEAP_PREVIEW_SCALE = 8  # the cheap preview is one colour per latent cell, enlarged by nearest neighbour


@dataclass(frozen=True)
class LatentRGB:
    """A latent space's linear map to RGB in [-1, 1]: one (r, g, b) row per channel, plus a bias."""

    factors: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    patch: int = 1  # channels packed as (channels / patch**2, patch, patch): unpatchified first


_SD = LatentRGB(((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264), (-0.184, -0.271, -0.473)))
_SDXL = LatentRGB(((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                   (-0.3112, -0.2359, -0.2076)))
_SD3 = LatentRGB((
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
    (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
    (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
), (0.2394, 0.2135, 0.1925))
# FLUX.1's autoencoder; Z-Image uses the same one (its VAE config has FLUX's scale and shift).
_FLUX = LatentRGB((
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
), (-0.0329, -0.0718, -0.0851))
_FLUX2 = LatentRGB((
    (0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644), (0.2144, 0.3009, 0.3652),
    (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160), (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109),
    (-0.3527, -0.2712, -0.1666), (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
    (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080), (-0.0939, -0.0008, 0.0186),
    (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127), (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065),
    (0.0128, 0.0101, 0.0142), (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
    (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025), (0.0220, 0.0169, -0.0048),
    (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609), (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614),
), (-0.0329, -0.0718, -0.0851), patch=2)
_BY_GROUP = {"sd3": _SD3, "flux": _FLUX, "zimage": _FLUX, "flux2": _FLUX2}


def latent_rgb(arch: ModelArch) -> LatentRGB:
    """The linear RGB map of ``arch``'s latent space."""
    if arch.is_sdxl:
        return _SDXL
    return _BY_GROUP.get(arch.family.group, _SD)


def _unpatchify(latent: torch.Tensor, patch: int) -> torch.Tensor:
    channels, height, width = latent.shape
    base = channels // (patch * patch)
    return (latent.reshape(base, patch, patch, height, width).permute(0, 3, 1, 4, 2)
            .reshape(base, height * patch, width * patch))


def latents_to_preview(latents: torch.Tensor, arch: ModelArch, index: int = 0) -> Image.Image:
    """RGB approximation of image ``index`` of a latent batch, at image resolution (latent cells enlarged)."""
    space = latent_rgb(arch)
    latent = latents[index].detach().float().cpu()
    if space.patch > 1 and latent.shape[0] == len(space.factors) * space.patch ** 2:
        latent = _unpatchify(latent, space.patch)
    channels = min(latent.shape[0], len(space.factors))
    factors = torch.tensor(space.factors[:channels])
    rgb = torch.einsum("chw,cr->hwr", latent[:channels], factors) + torch.tensor(space.bias)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    size = (image.width * CHEAP_PREVIEW_SCALE, image.height * CHEAP_PREVIEW_SCALE)
    return image.resize(size, Image.Resampling.NEAREST)


def pixels_to_preview(pixels: torch.Tensor) -> Image.Image:
    """A decoder's (3, H, W) output in [-1, 1] as an RGB picture."""
    scaled = ((pixels.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    array = scaled.permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")

"""The Full live preview: latents decoded by the model's own VAE, leaving the VAE as it is.

A reader asks for a preview while the worker samples, and the worker decodes with the same VAE when
a batch ends. So nothing here changes the VAE (no dtype conversion, no tiling switch, no move), and
a preview is drawn only while the VAE stays on the device: under offloading, decoding would move
weights under the worker's feet.
"""

from __future__ import annotations

import torch
from PIL import Image

from modules.engine.devices import MemoryMode
from modules.engine.loaded_model import LoadedModel
from modules.engine.preview import pixels_to_preview


def vae_preview_blocker(model: LoadedModel) -> str | None:
    """Why ``model``'s VAE cannot draw previews beside the worker; None when it can."""
    mode = model.device.memory.offload_for(model.arch.is_sdxl)
    if mode is not MemoryMode.FULL:
        return f"with {mode.value} the VAE is offloaded, and decoding a preview would move weights the worker uses"
    return None


@torch.inference_mode()
def vae_preview(model: LoadedModel, latents: torch.Tensor, index: int = 0) -> Image.Image | None:
    """Image ``index`` of a latent batch decoded by the model's VAE in the dtype it has now, at the
    size the finished image will have; None when that dtype overflowed (NaN, a half-precision VAE
    that the worker upcasts only while it decodes)."""
    vae = model.pipeline.vae
    dtype = vae.dtype
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latent = latents[index:index + 1].to(model.execution_device, dtype) / vae.config.scaling_factor + shift
    pixels = vae.decode(latent, return_dict=False)[0]
    if torch.isnan(pixels).any():
        return None
    return pixels_to_preview(pixels[0])

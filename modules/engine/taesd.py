"""The tiny autoencoders (TAESD for SD 1.x/2.x, TAESDXL for SDXL) the TAESD live preview decodes with.

Each variant is read from a local folder in diffusers' layout (``config.json`` and
``diffusion_pytorch_model.safetensors``, as the ``madebyollin/taesd`` and ``madebyollin/taesdxl``
repositories hold them), never from the network: fetching a missing one is the services' job.
A TAESD decodes the UNet's latents as they are (its scaling factor is 1) to pixels at 8x their size.
"""

from __future__ import annotations

import enum
from pathlib import Path

import torch
from diffusers import AutoencoderTiny
from PIL import Image

from modules.engine.model_detect import ModelArch
from modules.engine.preview import pixels_to_preview
from modules.errors import ModelLoadError

TAESD_FILES = ("diffusion_pytorch_model.safetensors", "config.json")  # weights first: config last marks it whole


class TaesdVariant(enum.Enum):
    """Which tiny autoencoder fits a latent space; values are the folder (and repository) names."""

    SD = "taesd"  # SD 1.x and 2.x share the latent space of the original VAE
    SDXL = "taesdxl"

    @staticmethod
    def for_arch(arch: ModelArch) -> TaesdVariant:
        return TaesdVariant.SDXL if arch.is_sdxl else TaesdVariant.SD

    def folder(self, root: Path) -> Path:
        """Where this variant lives under ``root`` (A1111's models/VAE-taesd)."""
        return root / self.value


def has_taesd(folder: Path) -> bool:
    """Whether ``folder`` holds every file a tiny autoencoder is loaded from."""
    return all((folder / name).is_file() for name in TAESD_FILES)


def load_taesd(folder: Path, device: torch.device, dtype: torch.dtype) -> AutoencoderTiny:
    """The tiny autoencoder in ``folder``, on ``device`` in ``dtype``, ready for inference."""
    try:
        decoder = AutoencoderTiny.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(str(folder), f"not a tiny autoencoder folder ({exc})") from exc
    decoder.requires_grad_(False).eval()
    return decoder.to(device)


@torch.inference_mode()
def taesd_preview(decoder: AutoencoderTiny, latents: torch.Tensor, index: int = 0) -> Image.Image:
    """Image ``index`` of a latent batch decoded by a tiny autoencoder, at latent size x 8."""
    latent = latents[index:index + 1].to(decoder.device, decoder.dtype)
    pixels = decoder.decode(latent / decoder.config.scaling_factor, return_dict=False)[0]
    return pixels_to_preview(pixels[0])

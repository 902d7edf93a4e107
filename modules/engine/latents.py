"""Moving between pixels and latents: VAE encode/decode, masks at latent size, inpaint inputs."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image, ImageFilter

from modules.engine.devices import MemoryMode
from modules.engine.loaded_model import LoadedModel

log = logging.getLogger(__name__)

LATENT_SCALE = 8  # the SD VAEs downsample by 8
TILED_DECODE_ABOVE = 1536  # pixels on the longer side beyond which the VAE decodes in tiles
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def image_to_tensor(image: Image.Image, device: torch.device) -> torch.Tensor:
    """(1, 3, H, W) in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)


def _in_full_precision_after_nans(model: LoadedModel, what: str) -> None:
    """A VAE that overflowed in half precision: log it and convert it to float32 for good (as A1111
    does), so later images of this VAE do not fail the same way."""
    log.warning("A tensor with NaNs was produced in the VAE while %s (%s, with %s); the VAE was converted to "
                "32-bit float, the step retried, and it stays in 32-bit from now on.", what,
                str(model.pipeline.vae.dtype).removeprefix("torch."), model.path.name)
    model.pipeline.vae.to(dtype=torch.float32)


def _has_nans(tensor: torch.Tensor) -> bool:
    return bool(torch.isnan(tensor).any())  # one read per batch, after sampling: not in the step loop


@torch.inference_mode()
def encode_image(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """Scaled latents of a (B, 3, H, W) image batch in [-1, 1]; the distribution's mean, so the
    same image always gives the same latent (sampling it would need yet another seed)."""
    vae = model.pipeline.vae
    device = model.execution_device  # not vae.device: offloaded weights sit in RAM or on "meta"
    latents = vae.encode(pixels.to(device, vae.dtype)).latent_dist.mode()
    if vae.dtype in _HALF_DTYPES and _has_nans(latents):
        _in_full_precision_after_nans(model, "encoding an image")
        latents = vae.encode(pixels.to(device, torch.float32)).latent_dist.mode()
    return model.latent_format.from_vae(vae, latents.float())


def _use_tiling(model: LoadedModel, latents: torch.Tensor) -> None:
    """Decode in tiles for large images, and always when GPU memory is short (offload modes):
    a 2048x2048 decode alone needs several GiB of activations."""
    large = max(latents.shape[-2:]) * model.latent_format.scale > TILED_DECODE_ABOVE
    offloading = model.device.memory is not MemoryMode.FULL
    vae = model.pipeline.vae
    if large or offloading:
        vae.enable_tiling()
    else:
        vae.disable_tiling()


def _decode(model: LoadedModel, latents: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
    """The decoded pixels, and the dtype the VAE ran in to produce them."""
    vae = model.pipeline.vae
    _use_tiling(model, latents)
    scaled = model.latent_format.to_vae(vae, latents.to(model.execution_device, vae.dtype))
    return vae.decode(scaled, return_dict=False)[0], vae.dtype


@torch.inference_mode()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """PIL images of a latent batch.

    The VAE runs in its own dtype: half precision (fp16, or bf16 where the card has it) unless
    ``--no-half-vae``, for every family; a VAE config's ``force_upcast`` is not obeyed, since it
    would make every SD1.5 decode fp32. A VAE that overflows in half precision decodes to NaN
    (black images); then, as A1111 does, it is converted to float32 and the batch decoded again,
    and it stays in float32 (:func:`_in_full_precision_after_nans`).
    """
    decoded, dtype = _decode(model, latents)
    if dtype in _HALF_DTYPES and _has_nans(decoded):
        _in_full_precision_after_nans(model, "decoding")
        decoded, _ = _decode(model, latents)
    return model.pipeline.image_processor.postprocess(decoded.float(), output_type="pil")


def blurred_mask(mask: Image.Image, blur: int) -> Image.Image:
    """The repaint mask (white = repaint) softened by ``blur`` pixels, as A1111's mask blur."""
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask


def latent_keep_mask(mask: Image.Image, device: torch.device, scale: int = LATENT_SCALE) -> torch.Tensor:
    """(1, 1, h, w): 1 where the original latent is kept. Rounded, as A1111 does at latent size."""
    small = mask.resize((mask.width // scale, mask.height // scale), Image.Resampling.BILINEAR)
    repaint = np.around(np.asarray(small, dtype=np.float32) / 255.0)
    return torch.from_numpy(1.0 - repaint)[None, None].to(device)


@torch.inference_mode()
def inpaint_conditioning(model: LoadedModel, image: Image.Image | None, mask: Image.Image | None,
                         width: int, height: int, batch: int) -> torch.Tensor:
    """The extra UNet input of 9-channel inpainting models: mask, then the masked image's latent.
    With no image (txt2img) the whole canvas is to be painted: mask 1, a mid-grey image."""
    device = model.execution_device
    if image is None or mask is None:
        pixels = torch.zeros(1, 3, height, width, device=device)  # 0 in [-1, 1] is mid-grey
        repaint = torch.ones(1, 1, height, width, device=device)
    else:
        if image.size != (width, height):  # a latent-upscaled init: the conditioning is at the output size
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        repaint = torch.from_numpy(np.around(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0))
        repaint = repaint[None, None].to(device)
        pixels = image_to_tensor(image, device) * (1 - repaint)
    masked_latent = encode_image(model, pixels)
    small_mask = torch.nn.functional.interpolate(repaint, size=masked_latent.shape[-2:])
    return torch.cat([small_mask, masked_latent], dim=1).expand(batch, -1, -1, -1)


def overlay_original(result: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Paste the original back outside the (blurred) mask, so untouched pixels stay exact."""
    return Image.composite(result.convert("RGB"), original.convert("RGB"), mask.convert("L"))

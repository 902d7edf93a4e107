"""How Atelier's loop runs FLUX.1: prompt encoding, the transformer in the flow convention, the
noise levels, and Fill's extra input channels.

Every convention follows diffusers' ``FluxPipeline`` / ``FluxFillPipeline`` (pipelines/flux/) so an
Euler run here matches the pipeline with ``FlowMatchEulerDiscreteScheduler`` on the same sigmas:
CLIP-L gives the pooled vector, T5 the tokens padded to the pipeline's ``max_sequence_length``;
latents are packed in 2x2 patches with (0, y, x) position ids; the transformer's time is the sigma.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from modules.engine.families.base import FlowJob
from modules.engine.families.text_weights import apply_weights, weighted_tokens
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.denoiser import Embeds
from modules.engine.sampling.flow import compute_dtype, dynamic_shift, flow_sigmas
from modules.engine.sampling.schedules import ModelSigmas

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from PIL import Image

    from modules.engine.loaded_model import LoadedModel

# diffusers' pipelines pad T5 to max_sequence_length: 512 by default; FLUX.1 schnell was trained with 256
# (its model card and diffusers' docs run it with max_sequence_length=256).
T5_LENGTH = {ModelArch.FLUX_DEV: 512, ModelArch.FLUX_FILL: 512, ModelArch.FLUX_SCHNELL: 256}
CLIP_LENGTH = 77
DEFAULT_SIZE = 1024  # the size at which the model's default noise levels are computed


def pack(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, C*4): FluxPipeline._pack_latents."""
    b, c, h, w = latents.shape
    return latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The inverse of :func:`pack` (FluxPipeline._unpack_latents, in latent cells)."""
    b, _n, channels = tokens.shape
    latents = tokens.view(b, h // 2, w // 2, channels // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return latents.reshape(b, channels // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(h*w, 3): (0, row, column) per packed token (FluxPipeline._prepare_latent_image_ids)."""
    ids = torch.zeros(h, w, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w)[None, :]
    return ids.reshape(h * w, 3).to(device=device, dtype=dtype)


def shift_for(config: Mapping[str, Any], width: int, height: int) -> float:
    """The scheduler's shift at this size: dev and Fill scale it with the image's token count
    (FluxPipeline.__call__'s calculate_shift, mu -> shift = e^mu); schnell has a fixed one."""
    if not config.get("use_dynamic_shifting", False):
        return float(config.get("shift", 1.0))
    tokens = (height // 16) * (width // 16)  # packed 2x2 latent patches of /8 latents
    return dynamic_shift(tokens, int(config.get("base_image_seq_len", 256)), int(config.get("max_image_seq_len", 4096)),
                         float(config.get("base_shift", 0.5)), float(config.get("max_shift", 1.15)))


def default_sigmas(pipe: Any) -> ModelSigmas:
    return flow_sigmas(shift_for(pipe.scheduler.config, DEFAULT_SIZE, DEFAULT_SIZE))


def sigmas(model: LoadedModel, job: FlowJob) -> ModelSigmas:
    shift = job.shift if job.shift is not None else shift_for(model.base_scheduler_config, job.width, job.height)
    return flow_sigmas(shift)


# -- text --------------------------------------------------------------------------------------------------

def _clip_pooled(pipe: Any, text: str, emphasis: str, device: torch.device) -> torch.Tensor:
    """CLIP-L's pooled output of the text, emphasis syntax removed (a pooled vector has no per-token
    weights); for plain text the ids are exactly the pipeline's (_get_clip_prompt_embeds)."""
    tokenizer = pipe.tokenizer
    ids = list(weighted_tokens(tokenizer, text, emphasis).ids)[: CLIP_LENGTH - 2]
    ids = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
    ids += [tokenizer.pad_token_id] * (CLIP_LENGTH - len(ids))
    out = pipe.text_encoder(torch.tensor([ids], device=device), output_hidden_states=False)
    return out.pooler_output


def _t5_tokens(pipe: Any, text: str, emphasis: str, device: torch.device, length: int) -> torch.Tensor:
    """T5's hidden states (1, length, width), padded as the pipeline pads (_get_t5_prompt_embeds:
    truncated to length - 1 tokens plus the end token, padding attended to), emphasis applied."""
    tokenizer = pipe.tokenizer_2
    weighted = weighted_tokens(tokenizer, text, emphasis)
    ids = [*weighted.ids[: length - 1], tokenizer.eos_token_id]
    weights = [*weighted.weights[: length - 1], 1.0]
    ids += [tokenizer.pad_token_id] * (length - len(ids))
    weights += [1.0] * (length - len(weights))
    hidden = pipe.text_encoder_2(torch.tensor([ids], device=device), output_hidden_states=False)[0]
    return apply_weights(hidden, torch.tensor(weights), emphasis)


@torch.inference_mode()
def encode(model: LoadedModel, texts: Sequence[str], emphasis: str) -> dict[str, Embeds]:
    pipe, device = model.pipeline, model.execution_device
    length = T5_LENGTH[model.arch]
    return {text: Embeds(tokens=_t5_tokens(pipe, text, emphasis, device, length),
                         pooled=_clip_pooled(pipe, text, emphasis, device)) for text in texts}


# -- the network -------------------------------------------------------------------------------------------

@dataclass
class FluxNetwork:
    """The FLUX.1 transformer as a :class:`~modules.engine.sampling.flow.FlowNetwork`."""

    transformer: torch.nn.Module
    guidance: float | None  # the distilled guidance (dev, Fill); None for schnell
    dtype: torch.dtype = field(init=False)
    _ids: dict[tuple[int, int, int], torch.Tensor] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        # Read once: diffusers' ``.dtype`` walks every submodule.
        self.dtype = compute_dtype(self.transformer)

    def conditions(self, embeds: Embeds) -> dict[str, torch.Tensor]:
        assert embeds.pooled is not None
        return {"pooled": embeds.pooled}

    def _image_ids(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        key = (h, w, hash(device))
        if key not in self._ids:
            self._ids[key] = image_ids(h // 2, w // 2, device, self.dtype)
        return self._ids[key]

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                 conditions: dict[str, torch.Tensor] | None, concat: torch.Tensor | None) -> torch.Tensor:
        assert conditions is not None
        b, _c, h, w = x.shape
        dtype = self.dtype
        hidden = pack(x.to(dtype))
        if concat is not None:  # Fill: the masked image's latents and the mask, packed the same way
            hidden = torch.cat([hidden, pack(concat.to(dtype))], dim=2)
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((b,), self.guidance, device=x.device, dtype=torch.float32)
        # The pipeline passes its timestep t = 1000 * sigma divided by 1000, in the latents' dtype.
        timestep = (sigma.float() * 1000).to(dtype) / 1000
        out = self.transformer(hidden_states=hidden, timestep=timestep, guidance=guidance,
                               pooled_projections=conditions["pooled"].to(dtype),
                               encoder_hidden_states=tokens.to(dtype),
                               txt_ids=torch.zeros(tokens.shape[1], 3, device=x.device, dtype=dtype),
                               img_ids=self._image_ids(h, w, x.device), return_dict=False)[0]
        return unpack(out.float(), h, w)


def network(model: LoadedModel, job: FlowJob) -> FluxNetwork:
    transformer = model.pipeline.transformer
    guidance = None
    if transformer.config.guidance_embeds:
        default = model.arch.family.defaults.distilled_cfg_scale
        guidance = float(job.distilled_cfg_scale if job.distilled_cfg_scale is not None else default)
    return FluxNetwork(transformer, guidance)


# -- Fill --------------------------------------------------------------------------------------------------

@torch.inference_mode()
def inpaint_concat(model: LoadedModel, image: Image.Image | None, mask: Image.Image | None,
                   job: FlowJob) -> torch.Tensor:
    """Fill's extra channels, unpacked: the masked image's 16 latent channels, then the pixel mask
    folded into 64 channels per latent cell (FluxFillPipeline.prepare_mask_latents; the network
    packs both, which gives the pipeline's order). No image or mask: the whole canvas is painted."""
    import numpy as np
    from PIL import Image as PILImage

    from modules.engine import latents as lat  # not at import: latents imports the loader

    device = model.execution_device
    width, height = job.width, job.height
    if image is None or mask is None:
        pixels = torch.zeros(1, 3, height, width, device=device)
        repaint = torch.ones(1, 1, height, width, device=device)
    else:
        if image.size != (width, height):
            image = image.resize((width, height), PILImage.Resampling.LANCZOS)
            mask = mask.resize((width, height), PILImage.Resampling.BILINEAR)
        # the pipeline's mask processor binarizes at 0.5
        repaint = torch.from_numpy((np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 >= 0.5).astype(np.float32))
        repaint = repaint[None, None].to(device)
        pixels = lat.image_to_tensor(image, device) * (1 - repaint)
    masked_latent = lat.encode_image(model, pixels)
    scale = model.latent_format.scale
    h, w = masked_latent.shape[-2:]
    folded = repaint[:, 0].view(1, h, scale, w, scale).permute(0, 2, 4, 1, 3).reshape(1, scale * scale, h, w)
    return torch.cat([masked_latent, folded.to(masked_latent)], dim=1).expand(job.batch, -1, -1, -1)

"""Running one txt2img batch on a loaded model, with progress, preview and stop at every step.

The flow reads top to bottom: build the scheduler, encode prompts, seed one generator per image,
denoise (the observer sees every step and may stop it), decode. A stopped batch returns nothing:
its images are unfinished, and the caller keeps the batches that completed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from modules.engine.loader import LoadedModel
from modules.engine.prompt_encoding import encode_pair
from modules.engine.schedulers import make_scheduler
from modules.samplers import SamplerSpec, ScheduleType


class StepObserver(Protocol):
    """What the engine reports to while sampling; implemented by the job layer."""

    def on_step(self, step: int, total: int, latents: torch.Tensor) -> None: ...

    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class Txt2ImgBatch:
    """One pipeline call: the same prompt for ``len(seeds)`` images, image i seeded ``seeds[i]``."""

    prompt: str
    negative_prompt: str
    sampler: SamplerSpec
    schedule: ScheduleType
    steps: int
    cfg_scale: float
    width: int
    height: int
    clip_skip: int
    seeds: tuple[int, ...]


def _generators(seeds: Sequence[int], device: torch.device) -> list[torch.Generator]:
    # One generator per image, so image i depends on its own seed only (A1111: seed + i).
    return [torch.Generator(device=device).manual_seed(seed) for seed in seeds]


def _embedding_kwargs(model: LoadedModel, batch: Txt2ImgBatch) -> dict[str, Any]:
    positive, negative = encode_pair(model.pipeline, model.arch, batch.prompt, batch.negative_prompt, batch.clip_skip)
    kwargs: dict[str, Any] = {"prompt_embeds": positive.tokens, "negative_prompt_embeds": negative.tokens}
    if model.arch.is_sdxl:
        kwargs["pooled_prompt_embeds"] = positive.pooled
        kwargs["negative_pooled_prompt_embeds"] = negative.pooled
    return kwargs


@torch.inference_mode()
def decode_latents(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    """VAE-decode a latent batch to PIL images, upcasting a VAE that is unstable in fp16."""
    vae = model.pipeline.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        scaled = latents.to(dtype) / vae.config.scaling_factor
        if getattr(vae.config, "shift_factor", None):
            scaled = scaled + vae.config.shift_factor
        decoded = vae.decode(scaled, return_dict=False)[0]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    return model.pipeline.image_processor.postprocess(decoded, output_type="pil")


def run_txt2img(model: LoadedModel, batch: Txt2ImgBatch, observer: StepObserver) -> list[Image.Image] | None:
    """Images for ``batch``, or None when the observer stopped it before the last step."""
    pipe = model.pipeline
    # 1. A fresh scheduler for this call, from the model's own noise schedule.
    pipe.scheduler = make_scheduler(batch.sampler, batch.schedule, model.base_scheduler_config, batch.seeds[0])
    # 2. Prompt embeddings (clip skip, 75-token chunks).
    embeds = _embedding_kwargs(model, batch)
    stopped = False

    def on_step_end(pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        nonlocal stopped
        observer.on_step(step + 1, pipeline.num_timesteps, tensors["latents"])
        if observer.should_stop():
            stopped = True
            pipeline._interrupt = True  # diffusers' documented way to leave the loop early
        return tensors

    # 3. Denoise from per-image seeded noise; latents out, so a stopped batch skips decoding.
    latents = pipe(
        num_inference_steps=batch.steps,
        guidance_scale=batch.cfg_scale,
        width=batch.width,
        height=batch.height,
        num_images_per_prompt=len(batch.seeds),
        generator=_generators(batch.seeds, model.device.device),
        output_type="latent",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        **embeds,
    ).images
    if stopped:
        return None
    # 4. Decode.
    return decode_latents(model, latents)

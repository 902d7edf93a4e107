"""Hires fix: a txt2img batch made at one size, upscaled, then refined by an img2img pass.

Reads as steps: 1. the first pass's latents; 2. (when asked) its decoded images, for saving or
for an image or model upscaler; 3. the upscale, in latent space or on the pixels (then encoded again),
cropped to the final size when both sides were given; 4. the second pass, which runs exactly its
steps over the tail of a longer schedule, with the same seeds at the new size; 5. decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import torch
from PIL import Image

from modules.engine import latents as lat
from modules.engine.generate import ImageTask, RefinerPlan, prompt_steps, sample_task
from modules.engine.loaded_model import LoadedModel
from modules.engine.sampling.loop import StepObserver
from modules.upscalers import UpscalerKind, UpscalerSpec


class ImageUpscale(Protocol):
    """A model upscaler: ``image`` upscaled to exactly ``size`` (width, height), run on ``device``."""

    def __call__(self, image: Image.Image, size: tuple[int, int], device: torch.device) -> Image.Image: ...


@dataclass(frozen=True)
class HiresPlan:
    """The second pass: ``task`` is at the final size and carries its prompt, sampler and steps;
    the first pass is upscaled to ``upscale_size`` and then cropped to the task's size.
    ``upscale_image`` runs the upscaler model when ``upscaler`` is one."""

    task: ImageTask
    upscaler: UpscalerSpec
    upscale_size: tuple[int, int]  # (width, height), covers the final size
    upscale_image: ImageUpscale | None = None


class _PassObserver:
    """Reports a pass's steps as part of the whole job: ``before`` steps done, ``after`` to come."""

    def __init__(self, observer: StepObserver, before: int, after: int) -> None:
        self._observer, self._before, self._after = observer, before, after

    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        self._observer.on_step(self._before + step, self._before + total + self._after, denoised)

    def should_stop(self) -> bool:
        return self._observer.should_stop()


def _centre_crop(latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A1111's truncation: equal margins off both sides (the extra row or column off the end)."""
    extra_h, extra_w = latents.shape[-2] - height, latents.shape[-1] - width
    top, left = extra_h // 2, extra_w // 2
    return latents[..., top:top + height, left:left + width]


def _upscale_images(images: list[Image.Image], plan: HiresPlan, device: torch.device) -> list[Image.Image]:
    size = plan.upscale_size
    if plan.upscaler.kind is UpscalerKind.MODEL:
        if plan.upscale_image is None:
            raise ValueError(f"hires fix: no model runs the upscaler {plan.upscaler.name!r}")
        return [plan.upscale_image(image, size, device) for image in images]
    # "None" means no upscaler model: the image is only resized, which A1111 does with Lanczos.
    mode = plan.upscaler.mode
    resample = Image.Resampling.LANCZOS if mode == "NONE" else Image.Resampling[mode]
    return [image.resize(size, resample) for image in images]


def _upscaled_latents(model: LoadedModel, latents: torch.Tensor, first_images: list[Image.Image] | None,
                      plan: HiresPlan) -> torch.Tensor:
    width, height = plan.upscale_size
    scale = model.latent_format.scale  # FLUX.2's sampler latents are 16 pixels a cell
    shape = (height // scale, width // scale)
    if plan.upscaler.kind is UpscalerKind.LATENT:
        up = torch.nn.functional.interpolate(latents, size=shape, mode=plan.upscaler.mode,
                                             antialias=plan.upscaler.antialias)
    else:
        images = first_images if first_images is not None else lat.decode_latents(model, latents)
        device = model.execution_device
        pixels = torch.cat([lat.image_to_tensor(image, device) for image in _upscale_images(images, plan, device)])
        up = lat.encode_image(model, pixels)
    task = plan.task
    return _centre_crop(up, task.height // scale, task.width // scale)


def run_hires(model: LoadedModel, first: ImageTask, plan: HiresPlan, observer: StepObserver,
              refiner: RefinerPlan | None = None,
              on_first_pass: Callable[[list[Image.Image]], None] | None = None) -> list[Image.Image] | None:
    """The batch's final images at the hires size, or None when stopped. ``on_first_pass`` receives
    the first pass's images (to save them) before the upscale."""
    second_steps = plan.task.steps if plan.task.denoising_strength > 0 else 0
    # 1. First pass.
    latents = sample_task(model, first, _PassObserver(observer, 0, second_steps), refiner)
    if latents is None:
        return None
    # 2. Its images, when someone needs them.
    first_images = None
    if on_first_pass is not None or plan.upscaler.kind is not UpscalerKind.LATENT:
        first_images = lat.decode_latents(model, latents)
        if on_first_pass is not None:
            on_first_pass(first_images)
    # 3. Upscale, 4. second pass.
    init_latent = _upscaled_latents(model, latents, first_images, plan)
    # Its prompt editing has its own schedule over its own steps, counting on from the first pass (A1111).
    second = replace(plan.task, init_latent=init_latent, exact_steps=True, hires_base_steps=prompt_steps(first))
    samples = sample_task(model, second, _PassObserver(observer, first.steps, 0), refiner)
    if samples is None:
        return None
    # 5. Decode.
    return lat.decode_latents(model, samples)

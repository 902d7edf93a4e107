"""One batch of images on a loaded model: txt2img, img2img and inpainting through one loop.

Reads as steps: 1. the inputs the task needs (init latent, latent mask, inpainting-model
channels); 2. the guided denoiser (conditioning from the prompts), handing over to a refiner
model part-way when one is given; 3. sampling (stoppable); 4. decoding, and for inpainting the
original pasted back outside the mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from modules.engine import latents as lat
from modules.engine.families.base import FlowJob
from modules.engine.families.registry import family_for
from modules.engine.flow_conditioning import build_flow_conditioning
from modules.engine.loaded_model import LoadedModel
from modules.engine.model_detect import ModelArch
from modules.engine.prompt_encoding import build_conditioning
from modules.engine.sampling.denoiser import (
    Embeds,
    GuidedDenoiser,
    LatentMask,
    SigmaDenoiser,
    SwitchingDenoiser,
)
from modules.engine.sampling.flow import FlowDenoiser
from modules.engine.sampling.hooks import DenoiserHooks
from modules.engine.sampling.loop import (
    NoisePlan,
    SamplingPlan,
    StepObserver,
    run_sampling,
)
from modules.engine.sampling.noise import ImageNoise
from modules.engine.sampling.schedules import ModelSigmas
from modules.params import MaskedContent
from modules.sampler_params import SamplerParams
from modules.samplers import SamplerSpec, ScheduleType

_REFINER_AESTHETIC_SCORE = (6.0, 2.5)  # SDXL refiner's positive and negative aesthetic scores


@dataclass(frozen=True)
class RefinerPlan:
    """A second model that finishes the denoising once ``switch_at`` of it is done."""

    model: LoadedModel
    switch_at: float


@dataclass(frozen=True)
class ImageTask:
    """One pipeline call's worth of work: the same prompt for every image of the batch."""

    prompt: str
    negative_prompt: str
    sampler: SamplerSpec
    schedule: ScheduleType
    steps: int
    cfg_scale: float
    width: int
    height: int
    clip_skip: int
    noise: NoisePlan
    init_image: Image.Image | None = None  # at width x height (its own size for a latent resize)
    mask: Image.Image | None = None  # "L", white = repaint, blurred, at width x height
    denoising_strength: float = 0.75
    masked_content: MaskedContent = MaskedContent.ORIGINAL  # FILL is done on the pixels beforehand
    init_latent: torch.Tensor | None = None  # instead of init_image: hires fix's upscaled first pass
    exact_steps: bool = False  # img2img that runs ``steps`` exactly (hires fix's second pass)
    embeddings: Mapping[str, Any] | None = None  # textual inversion, by name, already checked to fit
    sampler_params: SamplerParams = SamplerParams()  # A1111's sampler parameters (eta, churn, schedule range)
    # Hires fix's second pass: the first pass's model calls, after which its prompt editing counts on.
    hires_base_steps: int | None = None
    emphasis: str = "Original"  # A1111's emphasis mode (see prompt_encoding.EMPHASIS_MODES)
    # A job's extension hooks at every model call (None: none); the refiner sees all but MODEL_CALL,
    # whose residuals are made for the first model's UNet.
    hooks: DenoiserHooks | None = field(default=None, compare=False)
    distilled_cfg_scale: float | None = None  # flow families with distilled guidance; None: the family's default
    shift: float | None = None  # flow families: the sigma shift; None: the family's own rule

    @property
    def batch(self) -> int:
        return len(self.noise.seeds)


def _sdxl_added(model: LoadedModel, task: ImageTask) -> Callable[[Embeds], dict[str, torch.Tensor]] | None:
    if not model.arch.is_sdxl:
        return None
    device = model.execution_device
    size = [task.height, task.width, 0, 0]  # original size, crop top-left
    refiner = model.arch is ModelArch.SDXL_REFINER

    def added(embeds: Embeds) -> dict[str, torch.Tensor]:
        if refiner:  # the refiner conditions on an aesthetic score instead of the target size
            score = _REFINER_AESTHETIC_SCORE[0 if embeds.pooled is not None else 1]
            ids = size + [score]
        else:
            ids = size + [task.height, task.width]
        assert embeds.pooled is not None
        return {"text_embeds": embeds.pooled, "time_ids": torch.tensor([ids], dtype=torch.float32, device=device)}

    return added


def _init_latent(model: LoadedModel, task: ImageTask, device: torch.device) -> torch.Tensor:
    if task.init_latent is not None:
        return task.init_latent.to(device).expand(task.batch, -1, -1, -1)
    latent = lat.encode_image(model, lat.image_to_tensor(task.init_image, device))
    scale = model.latent_format.scale
    size = (task.height // scale, task.width // scale)
    if latent.shape[-2:] != size:  # "Just resize (latent upscale)": resize the latent, not the pixels
        latent = torch.nn.functional.interpolate(latent, size=size, mode="bilinear", antialias=True)
    return latent.expand(task.batch, -1, -1, -1)


def _masked_start(task: ImageTask, init_latent: torch.Tensor, keep: torch.Tensor,
                  device: torch.device) -> torch.Tensor:
    """What the masked area starts from: A1111's "latent noise" is the seeds' own noise there."""
    if task.masked_content is MaskedContent.LATENT_NOTHING:
        return init_latent * keep
    if task.masked_content is MaskedContent.LATENT_NOISE:
        noise = ImageNoise(tuple(init_latent.shape[1:]), task.noise.seeds, device, task.noise.source).first()
        return init_latent * keep + noise * (1 - keep)
    return init_latent


def prompt_steps(task: ImageTask) -> int:
    """The steps prompt editing is scheduled over: model calls, as A1111 counts them (its
    ``total_steps``: twice the steps for a second-order sampler)."""
    return task.steps * 2 if task.sampler.second_order else task.steps


def flow_job(task: ImageTask) -> FlowJob:
    return FlowJob(width=task.width, height=task.height, steps=task.steps, batch=task.batch,
                   distilled_cfg_scale=task.distilled_cfg_scale, shift=task.shift)


def task_sigmas(model: LoadedModel, task: ImageTask) -> ModelSigmas:
    """The noise levels the task's schedule is drawn from: a flow family's depend on its shift."""
    if not model.arch.is_flow:
        return model.sigmas
    parts = family_for(model.arch).flow
    assert parts is not None
    return parts.sigmas(model, flow_job(task))


def _flow_guided(model: LoadedModel, task: ImageTask, observer: StepObserver,
                 mask: LatentMask | None) -> GuidedDenoiser:
    """A flow family's guided denoiser: its encoders, its network in the flow convention, and for
    Fill models the masked image as extra channels instead of the latent mask."""
    parts = family_for(model.arch).flow
    assert parts is not None
    job = flow_job(task)
    conditioning = build_flow_conditioning(lambda texts: parts.encode(model, texts, task.emphasis), task.prompt,
                                           task.negative_prompt, prompt_steps(task), task.hires_base_steps)
    network = parts.network(model, job)
    concat = None
    if parts.inpaint_concat is not None:
        concat = parts.inpaint_concat(model, task.init_image, task.mask, job)
        mask = None
    return GuidedDenoiser(FlowDenoiser(network), conditioning, task.cfg_scale, network.conditions, concat, mask,
                          observer.should_stop, hooks=task.hooks)


def _guided(model: LoadedModel, task: ImageTask, observer: StepObserver, mask: LatentMask | None,
            refiner: bool = False) -> GuidedDenoiser:
    """The model's guided denoiser for the task: its own conditioning, size ids and inpaint channels."""
    if model.arch.is_flow:
        return _flow_guided(model, task, observer, mask)
    conditioning = build_conditioning(model.pipeline, model.arch, task.prompt, task.negative_prompt, task.clip_skip,
                                      prompt_steps(task), embeddings=task.embeddings,
                                      hires_base_steps=task.hires_base_steps, emphasis=task.emphasis)
    concat = None
    if model.arch is ModelArch.SD1_INPAINT:
        concat = lat.inpaint_conditioning(model, task.init_image, task.mask, task.width, task.height, task.batch)
    inner = SigmaDenoiser(model.pipeline.unet, model.sigmas, model.v_prediction)
    return GuidedDenoiser(inner, conditioning, task.cfg_scale, _sdxl_added(model, task), concat,
                          mask if model.arch is not ModelArch.SD1_INPAINT else None, observer.should_stop,
                          hooks=task.hooks, model_calls=not refiner)


def sample_task(model: LoadedModel, task: ImageTask, observer: StepObserver,
                refiner: RefinerPlan | None = None) -> torch.Tensor | None:
    """The batch's final latents, or None when the observer stopped it before the end."""
    device = model.execution_device
    # 1. Inputs: the init latent (img2img), the latent mask (inpainting).
    init_latent = mask = None
    if task.init_image is not None or task.init_latent is not None:
        init_latent = _init_latent(model, task, device)
    if task.mask is not None and init_latent is not None:
        keep = lat.latent_keep_mask(task.mask, device, model.latent_format.scale)
        init_latent = _masked_start(task, init_latent, keep, device)
        mask = LatentMask(init_latent, keep)  # inpainting models see the mask themselves instead
    # 2. The guided denoiser, and the refiner's, built when the switch comes.
    denoiser: GuidedDenoiser | SwitchingDenoiser = _guided(model, task, observer, mask)
    if refiner is not None and refiner.switch_at < 1.0:
        denoiser = SwitchingDenoiser(denoiser, lambda: _guided(refiner.model, task, observer, mask, refiner=True),
                                     model.sigmas, refiner.switch_at)
    # 3. Sampling.
    channels = model.arch.family.latent_channels
    scale = model.latent_format.scale
    noise = task.noise
    if noise.resize_from is not None and scale != lat.LATENT_SCALE:  # given in 8-pixel cells
        noise = replace(noise, resize_from=tuple(side * lat.LATENT_SCALE // scale for side in noise.resize_from))
    plan = SamplingPlan(sampler=task.sampler, schedule=task.schedule, steps=task.steps, noise=noise,
                        latent_shape=(channels, task.height // scale, task.width // scale),
                        init_latent=init_latent, denoising_strength=task.denoising_strength,
                        is_sdxl=model.arch.is_sdxl, exact_steps=task.exact_steps, params=task.sampler_params,
                        flow=model.arch.is_flow)
    return run_sampling(plan, denoiser, task_sigmas(model, task), device, observer)


def run_task(model: LoadedModel, task: ImageTask, observer: StepObserver,
             refiner: RefinerPlan | None = None) -> list[Image.Image] | None:
    """The batch's images, or None when the observer stopped it before the end."""
    samples = sample_task(model, task, observer, refiner)
    if samples is None:
        return None
    # 4. Decode; inpainting keeps the original outside the mask.
    images = lat.decode_latents(model, samples)
    if task.mask is not None and task.init_image is not None and task.init_image.size == images[0].size:
        images = [lat.overlay_original(image, task.init_image, task.mask) for image in images]
    return images

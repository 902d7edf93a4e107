"""The denoising loop: sigmas from the schedule, seeded noise, the sampler, progress and stop.

Reads as steps: 1. sigmas for the sampler and schedule (cut for img2img by the denoising
strength); 2. the starting latent: per-image seeded noise scaled to the first sigma, added to the
init latent for img2img; 3. the sampler's own noise (per-image generators or Brownian trees);
4. run the sampler with guidance, reporting each step and stopping within one model call.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from modules.engine.sampling.denoiser import GuidedDenoiser, SamplingStopped, SwitchingDenoiser
from modules.engine.sampling.functions import get_sampler_function
from modules.engine.sampling.noise import BrownianTreeNoise, ImageNoise, RngSource
from modules.engine.sampling.schedules import ModelSigmas, compute_sigmas
from modules.sampler_params import SamplerParams, sampler_kwargs, schedule_overrides
from modules.samplers import NoiseSource, SamplerSpec, ScheduleType


class StepObserver(Protocol):
    """What the loop reports to; implemented by the job layer."""

    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None: ...

    def should_stop(self) -> bool: ...


@dataclass(frozen=True)
class NoisePlan:
    """Everything that decides the random numbers of a batch."""

    seeds: tuple[int, ...]
    source: RngSource = RngSource.GPU
    variation_seeds: tuple[int, ...] | None = None
    variation_strength: float = 0.0
    eta_noise_seed_delta: int = 0
    resize_from: tuple[int, int] | None = None  # latent (h, w) the seeds' noise is made at


@dataclass(frozen=True)
class SamplingPlan:
    sampler: SamplerSpec
    schedule: ScheduleType
    steps: int
    noise: NoisePlan
    latent_shape: tuple[int, int, int]  # (C, H/8, W/8)
    init_latent: torch.Tensor | None = None  # img2img: (B, C, h, w)
    denoising_strength: float = 1.0
    is_sdxl: bool = False
    # img2img normally runs denoising_strength x steps; hires fix's second pass runs ``steps``
    # exactly, over the tail of a longer schedule (A1111's setup_img2img_steps with steps given).
    exact_steps: bool = False
    params: SamplerParams = SamplerParams()  # A1111's sampler parameters (eta, churn, schedule range)
    # A flow family: x = (1 - sigma) * x0 + sigma * noise (else x = x0 + sigma * noise); samplers
    # whose noise step depends on it are told so.
    flow: bool = False


def sampler_sigmas(plan: SamplingPlan, model: ModelSigmas) -> torch.Tensor:
    """The sigmas the sampler walks, with A1111's discard and img2img truncation."""
    schedule = plan.sampler.resolve_schedule(plan.schedule)
    overrides = schedule_overrides(plan.sampler, plan.schedule, plan.params)
    steps, t_enc = plan.steps, int(min(plan.denoising_strength, 0.999) * plan.steps)
    if plan.init_latent is not None and plan.exact_steps:
        steps, t_enc = int(plan.steps / min(plan.denoising_strength, 0.999)), plan.steps - 1
    if plan.sampler.discard_penultimate_sigma:
        sigmas = compute_sigmas(schedule, steps + 1, model, plan.is_sdxl, overrides)
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    else:
        sigmas = compute_sigmas(schedule, steps, model, plan.is_sdxl, overrides)
    if plan.init_latent is not None:
        sigmas = sigmas[steps - t_enc - 1:]
    return sigmas


def _sampler_kwargs(fn: Callable[..., Any], plan: SamplingPlan, x: torch.Tensor, levels: list[float],
                    noise: ImageNoise) -> dict[str, Any]:
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = dict(plan.sampler.options)
    kwargs.update({k: v for k, v in sampler_kwargs(plan.sampler, plan.params).items() if k in params})
    if "flow" in params:
        kwargs["flow"] = plan.flow
    if "noise_sampler" in params:
        if plan.sampler.noise is NoiseSource.BROWNIAN:
            # A1111's CPU RNG keeps the trees on the CPU (the same noise on any hardware); otherwise
            # they live on the device, so a step's noise needs no host copy.
            tree_device = torch.device("cpu") if plan.noise.source is RngSource.CPU else None
            positive = [level for level in levels if level > 0]
            kwargs["noise_sampler"] = BrownianTreeNoise(x, min(positive), max(levels), plan.noise.seeds, tree_device)
        else:
            kwargs["noise_sampler"] = noise.sampler()
    return kwargs


@torch.inference_mode()
def run_sampling(plan: SamplingPlan, denoiser: GuidedDenoiser | SwitchingDenoiser, model_sigmas: ModelSigmas,
                 device: torch.device, observer: StepObserver) -> torch.Tensor | None:
    """Final latents of the batch, or None when the observer stopped it."""
    if plan.init_latent is not None and plan.denoising_strength == 0:
        return plan.init_latent.to(device)  # nothing to denoise: the init image, through the VAE only
    # 1. Sigmas, and their Python floats read once for the whole job.
    sigmas = sampler_sigmas(plan, model_sigmas)
    levels = sigmas.tolist()
    sigmas = sigmas.to(device)
    total = len(sigmas) - 1
    # 2. Starting latent.
    noise = ImageNoise(plan.latent_shape, plan.noise.seeds, device, plan.noise.source, plan.noise.variation_seeds,
                       plan.noise.variation_strength, plan.noise.eta_noise_seed_delta, plan.noise.resize_from)
    x = noise.first() * sigmas[0]
    if plan.init_latent is not None:
        init = plan.init_latent.to(device)
        x = x + (init * (1 - sigmas[0]) if plan.flow else init)
    # 3. The sampler's own noise, and 4. the run.
    fn = get_sampler_function(plan.sampler.function)

    denoiser.begin_pass(total)
    denoiser.begin_step(levels[0])

    def callback(info: dict[str, Any]) -> None:
        step = info["i"] + 1
        observer.on_step(min(step, total), total, info["denoised"])
        if step < len(levels):
            denoiser.begin_step(levels[step])

    try:
        samples = fn(denoiser, x, sigmas, extra_args={}, callback=callback, disable=True,
                     **_sampler_kwargs(fn, plan, x, levels, noise))
    except SamplingStopped:
        return None
    if denoiser.mask is not None:
        samples = denoiser.mask.apply(samples)
    return samples

"""The noise steps of the classic samplers on flow-matching models, where x = (1 - sigma) x0 + sigma noise.

Deterministic steps need nothing of their own: with D = x0's prediction, (x - D) / sigma is the
velocity, so Euler, Heun, DPM2, LMS and PLMS integrate the flow ODE as written (Euler is then
diffusers' ``FlowMatchEulerDiscreteScheduler`` step). What assumes x = x0 + sigma noise is every
step that adds noise; here it is replaced by the rectified-flow form (ComfyUI's
``sample_euler_ancestral_RF``): the deterministic part goes to a lower ``sigma_down``, and the
signal is rescaled by alpha_next / alpha_down before the noise makes up sigma_next's marginal.
DPM fast and DPM adaptive run in y = x / alpha, sigma_ve = sigma / alpha, where the flow model is a
variance-exploding one, after one first-order step off sigma 1 (sigma_ve = inf there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from modules.engine.sampling.common import (
    Callback,
    NoiseSampler,
    append_dims,
    batch_ones,
    flow_renoise,
    flow_ve,
    report,
    rf_ancestral_step,
    sigma_levels,
    to_d,
)


def flow_churned(x: torch.Tensor, sigma: torch.Tensor, gamma: float, s_noise: float, noise: NoiseSampler,
                 levels: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Karras et al.'s churn on a flow latent: sigma_ve raised by (1 + gamma), as the UNet form raises
    sigma, then the exact forward jump there. Nothing to raise at sigma 1."""
    level = levels[0]
    if gamma <= 0 or level >= 1:
        return x, sigma
    hat_ve = flow_ve(level) * (1 + gamma)
    level_hat = hat_ve / (1 + hat_ve)
    scale, coeff = flow_renoise(level, level_hat)
    sigma_ve = sigma / (1 - sigma) * (1 + gamma)  # the same level on the device, without a host copy
    return scale * x + noise(*levels) * s_noise * coeff, sigma_ve / (1 + sigma_ve)


def flow_to_level(x: torch.Tensor, denoised: torch.Tensor, level: float, target: float) -> torch.Tensor:
    """One Euler step from ``level`` to ``target`` (also DDIM's and DPM-Solver-1's on a flow model)."""
    ratio = target / level
    return ratio * x + (1 - ratio) * denoised


def euler_ancestral_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict,
                         callback: Callback, eta: float, s_noise: float,
                         noise_sampler: NoiseSampler) -> torch.Tensor:
    """Euler a on a flow model (ComfyUI's ``sample_euler_ancestral_RF``)."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] <= 0:
            x = denoised
            continue
        sigma_down, scale, renoise = rf_ancestral_step(levels[i], levels[i + 1], eta)
        x = flow_to_level(x, denoised, levels[i], sigma_down)
        if eta > 0:
            x = scale * x + noise_sampler(levels[i], levels[i + 1]) * s_noise * renoise
    return x


def dpm_2_ancestral_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict,
                         callback: Callback, eta: float, s_noise: float,
                         noise_sampler: NoiseSampler) -> torch.Tensor:
    """DPM2 a on a flow model: DPM-Solver-2 (log-midpoint derivative) to the rectified-flow sigma_down."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] <= 0:
            x = denoised
            continue
        sigma_down, scale, renoise = rf_ancestral_step(levels[i], levels[i + 1], eta)
        if sigma_down <= 0:
            x = denoised
        else:
            d = to_d(x, sigmas[i], denoised)
            level_mid = (levels[i] * sigma_down) ** 0.5
            x_2 = x + d * (level_mid - levels[i])
            d_2 = to_d(x_2, s_in * level_mid, model(x_2, s_in * level_mid, **extra_args))
            x = x + d_2 * (sigma_down - levels[i])
        if eta > 0:
            x = scale * x + noise_sampler(levels[i], levels[i + 1]) * s_noise * renoise
    return x


def lcm_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, callback: Callback,
             noise_sampler: NoiseSampler) -> torch.Tensor:
    """LCM on a flow model: jump to the prediction, re-noise it as the flow does (as diffusers'
    ``FlowMatchLCMScheduler`` scales noise): x = (1 - sigma_next) D + sigma_next noise."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if levels[i + 1] > 0:
            x = (1 - levels[i + 1]) * x + levels[i + 1] * noise_sampler(levels[i], levels[i + 1])
    return x


# SD's largest sigma as a flow level (14.6 / 15.6): where DPM adaptive, which picks its own steps,
# takes over after the first step, so its error control works over the range it was tuned on.
ADAPTIVE_TOP_LEVEL = 14.6146 / 15.6146


def via_variance_exploding(sampler: Callable[..., torch.Tensor], model: Any, x: torch.Tensor, sigmas: torch.Tensor,
                           extra_args: dict, callback: Callback, top_level: float = 1.0,
                           **options: Any) -> torch.Tensor:
    """Run a variance-exploding ``sampler`` that stops at the smallest positive sigma (DPM fast,
    DPM adaptive) on a flow model, in y = x / alpha with sigma_ve = sigma / alpha.

    From sigma 1 (sigma_ve = inf, where y is unbounded) one Euler step to the next sigma (at most
    ``top_level``) comes first, out of the same evaluation budget. Returns x at the sampler's last
    sigma, as on a UNet.
    """
    levels = sigma_levels(sigmas)
    offset = 0
    if levels[0] >= 1 and len(levels) > 2:
        denoised = model(x, sigmas[0] * batch_ones(x), **extra_args)
        report(callback, x, 0, sigmas[0], sigmas[0], denoised)
        if levels[1] > top_level:  # one more level below the top, where the sampler takes over
            sigmas = torch.cat([sigmas[:1], sigmas.new_tensor([top_level]), sigmas[2:][sigmas[2:] < top_level]])
            levels = sigma_levels(sigmas)
        x, sigmas, levels, offset = flow_to_level(x, denoised, levels[0], levels[1]), sigmas[1:], levels[1:], 1
    if levels[0] >= 1:
        return x  # one sigma, nothing to integrate between sigma_min and sigma_max (as on a UNet)

    def ve_model(y: torch.Tensor, sigma_ve: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        alpha = 1 / (1 + sigma_ve)
        return model(y * append_dims(alpha, y.ndim), sigma_ve * alpha, **kwargs)

    def ve_callback(info: dict[str, Any]) -> None:
        sigma = info["sigma"] / (1 + info["sigma"])
        report(callback, info["x"] * (1 - sigma), info["i"] + offset, sigma, sigma, info["denoised"])

    y = sampler(ve_model, x / (1 - levels[0]), sigmas / (1 - sigmas), extra_args,
                ve_callback if callback is not None else None, **options)
    return y * (1 - min(level for level in levels if level > 0))


def restart_jump(x: torch.Tensor, level_from: float, level_to: float, s_noise: float,
                 noise: torch.Tensor) -> torch.Tensor:
    """Restart's forward jump from ``level_from`` back up to ``level_to`` on a flow latent."""
    scale, coeff = flow_renoise(level_from, level_to)
    return scale * x + noise * s_noise * coeff


def restart_plan_level(level_ve: float) -> float:
    """A1111's restart levels (sigma 0.1 up to 2, in SD's units) as the flow sigma of the same
    signal-to-noise ratio, so a restart climbs as far on a flow model as on a UNet."""
    return level_ve / (1 + level_ve)

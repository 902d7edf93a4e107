"""Helpers shared by the sampler functions (k-diffusion's conventions)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch

Callback = Callable[[dict[str, Any]], None] | None


class NoiseSampler(Protocol):
    """Returns fresh noise shaped like the latents for the step from ``sigma`` to ``sigma_next``."""

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor: ...


def default_noise_sampler(x: torch.Tensor) -> NoiseSampler:
    """Plain ``randn_like``; the loop always passes its seeded per-image source instead."""
    return lambda sigma, sigma_next: torch.randn_like(x)


def batch_ones(x: torch.Tensor) -> torch.Tensor:
    """Ones, one per image: multiplies a scalar sigma into the per-image form models take."""
    return x.new_ones([x.shape[0]])


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    return x[(...,) + (None,) * (target_dims - x.ndim)]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE's derivative dx/dsigma in the Karras et al. parametrisation."""
    return (x - denoised) / append_dims(sigma, x.ndim)


def sigma_levels(sigmas: torch.Tensor) -> list[float]:
    """The sigmas as Python floats, read once per job: a sampler branches on these, never on a device
    tensor (each ``tensor > 0`` in control flow would make the host wait for the device every step)."""
    return [float(level) for level in sigmas.detach().tolist()]


def ancestral_down_level(sigma_from: float, sigma_to: float, eta: float = 1.0) -> float:
    """``sigma_down`` of :func:`get_ancestral_step` in Python floats, for branching on."""
    if not eta or sigma_from <= 0:
        return sigma_to
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return max(sigma_to**2 - sigma_up**2, 0.0) ** 0.5


def get_ancestral_step(sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                       eta: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a step into a deterministic part down to ``sigma_down`` and fresh noise ``sigma_up``."""
    if not eta:
        return sigma_to, torch.zeros_like(sigma_to)
    sigma_up = torch.minimum(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def sigma_fn(t: torch.Tensor) -> torch.Tensor:
    """sigma from half-log-SNR time t = -log(sigma)."""
    return t.neg().exp()


def t_fn(sigma: torch.Tensor) -> torch.Tensor:
    return sigma.log().neg()


def report(callback: Callback, x: torch.Tensor, i: int, sigma: torch.Tensor, sigma_hat: torch.Tensor,
           denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


# --- Flow matching: x = (1 - sigma) * x0 + sigma * noise, with sigma in [0, 1] ---------------------
# The coefficients are Python floats from the job's sigma levels (no device read per step). In the
# variance-exploding coordinates y = x / alpha, sigma_ve = sigma / alpha (alpha = 1 - sigma), a flow
# latent is y = x0 + sigma_ve * noise; sigma = 1 (pure noise) is sigma_ve = inf, alpha = 0 and
# lambda = log(alpha / sigma) = -inf, which each helper handles as its limit.


def flow_lambda(level: float) -> float:
    """The half log-SNR log(alpha / sigma): -inf at sigma 1, +inf at 0."""
    if level >= 1:
        return -math.inf
    if level <= 0:
        return math.inf
    return math.log1p(-level) - math.log(level)


def flow_sigma_at(lam: float) -> float:
    """The sigma whose half log-SNR is ``lam`` (inverse of :func:`flow_lambda`)."""
    return 1 / (1 + math.exp(lam)) if lam < 700 else 0.0


def flow_decay(level: float, level_next: float) -> float:
    """e^-h for a step (h = lambda_next - lambda): sigma_next alpha / (sigma alpha_next); 0 from
    sigma 1 or down to 0, where h is infinite."""
    if level >= 1 or level_next <= 0:
        return 0.0
    return level_next * (1 - level) / (level * (1 - level_next))


def flow_ve(level: float) -> float:
    """sigma_ve = sigma / (1 - sigma): the variance-exploding sigma of the same signal-to-noise ratio."""
    return math.inf if level >= 1 else level / (1 - level)


def flow_renoise(level_from: float, level_to: float) -> tuple[float, float]:
    """Forward diffusion from a lower ``level_from`` up to ``level_to`` in one exact jump:
    ``x_to = scale * x_from + coeff * noise`` (the signal shrinks by alpha_to / alpha_from, the noise
    makes up the variance)."""
    scale = (1 - level_to) / (1 - level_from)
    return scale, max(level_to**2 - (scale * level_from) ** 2, 0.0) ** 0.5


def rf_ancestral_step(level: float, level_next: float, eta: float = 1.0) -> tuple[float, float, float]:
    """The rectified-flow ancestral step (ComfyUI's ``sample_euler_ancestral_RF``): ``(sigma_down,
    scale, renoise)``. The deterministic part goes to sigma_down = sigma_next * (1 + (sigma_next /
    sigma - 1) * eta); then x = scale * x + renoise * noise lands on sigma_next's marginal, with
    scale = alpha_next / alpha_down and renoise^2 = sigma_next^2 - (scale * sigma_down)^2."""
    if level_next <= 0 or eta <= 0:
        return level_next, 1.0, 0.0
    sigma_down = max(level_next * (1 + (level_next / level - 1) * eta), 0.0)
    scale = (1 - level_next) / (1 - sigma_down)
    return sigma_down, scale, max(level_next**2 - (scale * sigma_down) ** 2, 0.0) ** 0.5


def flow_ancestral_split(level: float, level_to: float, eta: float) -> tuple[float, float, float]:
    """A variance-exploding ancestral step (:func:`get_ancestral_step`) taken in y = x / alpha,
    written back in x: ``x_to = a * x + b * denoised + c * noise`` as the floats (a, b, c). This is
    k-diffusion's DPM++ SDE noise step on a flow model (ComfyUI's alpha/lambda generalisation)."""
    ve, ve_to = flow_ve(level), flow_ve(level_to)
    alpha_to = 1 - level_to
    if not eta:
        down, up = ve_to, 0.0
    else:
        ratio = 1.0 if math.isinf(ve) else (ve**2 - ve_to**2) / ve**2
        up = min(ve_to, eta * (ve_to**2 * ratio) ** 0.5)
        down = max(ve_to**2 - up**2, 0.0) ** 0.5
    kept = 0.0 if math.isinf(ve) else down / ve
    return alpha_to * down / level, alpha_to * (1 - kept), alpha_to * up

"""Helpers shared by the sampler functions (k-diffusion's conventions)."""

from __future__ import annotations

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

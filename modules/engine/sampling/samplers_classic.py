"""Euler, Heun, DPM2 (and their ancestral forms), LMS, DDIM, PLMS and LCM, in sigma space.

Each follows Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models", with the update rules A1111 users get from k-diffusion. DDIM and PLMS are written in the
same variance-exploding coordinates (x = x0 + sigma * eps), where DDIM is exactly an Euler step
and PLMS an Adams-Bashforth combination of the last noise predictions. With ``flow=True`` (a
flow-matching model) the steps that add noise take their rectified-flow form
(:mod:`~modules.engine.sampling.samplers_flow`); the deterministic steps are the same.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy import integrate

from modules.engine.sampling.common import (
    Callback,
    NoiseSampler,
    ancestral_down_level,
    batch_ones,
    default_noise_sampler,
    get_ancestral_step,
    report,
    sigma_levels,
    to_d,
)
from modules.engine.sampling.samplers_flow import (
    dpm_2_ancestral_flow,
    euler_ancestral_flow,
    flow_churned,
    lcm_flow,
)


def churn_gamma(levels: list[float], i: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al.'s churn for step ``i``: min(s_churn / steps, sqrt(2) - 1) where the step's sigma
    lies in [s_tmin, s_tmax], else 0 (k-diffusion's rule, which A1111's Euler, Heun and DPM2 follow)."""
    if not s_churn or not s_tmin <= levels[i] <= s_tmax:
        return 0.0
    return min(s_churn / (len(levels) - 1), 2**0.5 - 1)


def churned(x: torch.Tensor, sigma: torch.Tensor, gamma: float, s_noise: float,
            noise: NoiseSampler, levels: tuple[float, float], flow: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x raised from ``sigma`` to sigma_hat = sigma * (1 + gamma) with fresh noise times ``s_noise``
    (on a flow model, to the same raised signal-to-noise level, rescaling the signal)."""
    if gamma <= 0:
        return x, sigma
    if flow:
        return flow_churned(x, sigma, gamma, s_noise, noise, levels)
    sigma_hat = sigma * (gamma + 1)
    return x + noise(*levels) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5, sigma_hat


@torch.no_grad()
def sample_euler(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 noise_sampler: NoiseSampler | None = None, flow: bool = False) -> torch.Tensor:
    """First-order Euler steps along the probability-flow ODE (with churn, Karras et al. algorithm 2)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        gamma = churn_gamma(levels, i, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churned(x, sigmas[i], gamma, s_noise, noise_sampler, (levels[i], levels[i + 1]), flow)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback: Callback = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                           flow: bool = False) -> torch.Tensor:
    """Euler to sigma_down, then fresh noise up to the next sigma."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    if flow:
        return euler_ancestral_flow(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if levels[i + 1] > 0:
            x = x + noise_sampler(levels[i], levels[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback = None, disable: bool | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                noise_sampler: NoiseSampler | None = None, flow: bool = False) -> torch.Tensor:
    """Heun's second-order method (Karras et al., algorithm 2 with churn); Euler for the last step to 0."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        gamma = churn_gamma(levels, i, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churned(x, sigmas[i], gamma, s_noise, noise_sampler, (levels[i], levels[i + 1]), flow)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if levels[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))
        x = x + (d + d_2) / 2 * dt
    return x


def _log_midpoint(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.log().lerp(b.log(), 0.5).exp()


@torch.no_grad()
def sample_dpm_2(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback = None, disable: bool | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
                 noise_sampler: NoiseSampler | None = None, flow: bool = False) -> torch.Tensor:
    """DPM-Solver-2 as in k-diffusion: the derivative is taken at the log-midpoint sigma (with churn)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        gamma = churn_gamma(levels, i, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churned(x, sigmas[i], gamma, s_noise, noise_sampler, (levels[i], levels[i + 1]), flow)
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if levels[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
            continue
        sigma_mid = _log_midpoint(sigma_hat, sigmas[i + 1])
        x_2 = x + d * (sigma_mid - sigma_hat)
        d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
        x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                           callback: Callback = None, disable: bool | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                           flow: bool = False) -> torch.Tensor:
    """DPM-Solver-2 to sigma_down, then fresh noise."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    if flow:
        return dpm_2_ancestral_flow(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        d = to_d(x, sigmas[i], denoised)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if ancestral_down_level(levels[i], levels[i + 1], eta) == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = _log_midpoint(sigmas[i], sigma_down)
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in, **extra_args))
            x = x + d_2 * (sigma_down - sigmas[i])
        if levels[i + 1] > 0:
            x = x + noise_sampler(levels[i], levels[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t: list[float], i: int, j: int) -> float:
    """Weight of the j-th previous derivative: the Lagrange basis polynomial integrated over the step."""
    if order - 1 > i:
        raise ValueError(f"order {order} is too high for step {i}")

    def basis(tau: float) -> float:
        product = 1.0
        for k in range(order):
            if j != k:
                product *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return product

    return float(integrate.quad(basis, t[i], t[i + 1], epsrel=1e-4)[0])


@torch.no_grad()
def sample_lms(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callback = None, disable: bool | None = None, order: int = 4) -> torch.Tensor:
    """Linear multistep (Adams-Bashforth in sigma) over the last ``order`` derivatives."""
    extra_args = extra_args or {}
    s_in = batch_ones(x)
    sigmas_cpu = sigma_levels(sigmas)
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_lcm(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callback = None, disable: bool | None = None,
               noise_sampler: NoiseSampler | None = None, flow: bool = False) -> torch.Tensor:
    """Latent consistency sampling: jump to the prediction, then re-noise to the next sigma."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    if flow:
        return lcm_flow(model, x, sigmas, extra_args, callback, noise_sampler)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if levels[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(levels[i], levels[i + 1])
    return x


@torch.no_grad()
def sample_ddim(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback = None, disable: bool | None = None, eta: float = 0.0,
                noise_sampler: NoiseSampler | None = None, flow: bool = False) -> torch.Tensor:
    """DDIM (Song et al. 2020). With eta 0 it is exactly Euler in these coordinates (on a flow model
    too); eta > 0 adds DDIM's stochastic part, which is the ancestral split of the step."""
    if not eta:
        return sample_euler(model, x, sigmas, extra_args, callback, disable)
    return sample_euler_ancestral(model, x, sigmas, extra_args, callback, disable, eta=eta,
                                  noise_sampler=noise_sampler, flow=flow)


_PLMS_WEIGHTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


@torch.no_grad()
def sample_plms(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                callback: Callback = None, disable: bool | None = None) -> torch.Tensor:
    """Pseudo linear multistep (Liu et al. 2022): Adams-Bashforth on the noise prediction, with a
    Heun-style first step, each applied as a DDIM (Euler) step."""
    extra_args = extra_args or {}
    s_in = batch_ones(x)
    old_eps: list[torch.Tensor] = []
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        eps = to_d(x, sigmas[i], denoised)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if not old_eps and levels[i + 1] > 0:
            x_2 = x + eps * dt
            eps_prime = (eps + to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in, **extra_args))) / 2
        else:
            history = [eps, *reversed(old_eps[-3:])]
            eps_prime = sum(w * e for w, e in zip(_PLMS_WEIGHTS[len(history) - 1], history))
        x = x + eps_prime * dt
        old_eps.append(eps)
    return x

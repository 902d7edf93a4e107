"""The DPM-Solver++ family (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling").

Written in half-log-SNR time t = -log(sigma) on the data prediction, as A1111's samplers use it:
2M (multistep, second order), 2S a (single-step with ancestral noise), SDE (single-step
stochastic, r = 1/2), 2M SDE (midpoint or Heun correction) and 3M SDE (third-order multistep).
With ``flow=True`` each runs its flow-matching form in lambda = log(alpha / sigma)
(:mod:`~modules.engine.sampling.samplers_flow_dpmpp`); without it, the arithmetic is unchanged.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from modules.engine.sampling.common import (
    Callback,
    NoiseSampler,
    ancestral_down_level,
    batch_ones,
    default_noise_sampler,
    get_ancestral_step,
    report,
    sigma_fn,
    sigma_levels,
    t_fn,
    to_d,
)
from modules.engine.sampling.noise import BrownianTreeNoise
from modules.engine.sampling.samplers_flow_dpmpp import (
    dpmpp_2m_flow,
    dpmpp_2m_sde_flow,
    dpmpp_2s_ancestral_flow,
    dpmpp_3m_sde_flow,
    dpmpp_sde_flow,
)


def _brownian_default(x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict) -> NoiseSampler:
    positive = sigmas[sigmas > 0]
    seed = extra_args.pop("seed", None)
    seeds = [int(seed) + i for i in range(x.shape[0])] if seed is not None else torch.randint(0, 2**31, (x.shape[0],)).tolist()
    return BrownianTreeNoise(x, float(positive.min()), float(sigmas.max()), seeds)


@torch.no_grad()
def sample_dpmpp_2m(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback: Callback = None, disable: bool | None = None, flow: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M): reuses the previous step's prediction for second order at one call a step."""
    extra_args = extra_args or {}
    if flow:
        return dpmpp_2m_flow(model, x, sigmas, extra_args, callback)
    s_in = batch_ones(x)
    old_denoised = None
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or levels[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - t_fn(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                              callback: Callback = None, disable: bool | None = None, eta: float = 1.0,
                              s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                              flow: bool = False) -> torch.Tensor:
    """DPM-Solver++(2S) to sigma_down with a midpoint evaluation, then fresh noise."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    if flow:
        return dpmpp_2s_ancestral_flow(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if ancestral_down_level(levels[i], levels[i + 1], eta) == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = t_fn(sigmas[i]), t_fn(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (sigma_fn(s) / sigma_fn(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = model(x_2, sigma_fn(s) * s_in, **extra_args)
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if levels[i + 1] > 0:
            x = x + noise_sampler(levels[i], levels[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                     callback: Callback = None, disable: bool | None = None, eta: float = 1.0,
                     s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None, r: float = 0.5,
                     flow: bool = False) -> torch.Tensor:
    """DPM-Solver++ (stochastic, single-step): two evaluations a step, Brownian-tree noise."""
    extra_args = dict(extra_args or {})
    noise_sampler = noise_sampler or _brownian_default(x, sigmas, extra_args)
    if flow:
        return dpmpp_sde_flow(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, r)
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        # Step 1: to the intermediate time s.
        sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(s), eta)
        s_ = t_fn(sd)
        x_2 = (sigma_fn(s_) / sigma_fn(t)) * x - (t - s_).expm1() * denoised
        # The noise's interval in Python floats, so the Brownian tree is queried without a device read.
        level_s = math.exp(math.log(levels[i]) + r * (math.log(levels[i + 1]) - math.log(levels[i])))
        x_2 = x_2 + noise_sampler(levels[i], level_s) * s_noise * su
        denoised_2 = model(x_2, sigma_fn(s) * s_in, **extra_args)
        # Step 2: the full step with the combined prediction.
        sd, su = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
        t_next_ = t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (sigma_fn(t_next_) / sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise_sampler(levels[i], levels[i + 1]) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callback = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        solver_type: str = "midpoint", flow: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M) SDE: exponential-integrator step with noise, second-order correction."""
    if solver_type not in ("heun", "midpoint"):
        raise ValueError("solver_type must be 'heun' or 'midpoint'")
    extra_args = dict(extra_args or {})
    noise_sampler = noise_sampler or _brownian_default(x, sigmas, extra_args)
    if flow:
        return dpmpp_2m_sde_flow(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler, solver_type)
    s_in = batch_ones(x)
    old_denoised, h_last = None, None
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise_sampler(levels[i], levels[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callback = None, disable: bool | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        flow: bool = False) -> torch.Tensor:
    """DPM-Solver++(3M) SDE: third-order multistep with noise."""
    extra_args = dict(extra_args or {})
    noise_sampler = noise_sampler or _brownian_default(x, sigmas, extra_args)
    if flow:
        return dpmpp_3m_sde_flow(model, x, sigmas, extra_args, callback, eta, s_noise, noise_sampler)
    s_in = batch_ones(x)
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    levels = sigma_levels(sigmas)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if levels[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise_sampler(levels[i], levels[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
    return x

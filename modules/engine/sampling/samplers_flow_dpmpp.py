"""The DPM-Solver++ family on flow-matching models: x = alpha x0 + sigma noise with alpha = 1 - sigma.

Each update is the UNet one written in lambda = log(alpha / sigma) (Lu et al.'s general form, as
diffusers' ``DPMSolverMultistepScheduler`` with ``use_flow_sigmas`` and ComfyUI's samplers on a
``CONST`` model do it): a first-order step is x_next = (sigma_next / sigma) e^(-eta h) x +
alpha_next (1 - e^(-(1 + eta) h)) D, the higher-order corrections are scaled by alpha_next, and the
SDE noise is sigma_next sqrt(1 - e^(-2 eta h)). With alpha = 1 these are the UNet formulas exactly.
Sigma 1 (pure noise) has alpha 0 and lambda = -inf: the step from it is first order, as diffusers'
is, and the next step's ratio h / h_last is 0, so no history from sigma 1 is used.
The coefficients are Python floats from the job's sigma levels.
"""

from __future__ import annotations

from typing import Any

import torch

from modules.engine.sampling.common import (
    Callback,
    NoiseSampler,
    batch_ones,
    flow_ancestral_split,
    flow_decay,
    flow_lambda,
    flow_sigma_at,
    report,
    rf_ancestral_step,
    sigma_levels,
)
from modules.engine.sampling.samplers_flow import flow_to_level


def _phi_2(q_eta: float, h_eta: float) -> float:
    """phi_2(h) * h-ish weight of the first difference: 1 - (1 - e^-h_eta) / h_eta (0 as h -> 0, 1 as h -> inf)."""
    return 1 - (1 - q_eta) / h_eta if h_eta else 0.0


def dpmpp_2m_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict,
                  callback: Callback) -> torch.Tensor:
    """DPM-Solver++(2M), step for step diffusers' ``multistep_dpm_solver_second_order_update``
    (midpoint) with a first-order first step and a first-order final step to 0."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    old_denoised, h_last = None, 0.0
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        level, nxt = levels[i], levels[i + 1]
        h = flow_lambda(nxt) - flow_lambda(level)
        target = denoised
        if old_denoised is not None and nxt > 0 and h_last:
            target = denoised + (0.5 * h / h_last) * (denoised - old_denoised)  # D0 + D1 / 2, D1 = (m0 - m1) / r0
        x = (nxt / level) * x + ((1 - nxt) * (1 - flow_decay(level, nxt))) * target
        old_denoised, h_last = denoised, h
    return x


def dpmpp_2s_ancestral_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict,
                            callback: Callback, eta: float, s_noise: float,
                            noise_sampler: NoiseSampler) -> torch.Tensor:
    """DPM-Solver++(2S) to the rectified-flow sigma_down (ComfyUI's ``sample_dpmpp_2s_ancestral_RF``),
    the midpoint taken in lambda; from sigma 1, where lambda has no midpoint, a first-order step."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        level, nxt = levels[i], levels[i + 1]
        if nxt <= 0:
            x = denoised
            continue
        sigma_down, scale, renoise = rf_ancestral_step(level, nxt, eta)
        if sigma_down <= 0:
            x = denoised
        elif level >= 1:
            x = flow_to_level(x, denoised, level, sigma_down)
        else:
            lam = flow_lambda(level)
            level_mid = flow_sigma_at(lam + (flow_lambda(sigma_down) - lam) / 2)
            denoised_2 = model(flow_to_level(x, denoised, level, level_mid), s_in * level_mid, **extra_args)
            x = flow_to_level(x, denoised_2, level, sigma_down)
        if eta > 0:
            x = scale * x + noise_sampler(level, nxt) * s_noise * renoise
    return x


def _split_step(x: torch.Tensor, denoised: torch.Tensor, level: float, level_to: float, eta: float,
                s_noise: float, noise_sampler: NoiseSampler) -> torch.Tensor:
    a, b, c = flow_ancestral_split(level, level_to, eta)
    x = a * x + b * denoised
    return x + noise_sampler(level, level_to) * (s_noise * c) if c > 0 else x


def dpmpp_sde_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, callback: Callback,
                   eta: float, s_noise: float, noise_sampler: NoiseSampler, r: float) -> torch.Tensor:
    """DPM-Solver++ (stochastic): the midpoint at lambda + r h, each part an ancestral step taken in
    y = x / alpha (ComfyUI's alpha/lambda form); from sigma 1 one first-order step."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        level, nxt = levels[i], levels[i + 1]
        if nxt <= 0:
            x = denoised
            continue
        if level >= 1:
            x = _split_step(x, denoised, level, nxt, eta, s_noise, noise_sampler)
            continue
        lam = flow_lambda(level)
        level_mid = flow_sigma_at(lam + r * (flow_lambda(nxt) - lam))
        x_2 = _split_step(x, denoised, level, level_mid, eta, s_noise, noise_sampler)
        denoised_2 = model(x_2, s_in * level_mid, **extra_args)
        fac = 1 / (2 * r)
        x = _split_step(x, (1 - fac) * denoised + fac * denoised_2, level, nxt, eta, s_noise, noise_sampler)
    return x


def _first_order_sde(x: torch.Tensor, denoised: torch.Tensor, level: float, nxt: float,
                     eta: float) -> tuple[torch.Tensor, float, float]:
    """The exponential-integrator part of an SDE step, with (e^-h, h)."""
    q = flow_decay(level, nxt)
    x = ((nxt / level) * q**eta) * x + ((1 - nxt) * (1 - q ** (1 + eta))) * denoised
    return x, q, flow_lambda(nxt) - flow_lambda(level)


def dpmpp_2m_sde_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, callback: Callback,
                      eta: float, s_noise: float, noise_sampler: NoiseSampler, solver_type: str) -> torch.Tensor:
    """DPM-Solver++(2M) SDE with the midpoint or Heun correction."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    old_denoised, h_last = None, 0.0
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        level, nxt = levels[i], levels[i + 1]
        if nxt <= 0:
            x, old_denoised = denoised, denoised
            continue
        x, q, h = _first_order_sde(x, denoised, level, nxt, eta)
        if old_denoised is not None and h_last and h:
            q_eta, over_r = q ** (1 + eta), h / h_last
            weight = _phi_2(q_eta, h * (1 + eta)) if solver_type == "heun" else 0.5 * (1 - q_eta)
            x = x + ((1 - nxt) * weight * over_r) * (denoised - old_denoised)
        if eta:
            x = x + noise_sampler(level, nxt) * (nxt * (1 - q ** (2 * eta)) ** 0.5 * s_noise)
        old_denoised, h_last = denoised, h
    return x


def dpmpp_3m_sde_flow(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict, callback: Callback,
                      eta: float, s_noise: float, noise_sampler: NoiseSampler) -> torch.Tensor:
    """DPM-Solver++(3M) SDE; differences across an infinite step (from sigma 1) weigh 0."""
    s_in = batch_ones(x)
    levels = sigma_levels(sigmas)
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(levels) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        report(callback, x, i, sigmas[i], sigmas[i], denoised)
        level, nxt = levels[i], levels[i + 1]
        if nxt <= 0:
            x = denoised
        else:
            x, q, h = _first_order_sde(x, denoised, level, nxt, eta)
            h_eta, alpha = h * (eta + 1), 1 - nxt
            phi_2 = _phi_2(q ** (1 + eta), h_eta)
            if h_2 is not None and h_1 and h_2 and h:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) * (h / h_1)
                d1_1 = (denoised_1 - denoised_2) * (h / h_2)
                d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
                d2 = (d1_0 - d1_1) * (1 / (r0 + r1))
                x = x + (alpha * phi_2) * d1 - (alpha * (phi_2 / h_eta - 0.5)) * d2
            elif h_1 and h:
                x = x + (alpha * phi_2 * h / h_1) * (denoised - denoised_1)
            if eta:
                x = x + noise_sampler(level, nxt) * (nxt * (1 - q ** (2 * eta)) ** 0.5 * s_noise)
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
    return x

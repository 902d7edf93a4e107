"""Restart (Xu et al. 2023, "Restart Sampling for Improving Generative Processes") and UniPC
(Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models"), in k-diffusion's calling convention.

Restart follows A1111's sampler: Heun steps, with segments that jump back up to a higher noise
level with fresh noise and descend again. UniPC is written on the data prediction in
lambda = -log(sigma), in variance-exploding coordinates (alpha = 1), where it equals the
variance-preserving form step for step; on a flow model (``flow=True``) in lambda = log(alpha /
sigma) with alpha = 1 - sigma, as diffusers' ``UniPCMultistepScheduler`` with flow sigmas.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from itertools import pairwise
from typing import Any, NamedTuple

import torch

from modules.engine.sampling.common import (
    Callback,
    NoiseSampler,
    batch_ones,
    default_noise_sampler,
    flow_lambda,
    report,
    sigma_levels,
    to_d,
)
from modules.engine.sampling.samplers_flow import restart_jump, restart_plan_level
from modules.engine.sampling.schedules import karras

RestartList = Mapping[float, Sequence[float]]


def default_restart_plan(sigmas: torch.Tensor,
                         flow: bool = False) -> tuple[torch.Tensor, dict[float, tuple[int, int, float]]]:
    """A1111's automatic restart plan, which keeps the total number of Heun steps at ``steps``.

    Under 20 steps there is no restart. From 20 steps, one restart of 9 steps (from 36 steps, two
    of steps // 4) from sigma 0.1 up to sigma 2; the main descent is redrawn as a Karras schedule
    with the steps left over, between the given schedule's first and last positive sigma. On a flow
    model the restart levels are those of the same signal-to-noise ratio (sigma / (1 + sigma)).
    """
    steps = len(sigmas) - 1
    if steps < 20:
        return sigmas, {}
    restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
    descent = karras(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0])).to(sigmas)
    if flow:
        return descent, {restart_plan_level(0.1): (restart_steps + 1, restart_times, restart_plan_level(2.0))}
    return descent, {0.1: (restart_steps + 1, restart_times, 2.0)}


def _nearest_index(sigmas: torch.Tensor, value: float) -> int:
    return int(torch.argmin((sigmas - value).abs()))


def restart_pairs(sigmas: torch.Tensor, restart_list: RestartList) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every (from, to) step of the walk: the schedule, with each restart segment inserted after
    the step that reaches its sigma (``restart_list``: sigma -> (steps, times, max sigma))."""
    restart_at = {_nearest_index(sigmas, key): value for key, value in restart_list.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in restart_at:
            continue
        restart_steps, restart_times, restart_max = restart_at[i + 1]
        top = _nearest_index(sigmas, restart_max)
        if top < i + 1:
            # restart_steps sigmas from the restart maximum down to where the restart began.
            ladder = karras(int(restart_steps), float(sigmas[i + 1]), float(sigmas[top]))[:-1].to(sigmas)
            pairs.extend(list(pairwise(ladder)) * int(restart_times))
    return pairs


@torch.no_grad()
def sample_restart(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                   callback: Callback = None, disable: bool | None = None, s_noise: float = 1.0,
                   restart_list: RestartList | None = None,
                   noise_sampler: NoiseSampler | None = None, flow: bool = False) -> torch.Tensor:
    """Heun steps along the schedule; a restart first re-noises x up to the segment's top sigma
    (on a flow model by the exact forward jump, which also shrinks the signal)."""
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s_in = batch_ones(x)
    if restart_list is None:
        sigmas, restart_list = default_restart_plan(sigmas, flow)
    last_sigma = last_level = None
    pairs = restart_pairs(sigmas, restart_list)
    # Every pair's sigmas as Python floats, read once: branching on them never waits for the device.
    levels = torch.stack([torch.stack(pair) for pair in pairs]).tolist() if pairs else []
    for i, ((sigma, sigma_next), (level, next_level)) in enumerate(zip(pairs, levels)):
        if last_level is not None and last_level < level:
            # Forward diffusion from last_sigma to sigma in one exact jump.
            if flow:
                x = restart_jump(x, last_level, level, s_noise, noise_sampler(last_sigma, sigma))
            else:
                x = x + noise_sampler(last_sigma, sigma) * s_noise * (sigma**2 - last_sigma**2) ** 0.5
        denoised = model(x, sigma * s_in, **extra_args)
        d = to_d(x, sigma, denoised)
        report(callback, x, i, sigma, sigma, denoised)
        dt = sigma_next - sigma
        if next_level == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, sigma_next * s_in, **extra_args))
            x = x + (d + d_2) / 2 * dt
        last_sigma, last_level = sigma_next, next_level
    return x


class _Point(NamedTuple):
    """One history entry: log-SNR, sigma and the data prediction there."""

    lam: float
    sigma: float
    denoised: torch.Tensor


def unipc_orders(updates: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each update: warming up from 1 as history grows, winding down at the end if asked."""
    return [min(order, k, updates + 1 - k) if lower_order_final else min(order, k)
            for k in range(1, updates + 1)]


def _unipc_system(rks: list[float], hh: float, b_h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """UniPC's linear system R rho = b, for k from 0: R[k] = r^k, b[k] = (k+1)! * hh * phi_(k+2)(hh) / B(h)."""
    rows, rhs = [], []
    h_phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    for i in range(1, len(rks) + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        rhs.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(rhs, dtype=torch.float64)


def _weighted(weights: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor | float:
    return sum((w * d for w, d in zip(weights, tensors)), 0.0)


def _predictor_weights(order: int, R: torch.Tensor, b: torch.Tensor) -> list[float]:
    """UniP's weights of the order - 1 differences (order 2: the paper's simplification 1/2)."""
    if order == 1:
        return []
    if order == 2:
        return [0.5]
    return torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()


def _unipc_update(x: torch.Tensor, history: list[_Point], target: _Point, order: int, variant: str,
                  evaluate: Callable[[torch.Tensor, float], torch.Tensor] | None,
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One UniP step of ``order`` to ``target`` (its lam and sigma; its ``denoised`` is alpha there,
    1 on a UNet); with ``evaluate``, the model there and UniC.

    Returns the new x and the model's prediction at the predicted point (None without corrector).
    """
    lam0, sigma0, m0 = history[-1]
    sigma_next, alpha_next = target.sigma, target.denoised
    h = target.lam - lam0
    hh = -h  # data prediction: the integrator runs in -lambda
    # B(h) = h is unbounded from a flow model's sigma 1 (lambda = -inf): B(h) = e^h - 1 there.
    b_h = hh if variant == "bh1" and math.isfinite(hh) else math.expm1(hh)
    previous = history[-order:-1][::-1]  # newest first, as many as the order uses
    rks = [(p.lam - lam0) / h for p in previous]
    d1s = [(p.denoised - m0) / rk for p, rk in zip(previous, rks)]
    R, b = _unipc_system([*rks, 1.0], hh, b_h)
    x_base = (sigma_next / sigma0) * x - alpha_next * math.expm1(hh) * m0
    b_h = alpha_next * b_h  # diffusers' multistep_uni_p/c_bh_update: alpha_t * B_h
    x_next = x_base - b_h * _weighted(_predictor_weights(order, R, b), d1s)
    if evaluate is None:
        return x_next, None
    m_next = evaluate(x_next, sigma_next)
    rhos_c = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    correction = _weighted(rhos_c[:-1], d1s) + rhos_c[-1] * (m_next - m0)
    return x_base - b_h * correction, m_next


@torch.no_grad()
def sample_unipc(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback = None, disable: bool | None = None, order: int = 3, variant: str = "bh1",
                 lower_order_final: bool = True, flow: bool = False) -> torch.Tensor:
    """UniPC multistep: a predictor of ``order``, then the corrector with the model evaluated at the
    predicted point, reused as the next step's history: one model call per step. No corrector on
    the last update; a final step to sigma 0 returns the data prediction there. On a flow model
    lambda = log(alpha / sigma) with alpha = 1 - sigma, and a point at sigma 1 (lambda = -inf) never
    enters a higher-order difference: the steps after it warm up from first order again."""
    if variant not in ("bh1", "bh2"):
        raise ValueError("variant must be 'bh1' or 'bh2'")
    extra_args = extra_args or {}
    s_in = batch_ones(x)

    def evaluate(x_: torch.Tensor, sigma: float) -> torch.Tensor:
        return model(x_, s_in * sigma, **extra_args)

    levels = sigma_levels(sigmas)
    to_zero = levels[-1] == 0
    positive = levels[:-1] if to_zero else levels
    updates = len(positive) - 1

    def lam(level: float) -> float:
        return flow_lambda(level) if flow else -math.log(level)

    history = [_Point(lam(positive[0]), positive[0], evaluate(x, positive[0]))]
    for i, step_order in enumerate(unipc_orders(updates, order, lower_order_final)):
        report(callback, x, i, sigmas[i], sigmas[i], history[-1].denoised)
        last = i == updates - 1
        if flow:
            step_order = max(1, min(step_order, sum(math.isfinite(p.lam) for p in history)))
        target = _Point(lam(positive[i + 1]), positive[i + 1], 1 - positive[i + 1] if flow else 1.0)
        x, m_next = _unipc_update(x, history, target, step_order, variant, None if last else evaluate)
        if m_next is not None:
            history = [*history, target._replace(denoised=m_next)][-order:]
    if to_zero:
        denoised = history[-1].denoised if updates == 0 else evaluate(x, positive[-1])
        report(callback, x, updates, sigmas[updates], sigmas[updates], denoised)
        x = denoised
    return x

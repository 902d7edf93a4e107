"""DPM fast and DPM adaptive: DPM-Solver (Lu et al. 2022, "DPM-Solver: A Fast ODE Solver for
Diffusion Probabilistic Model Sampling in Around 10 Steps") on the noise prediction.

Both work in half-log-SNR time t = -log(sigma) with the single-step DPM-Solver-1/2/3 updates in the
paper's exponential-integrator form (alpha = 1 in these coordinates). Unlike k-diffusion they take
the ``sigmas`` every sampler takes, and read from it only ``sigma_min`` (smallest positive sigma),
``sigma_max`` and, for DPM fast, the evaluation budget ``len(sigmas) - 1``. Both stop at
``sigma_min`` (not 0) and return that x, as k-diffusion does. On a flow model (``flow=True``) they
run in the variance-exploding coordinates of the same model (:func:`via_variance_exploding`).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from modules.engine.sampling.common import (
    Callback,
    NoiseSampler,
    batch_ones,
    default_noise_sampler,
    get_ancestral_step,
    report,
    sigma_fn,
    t_fn,
)
from modules.engine.sampling.samplers_flow import ADAPTIVE_TOP_LEVEL, via_variance_exploding

logger = logging.getLogger(__name__)

EpsCache = dict[str, torch.Tensor]


class _Solver:
    """The model as a noise prediction eps(x, t), with the DPM-Solver single steps.

    A step's evaluations are cached by key so an embedded pair (adaptive) shares them.
    """

    def __init__(self, model: Any, x: torch.Tensor, extra_args: dict | None) -> None:
        self.model = model
        self.extra_args = extra_args or {}
        self.s_in = batch_ones(x)
        self.evaluations = 0

    def eps(self, cache: EpsCache, key: str, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if key not in cache:
            sigma = sigma_fn(t)
            cache[key] = (x - self.model(x, sigma * self.s_in, **self.extra_args)) / sigma
            self.evaluations += 1
        return cache[key]

    def step_1(self, cache: EpsCache, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor) -> torch.Tensor:
        """DPM-Solver-1 (exactly DDIM)."""
        h = t_next - t
        return x - sigma_fn(t_next) * h.expm1() * self.eps(cache, "eps", x, t)

    def step_2(self, cache: EpsCache, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
               r1: float = 0.5) -> torch.Tensor:
        """DPM-Solver-2: one extra evaluation at t + r1 * h."""
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - sigma_fn(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - sigma_fn(t_next) * h.expm1() * (eps + (eps_r1 - eps) / (2 * r1))

    def step_3(self, cache: EpsCache, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor,
               r1: float = 1 / 3, r2: float = 2 / 3) -> torch.Tensor:
        """DPM-Solver-3: evaluations at t + h/3 and t + 2h/3."""
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1, s2 = t + r1 * h, t + r2 * h
        u1 = x - sigma_fn(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        phi_r2 = (r2 * h).expm1() / (r2 * h) - 1
        u2 = x - sigma_fn(s2) * ((r2 * h).expm1() * eps + (r2 / r1) * phi_r2 * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        phi = h.expm1() / h - 1
        return x - sigma_fn(t_next) * (h.expm1() * eps + phi / r2 * (eps_r2 - eps))

    def step(self, order: int, cache: EpsCache, x: torch.Tensor, t: torch.Tensor,
             t_next: torch.Tensor) -> torch.Tensor:
        stepper = {1: self.step_1, 2: self.step_2, 3: self.step_3}[order]
        return stepper(cache, x, t, t_next)


def _sigma_range(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    positive = sigmas[sigmas > 0]
    if positive.numel() == 0:
        raise ValueError("DPM-Solver needs at least one positive sigma")
    return positive.min(), sigmas.max()


def _ancestral_target(t: torch.Tensor, t_next: torch.Tensor, t_end: torch.Tensor,
                      eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the deterministic part of a step lands, and the noise that makes up the rest.

    Never past ``t_end``: the noise is recomputed so the step still ends at sigma(t_next).
    """
    if not eta:
        return t_next, torch.zeros_like(t_next)
    sigma_down, _ = get_ancestral_step(sigma_fn(t), sigma_fn(t_next), eta)
    t_down = torch.minimum(t_end, t_fn(sigma_down))
    sigma_up = (sigma_fn(t_next) ** 2 - sigma_fn(t_down) ** 2).clamp(min=0) ** 0.5
    return t_down, sigma_up


def fast_orders(nfe: int) -> list[int]:
    """Step orders that spend exactly ``nfe`` evaluations, third order wherever possible."""
    m = nfe // 3 + 1
    if nfe % 3 == 0:
        return [3] * (m - 2) + [2, 1]
    return [3] * (m - 1) + [nfe % 3]


@torch.no_grad()
def sample_dpm_fast(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback: Callback = None, disable: bool | None = None, eta: float = 0.0,
                    s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                    flow: bool = False) -> torch.Tensor:
    """DPM-Solver-3 steps evenly spaced in t, with ``len(sigmas) - 1`` model evaluations in all."""
    if flow:
        return via_variance_exploding(sample_dpm_fast, model, x, sigmas, extra_args or {}, callback, eta=eta,
                                      s_noise=s_noise, noise_sampler=noise_sampler)
    nfe = len(sigmas) - 1
    if nfe < 1:
        return x
    sigma_min, sigma_max = _sigma_range(sigmas)
    solver = _Solver(model, x, extra_args)
    noise_sampler = noise_sampler or default_noise_sampler(x)
    orders = fast_orders(nfe)
    t_end = t_fn(sigma_min)
    ts = torch.linspace(float(t_fn(sigma_max)), float(t_end), len(orders) + 1,
                        dtype=sigmas.dtype, device=sigmas.device)
    for i, order in enumerate(orders):
        t, t_next = ts[i], ts[i + 1]
        t_down, sigma_up = _ancestral_target(t, t_next, t_end, eta)
        cache: EpsCache = {}
        eps = solver.eps(cache, "eps", x, t)
        report(callback, x, i, sigma_fn(t), sigma_fn(t), x - sigma_fn(t) * eps)
        x = solver.step(order, cache, x, t, t_down)
        if eta:
            x = x + sigma_up * s_noise * noise_sampler(sigma_fn(t), sigma_fn(t_next))
    return x


class PIDStepSizeController:
    """Step size control in t from the embedded pair's error (a PID controller on log error)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.inv_errors: list[float] = []

    @staticmethod
    def limiter(factor: float) -> float:
        # Smoothly bounds the change of h to (0.21, 2.57), so one bad estimate cannot stall or explode it.
        return 1 + math.atan(factor - 1)

    def propose_step(self, error: float) -> bool:
        """Scale h for the next try; True when the step just measured is accepted."""
        inv_error = 1 / (float(error) + self.eps)
        if not self.inv_errors:
            self.inv_errors = [inv_error] * 3
        self.inv_errors[0] = inv_error
        e0, e1, e2 = self.inv_errors
        factor = self.limiter(e0 ** self.b1 * e1 ** self.b2 * e2 ** self.b3)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors = [e0, e0, e1]
        self.h *= factor
        return accept


def _embedded_pair(solver: _Solver, cache: EpsCache, order: int, x: torch.Tensor, s: torch.Tensor,
                   t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A low- and a high-order solution sharing evaluations: (1, 2), or (2 with r1=1/3, 3)."""
    if order == 2:
        return solver.step_1(cache, x, s, t), solver.step_2(cache, x, s, t)
    return solver.step_2(cache, x, s, t, r1=1 / 3), solver.step_3(cache, x, s, t)


def _scaled_error(x_low: torch.Tensor, x_high: torch.Tensor, x_prev: torch.Tensor, rtol: float,
                  atol: float) -> float:
    """RMS of the pair's difference, each element relative to its own tolerance."""
    tolerance = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
    return float(torch.linalg.norm((x_low - x_high) / tolerance) / x_low.numel() ** 0.5)


@torch.no_grad()
def sample_dpm_adaptive(model: Any, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                        callback: Callback = None, disable: bool | None = None, order: int = 3,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05, pcoeff: float = 0.0,
                        icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81, eta: float = 0.0,
                        s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
                        max_evaluations: int = 1000, flow: bool = False) -> torch.Tensor:
    """Adaptive DPM-Solver-12 or -23 from sigma_max to sigma_min, ``rtol``/``atol`` per element.

    ``max_evaluations`` bounds the work: when another try could exceed it, one DPM-Solver-1 step
    finishes straight to sigma_min (so the total never exceeds it).
    """
    if flow:
        return via_variance_exploding(
            sample_dpm_adaptive, model, x, sigmas, extra_args or {}, callback, ADAPTIVE_TOP_LEVEL, order=order, rtol=rtol, atol=atol,
            h_init=h_init, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff, accept_safety=accept_safety, eta=eta,
            s_noise=s_noise, noise_sampler=noise_sampler, max_evaluations=max_evaluations)
    if order not in (2, 3):
        raise ValueError("order must be 2 or 3")
    sigma_min, sigma_max = _sigma_range(sigmas)
    solver = _Solver(model, x, extra_args)
    noise_sampler = noise_sampler or default_noise_sampler(x)
    s, t_end = t_fn(sigma_max), t_fn(sigma_min)
    # Noise added each step makes the error estimate rougher: control as if for order 1.5.
    pid = PIDStepSizeController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    x_prev, accepted = x, 0
    while s < t_end - 1e-5:
        if solver.evaluations + order >= max_evaluations:
            logger.warning("DPM adaptive used %d of %d model evaluations at sigma %.4g; finishing with "
                           "one first-order step", solver.evaluations, max_evaluations, float(sigma_fn(s)))
            cache: EpsCache = {}
            report(callback, x, accepted, sigma_fn(s), sigma_fn(s), x - sigma_fn(s) * solver.eps(cache, "eps", x, s))
            return solver.step_1(cache, x, s, t_end)
        t = torch.minimum(t_end, s + pid.h)
        t_down, sigma_up = _ancestral_target(s, t, t_end, eta)
        cache = {}
        eps = solver.eps(cache, "eps", x, s)
        x_low, x_high = _embedded_pair(solver, cache, order, x, s, t_down)
        if pid.propose_step(_scaled_error(x_low, x_high, x_prev, rtol, atol)):
            report(callback, x, accepted, sigma_fn(s), sigma_fn(s), x - sigma_fn(s) * eps)
            x_prev, x = x_low, x_high
            if eta:
                x = x + sigma_up * s_noise * noise_sampler(sigma_fn(s), sigma_fn(t))
            s, accepted = t, accepted + 1
    return x

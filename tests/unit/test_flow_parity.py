"""Flow-matching samplers and schedules against diffusers' own schedulers on the same sigmas.

A fixed smooth velocity field stands in for a transformer: what diffusers' scheduler steps with
``v`` must equal what Atelier's sampler computes from D = x - sigma * v (diffusers'
``FlowMatchEulerDiscreteScheduler`` for Euler, ``DPMSolverMultistepScheduler`` with flow sigmas for
DPM++ 2M), and Simple on a flow table must be the sigmas FluxPipeline asks its scheduler for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

from modules.engine.sampling.flow import dynamic_shift, flow_sigmas
from modules.engine.sampling.functions import SAMPLER_FUNCTIONS
from modules.engine.sampling.schedules import compute_sigmas
from modules.samplers import ScheduleType

SHAPE = (2, 4, 8, 8)


def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A smooth, x- and sigma-dependent field (a real transformer's output is no simpler to step)."""
    s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return torch.tanh(x) * (0.5 + s) - 0.3 * x * s + 0.2 * torch.sin(3 * x) * (1 - s)


class FlowModel:
    """D(x, sigma) = x - sigma * v, as :class:`FlowDenoiser` makes it."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        return x - sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) * velocity(x, sigma)


def start() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))


def diffusers_loop(scheduler: Any, sigmas: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    for i, t in enumerate(scheduler.timesteps):
        v = velocity(x, sigmas[i].expand(x.shape[0]))
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


def our_sigmas(schedule: ScheduleType, steps: int, shift: float = 3.0) -> torch.Tensor:
    return compute_sigmas(schedule, steps, flow_sigmas(shift)).float()


@pytest.mark.parametrize("schedule", [ScheduleType.SIMPLE, ScheduleType.KARRAS, ScheduleType.BETA])
def test_euler_is_diffusers_flow_match_euler_on_the_same_sigmas(schedule: ScheduleType) -> None:
    sigmas = our_sigmas(schedule, 12)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)  # the sigmas below are already shifted
    scheduler.set_timesteps(sigmas=sigmas[:-1].numpy())
    assert torch.equal(scheduler.sigmas, sigmas)
    expected = diffusers_loop(scheduler, sigmas, start())
    ours = SAMPLER_FUNCTIONS["sample_euler"](FlowModel(), start(), sigmas, flow=True)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=2e-5)


def dpm_solver(sigmas: torch.Tensor) -> DPMSolverMultistepScheduler:
    """diffusers' DPM-Solver++(2M) for flow models, its sigmas and timesteps set to ours."""
    scheduler = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction",
                                            algorithm_type="dpmsolver++", solver_order=2, flow_shift=3.0)
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.sigmas = sigmas.clone()
    scheduler.timesteps = sigmas[:-1] * scheduler.config.num_train_timesteps
    scheduler.set_begin_index(0)
    return scheduler


@pytest.mark.parametrize("schedule, steps", [(ScheduleType.SIMPLE, 8), (ScheduleType.SIMPLE, 20),
                                             (ScheduleType.KARRAS, 12), (ScheduleType.SGM_UNIFORM, 10)])
def test_dpmpp_2m_is_diffusers_dpm_solver_with_flow_sigmas(schedule: ScheduleType, steps: int) -> None:
    sigmas = our_sigmas(schedule, steps)
    assert float(sigmas[0]) == 1.0  # diffusers' first step from sigma 1 (lambda = -inf) is first order
    expected = diffusers_loop(dpm_solver(sigmas), sigmas, start())
    ours = SAMPLER_FUNCTIONS["sample_dpmpp_2m"](FlowModel(), start(), sigmas, flow=True)
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    # The UNet form on the same sigmas is a different integrator: the comparison can tell them apart.
    unet_form = SAMPLER_FUNCTIONS["sample_dpmpp_2m"](FlowModel(), start(), sigmas)
    assert (unet_form - expected).abs().max() > 2e-3


def test_dpmpp_2m_matches_diffusers_below_sigma_one_too() -> None:
    """img2img starts below 1: the multistep correction is used from the second step on."""
    sigmas = our_sigmas(ScheduleType.SIMPLE, 20)[6:]
    expected = diffusers_loop(dpm_solver(sigmas), sigmas, start())
    ours = SAMPLER_FUNCTIONS["sample_dpmpp_2m"](FlowModel(), start(), sigmas, flow=True)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [4, 20, 25, 50])
def test_simple_on_a_flow_table_is_flux_pipeline_default_sigmas(steps: int) -> None:
    """FluxPipeline passes linspace(1, 1/n, n) and mu (from the image's tokens) to its scheduler."""
    image_tokens = (1024 // 16) * (768 // 16)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    mu = float(np.log(dynamic_shift(image_tokens)))
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    ours = compute_sigmas(ScheduleType.SIMPLE, steps, flow_sigmas(dynamic_shift(image_tokens)))
    torch.testing.assert_close(ours, scheduler.sigmas, rtol=1e-5, atol=1e-6)

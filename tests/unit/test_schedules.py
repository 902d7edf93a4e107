"""Sigma schedules: closed forms, and A1111's shapes for every schedule on SD 1.5's noise levels."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from modules.engine.sampling.schedules import (
    ModelSigmas,
    align_your_steps,
    compute_sigmas,
    exponential,
    karras,
    polyexponential,
)
from modules.samplers import ScheduleType

SIGMA_MIN, SIGMA_MAX = 0.029167, 14.6146
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029]
CONCRETE = [s for s in ScheduleType if s is not ScheduleType.AUTOMATIC]
# Timesteps read off the model's own table, so they start exactly at its largest sigma.
MODEL_DERIVED = {ScheduleType.UNIFORM, ScheduleType.SGM_UNIFORM, ScheduleType.NORMAL, ScheduleType.SIMPLE}


@pytest.fixture(scope="module")
def sd15() -> ModelSigmas:
    """SD 1.5's scaled-linear betas (0.00085 .. 0.012 over 1000 steps)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return ModelSigmas(torch.cumprod(1 - betas, dim=0))


def test_sd15_noise_levels(sd15: ModelSigmas) -> None:
    assert sd15.sigma_max == pytest.approx(SIGMA_MAX, rel=1e-4)
    assert sd15.sigma_min == pytest.approx(SIGMA_MIN, rel=1e-4)


@pytest.mark.parametrize("n", [1, 2, 10, 25])
def test_karras_is_its_closed_form(n: int) -> None:
    rho = 7.0
    ramp = [i / (n - 1) if n > 1 else 0.0 for i in range(n)]
    hi, lo = SIGMA_MAX ** (1 / rho), SIGMA_MIN ** (1 / rho)
    expected = [(hi + r * (lo - hi)) ** rho for r in ramp] + [0.0]
    assert karras(n, SIGMA_MIN, SIGMA_MAX).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("n", [2, 10, 25])
def test_exponential_is_evenly_spaced_in_log_sigma(n: int) -> None:
    expected = [SIGMA_MAX * (SIGMA_MIN / SIGMA_MAX) ** (i / (n - 1)) for i in range(n)] + [0.0]
    assert exponential(n, SIGMA_MIN, SIGMA_MAX).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("rho", [1.0, 2.0, 0.5])
def test_polyexponential_is_its_closed_form(rho: float) -> None:
    n = 12
    span = math.log(SIGMA_MAX) - math.log(SIGMA_MIN)
    expected = [math.exp(math.log(SIGMA_MIN) + (1 - i / (n - 1)) ** rho * span) for i in range(n)] + [0.0]
    assert polyexponential(n, SIGMA_MIN, SIGMA_MAX, rho).tolist() == pytest.approx(expected, rel=1e-5)
    if rho == 1.0:  # degree one is the exponential schedule
        assert polyexponential(n, SIGMA_MIN, SIGMA_MAX).tolist() == \
            pytest.approx(exponential(n, SIGMA_MIN, SIGMA_MAX).tolist(), rel=1e-5)


def ddim_length(n: int) -> int:
    """A1111's DDIM schedule takes every (1000 // n)-th timestep from 1: one step more than asked
    when n does not divide 1000 evenly enough (30 steps give 31), plus the final 0."""
    return len(range(1, 1000, 1000 // n)) + 1


@pytest.mark.parametrize("n", [7, 20, 30])
@pytest.mark.parametrize("schedule", CONCRETE, ids=[s.value for s in CONCRETE])
def test_every_schedule_has_a1111s_shape(sd15: ModelSigmas, schedule: ScheduleType, n: int) -> None:
    sigmas = compute_sigmas(schedule, n, sd15)
    assert bool((sigmas[1:] < sigmas[:-1]).all()), "strictly decreasing"
    assert len(sigmas) == (ddim_length(n) if schedule is ScheduleType.DDIM else n + 1)
    if schedule is ScheduleType.KL_OPTIMAL:  # as A1111's: n steps that end at sigma_min, no 0
        assert float(sigmas[-1]) == pytest.approx(sd15.sigma_min, rel=1e-5)
    else:
        assert float(sigmas[-1]) == 0.0
    if schedule is ScheduleType.DDIM:  # starts one stride below the top timestep
        top = 1 + (1000 // n) * (ddim_length(n) - 2)
        assert float(sigmas[0]) == pytest.approx(float(sd15.sigmas[top]), rel=1e-6)
    else:
        assert float(sigmas[0]) == pytest.approx(sd15.sigma_max, rel=1e-4)


def test_ddim_schedule_at_20_steps_starts_at_timestep_951(sd15: ModelSigmas) -> None:
    sigmas = compute_sigmas(ScheduleType.DDIM, 20, sd15)
    assert sigmas[:-1].tolist() == pytest.approx(sd15.sigmas[1::50].flip(0).tolist(), rel=1e-6)
    assert float(sigmas[0]) == pytest.approx(float(sd15.sigmas[951]))


def test_model_schedules_end_where_a1111s_do(sd15: ModelSigmas) -> None:
    normal = compute_sigmas(ScheduleType.NORMAL, 10, sd15)
    sgm = compute_sigmas(ScheduleType.SGM_UNIFORM, 10, sd15)
    uniform = compute_sigmas(ScheduleType.UNIFORM, 10, sd15)
    assert float(normal[-2]) == pytest.approx(sd15.sigma_min, rel=1e-4)
    assert float(uniform[-2]) == pytest.approx(sd15.sigma_min, rel=1e-4)
    assert float(sgm[-2]) > 2 * sd15.sigma_min  # SGM drops the endpoint: its last step is larger
    simple = compute_sigmas(ScheduleType.SIMPLE, 10, sd15)
    assert simple[:-1].tolist() == sd15.sigmas[[999 - 100 * i for i in range(10)]].tolist()


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.0, max_value=999.0, allow_nan=False))
def test_timestep_sigma_round_trip(t: float) -> None:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    model = ModelSigmas(torch.cumprod(1 - betas, dim=0))
    back = model.sigma_to_t(model.t_to_sigma(torch.tensor([t])))
    assert float(back[0]) == pytest.approx(t, abs=2e-3)


def test_integer_timesteps_are_the_models_sigmas(sd15: ModelSigmas) -> None:
    t = torch.tensor([0.0, 1.0, 500.0, 999.0])
    assert sd15.t_to_sigma(t).tolist() == pytest.approx(sd15.sigmas[[0, 1, 500, 999]].tolist(), rel=1e-6)
    assert sd15.sigma_to_t(sd15.sigmas[[0, 1, 500, 999]]).tolist() == pytest.approx(t.tolist(), abs=1e-3)


def test_align_your_steps_publishes_the_11_step_schedule() -> None:
    # A1111 passes n = steps and uses NVIDIA's 11 published levels as they are only when
    # n == 11; any other n (10 included) is a log-linear resampling to n levels.
    assert align_your_steps(11, is_sdxl=False).tolist() == pytest.approx(AYS_SD15 + [0.0], rel=1e-6)
    assert align_your_steps(11, is_sdxl=True).tolist() == pytest.approx(AYS_SDXL + [0.0], rel=1e-6)


@pytest.mark.parametrize("n", [5, 10, 20])
def test_align_your_steps_resamples_log_linearly(n: int) -> None:
    log_levels = np.log(AYS_SD15)
    # Position p in [0, 1] along the published list, read by linear interpolation of log sigma.
    expected = []
    for i in range(n):
        p = i / (n - 1) * (len(AYS_SD15) - 1)
        low = min(int(p), len(AYS_SD15) - 2)
        w = p - low
        expected.append(math.exp((1 - w) * log_levels[low] + w * log_levels[low + 1]))
    sigmas = align_your_steps(n, is_sdxl=False)
    assert sigmas.tolist() == pytest.approx(expected + [0.0], rel=1e-5)
    assert float(sigmas[0]) == pytest.approx(14.615) and float(sigmas[-2]) == pytest.approx(0.029)

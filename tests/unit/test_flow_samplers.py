"""Every sampler and schedule on a flow-matching model, against an exact solution.

Data ~ N(MU, C^2) per element and x = (1 - s) x0 + s noise, so the flow denoiser is exact:
D(x, s) = MU + a C^2 / (a^2 C^2 + s^2) (x - a MU) with a = 1 - s, x at s has mean a MU and variance
a^2 C^2 + s^2, and the probability-flow ODE carries x at s0 to a MU + sqrt(a^2 C^2 + s^2) z with
z = (x0 - a0 MU) / sqrt(a0^2 C^2 + s0^2). Deterministic samplers must converge to that endpoint;
stochastic ones must keep every step's latent on the flow marginal (the UNet's noise step, which
assumes x = x0 + sigma noise, does not: a test below shows it misses).
"""

from __future__ import annotations

import inspect
import math
from itertools import pairwise
from typing import Any

import pytest
import torch

from modules.engine.sampling.common import rf_ancestral_step
from modules.engine.sampling.flow import dynamic_shift, flow_sigmas
from modules.engine.sampling.functions import SAMPLER_FUNCTIONS
from modules.engine.sampling.noise import BrownianTreeNoise, ImageNoise, RngSource
from modules.engine.sampling.schedules import ScheduleUnsupported, compute_sigmas, karras
from modules.sampler_params import SamplerParams, sampler_kwargs
from modules.samplers import SAMPLERS, NoiseSource, ScheduleType, flow_refusal

MU, C = 0.5, 0.6
SHAPE = (2, 4, 8, 8)
BIG_SHAPE = (4, 32, 32)  # per image; two images: 8192 elements for the statistics
STOPS_EARLY = ("sample_dpm_fast", "sample_dpm_adaptive")  # they return x at the smallest positive sigma


class FlowGaussian:
    """The exact flow denoiser of N(MU, C^2)."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        a = 1 - s
        return MU + a * C**2 / (a**2 * C**2 + s**2) * (x - a * MU)


def marginal_std(level: float) -> float:
    return math.sqrt((1 - level) ** 2 * C**2 + level**2)


def run(name: str, x: torch.Tensor, sigmas: torch.Tensor, flow: bool = True, **options: Any) -> torch.Tensor:
    fn = SAMPLER_FUNCTIONS[name]
    if "flow" in inspect.signature(fn).parameters:
        options["flow"] = flow
    return fn(FlowGaussian(), x, sigmas, **options)


def start_noise(shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


# --- Deterministic samplers: convergence to the exact ODE endpoint ---------------------------------

# (label, function, options, order asserted). Karras from sigma 1 to 0.03 without the final 0 (a
# step to 0 has an error no step count removes, which would hide the order); 24 -> 48 steps.
CONVERGENCE = [
    ("Euler", "sample_euler", {}, 1),  # measured ratio 2.0
    ("Heun", "sample_heun", {}, 2),  # 4.2
    ("DPM2", "sample_dpm_2", {}, 2),  # 4.2
    ("LMS", "sample_lms", {}, 2),  # 5.2
    ("DPM++ 2M", "sample_dpmpp_2m", {}, 2),  # 3.6 (its first step from sigma 1 is first order)
    ("DDIM", "sample_ddim", {}, 1),  # 2.0, exactly Euler
    ("PLMS", "sample_plms", {}, 1),  # 3.5
    ("UniPC bh1", "sample_unipc", {}, 2),  # 5.0
    ("UniPC bh2", "sample_unipc", {"variant": "bh2"}, 3),  # 27
    ("DPM fast", "sample_dpm_fast", {}, 2),  # 4.2
    ("Euler a, eta 0", "sample_euler_ancestral", {"eta": 0.0}, 1),  # 2.0
    ("DPM++ 2S a, eta 0", "sample_dpmpp_2s_ancestral", {"eta": 0.0}, 2),  # 3.9
    ("DPM++ SDE, eta 0", "sample_dpmpp_sde", {"eta": 0.0}, 2),  # 3.9
    ("DPM++ 2M SDE, eta 0", "sample_dpmpp_2m_sde", {"eta": 0.0}, 2),  # 3.6
    ("DPM++ 3M SDE, eta 0", "sample_dpmpp_3m_sde", {"eta": 0.0}, 2),  # 4.3
]


def ode_error(name: str, options: dict, steps: int) -> float:
    sigmas = karras(steps, 0.03, 1.0).double()[:-1]
    x = start_noise()
    exact = (1 - 0.03) * MU + marginal_std(0.03) * x
    return float((run(name, x, sigmas, **options) - exact).pow(2).mean().sqrt())


@pytest.mark.parametrize("label, name, options, order", CONVERGENCE, ids=[c[0] for c in CONVERGENCE])
def test_deterministic_samplers_converge_to_the_flow_ode_solution(label: str, name: str, options: dict,
                                                                  order: int) -> None:
    coarse, fine = ode_error(name, options, 24), ode_error(name, options, 48)
    assert fine < 0.02
    assert coarse / fine > 0.6 * 2**order


@pytest.mark.parametrize("name", ["sample_euler", "sample_heun", "sample_dpmpp_2m", "sample_unipc", "sample_lms"])
def test_a_full_run_from_pure_noise_lands_on_the_data(name: str) -> None:
    sigmas = compute_sigmas(ScheduleType.SIMPLE, 60, flow_sigmas(3.0)).double()
    x = start_noise()
    out = run(name, x, sigmas)
    assert float((out - (MU + C * x)).pow(2).mean().sqrt()) < 0.03


def test_dpm_adaptive_reaches_its_tolerance_from_sigma_one() -> None:
    sigmas = compute_sigmas(ScheduleType.SIMPLE, 48, flow_sigmas(3.0)).double()
    stop = float(sigmas[-2])
    x = start_noise()
    out = run("sample_dpm_adaptive", x, sigmas)
    assert float((out - ((1 - stop) * MU + marginal_std(stop) * x)).pow(2).mean().sqrt()) < 0.03


# --- Stochastic samplers: every step on the flow marginal -----------------------------------------

STOCHASTIC = [
    ("Euler a", "sample_euler_ancestral", {}, "image"),
    ("DPM2 a", "sample_dpm_2_ancestral", {}, "image"),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", {}, "image"),
    ("DPM++ SDE", "sample_dpmpp_sde", {}, "brownian"),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", {}, "brownian"),
    ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}, "brownian"),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", {}, "brownian"),
    ("LCM", "sample_lcm", {}, "image"),
    ("Restart", "sample_restart", {}, "image"),
    ("DDIM eta 1", "sample_ddim", {"eta": 1.0}, "image"),
    ("DPM fast eta 1", "sample_dpm_fast", {"eta": 1.0}, "image"),
    ("DPM adaptive eta 1", "sample_dpm_adaptive", {"eta": 1.0}, "image"),
    ("Euler with churn", "sample_euler", {"s_churn": 1.0}, "image"),
    ("Heun with churn", "sample_heun", {"s_churn": 1.0}, "image"),
]


def run_stochastic(name: str, options: dict, source: str, sigmas: torch.Tensor, flow: bool = True,
                   seeds: tuple[int, int] = (11, 12)) -> tuple[torch.Tensor, list[tuple[float, torch.Tensor]]]:
    """The output from pure noise, and every reported (sigma, x)."""
    noise = ImageNoise(BIG_SHAPE, list(seeds), torch.device("cpu"), RngSource.CPU)
    x = noise.first().double() * float(sigmas[0])
    positive = sigmas[sigmas > 0]
    sampler = noise.sampler() if source == "image" else \
        BrownianTreeNoise(x, float(positive.min()), float(sigmas.max()), list(seeds))
    seen: list[tuple[float, torch.Tensor]] = []

    def callback(info: dict[str, Any]) -> None:
        seen.append((float(info["sigma"]), info["x"]))

    out = run(name, x, sigmas, flow, noise_sampler=sampler, callback=callback, **options)
    return out, seen


def flow_sigmas_for_test(steps: int) -> torch.Tensor:
    return compute_sigmas(ScheduleType.KARRAS, steps, flow_sigmas(3.0)).double()


@pytest.mark.parametrize("label, name, options, source", STOCHASTIC, ids=[c[0] for c in STOCHASTIC])
def test_every_step_of_a_stochastic_sampler_is_on_the_flow_marginal(label: str, name: str, options: dict,
                                                                    source: str) -> None:
    sigmas = flow_sigmas_for_test(30)
    out, seen = run_stochastic(name, options, source, sigmas)
    assert len(seen) >= 8  # DPM fast and adaptive report one step per solver step
    for level, x in seen:
        assert abs(float(x.mean()) - (1 - level) * MU) < 0.04, level
        if label != "LCM":  # LCM's spread shrinks by design (see lcm_std)
            assert float(x.std()) == pytest.approx(marginal_std(level), rel=0.12), level
    stop = float(sigmas[-2]) if name in STOPS_EARLY else 0.0
    assert abs(float(out.mean()) - (1 - stop) * MU) < 0.04


def euler_a_std(sigmas: list[float]) -> float:
    """Euler a's exact output spread on this Gaussian (its step is linear in x): the rectified-flow
    step keeps a first-order bias at a finite step count, which this follows exactly."""
    v = 1.0
    for level, nxt in pairwise(sigmas):
        a = 1 - level
        k = a * C**2 / (a**2 * C**2 + level**2)
        if nxt == 0:
            return (k**2 * v) ** 0.5
        down, scale, renoise = rf_ancestral_step(level, nxt)
        gain = down / level + (1 - down / level) * k
        v = scale**2 * gain**2 * v + renoise**2
    return v**0.5


def lcm_std(sigmas: list[float]) -> float:
    """LCM re-noises the posterior mean, which shrinks the spread by design: v -> a'^2 k^2 v + s'^2."""
    v = 1.0
    for level, nxt in pairwise(sigmas):
        a = 1 - level
        k = a * C**2 / (a**2 * C**2 + level**2)
        v = (1 - nxt) ** 2 * k**2 * v + nxt**2
    return v**0.5


@pytest.mark.parametrize("label, name, options, source", STOCHASTIC, ids=[c[0] for c in STOCHASTIC])
def test_stochastic_samplers_sample_the_data_distribution(label: str, name: str, options: dict, source: str) -> None:
    sigmas = flow_sigmas_for_test(60)
    out, _ = run_stochastic(name, options, source, sigmas)
    levels = sigmas.tolist()
    expected = {"Euler a": euler_a_std, "DDIM eta 1": euler_a_std, "LCM": lcm_std}.get(label, lambda _: C)(levels)
    if name in STOPS_EARLY:
        expected = marginal_std(levels[-2])
    assert float(out.std()) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("label, name, options, source", STOCHASTIC[:8], ids=[c[0] for c in STOCHASTIC[:8]])
def test_the_unet_noise_step_misses_the_flow_marginal(label: str, name: str, options: dict, source: str) -> None:
    """What the flow forms fix: the same samplers with x = x0 + sigma noise's noise step."""
    out, _ = run_stochastic(name, options, source, flow_sigmas_for_test(30), flow=False)
    assert abs(float(out.mean()) - MU) > 0.1


@pytest.mark.parametrize("label, name, options, source", STOCHASTIC[:3], ids=[c[0] for c in STOCHASTIC[:3]])
def test_flow_noise_reproduces_with_its_seed(label: str, name: str, options: dict, source: str) -> None:
    sigmas = flow_sigmas_for_test(8)
    first, _ = run_stochastic(name, options, source, sigmas)
    assert torch.equal(first, run_stochastic(name, options, source, sigmas)[0])
    assert not torch.allclose(first, run_stochastic(name, options, source, sigmas, seeds=(3, 4))[0])


# --- The whole table, as the loop calls it ----------------------------------------------------------

@pytest.mark.parametrize("spec", SAMPLERS, ids=[s.name for s in SAMPLERS])
def test_every_sampler_in_the_table_runs_on_a_flow_model(spec: Any) -> None:
    fn = SAMPLER_FUNCTIONS[spec.function]
    takes_flow = "flow" in inspect.signature(fn).parameters
    # Only the purely deterministic multistep methods (LMS, PLMS) have no flow form: they need none.
    assert takes_flow or spec.function in ("sample_lms", "sample_plms")
    schedule = spec.resolve_schedule(ScheduleType.AUTOMATIC)
    sigmas = compute_sigmas(schedule, 30, flow_sigmas(3.0)).double()
    options = {**spec.options, **sampler_kwargs(spec, SamplerParams())}
    noise = ImageNoise(BIG_SHAPE, [5, 6], torch.device("cpu"), RngSource.CPU)
    x = noise.first().double()
    if spec.noise is NoiseSource.BROWNIAN:
        options["noise_sampler"] = BrownianTreeNoise(x, float(sigmas[-2]), 1.0, [5, 6])
    elif spec.noise is NoiseSource.ANCESTRAL:
        options["noise_sampler"] = noise.sampler()
    out = run(spec.function, x, sigmas, **options)
    stop = float(sigmas[-2]) if spec.function in STOPS_EARLY else 0.0
    assert torch.isfinite(out).all()
    assert abs(float(out.mean()) - (1 - stop) * MU) < 0.04
    assert flow_refusal(spec, ScheduleType.AUTOMATIC) is None


# --- Schedules on flow tables -----------------------------------------------------------------------

FLOW_TABLES = {"shift 1": 1.0, "shift 3 (SD3)": 3.0, "FLUX 1024": dynamic_shift(4096)}
RUNNABLE = [s for s in ScheduleType if s not in (ScheduleType.AUTOMATIC, ScheduleType.ALIGN_YOUR_STEPS)]


@pytest.mark.parametrize("shift", FLOW_TABLES.values(), ids=FLOW_TABLES.keys())
@pytest.mark.parametrize("schedule", RUNNABLE, ids=[s.value for s in RUNNABLE])
@pytest.mark.parametrize("steps", [1, 4, 20, 30])
def test_every_schedule_on_a_flow_table_runs_from_pure_noise_to_zero(schedule: ScheduleType, shift: float,
                                                                     steps: int) -> None:
    sigmas = compute_sigmas(schedule, steps, flow_sigmas(shift))
    assert len(sigmas) - 1 in (steps, steps + 1)  # DDIM's A1111 rounding can add one
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    assert bool((sigmas[:-1] > 0).all()) and bool((sigmas <= 1).all())
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def test_a_sigma_range_asked_above_one_is_held_at_pure_noise() -> None:
    sigmas = compute_sigmas(ScheduleType.KARRAS, 10, flow_sigmas(3.0), overrides={"sigma_max": 14.6})
    assert float(sigmas[0]) == 1.0


def test_align_your_steps_is_refused_on_flow_tables_by_name() -> None:
    with pytest.raises(ScheduleUnsupported, match="Align Your Steps"):
        compute_sigmas(ScheduleType.ALIGN_YOUR_STEPS, 10, flow_sigmas(3.0))
    assert isinstance(ScheduleUnsupported("x"), ValueError)  # the front turns it into a 422
    euler = next(s for s in SAMPLERS if s.name == "Euler")
    assert "Align Your Steps" in (flow_refusal(euler, ScheduleType.ALIGN_YOUR_STEPS) or "")

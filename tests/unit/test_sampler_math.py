"""Sampler mathematics against a Gaussian, whose denoiser and probability-flow ODE are exact.

Data ~ N(MU, S^2) per element, so D(x, sigma) = MU + S^2 / (S^2 + sigma^2) * (x - MU), and the ODE
carries x at sigma_a to MU + (x - MU) * sqrt(S^2 + sigma_b^2) / sqrt(S^2 + sigma_a^2) at sigma_b.

Convergence is measured on Karras schedules that end at sigma_min = 0.03 (the trailing 0 dropped):
a step to sigma 0 has an error of order sigma_min^2 that no step count removes, so it would hide
the order. The final step to 0 is checked on its own, against a fixed bound.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest
import torch

from modules.engine.sampling.functions import SAMPLER_FUNCTIONS, get_sampler_function
from modules.engine.sampling.noise import BrownianTreeNoise, ImageNoise, RngSource
from modules.engine.sampling.samplers_dpm_solver import fast_orders
from modules.engine.sampling.samplers_extra import (
    default_restart_plan,
    restart_pairs,
    unipc_orders,
)
from modules.engine.sampling.schedules import karras
from modules.samplers import SAMPLERS

MU, S = 0.3, 0.8
SIGMA_MIN, SIGMA_MAX = 0.03, 14.6
SHAPE = (2, 4, 8, 8)
BIG_SHAPE = (4, 16, 32)  # per image; two images: 4096 elements for the statistics


class GaussianDenoiser:
    """The exact denoiser of N(MU, S^2), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        self.calls += 1
        sigma2 = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) ** 2
        return MU + S**2 / (S**2 + sigma2) * (x - MU)


def exact_flow(x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    return MU + (x - MU) * math.sqrt(S**2 + sigma_to**2) / math.sqrt(S**2 + sigma_from**2)


def karras_sigmas(n: int, with_zero: bool = True) -> torch.Tensor:
    sigmas = karras(n, SIGMA_MIN, SIGMA_MAX).double()
    return sigmas if with_zero else sigmas[:-1]


def start_noise(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def flow_error(name: str, options: dict, sigmas: torch.Tensor) -> float:
    """RMS distance from the exact ODE solution at the sigma the sampler stops at."""
    x = MU + start_noise() * float(sigmas[0])
    out = SAMPLER_FUNCTIONS[name](GaussianDenoiser(), x, sigmas, **options)
    positive = sigmas[sigmas > 0]
    stop = float(positive.min()) if name in ("sample_dpm_fast", "sample_dpm_adaptive") else float(sigmas[-1])
    return float((out - exact_flow(x, float(sigmas[0]), stop)).pow(2).mean().sqrt())


# (label, function, options, order asserted). Steps go 24 -> 48; the ratio must reach 0.6 * 2^order.
CONVERGENCE = [
    ("Euler", "sample_euler", {}, 1),  # measured ratio 2.0
    ("Heun", "sample_heun", {}, 2),  # 4.3
    ("DPM2", "sample_dpm_2", {}, 2),  # 4.3
    ("LMS", "sample_lms", {}, 4),  # 12.3: fourth order once the lower-order start-up fades
    ("DPM++ 2M", "sample_dpmpp_2m", {}, 2),  # 4.4
    ("DDIM", "sample_ddim", {"eta": 0.0}, 1),  # 2.0, exactly Euler
    # Adams-Bashforth weights for equal steps, on a schedule that is not equally spaced in sigma:
    # second order, not fourth (as PLMS is on any non-uniform grid).
    ("PLMS", "sample_plms", {}, 2),  # 4.4
    # Order 3 with the corrector; lower_order_final ends on first- and second-order steps.
    ("UniPC bh1", "sample_unipc", {}, 3),  # 8.1
    ("UniPC bh2", "sample_unipc", {"variant": "bh2"}, 3),  # 8.7
    ("UniPC-3 without lower order final", "sample_unipc", {"lower_order_final": False}, 4),  # 17.5
    # Evaluations 23 -> 47: third-order steps evenly spaced in log sigma, ending on one of order 2.
    ("DPM fast", "sample_dpm_fast", {}, 3),
]


@pytest.mark.parametrize("label, name, options, order", CONVERGENCE, ids=[c[0] for c in CONVERGENCE])
def test_deterministic_samplers_converge_at_their_order(label: str, name: str, options: dict, order: int) -> None:
    coarse = flow_error(name, options, karras_sigmas(24, with_zero=False))
    fine = flow_error(name, options, karras_sigmas(48, with_zero=False))
    assert coarse / fine >= 0.6 * 2**order, f"{label}: error {coarse:.3g} -> {fine:.3g}"


@pytest.mark.parametrize("label, name, options, order", CONVERGENCE, ids=[c[0] for c in CONVERGENCE])
def test_the_last_step_to_zero_lands_on_the_data(label: str, name: str, options: dict, order: int) -> None:
    # The final step to 0 (Euler, or the data prediction) costs O(sigma_min^2 / S^2) ~ 1e-3 at most.
    bound = 0.03 if order == 1 else 2e-3
    assert flow_error(name, options, karras_sigmas(48)) < bound


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_error_follows_the_tolerance(order: int) -> None:
    sigmas = karras_sigmas(10)
    errors = [flow_error("sample_dpm_adaptive", {"order": order, "rtol": tol, "atol": tol}, sigmas)
              for tol in (2e-4, 4e-5)]
    assert errors[1] < 4e-4  # within 10 tolerances
    assert errors[0] / errors[1] >= 3  # tolerance 5x tighter


def test_dpm_adaptive_stops_at_its_evaluation_cap(caplog: pytest.LogCaptureFixture) -> None:
    model, sigmas = GaussianDenoiser(), karras_sigmas(10)
    with caplog.at_level(logging.WARNING):
        out = SAMPLER_FUNCTIONS["sample_dpm_adaptive"](model, MU + start_noise() * SIGMA_MAX, sigmas,
                                                       rtol=1e-6, atol=1e-6, max_evaluations=20)
    assert model.calls <= 20
    assert "finishing with one first-order step" in caplog.text
    assert torch.isfinite(out).all()


def test_dpm_fast_spends_exactly_its_evaluations() -> None:
    assert fast_orders(9) == [3, 3, 2, 1] and fast_orders(10) == [3, 3, 3, 1] and fast_orders(2) == [2]
    for n in (1, 2, 7, 9, 20):
        model = GaussianDenoiser()
        SAMPLER_FUNCTIONS["sample_dpm_fast"](model, MU + start_noise() * SIGMA_MAX, karras_sigmas(n))
        assert model.calls == n


@pytest.mark.parametrize("with_zero", [True, False])
def test_unipc_makes_one_model_call_per_step(with_zero: bool) -> None:
    assert unipc_orders(6, 3, True) == [1, 2, 3, 3, 2, 1]
    assert unipc_orders(6, 3, False) == [1, 2, 3, 3, 3, 3]
    model, sigmas = GaussianDenoiser(), karras_sigmas(12, with_zero)
    SAMPLER_FUNCTIONS["sample_unipc"](model, MU + start_noise() * SIGMA_MAX, sigmas)
    assert model.calls == len(sigmas) - 1


DETERMINISTIC = sorted({name for _, name, _, _ in CONVERGENCE} | {"sample_dpm_adaptive"})


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_deterministic_samplers_repeat_exactly(name: str) -> None:
    sigmas, x = karras_sigmas(12), MU + start_noise() * SIGMA_MAX
    first = SAMPLER_FUNCTIONS[name](GaussianDenoiser(), x.clone(), sigmas)
    assert torch.equal(first, SAMPLER_FUNCTIONS[name](GaussianDenoiser(), x.clone(), sigmas))


# --- Samplers with fresh noise ---------------------------------------------------------------

# (label, function, options, noise source, steps for the statistics)
STOCHASTIC = [
    ("Euler a", "sample_euler_ancestral", {}, "image", 30),
    ("DPM2 a", "sample_dpm_2_ancestral", {}, "image", 100),
    ("DPM++ 2S a", "sample_dpmpp_2s_ancestral", {}, "image", 100),
    ("DPM++ SDE", "sample_dpmpp_sde", {}, "brownian", 50),
    ("DPM++ 2M SDE", "sample_dpmpp_2m_sde", {}, "brownian", 50),
    ("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", {"solver_type": "heun"}, "brownian", 50),
    ("DPM++ 3M SDE", "sample_dpmpp_3m_sde", {}, "brownian", 50),
    ("LCM", "sample_lcm", {}, "image", 30),
    ("Restart", "sample_restart", {}, "image", 50),
    ("DDIM eta 1", "sample_ddim", {"eta": 1.0}, "image", 30),
    ("DPM fast eta 1", "sample_dpm_fast", {"eta": 1.0}, "image", 100),
    ("DPM adaptive eta 1", "sample_dpm_adaptive", {"eta": 1.0}, "image", 10),
]


def run_seeded(name: str, options: dict, source: str, sigmas: torch.Tensor, seeds: list[int],
               shape: tuple[int, ...] = SHAPE[1:]) -> torch.Tensor:
    """From MU + sqrt(S^2 + sigma_max^2) * noise (the data's marginal at sigma_max), seeded per image."""
    noise = ImageNoise(shape, seeds, torch.device("cpu"), RngSource.CPU)
    x = MU + noise.first().double() * math.sqrt(S**2 + float(sigmas[0]) ** 2)
    positive = sigmas[sigmas > 0]
    sampler = noise.sampler() if source == "image" else \
        BrownianTreeNoise(x, float(positive.min()), float(sigmas.max()), seeds)
    return SAMPLER_FUNCTIONS[name](GaussianDenoiser(), x, sigmas, noise_sampler=sampler, **options)


@pytest.mark.parametrize("label, name, options, source, steps", STOCHASTIC, ids=[c[0] for c in STOCHASTIC])
def test_seeded_noise_reproduces_and_a_new_seed_changes(label: str, name: str, options: dict, source: str,
                                                         steps: int) -> None:
    sigmas = karras_sigmas(12)
    first = run_seeded(name, options, source, sigmas, [1, 2])
    assert torch.equal(first, run_seeded(name, options, source, sigmas, [1, 2]))
    assert not torch.allclose(first, run_seeded(name, options, source, sigmas, [3, 4]))


def ancestral_std(sigmas: list[float]) -> float:
    """Euler a's exact output spread on this Gaussian: its step is linear in x, so the variance
    follows v -> v * (1 - sigma (sigma - down) / (S^2 + sigma^2))^2 + up^2."""
    v = S**2 + sigmas[0] ** 2
    for sigma, nxt in pairwise(sigmas):
        up = min(nxt, (nxt**2 * (sigma**2 - nxt**2) / sigma**2) ** 0.5)
        down = (nxt**2 - up**2) ** 0.5
        v = v * (1 - sigma * (sigma - down) / (S**2 + sigma**2)) ** 2 + up**2
    return v**0.5


def lcm_std(sigmas: list[float]) -> float:
    """LCM's output spread: re-noising the posterior mean shrinks the variance by design, since a
    consistency model assumes D(x) is a sample, not a mean: v -> (S^2 / (S^2 + sigma^2))^2 v + next^2."""
    v = S**2 + sigmas[0] ** 2
    for sigma, nxt in pairwise(sigmas):
        v = (S**2 / (S**2 + sigma**2)) ** 2 * v + nxt**2
    return v**0.5


EXPECTED_STD: dict[str, Callable[[list[float]], float]] = {
    "Euler a": ancestral_std, "DDIM eta 1": ancestral_std, "LCM": lcm_std}


@pytest.mark.parametrize("label, name, options, source, steps", STOCHASTIC, ids=[c[0] for c in STOCHASTIC])
def test_stochastic_samplers_sample_the_data_distribution(label: str, name: str, options: dict, source: str,
                                                          steps: int) -> None:
    sigmas = karras_sigmas(steps)
    out = run_seeded(name, options, source, sigmas, [11, 12], shape=BIG_SHAPE)
    # First-order ancestral steps keep a known bias at these step counts: compare with it exactly.
    expected = EXPECTED_STD.get(label, lambda _: S)(sigmas.tolist())
    assert abs(float(out.mean()) - MU) < 0.05  # 4 standard errors
    assert float(out.std()) == pytest.approx(expected, rel=0.04)


# --- Restart -----------------------------------------------------------------------------------

def test_restart_default_plan_keeps_the_step_count_as_a1111() -> None:
    assert default_restart_plan(karras_sigmas(19))[1] == {}
    for steps, restarts in ((20, 1), (30, 1), (36, 2), (40, 2)):
        descent, plan = default_restart_plan(karras_sigmas(steps))
        assert len(restart_pairs(descent, plan)) == steps
        assert plan[0.1][1] == restarts and descent[0] == pytest.approx(SIGMA_MAX)


def test_restart_segments_climb_back_to_their_top_sigma() -> None:
    sigmas = karras_sigmas(12)
    pairs = restart_pairs(sigmas, {0.1: (6, 2, 2.0)})
    at = int(torch.argmin((sigmas - 0.1).abs()))
    top = float(sigmas[int(torch.argmin((sigmas - 2.0).abs()))])
    assert len(pairs) == 12 + 2 * 5
    segment = pairs[at:at + 5]
    assert float(segment[0][0]) == pytest.approx(top) and float(segment[-1][1]) == pytest.approx(float(sigmas[at]))
    assert pairs[at + 10][0] == sigmas[at]  # then the descent goes on


def test_restart_without_restarts_is_heun() -> None:
    sigmas, x = karras_sigmas(12), MU + start_noise() * SIGMA_MAX
    restart = SAMPLER_FUNCTIONS["sample_restart"](GaussianDenoiser(), x.clone(), sigmas, restart_list={})
    assert torch.equal(restart, SAMPLER_FUNCTIONS["sample_heun"](GaussianDenoiser(), x.clone(), sigmas))


# --- Callbacks and the registry ------------------------------------------------------------------

def expected_reports(name: str, sigmas: torch.Tensor) -> int | None:
    if name == "sample_dpm_fast":
        return len(fast_orders(len(sigmas) - 1))
    if name == "sample_dpm_adaptive":
        return None  # one per accepted step, as many as the controller takes
    if name == "sample_restart":
        return len(restart_pairs(*default_restart_plan(sigmas)))
    return len(sigmas) - 1


@pytest.mark.parametrize("name", sorted(SAMPLER_FUNCTIONS))
def test_callback_reports_every_step(name: str) -> None:
    sigmas, reports = karras_sigmas(8), []
    SAMPLER_FUNCTIONS[name](GaussianDenoiser(), MU + start_noise() * SIGMA_MAX, sigmas, callback=reports.append)
    expected = expected_reports(name, sigmas)
    assert len(reports) == expected if expected is not None else len(reports) >= 1
    assert [r["i"] for r in reports] == list(range(len(reports)))
    for r in reports:
        assert set(r) == {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert r["x"].shape == r["denoised"].shape == SHAPE


def test_every_sampler_in_the_table_has_a_function() -> None:
    for spec in SAMPLERS:
        function = get_sampler_function(spec.function)
        params = inspect.signature(function).parameters
        assert list(params)[:6] == ["model", "x", "sigmas", "extra_args", "callback", "disable"], spec.name
        for option in spec.options:
            assert option in params, f"{spec.name}: {option}"


def test_registry_is_read_only_and_names_unknown_functions() -> None:
    assert all(name == f.__name__ for name, f in SAMPLER_FUNCTIONS.items())
    with pytest.raises(TypeError):
        SAMPLER_FUNCTIONS["sample_x"] = print  # type: ignore[index]
    with pytest.raises(KeyError, match="sample_nope"):
        get_sampler_function("sample_nope")

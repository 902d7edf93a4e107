"""A1111's sampler parameters in the engine and the infotext, checked against restatements of
k-diffusion's formulas and A1111's infotext rules (not round trips through the code under test)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from modules.engine.sampling.functions import SAMPLER_FUNCTIONS
from modules.engine.sampling.loop import NoisePlan, SamplingPlan, sampler_sigmas
from modules.engine.sampling.schedules import ModelSigmas
from modules.infotext import build_infotext, parse_infotext
from modules.infotext_request import request_from_infotext
from modules.params import GenerationRequest
from modules.sampler_params import SamplerParams
from modules.samplers import ScheduleType, resolve_sampler

MU, S = 0.3, 0.8


def sd_model_sigmas() -> ModelSigmas:
    """SD's 1000-step scaled-linear noise levels (sigma from about 0.0292 to 14.6)."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return ModelSigmas(torch.cumprod(1 - betas, 0))


def plan(sampler: str, schedule: ScheduleType, steps: int, params: SamplerParams) -> SamplingPlan:
    spec = resolve_sampler(sampler)[0]  # type: ignore[index]
    return SamplingPlan(spec, schedule, steps, NoisePlan(seeds=(1,)), (4, 8, 8), params=params)


def restated_karras(n: int, sigma_min: float, sigma_max: float, rho: float) -> list[float]:
    """k-diffusion's get_sigmas_karras: sigma_i = (max^(1/rho) + i/(n-1) * (min^(1/rho) - max^(1/rho)))^rho,
    i = 0..n-1, then a final 0."""
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return [(hi + i / (n - 1) * (lo - hi)) ** rho for i in range(n)] + [0.0]


@pytest.mark.parametrize(("sigma_min", "sigma_max", "rho"), [(0.1, 5.0, 0.0), (0.0, 3.0, 4.0), (0.5, 0.0, 7.0)])
def test_sigma_min_max_and_rho_draw_the_karras_schedule_k_diffusion_draws(sigma_min: float, sigma_max: float,
                                                                          rho: float) -> None:
    model = sd_model_sigmas()
    params = SamplerParams(sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    sigmas = sampler_sigmas(plan("Euler", ScheduleType.KARRAS, 6, params), model)
    want = restated_karras(6, sigma_min or model.sigma_min, sigma_max or model.sigma_max, rho or 7.0)
    assert sigmas.tolist() == pytest.approx(want, rel=1e-5)


def test_dpm_pp_2m_automatic_is_karras_so_its_range_follows_sigma_max_too() -> None:
    model = sd_model_sigmas()
    sigmas = sampler_sigmas(plan("DPM++ 2M", ScheduleType.AUTOMATIC, 5, SamplerParams(sigma_max=2.0)), model)
    assert sigmas.tolist() == pytest.approx(restated_karras(5, model.sigma_min, 2.0, 7.0), rel=1e-5)


def test_the_exponential_schedule_runs_log_linearly_between_the_given_sigmas() -> None:
    sigmas = sampler_sigmas(plan("Euler", ScheduleType.EXPONENTIAL, 4, SamplerParams(sigma_min=0.5, sigma_max=8.0)),
                            sd_model_sigmas())
    want = [math.exp(math.log(8.0) + i / 3 * (math.log(0.5) - math.log(8.0))) for i in range(4)] + [0.0]
    assert sigmas.tolist() == pytest.approx(want, rel=1e-5)


class Gaussian:
    """The exact denoiser of N(MU, S^2) per element."""

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_: Any) -> torch.Tensor:
        sigma2 = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) ** 2
        return MU + S**2 / (S**2 + sigma2) * (x - MU)


def test_one_churned_euler_step_is_karras_algorithm_2() -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    eps = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sigmas = torch.tensor([3.0, 1.0, 0.0], dtype=torch.float64)
    out = SAMPLER_FUNCTIONS["sample_euler"](Gaussian(), x, sigmas[:2].clone(), s_churn=0.2, s_noise=0.7,
                                           noise_sampler=lambda a, b: eps)
    # gamma = min(s_churn / steps, sqrt(2) - 1) with steps = 1; sigma_hat = sigma * (1 + gamma);
    # x_hat = x + eps * s_noise * sqrt(sigma_hat^2 - sigma^2);
    # x' = x_hat + (x_hat - D(x_hat)) / sigma_hat * (1 - sigma_hat).
    gamma = min(0.2 / 1, 2**0.5 - 1)
    sigma_hat = 3.0 * (1 + gamma)
    x_hat = x + eps * 0.7 * math.sqrt(sigma_hat**2 - 9.0)
    denoised = MU + S**2 / (S**2 + sigma_hat**2) * (x_hat - MU)
    want = x_hat + (x_hat - denoised) / sigma_hat * (1.0 - sigma_hat)
    assert torch.allclose(out, want, atol=1e-12)


def test_euler_ancestral_with_eta_0_is_euler() -> None:
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 14
    sigmas = torch.tensor([14.0, 5.0, 1.0, 0.2, 0.0], dtype=torch.float64)
    euler = SAMPLER_FUNCTIONS["sample_euler"](Gaussian(), x, sigmas)
    ancestral = SAMPLER_FUNCTIONS["sample_euler_ancestral"](Gaussian(), x, sigmas, eta=0.0,
                                                            noise_sampler=lambda a, b: torch.ones_like(x))
    assert torch.equal(euler, ancestral)


# --- infotext -----------------------------------------------------------------------------------


def params_line(request: GenerationRequest) -> dict[str, str]:
    return dict(parse_infotext(build_infotext(request, 1, None, "v")).params)


def test_a1111_infotext_keys_are_written_only_where_they_reach_the_sampler_and_differ_from_the_defaults() -> None:
    defaults = GenerationRequest(sampler="Euler a", eta_ancestral=1.0, eta_ddim=0.0, s_churn=0.0, s_noise=1.0)
    assert not {"Eta", "Eta DDIM", "Sigma churn", "Sigma noise"} & set(params_line(defaults))
    line = params_line(GenerationRequest(sampler="Euler a", eta_ancestral=0.5, s_churn=3.0, eta_ddim=0.2))
    assert line["Eta"] == "0.5" and "Sigma churn" not in line and "Eta DDIM" not in line  # Euler a: no churn
    line = params_line(GenerationRequest(sampler="DDIM", eta_ddim=0.25, eta_ancestral=0.5))
    assert line["Eta DDIM"] == "0.25" and "Eta" not in line
    line = params_line(GenerationRequest(sampler="Heun", s_churn=2.5, s_tmin=0.1, s_tmax=9.0, s_noise=1.003))
    churn = (line["Sigma churn"], line["Sigma tmin"], line["Sigma tmax"], line["Sigma noise"])
    assert churn == ("2.5", "0.1", "9", "1.003")
    line = params_line(GenerationRequest(sampler="Euler", schedule=ScheduleType.KARRAS, sigma_min=0.1, sigma_max=5.0,
                                         rho=4.0))
    assert (line["Schedule min sigma"], line["Schedule max sigma"], line["Schedule rho"]) == ("0.1", "5", "4")
    # Uniform is not drawn between two sigmas: the values did not reach it and are not claimed.
    assert "Schedule max sigma" not in params_line(GenerationRequest(sampler="Euler", sigma_max=5.0))


def test_pasted_infotext_gives_the_parameters_back_and_a_missing_key_keeps_the_servers() -> None:
    text = ("a cat\nSteps: 20, Sampler: Heun, Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 64x64, "
            "Schedule min sigma: 0.1, Schedule max sigma: 5.0, Schedule rho: 4.0, Eta: 0.5, Eta DDIM: 0.2, "
            "Sigma churn: 2.5, Sigma tmin: 0.1, Sigma tmax: 9.0, Sigma noise: 1.003, Version: v1.10.1")
    request, warnings = request_from_infotext(parse_infotext(text))
    assert not warnings
    got = tuple(getattr(request, n) for n in ("sigma_min", "sigma_max", "rho", "eta_ancestral", "eta_ddim",
                                              "s_churn", "s_tmin", "s_tmax", "s_noise"))
    assert got == (0.1, 5.0, 4.0, 0.5, 0.2, 2.5, 0.1, 9.0, 1.003)
    # A1111 pastes only the settings the text names: the others stay as the request (the server) has them.
    plain, _ = request_from_infotext(parse_infotext("a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 64x64"),
                                     base=GenerationRequest(eta_ancestral=0.3))
    assert (plain.eta_ancestral, plain.s_noise) == (0.3, None)
    bad, warnings = request_from_infotext(parse_infotext("a\nSteps: 2, Seed: 1, Eta: lots"), base=GenerationRequest())
    assert bad.eta_ancestral is None and len(warnings) == 1 and warnings[0].startswith("Eta: 'lots' is not a number")


def test_a_request_out_of_range_is_refused_naming_the_field_and_its_range() -> None:
    from modules.errors import ValidationError
    from modules.request_checks import validate_request

    with pytest.raises(ValidationError) as caught:
        bad = GenerationRequest(s_noise=2.0, eta_ancestral=-0.1, img2img_fix_steps="yes")  # type: ignore[arg-type]
        validate_request(bad)
    problems = {e.field: e.message for e in caught.value.errors}
    assert "0 to 1.1" in problems["s_noise"] and "0 to 1" in problems["eta_ancestral"]
    assert "true or false" in problems["img2img_fix_steps"]
    with pytest.raises(ValidationError) as caught:
        validate_request(GenerationRequest(sigma_min=5.0, sigma_max=2.0))
    assert [e.field for e in caught.value.errors] == ["sigma_min"]
    validate_request(GenerationRequest(sigma_min=0.1, sigma_max=2.0, s_churn=100, rho=3))

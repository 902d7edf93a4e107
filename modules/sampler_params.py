"""A1111's sampler parameters (its "Sampler parameters" options): which samplers and schedules
each one reaches, their defaults and ranges, and the infotext keys A1111 writes for them.

Pure data (no torch), read by the options table, the settings, request checks, the infotext and
the sampling loop:

* ``eta_ancestral`` (infotext ``Eta``, default 1): the noise of every k-diffusion sampler with an
  eta (Euler a, DPM2 a, DPM++ 2S a, the DPM++ SDE samplers, DPM fast, DPM adaptive); 0 removes the
  ancestral noise, so Euler a becomes Euler.
* ``eta_ddim`` (``Eta DDIM``, default 0): DDIM's noise.
* ``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise`` (``Sigma churn``, ``Sigma tmin``, ``Sigma tmax``,
  ``Sigma noise``): Karras et al.'s stochastic churn, only in Euler, Heun and DPM2. Each step whose
  sigma lies in [s_tmin, s_tmax] (s_tmax 0: no upper end) is raised by gamma = min(s_churn / steps,
  sqrt(2) - 1) with fresh noise scaled by s_noise.
* ``sigma_min``, ``sigma_max``, ``rho`` (``Schedule min sigma``, ``Schedule max sigma``,
  ``Schedule rho``; 0: the model's / the schedule's default): the ends of the schedules drawn
  between two sigmas (Karras, Exponential, Polyexponential, SGM Uniform, KL Optimal, Normal,
  Beta), and rho of Karras (7) and Polyexponential (1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from modules.samplers import SCHEDULE_INFO, SamplerSpec, ScheduleType

# The sampler functions each parameter reaches (A1111 passes eta wherever the function takes one,
# and the churn parameters only to these three).
ETA_ANCESTRAL_FUNCTIONS = frozenset({
    "sample_euler_ancestral", "sample_dpm_2_ancestral", "sample_dpmpp_2s_ancestral", "sample_dpmpp_sde",
    "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde", "sample_dpm_fast", "sample_dpm_adaptive",
})
ETA_DDIM_FUNCTIONS = frozenset({"sample_ddim"})
CHURN_FUNCTIONS = frozenset({"sample_euler", "sample_heun", "sample_dpm_2"})
# Schedules drawn between sigma_min and sigma_max (the others follow the model's own timesteps or
# fixed levels), and those with a rho.
SIGMA_RANGE_SCHEDULES = frozenset({
    ScheduleType.KARRAS, ScheduleType.EXPONENTIAL, ScheduleType.POLYEXPONENTIAL, ScheduleType.SGM_UNIFORM,
    ScheduleType.KL_OPTIMAL, ScheduleType.NORMAL, ScheduleType.BETA,
})
RHO_SCHEDULES = frozenset(s for s, (rho, _) in SCHEDULE_INFO.items() if rho is not None)


@dataclass(frozen=True)
class SamplerParams:
    """The sampler parameters of one job, A1111's defaults."""

    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: no upper end (infinity)
    s_noise: float = 1.0
    sigma_min: float = 0.0  # 0: the model's smallest sigma
    sigma_max: float = 0.0  # 0: the model's largest sigma
    rho: float = 0.0  # 0: the schedule's own (Karras 7, Polyexponential 1)


DEFAULTS = SamplerParams()
NAMES: tuple[str, ...] = tuple(f.name for f in fields(SamplerParams))
# A1111's ranges (its sliders); the three it leaves open (number boxes) get bounds no model needs past.
RANGES: Mapping[str, tuple[float, float]] = MappingProxyType({
    "eta_ancestral": (0.0, 1.0), "eta_ddim": (0.0, 1.0), "s_churn": (0.0, 100.0), "s_tmin": (0.0, 10.0),
    "s_tmax": (0.0, 999.0), "s_noise": (0.0, 1.1), "sigma_min": (0.0, 1000.0), "sigma_max": (0.0, 1000.0),
    "rho": (0.0, 100.0),
})
# A1111's infotext key of each, in the order A1111 writes them (schedule first, then the sampler's).
INFOTEXT_KEYS: Mapping[str, str] = MappingProxyType({
    "sigma_min": "Schedule min sigma", "sigma_max": "Schedule max sigma", "rho": "Schedule rho",
    "eta_ancestral": "Eta", "eta_ddim": "Eta DDIM", "s_churn": "Sigma churn", "s_tmin": "Sigma tmin",
    "s_tmax": "Sigma tmax", "s_noise": "Sigma noise",
})
# A1111's Settings labels.
LABELS: Mapping[str, str] = MappingProxyType({
    "eta_ancestral": "Eta for k-diffusion samplers (noise multiplier; ancestral and SDE samplers)",
    "eta_ddim": "Eta for DDIM (noise multiplier; higher = more unpredictable results)",
    "s_churn": "sigma churn (amount of stochasticity; only Euler, Heun and DPM2)",
    "s_tmin": "sigma tmin (start of the sigma range churn applies to; only Euler, Heun and DPM2)",
    "s_tmax": "sigma tmax (end of the sigma range churn applies to, 0 = inf; only Euler, Heun and DPM2)",
    "s_noise": "sigma noise (amount of additional noise to counteract loss of detail during sampling)",
    "sigma_min": "sigma min (0 = default (~0.03); minimum noise strength for the noise schedule)",
    "sigma_max": "sigma max (0 = default (~14.6); maximum noise strength for the noise schedule)",
    "rho": "rho (0 = default (7 for karras, 1 for polyexponential); higher values give a steeper schedule)",
})


def param_problem(name: str, value: object) -> str | None:
    """Why ``value`` cannot be sampler parameter ``name`` (saying its range); None when it can."""
    low, high = RANGES[name]
    allowed = f"a number from {low:g} to {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return f"must be {allowed}, got {value!r}"
    if not low <= value <= high:
        return f"must be {allowed}, got {value!r}"
    return None


def parse_param(name: str, value: object) -> float:
    """``value`` as sampler parameter ``name``; ValueError saying the range otherwise."""
    problem = param_problem(name, value)
    if problem is not None:
        raise ValueError(problem)
    return float(value)  # type: ignore[arg-type]


def sigma_range_problem(sigma_min: float, sigma_max: float) -> str | None:
    """Both ends set, the smaller must be below the larger."""
    if sigma_min and sigma_max and sigma_min >= sigma_max:
        return f"sigma_min ({sigma_min:g}) must be below sigma_max ({sigma_max:g})"
    return None


def from_values(values: Mapping[str, Any] | Any) -> SamplerParams:
    """The parameters from a mapping or an object with these names; None or missing: the default."""
    def read(name: str) -> float:
        value = values.get(name) if isinstance(values, Mapping) else getattr(values, name, None)
        return getattr(DEFAULTS, name) if value is None else float(value)

    return SamplerParams(**{name: read(name) for name in NAMES})


def eta_name(spec: SamplerSpec) -> str | None:
    """Which eta reaches ``spec``'s function: "eta_ancestral", "eta_ddim" or None."""
    if spec.function in ETA_ANCESTRAL_FUNCTIONS:
        return "eta_ancestral"
    return "eta_ddim" if spec.function in ETA_DDIM_FUNCTIONS else None


def schedule_overrides(spec: SamplerSpec, schedule: ScheduleType, params: SamplerParams) -> dict[str, float]:
    """sigma_min / sigma_max / rho that change the schedule ``spec`` walks (those set and used)."""
    if not spec.uses_schedule:
        return {}
    resolved = spec.resolve_schedule(schedule)
    wanted = {}
    if resolved in SIGMA_RANGE_SCHEDULES:
        wanted.update({n: getattr(params, n) for n in ("sigma_min", "sigma_max") if getattr(params, n)})
    default_rho = SCHEDULE_INFO[resolved][0]
    if resolved in RHO_SCHEDULES and params.rho and params.rho != default_rho:
        wanted["rho"] = params.rho
    return wanted


def sampler_kwargs(spec: SamplerSpec, params: SamplerParams) -> dict[str, float]:
    """The keyword arguments the parameters give ``spec``'s function (A1111 passes eta always)."""
    kwargs: dict[str, float] = {}
    eta = eta_name(spec)
    if eta is not None:
        kwargs["eta"] = getattr(params, eta)
    if spec.function in CHURN_FUNCTIONS:
        kwargs.update(s_churn=params.s_churn, s_tmin=params.s_tmin, s_tmax=params.s_tmax or math.inf,
                      s_noise=params.s_noise)
    return kwargs


def infotext_params(spec: SamplerSpec, schedule: ScheduleType, params: SamplerParams) -> dict[str, float]:
    """A1111's infotext keys for the parameters that reached this job and differ from the defaults."""
    used = dict(schedule_overrides(spec, schedule, params))
    eta = eta_name(spec)
    if eta is not None and getattr(params, eta) != getattr(DEFAULTS, eta):
        used[eta] = getattr(params, eta)
    if spec.function in CHURN_FUNCTIONS:
        used.update({n: getattr(params, n) for n in ("s_churn", "s_tmin", "s_tmax", "s_noise")
                     if getattr(params, n) != getattr(DEFAULTS, n)})
    return {INFOTEXT_KEYS[n]: used[n] for n in INFOTEXT_KEYS if n in used}


def request_problems(request: Any) -> list[tuple[str, str]]:
    """(field, problem) for every sampler parameter a request sets out of range (None: the server's),
    and for its two flags of A1111's options img2img_fix_steps and live_previews_enable."""
    problems = [(name, problem) for name in NAMES if getattr(request, name, None) is not None
                for problem in [param_problem(name, getattr(request, name))] if problem is not None]
    low, high = getattr(request, "sigma_min", None), getattr(request, "sigma_max", None)
    if not problems and low is not None and high is not None:
        pair = sigma_range_problem(low, high)
        if pair is not None:
            problems.append(("sigma_min", pair))
    for flag in ("img2img_fix_steps", "live_previews"):
        value = getattr(request, flag, None)
        if value is not None and not isinstance(value, bool):
            problems.append((flag, f"must be true or false, got {value!r}"))
    return problems

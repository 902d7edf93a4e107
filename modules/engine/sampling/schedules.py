"""Sigma schedules: A1111's twelve schedule types, computed from the model's own noise levels.

Each function returns ``steps + 1`` decreasing sigmas ending at 0 (KL Optimal, as in A1111, ends at
the model's smallest sigma instead). Model-derived schedules interpolate log-sigma between the
model's discrete timesteps, so fractional timesteps are allowed. On a flow model's table
(``ModelSigmas.flow``: sigma in (0, 1], the top level exactly 1) every schedule ends at 0 and
starts at 1, and Align Your Steps, defined for SD1.5 / SDXL noise levels only, is refused.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import torch
from scipy import stats

from modules.samplers import FLOW_REFUSED_SCHEDULES, ScheduleType


class ModelSigmas:
    """The model's discrete noise levels (one per training timestep) and the maps sigma <-> t."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self._set_sigmas(((1 - alphas_cumprod) / alphas_cumprod) ** 0.5)
        self.flow = False

    @classmethod
    def from_sigmas(cls, sigmas: torch.Tensor, flow: bool = True) -> ModelSigmas:
        """A table given as sigmas directly, increasing (flow families: sigma = shifted t, ending at
        1; ``flow`` says the levels are a flow model's, x = (1 - sigma) x0 + sigma noise)."""
        table = cls.__new__(cls)
        table._set_sigmas(sigmas)
        table.flow = flow
        return table

    def _set_sigmas(self, sigmas: torch.Tensor) -> None:
        self.sigmas = sigmas.float()
        self.log_sigmas = self.sigmas.log()
        # The table on each device it has been used on: copied there once, not at every model call.
        self._on_device: dict[torch.device, torch.Tensor] = {self.log_sigmas.device: self.log_sigmas}

    def _log_sigmas_on(self, device: torch.device) -> torch.Tensor:
        table = self._on_device.get(device)
        if table is None:
            table = self._on_device[device] = self.log_sigmas.to(device)
        return table

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep of each sigma, by linear interpolation in log-sigma (k-diffusion's
        rule; a binary search instead of its full distance table, since it runs every model call)."""
        log_sigmas = self._log_sigmas_on(sigma.device)
        log_sigma = sigma.float().log()
        low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(0, log_sigmas.shape[0] - 2)
        high = low + 1
        w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        log_sigmas = self._log_sigmas_on(t.device)
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas.float(), sigmas.new_zeros([1])])


def uniform(n: int, model: ModelSigmas) -> torch.Tensor:
    """k-diffusion's default: timesteps evenly spaced from the last to the first."""
    t = torch.linspace(len(model.sigmas) - 1, 0, n)
    return _with_zero(model.t_to_sigma(t))


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Evenly spaced in log-sigma."""
    return _with_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Log-sigma following a polynomial ramp of degree ``rho``."""
    ramp = torch.linspace(1, 0, n) ** rho
    return _with_zero((ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp())


def normal(n: int, model: ModelSigmas, sgm: bool = False, sigma_min: float | None = None,
           sigma_max: float | None = None) -> torch.Tensor:
    """Timesteps evenly spaced between those of sigma_max and sigma_min (the model's unless given);
    SGM drops the endpoint."""
    start = model.sigma_to_t(torch.tensor(model.sigma_max if sigma_max is None else sigma_max))
    end = model.sigma_to_t(torch.tensor(model.sigma_min if sigma_min is None else sigma_min))
    t = torch.linspace(float(start), float(end), n + 1)[:-1] if sgm else torch.linspace(float(start), float(end), n)
    return _with_zero(model.t_to_sigma(t))


def simple(n: int, model: ModelSigmas) -> torch.Tensor:
    """Every (len/n)-th model sigma from the top (ComfyUI's "simple")."""
    stride = len(model.sigmas) / n
    return _with_zero(torch.stack([model.sigmas[-(1 + int(i * stride))] for i in range(n)]))


def ddim(n: int, model: ModelSigmas) -> torch.Tensor:
    """DDIM's uniform discrete timesteps (1, 1 + k, 1 + 2k, ...), from the top. As in A1111, a
    step count that does not divide the 1000 timesteps can give one step more than asked.

    On a flow table the same stride is counted down from the last level (sigma 1), as diffusers'
    flow schedulers space their steps ("trailing"): a flow model's text-to-image start must be pure
    noise, and x at sigma < 1 would need the data's share it does not have."""
    stride = max(len(model.sigmas) // n, 1)
    if model.flow:
        return _with_zero(model.sigmas.flip(0)[::stride])
    return _with_zero(model.sigmas[1::stride].flip(0))


def kl_optimal(n: int, sigma_min: float, sigma_max: float, flow: bool = False) -> torch.Tensor:
    """Evenly spaced in arctan(sigma) (Sabour et al. 2024); ends at sigma_min, as A1111's does.

    On a flow table (``flow``) the n levels run from sigma_max to sigma_min and a final 0 follows
    (ComfyUI's form): a flow model's last step must reach the data, sigma 0. The first level is
    sigma_max exactly (tan(atan(1)) is not 1 in floating point)."""
    if flow:
        ramp = torch.arange(n, dtype=torch.float64) / max(n - 1, 1)
        levels = torch.tan(ramp * math.atan(sigma_min) + (1 - ramp) * math.atan(sigma_max))
        levels[0] = sigma_max
        return _with_zero(levels)
    steps = torch.arange(n + 1, dtype=torch.float32) / n
    return torch.tan(steps * math.atan(sigma_min) + (1 - steps) * math.atan(sigma_max))


_AYS_SD15 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
_AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


class ScheduleUnsupported(ValueError):
    """A schedule type that is not defined for this model's noise levels."""


def align_your_steps(n: int, is_sdxl: bool) -> torch.Tensor:
    """NVIDIA's optimised 10-step noise levels, log-linearly resampled to ``n`` steps."""
    levels = np.array(_AYS_SDXL if is_sdxl else _AYS_SD15)
    if n != len(levels):
        xs = np.linspace(0, 1, len(levels))
        ys = np.log(levels[::-1])
        levels = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].copy()
    return _with_zero(torch.from_numpy(levels))


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta_: float = 0.6) -> torch.Tensor:
    """Spacing by the Beta(0.6, 0.6) quantile function (Lee et al. 2024), as A1111's default."""
    quantiles = [stats.beta.ppf(x, alpha, beta_) for x in 1 - np.linspace(0, 1, n)]
    return _with_zero(torch.tensor([sigma_min + q * (sigma_max - sigma_min) for q in quantiles]))


def compute_sigmas(schedule: ScheduleType, n: int, model: ModelSigmas, is_sdxl: bool = False,
                   overrides: Mapping[str, float] | None = None) -> torch.Tensor:
    """``n`` steps of ``schedule`` (not Automatic: resolve it through the sampler table first).

    ``overrides``: A1111's ``sigma_min``, ``sigma_max`` (the range of the schedules drawn between
    two sigmas, instead of the model's) and ``rho`` (of Karras and Polyexponential)."""
    overrides = overrides or {}
    lo, hi = overrides.get("sigma_min", model.sigma_min), overrides.get("sigma_max", model.sigma_max)
    if model.flow:  # a flow model has no level above 1 (pure noise), whatever range was asked for
        hi = min(hi, model.sigma_max)
        lo = min(lo, hi)
    rho = overrides.get("rho")
    table: dict[ScheduleType, Callable[[], torch.Tensor]] = {
        ScheduleType.UNIFORM: lambda: uniform(n, model),
        ScheduleType.KARRAS: lambda: karras(n, lo, hi, 7.0 if rho is None else rho),
        ScheduleType.EXPONENTIAL: lambda: exponential(n, lo, hi),
        ScheduleType.POLYEXPONENTIAL: lambda: polyexponential(n, lo, hi, 1.0 if rho is None else rho),
        ScheduleType.SGM_UNIFORM: lambda: normal(n, model, sgm=True, sigma_min=lo, sigma_max=hi),
        ScheduleType.KL_OPTIMAL: lambda: kl_optimal(n, lo, hi),
        ScheduleType.ALIGN_YOUR_STEPS: lambda: align_your_steps(n, is_sdxl),
        ScheduleType.SIMPLE: lambda: simple(n, model),
        ScheduleType.NORMAL: lambda: normal(n, model, sigma_min=lo, sigma_max=hi),
        ScheduleType.DDIM: lambda: ddim(n, model),
        ScheduleType.BETA: lambda: beta(n, lo, hi),
    }
    if schedule not in table:
        raise ValueError(f"{schedule.value} is not a concrete schedule")
    if model.flow:
        return _flow_schedule(schedule, n, model, lo, hi, table)
    return table[schedule]()


def _flow_schedule(schedule: ScheduleType, n: int, model: ModelSigmas, lo: float, hi: float,
                   table: Mapping[ScheduleType, Callable[[], torch.Tensor]]) -> torch.Tensor:
    """A schedule on a flow model's levels (sigma in (0, 1]): every type as on a UNet, but Align
    Your Steps is refused (NVIDIA's levels are SD1.5's and SDXL's noise levels; none is published
    for a flow model) and KL Optimal ends at 0."""
    if schedule in FLOW_REFUSED_SCHEDULES:
        raise ScheduleUnsupported(FLOW_REFUSED_SCHEDULES[schedule])
    if schedule is ScheduleType.KL_OPTIMAL:
        return kl_optimal(n, lo, hi, flow=True)
    return table[schedule]()

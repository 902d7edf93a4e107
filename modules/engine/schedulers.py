"""Building a diffusers scheduler from a sampler-table entry and a schedule type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from modules.samplers import NoiseSource, SamplerSpec, ScheduleType

# How each schedule type is expressed in diffusers scheduler options.
SCHEDULE_OPTIONS: Mapping[ScheduleType, Mapping[str, Any]] = {
    ScheduleType.UNIFORM: {"timestep_spacing": "linspace"},
    ScheduleType.SGM_UNIFORM: {"timestep_spacing": "trailing"},
    ScheduleType.KARRAS: {"use_karras_sigmas": True},
    ScheduleType.EXPONENTIAL: {"use_exponential_sigmas": True},
    ScheduleType.BETA: {"use_beta_sigmas": True},
}


def make_scheduler(spec: SamplerSpec, schedule: ScheduleType, base_config: Mapping[str, Any],
                   seed: int) -> SchedulerMixin:
    """A fresh scheduler for one pipeline call, keeping the model's betas and prediction type."""
    cls = getattr(diffusers, spec.scheduler_class)
    options: dict[str, Any] = dict(spec.options)
    concrete = spec.resolve_schedule(schedule)
    if concrete is not None:
        options.update(SCHEDULE_OPTIONS[concrete])
    if spec.noise is NoiseSource.BROWNIAN:
        options["noise_sampler_seed"] = seed  # otherwise diffusers seeds its Brownian tree randomly
    config = {k: v for k, v in base_config.items() if k not in ("use_karras_sigmas", "use_exponential_sigmas",
                                                               "use_beta_sigmas", "timestep_spacing")}
    if concrete is None:
        config["timestep_spacing"] = base_config.get("timestep_spacing", "leading")
    return cls.from_config(config, **options)

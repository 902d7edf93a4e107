"""The sampler table: every sampler and schedule type Atelier offers, in one place.

Pure data (no torch): the UI, the API and request validation read names from here, and the engine
turns an entry into a diffusers scheduler. A1111 names are used throughout, because users' saved
infotexts and API clients carry them. Only samplers with a true diffusers equivalent are listed;
DPM++ 2S a, DPM fast, DPM adaptive, Restart and the CFG++ variants have none and are left out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class ScheduleType(enum.Enum):
    """A1111's schedule types that diffusers schedulers can express. Values are the UI labels."""

    AUTOMATIC = "Automatic"
    UNIFORM = "Uniform"
    KARRAS = "Karras"
    EXPONENTIAL = "Exponential"
    SGM_UNIFORM = "SGM Uniform"
    BETA = "Beta"

    @property
    def api_name(self) -> str:
        """The lowercase name A1111's API uses (``karras``, ``sgm_uniform``)."""
        return self.value.lower().replace(" ", "_")


class NoiseSource(enum.Enum):
    """Where a sampler's randomness comes from, beyond the initial latent noise."""

    NONE = "none"  # deterministic after the initial noise
    ANCESTRAL = "ancestral"  # fresh noise every step from the per-image generators
    BROWNIAN = "brownian"  # a Brownian tree seeded from the job seed (DPM++ SDE)


# Schedules reachable through each diffusers scheduler's own options.
_SIGMA_SCHEDULES = (ScheduleType.KARRAS, ScheduleType.EXPONENTIAL, ScheduleType.BETA)
_SPACING_SCHEDULES = (ScheduleType.UNIFORM, ScheduleType.SGM_UNIFORM)
ALL_SCHEDULES = (ScheduleType.AUTOMATIC, *_SPACING_SCHEDULES, *_SIGMA_SCHEDULES)
SPACING_ONLY = (ScheduleType.AUTOMATIC, *_SPACING_SCHEDULES)


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: its A1111 name, the diffusers scheduler that runs it, and how."""

    name: str
    scheduler_class: str
    options: Mapping[str, object] = field(default_factory=dict)
    default_schedule: ScheduleType | None = None  # what Automatic means; None = scheduler default
    schedules: tuple[ScheduleType, ...] = ALL_SCHEDULES
    noise: NoiseSource = NoiseSource.NONE
    aliases: tuple[str, ...] = ()

    def resolve_schedule(self, schedule: ScheduleType) -> ScheduleType | None:
        """The concrete schedule to apply; None keeps the scheduler's own default spacing."""
        return self.default_schedule if schedule is ScheduleType.AUTOMATIC else schedule


def _spec(name: str, cls: str, **kw: object) -> SamplerSpec:
    options = MappingProxyType(dict(kw.pop("options", {})))  # type: ignore[arg-type]
    return SamplerSpec(name=name, scheduler_class=cls, options=options, **kw)  # type: ignore[arg-type]


_DPMPP = "DPMSolverMultistepScheduler"
SAMPLERS: tuple[SamplerSpec, ...] = (
    _spec("DPM++ 2M", _DPMPP, options={"algorithm_type": "dpmsolver++", "solver_order": 2},
          default_schedule=ScheduleType.KARRAS, aliases=("k_dpmpp_2m",)),
    _spec("DPM++ SDE", "DPMSolverSDEScheduler", default_schedule=ScheduleType.KARRAS,
          schedules=(ScheduleType.AUTOMATIC, *_SIGMA_SCHEDULES), noise=NoiseSource.BROWNIAN,
          aliases=("k_dpmpp_sde",)),
    _spec("DPM++ 2M SDE", _DPMPP, options={"algorithm_type": "sde-dpmsolver++",
          "solver_order": 2}, default_schedule=ScheduleType.KARRAS, noise=NoiseSource.ANCESTRAL,
          aliases=("k_dpmpp_2m_sde",)),
    _spec("DPM++ 2M SDE Heun", _DPMPP, options={"algorithm_type": "sde-dpmsolver++", "solver_order": 2,
          "solver_type": "heun"}, default_schedule=ScheduleType.EXPONENTIAL,
          noise=NoiseSource.ANCESTRAL, aliases=("k_dpmpp_2m_sde_heun",)),
    _spec("DPM++ 3M SDE", _DPMPP, options={"algorithm_type": "sde-dpmsolver++", "solver_order": 3},
          default_schedule=ScheduleType.EXPONENTIAL, noise=NoiseSource.ANCESTRAL,
          aliases=("k_dpmpp_3m_sde",)),
    _spec("Euler a", "EulerAncestralDiscreteScheduler", default_schedule=ScheduleType.UNIFORM,
          schedules=SPACING_ONLY, noise=NoiseSource.ANCESTRAL, aliases=("k_euler_a", "k_euler_ancestral")),
    _spec("Euler", "EulerDiscreteScheduler", default_schedule=ScheduleType.UNIFORM, aliases=("k_euler",)),
    _spec("LMS", "LMSDiscreteScheduler", default_schedule=ScheduleType.UNIFORM, aliases=("k_lms",)),
    _spec("Heun", "HeunDiscreteScheduler", default_schedule=ScheduleType.UNIFORM, aliases=("k_heun",)),
    _spec("DPM2", "KDPM2DiscreteScheduler", default_schedule=ScheduleType.KARRAS, aliases=("k_dpm_2",)),
    _spec("DPM2 a", "KDPM2AncestralDiscreteScheduler", default_schedule=ScheduleType.KARRAS,
          noise=NoiseSource.ANCESTRAL, aliases=("k_dpm_2_a",)),
    _spec("DDIM", "DDIMScheduler", options={"set_alpha_to_one": False}, schedules=SPACING_ONLY,
          aliases=("ddim",)),
    _spec("PLMS", "PNDMScheduler", options={"skip_prk_steps": True}, schedules=SPACING_ONLY,
          aliases=("plms",)),
    _spec("UniPC", "UniPCMultistepScheduler", aliases=("unipc",)),
    _spec("LCM", "LCMScheduler", schedules=SPACING_ONLY, noise=NoiseSource.ANCESTRAL, aliases=("lcm",)),
)

DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULE = ScheduleType.AUTOMATIC


def sampler_names() -> tuple[str, ...]:
    """Sampler names in table order, as the UI and ``/sdapi/v1/samplers`` list them."""
    return tuple(spec.name for spec in SAMPLERS)


def _lookup() -> dict[str, SamplerSpec]:
    table: dict[str, SamplerSpec] = {}
    for spec in SAMPLERS:
        for key in (spec.name, *spec.aliases):
            table[key.lower()] = spec
    return table


_BY_NAME: Mapping[str, SamplerSpec] = MappingProxyType(_lookup())
_SCHEDULE_BY_NAME: Mapping[str, ScheduleType] = MappingProxyType(
    {key: s for s in ScheduleType for key in (s.value.lower(), s.api_name)}
)


def find_schedule(name: str) -> ScheduleType | None:
    """A schedule type by label or API name, case-insensitively; None when unknown."""
    return _SCHEDULE_BY_NAME.get(name.strip().lower())


def resolve_sampler(name: str) -> tuple[SamplerSpec, ScheduleType | None] | None:
    """Find a sampler by name or alias, accepting A1111's old combined names.

    ``"DPM++ 2M Karras"`` gives ``(DPM++ 2M, Karras)``; a plain name gives ``(spec, None)``, meaning
    the name itself implies no schedule. None when nothing matches.
    """
    key = " ".join(name.split()).lower()
    if key in _BY_NAME:
        return _BY_NAME[key], None
    for schedule in ScheduleType:
        suffix = " " + schedule.value.lower()
        if schedule is not ScheduleType.AUTOMATIC and key.endswith(suffix):
            spec = _BY_NAME.get(key[: -len(suffix)])
            if spec is not None:
                return spec, schedule
    return None

"""The sampler table: every sampler and schedule type Atelier offers, in one place.

Pure data (no torch): the UI, the API and request validation read names from here, and the engine
calls ``function`` (a name in :mod:`modules.engine.sampling.functions`) in k-diffusion's calling
convention. A1111's names are used throughout, because users' infotexts and API clients carry
them; A1111's old combined names ("DPM++ 2M Karras") resolve to sampler + schedule.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


class ScheduleType(enum.Enum):
    """A1111's schedule types. Values are the UI and infotext labels."""

    AUTOMATIC = "Automatic"
    UNIFORM = "Uniform"
    KARRAS = "Karras"
    EXPONENTIAL = "Exponential"
    POLYEXPONENTIAL = "Polyexponential"
    SGM_UNIFORM = "SGM Uniform"
    KL_OPTIMAL = "KL Optimal"
    ALIGN_YOUR_STEPS = "Align Your Steps"
    SIMPLE = "Simple"
    NORMAL = "Normal"
    DDIM = "DDIM"
    BETA = "Beta"

    @property
    def api_name(self) -> str:
        """The lowercase name A1111's API uses (``karras``, ``sgm_uniform``)."""
        return self.value.lower().replace(" ", "_")


# A1111's default rho and whether the schedule needs the model's own sigmas (API: schedulers).
SCHEDULE_INFO: Mapping[ScheduleType, tuple[float | None, bool]] = MappingProxyType({
    ScheduleType.AUTOMATIC: (None, False), ScheduleType.UNIFORM: (None, True),
    ScheduleType.KARRAS: (7.0, False), ScheduleType.EXPONENTIAL: (None, False),
    ScheduleType.POLYEXPONENTIAL: (1.0, False), ScheduleType.SGM_UNIFORM: (None, True),
    ScheduleType.KL_OPTIMAL: (None, False), ScheduleType.ALIGN_YOUR_STEPS: (None, False),
    ScheduleType.SIMPLE: (None, True), ScheduleType.NORMAL: (None, True),
    ScheduleType.DDIM: (None, True), ScheduleType.BETA: (None, True),
})


class RngSource(enum.Enum):
    """Where per-image noise is drawn (A1111's random number source); values as the infotext's RNG."""

    GPU = "GPU"  # on the compute device (A1111's default; on a CPU-only machine, the CPU)
    CPU = "CPU"  # always on the CPU: the same seed gives the same image on any hardware


class NoiseSource(enum.Enum):
    """Where a sampler's randomness comes from, beyond the initial latent noise."""

    NONE = "none"  # deterministic after the initial noise
    ANCESTRAL = "ancestral"  # fresh noise every step from each image's generator (ENSD applies)
    BROWNIAN = "brownian"  # a Brownian tree per image seed (the SDE samplers)


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler: A1111 name, the function that runs it, and how it is driven."""

    name: str
    function: str  # in modules.engine.sampling.functions
    default_schedule: ScheduleType = ScheduleType.UNIFORM  # what Automatic means for this sampler
    noise: NoiseSource = NoiseSource.NONE
    second_order: bool = False  # two model calls per step
    discard_penultimate_sigma: bool = False  # A1111: compute n + 1 sigmas, drop the next-to-last
    uses_schedule: bool = True  # False: the sampler picks its own steps between sigma_min and sigma_max
    options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    aliases: tuple[str, ...] = ()

    def resolve_schedule(self, schedule: ScheduleType) -> ScheduleType:
        return self.default_schedule if schedule is ScheduleType.AUTOMATIC else schedule

    @property
    def uses_ensd(self) -> bool:
        return self.noise is NoiseSource.ANCESTRAL


def _spec(name: str, function: str, *aliases: str, options: Mapping[str, object] | None = None,
          **flags: object) -> SamplerSpec:
    return SamplerSpec(name=name, function=function, aliases=aliases,
                       options=MappingProxyType(dict(options or {})), **flags)  # type: ignore[arg-type]


_K, _E = ScheduleType.KARRAS, ScheduleType.EXPONENTIAL
_ANC, _BROWN = NoiseSource.ANCESTRAL, NoiseSource.BROWNIAN
SAMPLERS: tuple[SamplerSpec, ...] = (
    _spec("DPM++ 2M", "sample_dpmpp_2m", "k_dpmpp_2m", default_schedule=_K),
    _spec("DPM++ SDE", "sample_dpmpp_sde", "k_dpmpp_sde", default_schedule=_K, noise=_BROWN, second_order=True),
    _spec("DPM++ 2M SDE", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde", default_schedule=_E, noise=_BROWN),
    _spec("DPM++ 2M SDE Heun", "sample_dpmpp_2m_sde", "k_dpmpp_2m_sde_heun", default_schedule=_E, noise=_BROWN,
          options={"solver_type": "heun"}),
    _spec("DPM++ 2S a", "sample_dpmpp_2s_ancestral", "k_dpmpp_2s_a", default_schedule=_K, noise=_ANC,
          second_order=True),
    _spec("DPM++ 3M SDE", "sample_dpmpp_3m_sde", "k_dpmpp_3m_sde", default_schedule=_E, noise=_BROWN,
          discard_penultimate_sigma=True),
    _spec("Euler a", "sample_euler_ancestral", "k_euler_a", "k_euler_ancestral", noise=_ANC),
    _spec("Euler", "sample_euler", "k_euler"),
    _spec("LMS", "sample_lms", "k_lms"),
    _spec("Heun", "sample_heun", "k_heun", second_order=True),
    _spec("DPM2", "sample_dpm_2", "k_dpm_2", second_order=True, discard_penultimate_sigma=True),
    _spec("DPM2 a", "sample_dpm_2_ancestral", "k_dpm_2_a", noise=_ANC, second_order=True,
          discard_penultimate_sigma=True),
    _spec("DPM fast", "sample_dpm_fast", "k_dpm_fast", noise=_ANC, uses_schedule=False),
    _spec("DPM adaptive", "sample_dpm_adaptive", "k_dpm_ad", noise=_ANC, uses_schedule=False),
    _spec("Restart", "sample_restart", "restart", default_schedule=_K, second_order=True),
    _spec("DDIM", "sample_ddim", "ddim", default_schedule=ScheduleType.DDIM),
    _spec("PLMS", "sample_plms", "plms", default_schedule=ScheduleType.DDIM),
    _spec("UniPC", "sample_unipc", "unipc"),
    _spec("LCM", "sample_lcm", "k_lcm", "lcm", noise=_ANC),
)

# Schedule types a flow-matching family cannot use, and why (the engine raises the same words).
FLOW_REFUSED_SCHEDULES: Mapping[ScheduleType, str] = MappingProxyType({
    ScheduleType.ALIGN_YOUR_STEPS: (
        "the Align Your Steps schedule is defined for Stable Diffusion 1.5 and SDXL noise levels only; "
        "a flow-matching model needs another schedule type (Simple, its default, or Beta, Karras, ...)"),
})


def flow_refusal(spec: SamplerSpec, schedule: ScheduleType) -> str | None:
    """Why ``spec`` with ``schedule`` cannot run on a flow-matching family, or None when it can.

    Every sampler in the table has a flow form; only schedule types can be refused (a request
    check can call this before any model work, and answer 422 with the text)."""
    return FLOW_REFUSED_SCHEDULES.get(spec.resolve_schedule(schedule))


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
    return _SCHEDULE_BY_NAME.get(" ".join(name.split()).lower())


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

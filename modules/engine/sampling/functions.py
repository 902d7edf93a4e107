"""The sampler functions by name: where the sampler table's ``function`` names resolve.

Every function takes ``(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)``
in k-diffusion's calling convention; the keys are the functions' own names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from modules.engine.sampling.samplers_classic import (
    sample_ddim,
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
    sample_lms,
    sample_plms,
)
from modules.engine.sampling.samplers_dpm_solver import (
    sample_dpm_adaptive,
    sample_dpm_fast,
)
from modules.engine.sampling.samplers_dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from modules.engine.sampling.samplers_extra import sample_restart, sample_unipc

SAMPLER_FUNCTIONS: Mapping[str, Callable] = MappingProxyType({function.__name__: function for function in (
    sample_euler, sample_euler_ancestral, sample_heun, sample_dpm_2, sample_dpm_2_ancestral, sample_lms,
    sample_ddim, sample_plms, sample_lcm,
    sample_dpmpp_2m, sample_dpmpp_2s_ancestral, sample_dpmpp_sde, sample_dpmpp_2m_sde, sample_dpmpp_3m_sde,
    sample_dpm_fast, sample_dpm_adaptive,
    sample_restart, sample_unipc,
)})


def get_sampler_function(name: str) -> Callable:
    """The sampler function called ``name`` (e.g. ``"sample_euler"``); KeyError names the known ones."""
    try:
        return SAMPLER_FUNCTIONS[name]
    except KeyError:
        known = ", ".join(sorted(SAMPLER_FUNCTIONS))
        raise KeyError(f"unknown sampler function {name!r}; known: {known}") from None

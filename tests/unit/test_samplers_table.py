"""The sampler table is the single source of names, and every entry names a real sampler function."""

from __future__ import annotations

import inspect

import pytest

from modules.engine.sampling.functions import SAMPLER_FUNCTIONS
from modules.samplers import (
    SAMPLERS,
    ScheduleType,
    find_schedule,
    resolve_sampler,
    sampler_names,
)

A1111_SAMPLERS = ("DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
                  "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
                  "DDIM", "PLMS", "UniPC", "LCM")
A1111_SCHEDULES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
                   "Align Your Steps", "Simple", "Normal", "DDIM", "Beta")


def test_names_are_a1111s_and_unique() -> None:
    assert sampler_names() == A1111_SAMPLERS
    assert tuple(s.value for s in ScheduleType) == A1111_SCHEDULES


@pytest.mark.parametrize("spec", SAMPLERS, ids=[s.name for s in SAMPLERS])
def test_each_entry_names_a_function_in_the_k_diffusion_convention(spec) -> None:
    fn = SAMPLER_FUNCTIONS[spec.function]
    params = list(inspect.signature(fn).parameters)
    assert params[:6] == ["model", "x", "sigmas", "extra_args", "callback", "disable"]
    for option in spec.options:
        assert option in params, f"{spec.name}: {option}"
    if spec.noise.value != "none":
        assert "noise_sampler" in params, f"{spec.name} draws noise but takes no noise source"
    assert spec.default_schedule is not ScheduleType.AUTOMATIC


def test_legacy_and_alias_names_resolve() -> None:
    assert resolve_sampler("DPM++ 2M Karras")[0].name == "DPM++ 2M"
    assert resolve_sampler("DPM++ 2M Karras")[1] is ScheduleType.KARRAS
    assert resolve_sampler("DPM++ 2M SDE Exponential")[0].name == "DPM++ 2M SDE"
    assert resolve_sampler("DPM++ 2M SDE Heun")[1] is None
    assert resolve_sampler("DPM++ 2M SDE Heun Karras")[0].name == "DPM++ 2M SDE Heun"
    assert resolve_sampler("k_euler_a")[0].name == "Euler a"
    assert resolve_sampler("Euler  A")[0].name == "Euler a"
    assert resolve_sampler("Nope") is None
    assert find_schedule("sgm_uniform") is ScheduleType.SGM_UNIFORM
    assert find_schedule("align_your_steps") is ScheduleType.ALIGN_YOUR_STEPS
    assert find_schedule("KARRAS") is ScheduleType.KARRAS

"""The sampler table is the single source of names, and every entry is runnable as declared."""

from __future__ import annotations

import inspect

import diffusers
import pytest

from modules.engine.schedulers import SCHEDULE_OPTIONS, make_scheduler
from modules.samplers import SAMPLERS, ScheduleType, find_schedule, resolve_sampler, sampler_names

SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "steps_offset": 1, "prediction_type": "epsilon",
                  "timestep_spacing": "leading"}


def test_names_are_unique_and_only_true_equivalents_are_listed() -> None:
    names = sampler_names()
    assert len(names) == len(set(names))
    for missing in ("DPM++ 2S a", "DPM fast", "DPM adaptive", "Restart", "DDIM CFG++"):
        assert missing not in names


@pytest.mark.parametrize("spec", SAMPLERS, ids=[s.name for s in SAMPLERS])
def test_each_declared_schedule_is_an_option_of_its_scheduler(spec) -> None:
    params = inspect.signature(getattr(diffusers, spec.scheduler_class).__init__).parameters
    for option in spec.options:
        assert option in params, f"{spec.name}: {option}"
    for schedule in spec.schedules:
        concrete = spec.resolve_schedule(schedule)
        for option in SCHEDULE_OPTIONS.get(concrete, {}) if concrete else {}:
            assert option in params, f"{spec.name} cannot do {schedule.value}"


@pytest.mark.parametrize("spec", SAMPLERS, ids=[s.name for s in SAMPLERS])
def test_make_scheduler_applies_the_schedule(spec) -> None:
    for schedule in spec.schedules:
        scheduler = make_scheduler(spec, schedule, SD15_SCHEDULER, seed=1)
        assert type(scheduler).__name__ == spec.scheduler_class
        concrete = spec.resolve_schedule(schedule)
        for key, value in (SCHEDULE_OPTIONS.get(concrete, {}) if concrete else {}).items():
            assert scheduler.config[key] == value
        scheduler.set_timesteps(5)


def test_legacy_and_alias_names_resolve() -> None:
    assert resolve_sampler("DPM++ 2M Karras")[0].name == "DPM++ 2M"
    assert resolve_sampler("DPM++ 2M Karras")[1] is ScheduleType.KARRAS
    assert resolve_sampler("DPM++ 2M SDE Exponential")[0].name == "DPM++ 2M SDE"
    assert resolve_sampler("DPM++ 2M SDE Heun")[1] is None
    assert resolve_sampler("k_euler_a")[0].name == "Euler a"
    assert resolve_sampler("Euler  A")[0].name == "Euler a"
    assert resolve_sampler("Nope") is None
    assert find_schedule("sgm_uniform") is ScheduleType.SGM_UNIFORM
    assert find_schedule("KARRAS") is ScheduleType.KARRAS

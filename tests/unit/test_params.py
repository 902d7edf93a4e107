"""Request validation names every bad field; normalisation fixes seeds and sampler names."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from modules.errors import ValidationError
from modules.params import MAX_SEED, GenerationLimits, GenerationRequest
from modules.request_checks import normalize_request, validate_request
from modules.samplers import ScheduleType


def fields_of(request: GenerationRequest, limits: GenerationLimits = GenerationLimits()) -> set[str]:
    with pytest.raises(ValidationError) as err:
        validate_request(request, limits)
    return {e.field for e in err.value.errors}


def test_defaults_are_valid_and_follow_a1111_ui() -> None:
    r = GenerationRequest()
    validate_request(r)
    assert (r.steps, r.sampler, r.schedule, r.cfg_scale, r.width, r.height, r.seed) == (
        20, "DPM++ 2M", ScheduleType.AUTOMATIC, 7.0, 512, 512, -1)


@pytest.mark.parametrize("changes, field", [
    ({"width": 100}, "width"), ({"height": 0}, "height"), ({"width": -64}, "width"), ({"width": 100000}, "width"),
    ({"steps": 0}, "steps"), ({"steps": 10000}, "steps"), ({"steps": 2.5}, "steps"),
    ({"cfg_scale": float("nan")}, "cfg_scale"), ({"cfg_scale": float("inf")}, "cfg_scale"),
    ({"batch_size": 10000}, "batch_size"), ({"batch_count": 0}, "batch_count"),
    ({"seed": -2}, "seed"), ({"seed": MAX_SEED + 1}, "seed"), ({"seed": True}, "seed"),
    ({"sampler": "Euler b"}, "sampler"), ({"clip_skip": 0}, "clip_skip"),
    ({"prompt": "x" * 30_001}, "prompt"), ({"schedule": "Karras"}, "schedule"),
    ({"denoising_strength": 1.5}, "denoising_strength"), ({"variation_strength": -0.1}, "variation_strength"),
    ({"mask": b"x"}, "mask"), ({"init_image": b""}, "init_image"), ({"mask_blur": -1}, "mask_blur"),
])
def test_each_bad_field_is_named(changes: dict, field: str) -> None:
    assert fields_of(replace(GenerationRequest(), **changes)) == {field}


def test_all_bad_fields_are_reported_at_once() -> None:
    assert fields_of(GenerationRequest(width=65, height=63, steps=0)) == {"width", "height", "steps"}


def test_variations_keep_the_seed_and_count_up_the_variation_seed() -> None:
    r = normalize_request(GenerationRequest(seed=10, variation_strength=0.5, batch_size=3), random.Random(2))
    assert r.variation_seed >= 0
    assert [r.seed_for(i) for i in range(3)] == [10, 10, 10]
    assert [r.variation_seed_for(i) for i in range(3)] == [r.variation_seed + i for i in range(3)]
    plain = normalize_request(GenerationRequest(seed=10))
    assert plain.variation_seed == -1 and plain.seed_for(2) == 12


def test_limits_can_be_lowered() -> None:
    assert fields_of(GenerationRequest(width=1024), GenerationLimits(max_size=768)) == {"width"}


def test_normalize_resolves_seed_and_splits_legacy_sampler_names() -> None:
    r = normalize_request(GenerationRequest(sampler="dpm++ 2m karras", seed=-1, batch_size=4), random.Random(1))
    assert r.sampler == "DPM++ 2M" and r.schedule is ScheduleType.KARRAS
    assert 0 <= r.seed <= MAX_SEED - 4
    assert r.seed_for(3) == r.seed + 3
    explicit = normalize_request(GenerationRequest(sampler="DPM++ 2M Karras", schedule=ScheduleType.EXPONENTIAL, seed=5))
    assert explicit.schedule is ScheduleType.EXPONENTIAL and explicit.seed == 5
    assert normalize_request(GenerationRequest(sampler="k_euler_a", seed=1)).sampler == "Euler a"

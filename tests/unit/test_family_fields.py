"""Forge's family fields (Distilled CFG Scale, Shift): range checks, what each family refuses, and the
infotext both ways (written as Forge writes it, read back by PNG Info and paste)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modules.errors import ValidationError
from modules.infotext import ModelIdentity, build_infotext, parse_infotext
from modules.infotext_request import request_from_infotext
from modules.model_families import family_info
from modules.params import GenerationRequest, HiresFix, Refiner
from modules.request_checks import family_problems, validate_request
from modules.ui.form_fields import request_from_values, values_from_request

FLUX = ModelIdentity(name="flux1-dev", hash="0123456789", family="flux_dev")
SD15 = ModelIdentity(name="v1-5", hash="abcdef0123", family="sd15")
BASE = GenerationRequest(prompt="a lighthouse", sampler="Euler", steps=4, cfg_scale=1.0, width=64, height=64, seed=7)


def _fields(request: GenerationRequest, family: str) -> dict[str, str]:
    return {e.field: e.message for e in family_problems(request, family_info(family))}


@pytest.mark.parametrize(("field", "value", "range_text"), [
    ("distilled_cfg_scale", 30.5, "between 0 and 30"), ("distilled_cfg_scale", -1.0, "between 0 and 30"),
    ("shift", 0.0, "between 0.1 and 30"), ("shift", 31.0, "between 0.1 and 30"),
])
def test_out_of_range_values_are_refused_naming_the_range(field: str, value: float, range_text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_request(replace(BASE, **{field: value}))
    messages = {e.field: e.message for e in caught.value.errors}
    assert range_text in messages[field]


def test_values_in_range_pass() -> None:
    validate_request(replace(BASE, distilled_cfg_scale=0.0, shift=0.1))
    validate_request(replace(BASE, distilled_cfg_scale=30.0, shift=30.0))


def test_a_flux_dev_request_with_its_own_fields_has_no_problems() -> None:
    assert _fields(replace(BASE, distilled_cfg_scale=5.0, shift=2.0), "flux_dev") == {}


def test_families_refuse_what_they_cannot_honour_naming_the_field() -> None:
    assert "no distilled guidance" in _fields(replace(BASE, distilled_cfg_scale=5.0), "sd15")["distilled_cfg_scale"]
    assert "no distilled guidance" in _fields(replace(BASE, distilled_cfg_scale=5.0), "flux_schnell")[
        "distilled_cfg_scale"]
    assert "shift" in _fields(replace(BASE, shift=3.0), "sdxl")
    assert "refiner_checkpoint" in _fields(replace(BASE, refiner=Refiner("other")), "flux_dev")
    assert "refiner_checkpoint" not in _fields(replace(BASE, refiner=Refiner("other")), "sdxl")
    odd = _fields(replace(BASE, width=72, height=80), "sd35")
    assert "multiple of 16" in odd["width"] and "height" not in odd
    assert "clip_skip" in _fields(replace(BASE, clip_skip=2), "zimage")
    assert _fields(replace(BASE, clip_skip=2), "sd15") == {}


def test_hires_fix_to_a_size_the_family_cannot_make_is_refused() -> None:
    request = replace(BASE, width=80, height=80, hires=HiresFix(scale=1.5))  # 120x120: not a multiple of 16
    assert "hr_scale" in _fields(request, "flux_dev")
    assert _fields(replace(request, hires=HiresFix(scale=2.0)), "flux_dev") == {}


def test_defaults_are_accepted_by_every_family() -> None:
    for family in ("sd15", "sd2_v", "sdxl", "sd35", "flux_dev", "flux_schnell", "flux2_klein", "zimage"):
        assert _fields(BASE, family) == {}, family


def test_infotext_writes_distilled_cfg_for_flux_dev_only_after_cfg_scale() -> None:
    flux = build_infotext(replace(BASE, distilled_cfg_scale=4.5), 7, FLUX, "v")
    assert "CFG scale: 1, Distilled CFG Scale: 4.5, Seed: 7" in flux
    assert "Distilled CFG Scale" not in build_infotext(BASE, 7, SD15, "v")
    assert "Shift" not in flux  # only when the request set one
    assert "Shift: 3, " in build_infotext(replace(BASE, shift=3.0), 7, FLUX, "v")


def test_infotext_round_trip_restores_both_fields() -> None:
    request = replace(BASE, distilled_cfg_scale=2.5, shift=1.75)
    text = build_infotext(request, 7, FLUX, "v")
    read, warnings = request_from_infotext(parse_infotext(text))
    assert warnings == []
    assert (read.distilled_cfg_scale, read.shift, read.cfg_scale) == (2.5, 1.75, 1.0)


def test_an_infotext_without_the_keys_reads_as_the_defaults() -> None:
    read, _ = request_from_infotext(parse_infotext("a cat\nSteps: 9, CFG scale: 7, Seed: 5, Size: 64x64"),
                                    base=replace(BASE, distilled_cfg_scale=9.0, shift=2.0))
    assert (read.distilled_cfg_scale, read.shift) == (3.5, None)


def test_forge_neo_z_image_shift_key_is_read_zero_meaning_the_models_own() -> None:
    read, _ = request_from_infotext(parse_infotext("a\nSteps: 8, CFG scale: 1, Seed: 1, Z-Image Shift: 6"))
    assert read.shift == 6.0
    read, _ = request_from_infotext(parse_infotext("a\nSteps: 8, CFG scale: 1, Seed: 1, Z-Image Shift: 0"))
    assert read.shift is None


def test_a_bad_value_keeps_the_default_with_a_warning() -> None:
    read, warnings = request_from_infotext(parse_infotext("a\nSteps: 8, CFG scale: 1, Distilled CFG Scale: x"))
    assert read.distilled_cfg_scale == 3.5 and any("Distilled CFG Scale" in w for w in warnings)


def test_paste_fills_the_form_fields_and_they_read_back() -> None:
    text = build_infotext(replace(BASE, distilled_cfg_scale=6.0, shift=2.5), 7, FLUX, "v")
    shown = values_from_request(request_from_infotext(parse_infotext(text))[0])
    assert (shown["distilled_cfg_scale"], shown["shift"]) == (6.0, 2.5)
    values = {**shown, "batch_count": 1, "batch_size": 1, "styles": [], "shift": None}
    assert request_from_values(values).shift is None  # an empty Shift box: the family's own
    assert request_from_values({**values, "shift": 2.5}).distilled_cfg_scale == 6.0

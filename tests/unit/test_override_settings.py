"""A1111's "Override settings" box: a pasted infotext's options the form has no control for, as
entries, and the request fields the entries set on Generate (as the API's override_settings)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from modules.config import Settings
from modules.errors import ValidationError
from modules.infotext import parse_infotext
from modules.params import GenerationRequest
from modules.samplers import RngSource
from modules.ui.override_settings import OVERRIDE_FIELD, override_entries, overrides_from_entries, with_overrides

FORM = {"prompt", "steps", "sampler", "clip_skip"}  # a form with a clip skip control and no VAE one

A1111_TEXT = (
    "a cube\nNegative prompt: blur\n"
    "Steps: 2, Sampler: Euler a, Schedule type: Karras, CFG scale: 7, Seed: 5, Size: 64x64, Model: tiny, "
    "VAE: kl-f8.safetensors, Clip skip: 2, ENSD: 31337, RNG: CPU, Emphasis: No norm, Schedule rho: 5, "
    "Eta: 0.5, Eta DDIM: 0.2, Sigma churn: 1.5, Sigma tmin: 0.1, Sigma tmax: 10, Sigma noise: 1.003, "
    "Schedule min sigma: 0.05, Schedule max sigma: 12"
)


def entries_for(text: str, settings: Settings = Settings(), declared: set[str] = FORM) -> list[str]:
    return override_entries(parse_infotext(text).params, declared, settings)


def test_the_pasted_eta_becomes_one_entry() -> None:
    assert entries_for("a cube\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Eta: 0.5") == [
        "Eta: 0.5"]


def test_a_text_with_only_form_values_gives_no_entries() -> None:
    assert entries_for("a cube\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64") == []


def test_every_option_without_a_control_becomes_an_entry_and_clip_skip_stays_with_its_slider() -> None:
    entries = entries_for(A1111_TEXT)
    assert sorted(entries) == sorted([
        "VAE: kl-f8.safetensors", "ENSD: 31337", "RNG: CPU", "Emphasis: No norm", "Schedule rho: 5", "Eta: 0.5",
        "Eta DDIM: 0.2", "Sigma churn: 1.5", "Sigma tmin: 0.1", "Sigma tmax: 10", "Sigma noise: 1.003",
        "Schedule min sigma: 0.05", "Schedule max sigma: 12"])
    assert not any(entry.startswith("Clip skip") for entry in entries)
    assert "Clip skip: 2" in entries_for(A1111_TEXT, declared=FORM - {"clip_skip"})  # a form without the slider


def test_values_the_server_already_has_are_left_out() -> None:
    # A1111's get_override_settings skips a value equal to the current option.
    settings = replace(Settings(), eta_noise_seed_delta=31337, randn_source="CPU", emphasis="No norm",
                       eta_ancestral=0.5)
    entries = entries_for(A1111_TEXT, settings)
    assert not any(entry.split(":")[0] in {"ENSD", "RNG", "Emphasis", "Eta"} for entry in entries), entries
    assert "Eta DDIM: 0.2" in entries


def test_a1111s_assumed_values_ask_for_themselves_when_the_server_differs() -> None:
    # A1111 reads a text without RNG as GPU (and without schedule sigmas or rho as 0).
    text = "a cube\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64"
    assert entries_for(text, replace(Settings(), randn_source="CPU", rho=5.0)) == ["RNG: GPU", "Schedule rho: 0"]


def test_entries_set_the_request_fields_the_api_override_settings_would() -> None:
    fields = overrides_from_entries([
        "Eta: 0.5", "Eta DDIM: 0.2", "Sigma churn: 1.5", "Sigma tmin: 0.1", "Sigma tmax: 10", "Sigma noise: 1.003",
        "Schedule min sigma: 0.05", "Schedule max sigma: 12", "Schedule rho: 5", "Emphasis: No norm",
        "ENSD: 31337", "RNG: CPU", "VAE: kl-f8.safetensors", "Clip skip: 2"])
    assert fields == {
        "eta_ancestral": 0.5, "eta_ddim": 0.2, "s_churn": 1.5, "s_tmin": 0.1, "s_tmax": 10.0, "s_noise": 1.003,
        "sigma_min": 0.05, "sigma_max": 12.0, "rho": 5.0, "emphasis": "No norm", "eta_noise_seed_delta": 31337,
        "rng": RngSource.CPU, "vae": "kl-f8.safetensors", "clip_skip": 2}


def test_the_request_gets_the_remaining_entries_and_nothing_when_they_are_removed() -> None:
    base = GenerationRequest(prompt="a cube", steps=2)
    request = with_overrides(base, {OVERRIDE_FIELD: ["Eta: 0.5", "ENSD: 31337"]})
    assert (request.eta_ancestral, request.eta_noise_seed_delta, request.prompt) == (0.5, 31337, "a cube")
    assert with_overrides(base, {OVERRIDE_FIELD: []}) == base
    assert with_overrides(base, {OVERRIDE_FIELD: None}) == base


@pytest.mark.parametrize(("entry", "says"), [
    ("Eta: abc", "Eta: must be a number from 0 to 1"),
    ("Eta: 5", "Eta: must be a number from 0 to 1"),
    ("Sigma churn: 101", "Sigma churn: must be a number from 0 to 100"),
    ("ENSD: 1.5", "ENSD: must be a whole number"),
    ("RNG: NV", "RNG: must be one of GPU, CPU"),
    ("Emphasis: loud", "Emphasis: must be one of"),
    ("Hypernet: x", "'Hypernet: x' is not a setting one job can override"),
    ("no colon", "'no colon' is not a setting one job can override"),
])
def test_a_bad_entry_is_refused_naming_the_box_and_the_reason(entry: str, says: str) -> None:
    with pytest.raises(ValidationError) as caught:
        overrides_from_entries(["Eta DDIM: 0.2", entry])
    assert [error.field for error in caught.value.errors] == [OVERRIDE_FIELD]
    assert says in caught.value.errors[0].message


def test_a_bad_value_in_the_text_is_shown_not_dropped() -> None:
    entries = entries_for("a cube\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Eta: lots")
    assert entries == ["Eta: lots"]
    with pytest.raises(ValidationError):
        overrides_from_entries(entries)

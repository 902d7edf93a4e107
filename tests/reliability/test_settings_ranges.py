"""Settings out of range or of the wrong type are refused on every path, never clamped or saved.

An attacker (or a confused client) posts values to ``/sdapi/v1/options`` that used to be saved and
then broke every job (ENSD 1e30 or 2**64) or the text encoder (clip skip past its layers); the same
values in config.yaml must stop the server from starting with a message naming the key.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.config import INT_RANGES, Settings, load_settings
from modules.errors import ConfigError, ValidationError
from modules.infotext import parse_infotext
from modules.params import MAX_SEED, GenerationRequest
from modules.web.credentials import load_auth
from tests.conftest import make_services

CATEGORY = "8 settings"

API = "/sdapi/v1"
JOB = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "cfg_scale": 5, "seed": 7}
TINY_LAYERS = 3  # the tiny models' text encoders (modules/devtools/tiny_model.py)
ENSD_RANGE = f"0 to {MAX_SEED}"


@dataclass(frozen=True)
class Served:
    client: TestClient
    services: object
    config: Path


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("settings-data")
    flags = parse_flags(["--api"], {})
    services = make_services(data, tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result(timeout=120)
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    client = TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1")
    yield Served(client, services, services.paths.config_file)
    services.close()


def _config_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def _post_options(served: Served, body: dict) -> object:
    # Sent as raw JSON: 2**64 and 1e30 must reach the server exactly as an attacker writes them.
    return served.client.post(f"{API}/options", content=json.dumps(body), headers={"Content-Type": "application/json"})


def _txt2img(served: Served, **extra: object) -> object:
    return served.client.post(f"{API}/txt2img", json={**JOB, **extra})


# --- eta_noise_seed_delta ------------------------------------------------------------------------

ENSD_VALUES = {"1e30": 1e30, "2^64": 2**64, "2^32": 2**32, "-1": -1, "str": "5", "true": True, "false": False,
               "1.5": 1.5, "2.0": 2.0, "null": None, "list": [1], "dict": {"a": 1}}


@pytest.mark.parametrize("value", list(ENSD_VALUES.values()), ids=list(ENSD_VALUES))
def test_bad_ensd_is_refused_naming_the_setting_and_range_and_nothing_changes(served: Served, value: object) -> None:
    before_config, before_options = _config_text(served.config), served.client.get(f"{API}/options").json()
    response = _post_options(served, {"eta_noise_seed_delta": value})
    assert response.status_code == 422, response.text
    assert "eta_noise_seed_delta" in response.text and ENSD_RANGE in response.text
    assert _config_text(served.config) == before_config
    assert served.client.get(f"{API}/options").json() == before_options


def test_jobs_still_run_after_bad_ensd_was_refused(served: Served) -> None:
    for value in (1e30, 2**64, -1):
        assert _post_options(served, {"eta_noise_seed_delta": value}).status_code == 422
    response = _txt2img(served, sampler_name="Euler a")
    assert response.status_code == 200, response.text


def test_the_largest_ensd_is_accepted_and_a_job_with_the_largest_seed_really_runs(served: Served) -> None:
    try:
        assert _post_options(served, {"eta_noise_seed_delta": MAX_SEED}).status_code == 200
        assert f"eta_noise_seed_delta: {MAX_SEED}" in served.config.read_text()
        # An ancestral sampler draws from seed + ENSD: the largest of both, and a batch past it.
        response = _txt2img(served, sampler_name="Euler a", seed=MAX_SEED, batch_size=2)
        assert response.status_code == 200, response.text
        info = json.loads(response.json()["info"])
        assert info["all_seeds"] == [MAX_SEED, MAX_SEED + 1]
        assert parse_infotext(info["infotexts"][0]).params["ENSD"] == str(MAX_SEED)
    finally:
        assert _post_options(served, {"eta_noise_seed_delta": 0}).status_code == 200


def test_a_bad_option_beside_good_ones_changes_nothing(served: Served) -> None:
    before_config, before_options = _config_text(served.config), served.client.get(f"{API}/options").json()
    body = {"randn_source": "CPU", "save_images_before_highres_fix": True, "eta_noise_seed_delta": 2**40,
            "sd_model_checkpoint": "tiny-sd15-b.safetensors"}
    response = _post_options(served, body)
    assert response.status_code == 422 and "eta_noise_seed_delta" in response.text
    assert _config_text(served.config) == before_config
    assert served.client.get(f"{API}/options").json() == before_options  # the checkpoint did not switch either


@pytest.mark.parametrize("key, value, needle", [
    ("save_images_before_highres_fix", 1, "true or false"),
    ("randn_source", 5, "must be one of"),
    ("randn_source", "nv", "must be one of"),
    ("sd_model_checkpoint", 5, "sd_model_checkpoint"),
    ("sd_vae", 5, "must be text"),
    ("sd_vae", "", "blank"),
])
def test_other_options_of_the_wrong_type_are_refused(served: Served, key: str, value: object, needle: str) -> None:
    before = _config_text(served.config)
    response = _post_options(served, {key: value})
    assert response.status_code == 422 and key in response.text and needle in response.text, response.text
    assert _config_text(served.config) == before


# --- clip skip against the loaded model -----------------------------------------------------------

@pytest.mark.parametrize("value", [TINY_LAYERS + 1, 12])
def test_clip_skip_past_the_loaded_models_layers_is_refused_naming_the_maximum(served: Served, value: int) -> None:
    before = _config_text(served.config)
    response = _post_options(served, {"CLIP_stop_at_last_layers": value})
    assert response.status_code == 422, response.text
    assert "CLIP_stop_at_last_layers" in response.text and f"at most {TINY_LAYERS}" in response.text
    assert _config_text(served.config) == before
    assert served.client.get(f"{API}/options").json()["CLIP_stop_at_last_layers"] == 1


@pytest.mark.parametrize("value", [13, 99, 0, -1, 2.0, "2", True])
def test_clip_skip_outside_its_own_range_or_type_is_refused(served: Served, value: object) -> None:
    before = _config_text(served.config)
    response = _post_options(served, {"CLIP_stop_at_last_layers": value})
    assert response.status_code == 422 and "CLIP_stop_at_last_layers" in response.text and "12" in response.text
    assert _config_text(served.config) == before


def test_clip_skip_at_the_loaded_models_maximum_is_accepted_and_runs(served: Served) -> None:
    try:
        assert _post_options(served, {"CLIP_stop_at_last_layers": TINY_LAYERS}).status_code == 200
        response = _txt2img(served)
        assert response.status_code == 200, response.text
        assert json.loads(response.json()["info"])["clip_skip"] == TINY_LAYERS
    finally:
        assert _post_options(served, {"CLIP_stop_at_last_layers": 1}).status_code == 200


@pytest.mark.parametrize("extra", [
    {"override_settings": {"CLIP_stop_at_last_layers": 99}},
    {"clip_skip": 99},
    {"override_settings": {"CLIP_stop_at_last_layers": TINY_LAYERS + 1}},
    {"clip_skip": TINY_LAYERS + 1},
], ids=["override-99", "field-99", "override-past-layers", "field-past-layers"])
def test_a_job_asking_for_too_large_a_clip_skip_is_a_422_not_a_500(served: Served, extra: dict) -> None:
    response = _txt2img(served, **extra)
    assert response.status_code == 422, response.text
    assert "clip_skip" in response.text or "CLIP_stop_at_last_layers" in response.text
    if extra.get("clip_skip") == TINY_LAYERS + 1 or TINY_LAYERS + 1 in extra.get("override_settings", {}).values():
        assert f"at most {TINY_LAYERS}" in response.text
    assert _txt2img(served).status_code == 200  # and the next job runs


def test_sdxl_clip_skip_limit_is_its_smaller_encoders_layers(served: Served) -> None:
    generation = served.services.generation
    base = GenerationRequest(prompt="cube", steps=2, width=64, height=64, seed=3, checkpoint="tiny-sdxl")
    try:
        assert generation.generate(GenerationRequest(**{**base.__dict__, "clip_skip": TINY_LAYERS}), timeout=300).images
        with pytest.raises(ValidationError, match=f"clip_skip: must be at most {TINY_LAYERS}"):
            generation.generate(GenerationRequest(**{**base.__dict__, "clip_skip": TINY_LAYERS + 1}), timeout=300)
    finally:
        generation.switch_model("tiny-sd15.safetensors").future.result(timeout=120)


def test_the_engines_clip_skip_error_survives_the_trip_from_a_ray_worker(served: Served) -> None:
    from modules.engine.prompt_encoding import check_clip_skip

    model = served.services.models.loaded_model()
    assert model is not None
    with pytest.raises(ValidationError) as raised:
        check_clip_skip(model.pipeline, model.arch, TINY_LAYERS + 1)
    back = pickle.loads(pickle.dumps(raised.value))  # how a worker's error reaches the front
    assert isinstance(back, ValidationError) and back.errors == raised.value.errors
    assert f"at most {TINY_LAYERS}" in str(back)


# --- the settings store (the UI's writes) ---------------------------------------------------------

@pytest.mark.parametrize("changes", [{"sd_vae": 5}, {"sd_vae": "   "}, {"sd_vae": "x" * 300}, {"sd_vae": "a\nb"},
                                     {"eta_noise_seed_delta": 2**64}, {"queue_limit": 10**6}, {"nope": 1}])
def test_the_store_refuses_what_the_ui_could_send(served: Served, changes: dict) -> None:
    store = served.services.options
    before, before_config = store.get(), _config_text(served.config)
    with pytest.raises(ValidationError, match=next(iter(changes))):
        store.update(changes)
    assert store.get() == before and _config_text(served.config) == before_config


def test_the_store_checks_clip_skip_against_the_model_it_is_given(served: Served) -> None:
    store = served.services.options
    model = served.services.models.loaded_model()
    assert model is not None
    with pytest.raises(ValidationError, match=f"at most {TINY_LAYERS}"):
        store.update({"clip_skip": TINY_LAYERS + 1}, model=model)
    assert store.get().clip_skip == 1


# --- config.yaml at start ---------------------------------------------------------------------------

def test_every_whole_number_setting_has_a_range() -> None:
    ints = {f.name for f in fields(Settings) if str(f.type) == "int"}
    assert ints == set(INT_RANGES)
    for name, (low, high) in INT_RANGES.items():
        assert low <= getattr(Settings(), name) <= high, name


def _bad_values() -> list[tuple[str, object, str]]:
    cases = []
    for key, (low, high) in INT_RANGES.items():
        cases += [(key, high + 1, f"at most {high}"), (key, low - 1, f"at least {low}"),
                  (key, float(high), "whole number"), (key, True, "whole number"), (key, "5", "whole number")]
    return cases


@pytest.mark.parametrize("key, value, needle", _bad_values())
def test_config_yaml_out_of_range_refuses_to_start_naming_the_key(tmp_path: Path, key: str, value: object,
                                                                  needle: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"{key}: {json.dumps(value)}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    low, high = INT_RANGES[key]
    assert f"'{key}'" in str(raised.value) and needle in str(raised.value) and f"{low} to {high}" in str(raised.value)


@pytest.mark.parametrize("text", ["eta_noise_seed_delta: 1.0e+30\n", "eta_noise_seed_delta: 1e30\n",
                                  f"eta_noise_seed_delta: {2**64}\n", "eta_noise_seed_delta: .inf\n",
                                  "eta_noise_seed_delta: " + "9" * 5000 + "\n", "sd_vae: ''\n", "sd_vae: 5\n",
                                  "ray_address: [a]\n"])
def test_config_yaml_hostile_values_are_config_errors(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=text.split(":")[0] + "|cannot read settings"):
        load_settings(config)


def test_config_yaml_at_the_limits_loads(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("".join(f"{key}: {high}\n" for key, (_low, high) in INT_RANGES.items()))
    settings = load_settings(config)
    assert all(getattr(settings, key) == high for key, (_low, high) in INT_RANGES.items())

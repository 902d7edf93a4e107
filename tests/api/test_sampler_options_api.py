"""A1111's sampler-parameter, img2img-steps, live-preview and checkpoint-cache options over the REST
API: ``GET /options`` shows A1111's defaults, ``POST`` checks type and range (422 naming the key and
what it allows), and ``override_settings`` sets them for one job."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 5, "sampler_name": "Euler a"}
A1111_DEFAULTS = {"eta_ancestral": 1.0, "eta_ddim": 0.0, "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0,
                  "sigma_min": 0.0, "sigma_max": 0.0, "rho": 0.0, "img2img_fix_steps": False,
                  "live_previews_enable": True}


def infotext_of(reply: dict) -> str:
    return json.loads(reply["info"])["infotexts"][0]


def pixels(reply: dict) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(reply["images"][0]))).convert("RGB").tobytes()


def test_get_options_shows_a1111s_defaults(served) -> None:
    client, _ = served
    options = client.get("/sdapi/v1/options").json()
    assert {key: options[key] for key in A1111_DEFAULTS} == A1111_DEFAULTS
    # The setting keeps one checkpoint besides the loaded one; A1111 counts the loaded one too.
    assert options["sd_checkpoint_cache"] == 2


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("eta_ancestral", 1.5, "from 0 to 1"), ("s_noise", -0.1, "from 0 to 1.1"), ("s_churn", 101, "from 0 to 100"),
    ("s_tmax", "inf", "from 0 to 999"), ("sigma_max", True, "from 0 to 1000"), ("eta_ddim", None, "from 0 to 1"),
])
def test_post_options_refuses_a_value_out_of_range_naming_the_key_and_range(served, key: str, value: object,
                                                                             allowed: str) -> None:
    client, _ = served
    reply = client.post("/sdapi/v1/options", json={key: value})
    assert reply.status_code == 422, reply.text
    assert key in reply.text and allowed in reply.text
    assert client.get("/sdapi/v1/options").json()[key] == A1111_DEFAULTS[key]  # nothing changed


def test_post_options_refuses_a_flag_that_is_not_true_or_false(served) -> None:
    client, _ = served
    reply = client.post("/sdapi/v1/options", json={"img2img_fix_steps": "yes"})
    assert reply.status_code == 422 and "img2img_fix_steps" in reply.text and "true or false" in reply.text


def test_post_options_sets_them_and_the_next_job_uses_and_records_them(served) -> None:
    client, services = served
    try:
        assert client.post("/sdapi/v1/options", json={"eta_ancestral": 0.5, "s_churn": 1.5}).status_code == 200
        options = client.get("/sdapi/v1/options").json()
        assert (options["eta_ancestral"], options["s_churn"]) == (0.5, 1.5)
        text = infotext_of(client.post("/sdapi/v1/txt2img", json=SMALL).json())
        assert "Eta: 0.5" in text and "Sigma churn" not in text  # churn does not reach Euler a, as in A1111
        text = infotext_of(client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler"}).json())
        assert "Sigma churn: 1.5" in text and "Eta" not in text
    finally:
        client.post("/sdapi/v1/options", json={"eta_ancestral": 1.0, "s_churn": 0.0})


def test_sd_checkpoint_cache_counts_the_loaded_checkpoint_as_a1111_does(served) -> None:
    client, services = served
    try:
        assert client.post("/sdapi/v1/options", json={"sd_checkpoint_cache": 3}).status_code == 200
        assert services.options.get().checkpoint_cache == 2 and client.get("/sdapi/v1/options").json()[
            "sd_checkpoint_cache"] == 3
        assert client.post("/sdapi/v1/options", json={"sd_checkpoint_cache": 0}).status_code == 200
        assert services.options.get().checkpoint_cache == 0
    finally:
        client.post("/sdapi/v1/options", json={"sd_checkpoint_cache": 2})


def test_override_settings_sets_them_for_one_job(served) -> None:
    client, _ = served
    mine = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"eta_ancestral": 0.0}})
    assert mine.status_code == 200, mine.text
    assert "Eta: 0" in infotext_of(mine.json())
    euler = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Euler"}).json()
    assert pixels(mine.json()) == pixels(euler)  # eta 0: Euler a's image is Euler's
    plain = client.post("/sdapi/v1/txt2img", json=SMALL).json()
    assert "Eta" not in infotext_of(plain) and pixels(plain) != pixels(euler)
    assert client.get("/sdapi/v1/options").json()["eta_ancestral"] == 1.0


def test_override_or_body_value_out_of_range_is_a_422_naming_it(served) -> None:
    client, _ = served
    reply = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"s_noise": 5}})
    assert reply.status_code == 422 and "override_settings.s_noise" in reply.text and "0 to 1.1" in reply.text
    reply = client.post("/sdapi/v1/txt2img", json={**SMALL, "eta": 3})
    assert reply.status_code == 422 and "eta" in reply.text and "0 to 1" in reply.text


def test_the_bodys_eta_field_is_the_jobs_eta(served) -> None:
    client, _ = served
    text = infotext_of(client.post("/sdapi/v1/txt2img", json={**SMALL, "eta": 0.25}).json())
    assert "Eta: 0.25" in text
    text = infotext_of(client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "DDIM", "eta": 0.25}).json())
    assert "Eta DDIM: 0.25" in text

"""Per-request overrides: ``override_settings`` change one job only, unless the request says
``override_settings_restore_afterwards: false`` (A1111's way to make them the server's settings)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import TinyModels, make_services

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 5, "sampler_name": "Euler"}
LOCAL, LAN = ("127.0.0.1", 42000), ("192.168.1.40", 42000)


@pytest.fixture
def served(tiny_models: TinyModels, tmp_path: Path) -> Iterator[tuple[object, object]]:
    flags = parse_flags(["--api", "--listen"], {})
    services = make_services(tmp_path / "data", tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    yield app_module._build_app(flags, services, load_auth(None, None, None)), services
    services.close()


def client(app: object, address: tuple[str, int] = LOCAL) -> TestClient:
    return TestClient(app, base_url="http://127.0.0.1:7860", client=address)


def infotext_of(reply: dict) -> str:
    return json.loads(reply["info"])["infotexts"][0]


def test_an_override_changes_that_job_only(served) -> None:
    app, services = served
    alice, bob = client(app), client(app)
    server_model = alice.get("/sdapi/v1/options").json()["sd_model_checkpoint"]
    assert server_model.startswith("tiny-sd15.safetensors")
    # Alice's job runs on another checkpoint, with other settings...
    mine = alice.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {
        "sd_model_checkpoint": "tiny-sd15-b.safetensors", "CLIP_stop_at_last_layers": 2,
        "eta_noise_seed_delta": 31337, "randn_source": "CPU"}, "sampler_name": "Euler a"})
    assert mine.status_code == 200, mine.text
    text = infotext_of(mine.json())
    assert "Model: tiny-sd15-b" in text and "Clip skip: 2" in text and "ENSD: 31337" in text and "RNG: CPU" in text
    # ...and Bob's plain job right after runs on the server's checkpoint and settings.
    plain = bob.post("/sdapi/v1/txt2img", json=SMALL)
    text = infotext_of(plain.json())
    assert "Model: tiny-sd15," in text and "Clip skip" not in text and "RNG" not in text
    options = bob.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == server_model
    assert (options["CLIP_stop_at_last_layers"], options["eta_noise_seed_delta"], options["randn_source"]) == (1, 0, "GPU")
    assert services.models.current().title == server_model  # what the UI's checkpoint dropdown shows
    assert not (Path(services.paths.config_file)).exists()


def test_restore_afterwards_false_makes_the_overrides_the_servers(served) -> None:
    app, services = served
    c = client(app)
    kept = c.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings_restore_afterwards": False, "override_settings": {
        "sd_model_checkpoint": "tiny-sd15-b.safetensors", "CLIP_stop_at_last_layers": 2}})
    assert kept.status_code == 200, kept.text
    options = c.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"].startswith("tiny-sd15-b.safetensors")
    assert options["CLIP_stop_at_last_layers"] == 2
    plain = infotext_of(c.post("/sdapi/v1/txt2img", json=SMALL).json())
    assert "Model: tiny-sd15-b" in plain and "Clip skip: 2" in plain
    assert "clip_skip: 2" in Path(services.paths.config_file).read_text()


def test_keeping_overrides_is_a_change_to_the_server_the_network_may_not_make(served) -> None:
    app, services = served
    lan = client(app, LAN)
    refused = lan.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings_restore_afterwards": "false",
                                                  "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert refused.status_code == 403
    assert lan.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2}}
                    ).status_code == 200  # for its own job, it may
    assert lan.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_a_bad_override_kept_changes_nothing(served) -> None:
    app, _services = served
    c = client(app)
    bad = c.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings_restore_afterwards": False,
                                            "override_settings": {"CLIP_stop_at_last_layers": 99}})
    assert bad.status_code == 422 and "CLIP_stop_at_last_layers" in bad.text
    assert c.get("/sdapi/v1/options").json()["CLIP_stop_at_last_layers"] == 1


def test_a_server_only_option_is_refused_for_one_job_and_kept_when_asked(served) -> None:
    app, services = served
    c = client(app)
    one_job = c.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"ESRGAN_tile": 64}})
    assert one_job.status_code == 422 and "override_settings.ESRGAN_tile" in one_job.text
    assert "/sdapi/v1/options" in one_job.text
    kept = c.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings_restore_afterwards": False,
                                             "override_settings": {"ESRGAN_tile": 64}})
    assert kept.status_code == 200, kept.text
    try:
        assert c.get("/sdapi/v1/options").json()["ESRGAN_tile"] == 64
        assert services.upscalers.tiles().tile == 64
    finally:
        assert c.post("/sdapi/v1/options", json={"ESRGAN_tile": 192}).status_code == 200

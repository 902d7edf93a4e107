"""The API on the new families, on a tiny FLUX.1 dev and a tiny SD 1.5: Forge's fields
(``distilled_cfg_scale``, ``shift``), the 422s for what a family cannot honour, the family in
``/sd-models``, Forge's ``/sd-modules``, and the ``webuiapi`` client generating on both."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import make_services
from tests.server_process import start_server, stop_server

FLUX = "tiny-flux-dev.safetensors"
SD15 = "tiny-sd15.safetensors"
SMALL = {"prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modules.devtools.tiny_model import TinyArch, write_tiny_model

    folder = tmp_path_factory.mktemp("family-checkpoints")
    write_tiny_model(TinyArch.FLUX_DEV, folder / FLUX, seed=0)
    write_tiny_model(TinyArch.SD15, folder / SD15, seed=0)
    return folder


@pytest.fixture(scope="module")
def client(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    data = tmp_path_factory.mktemp("family-data")
    encoders = data / "models" / "text_encoder"
    (encoders / "tokenizers" / "t5").mkdir(parents=True)
    (encoders / "t5xxl_fp8_e4m3fn.safetensors").write_bytes(b"x")
    (encoders / "clip_l.safetensors").write_bytes(b"x")
    (encoders / "tokenizers" / "t5" / "spiece.safetensors").write_bytes(b"x")  # a tokenizer's, not an encoder
    (encoders / "notes.txt").write_text("not a model")
    (data / "models" / "VAE").mkdir(parents=True)
    (data / "models" / "VAE" / "ae.safetensors").write_bytes(b"x")
    services = make_services(data, folder)
    services.generation.switch_model(FLUX).future.result()
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    yield TestClient(app, base_url="http://127.0.0.1")
    services.close()


def _image(reply: dict) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(reply["images"][0])))


def _txt2img(client: TestClient, **body: object) -> dict:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert response.status_code == 200, response.text
    return response.json()


def test_distilled_cfg_scale_and_shift_change_the_flux_image_and_reach_the_infotext(client: TestClient) -> None:
    plain = _txt2img(client, cfg_scale=1)
    guided = _txt2img(client, cfg_scale=1, distilled_cfg_scale=9.0)
    shifted = _txt2img(client, cfg_scale=1, shift=6.0)
    assert _image(plain).size == (64, 64)
    assert _image(plain).tobytes() != _image(guided).tobytes()
    assert _image(plain).tobytes() != _image(shifted).tobytes()
    infotexts = [json.loads(r["info"])["infotexts"][0] for r in (plain, guided, shifted)]
    assert "Distilled CFG Scale: 3.5" in infotexts[0] and "Shift" not in infotexts[0]
    assert "Distilled CFG Scale: 9" in infotexts[1]
    assert "Shift: 6" in infotexts[2]


def test_the_same_request_gives_the_same_flux_image(client: TestClient) -> None:
    first, second = _txt2img(client, cfg_scale=1), _txt2img(client, cfg_scale=1)
    assert _image(first).tobytes() == _image(second).tobytes()


@pytest.mark.parametrize(("body", "field", "words"), [
    ({"width": 72}, "width", "multiple of 16"),
    ({"refiner_checkpoint": SD15}, "refiner_checkpoint", "refiner"),
    ({"clip_skip": 2}, "clip_skip", "no CLIP layers"),
    ({"shift": 0}, "shift", "between 0.1 and 30"),
    ({"distilled_cfg_scale": 40}, "distilled_cfg_scale", "between 0 and 30"),
])
def test_what_flux_dev_cannot_honour_is_a_422_naming_the_field(client: TestClient, body: dict, field: str,
                                                                 words: str) -> None:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert response.status_code == 422, response.text
    assert field in response.json()["errors"] and words in response.json()["errors"]


def test_sd15_refuses_flux_fields_and_keeps_working(client: TestClient) -> None:
    override = {"override_settings": {"sd_model_checkpoint": SD15}}
    for body, field in (({"distilled_cfg_scale": 5}, "distilled_cfg_scale"), ({"shift": 3}, "shift")):
        response = client.post("/sdapi/v1/txt2img", json={**SMALL, **override, **body})
        assert response.status_code == 422 and field in response.json()["errors"], response.text
    reply = _txt2img(client, **override)  # Forge's default distilled_cfg_scale is fine on every family
    assert _image(reply).size == (64, 64)


def test_sd_models_name_each_family(client: TestClient) -> None:
    items = {item["model_name"]: item for item in client.get("/sdapi/v1/sd-models").json()}
    assert (items["tiny-flux-dev"]["family"], items["tiny-flux-dev"]["family_label"]) == ("flux_dev", "FLUX.1 dev")
    assert items["tiny-sd15"]["family"] == "sd15"


def test_sd_modules_list_text_encoders_and_vaes_as_forge_does(client: TestClient) -> None:
    items = client.get("/sdapi/v1/sd-modules").json()
    assert sorted(item["model_name"] for item in items) == ["ae.safetensors", "clip_l.safetensors",
                                                            "t5xxl_fp8_e4m3fn.safetensors"]
    assert all(set(item) == {"model_name", "filename"} and Path(item["filename"]).is_file() for item in items)


def test_png_info_reads_the_forge_keys(client: TestClient) -> None:
    reply = _txt2img(client, cfg_scale=1, distilled_cfg_scale=4.5, shift=2.0)
    params = client.post("/sdapi/v1/png-info", json={"image": reply["images"][0]}).json()["parameters"]
    assert (params["Distilled CFG Scale"], params["Shift"]) == ("4.5", "2")


def test_the_webuiapi_client_generates_on_flux_dev_and_sd15(folder: Path,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    webuiapi = pytest.importorskip("webuiapi")
    proc, server = start_server(tmp_path_factory.mktemp("family-client"), folder, "--api", "--ckpt", FLUX,
                                ready_path="/sdapi/v1/options")
    try:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]))
        # webuiapi's own defaults (cfg 7, Euler a, eta 1, ...): real CFG with the negative prompt on FLUX.1 dev.
        flux = api.txt2img(prompt="a cat", negative_prompt="dog", seed=5, steps=2, width=64, height=64)
        assert flux.image.size == (64, 64) and "Distilled CFG Scale: 3.5" in flux.info["infotexts"][0]
        api.util_set_model(SD15)
        api.util_wait_for_ready()
        sd = api.txt2img(prompt="a cat", seed=5, steps=2, width=64, height=64)
        assert sd.image.size == (64, 64) and "Distilled CFG Scale" not in sd.info["infotexts"][0]
    finally:
        stop_server(proc)

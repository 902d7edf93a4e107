"""ControlNet over HTTP as A1111 clients use it: the /controlnet routes and units in
``alwayson_scripts`` (positional ``args`` and named), with A1111's reply shapes."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import TinyModels, make_services


@pytest.fixture(scope="module")
def client(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from modules.devtools.tiny_controlnet import TinyArch, build_for_arch, write_tiny_controlnet

    data = tmp_path_factory.mktemp("cn-api-data")
    write_tiny_controlnet(build_for_arch(TinyArch.SD15), data / "models" / "ControlNet" / "tiny-canny.safetensors")
    services = make_services(data, tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    yield TestClient(app, base_url="http://127.0.0.1")
    services.close()


def png64(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def txt2img(client: TestClient, scripts: dict[str, Any] | None = None) -> Any:
    body = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "seed": 3, "sampler_name": "Euler"}
    if scripts is not None:
        body["alwayson_scripts"] = scripts
    return client.post("/sdapi/v1/txt2img", json=body)


def first_image(reply: Any) -> np.ndarray:
    assert reply.status_code == 200, reply.text
    with Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]))) as image:
        return np.asarray(image.convert("RGB"))


def test_routes_answer_in_a1111_shapes(client: TestClient, tiny_models: TinyModels) -> None:
    assert client.get("/controlnet/version").json() == {"version": 2}
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}
    models = client.get("/controlnet/model_list", params={"update": "true"}).json()["model_list"]
    assert len(models) == 1 and models[0].startswith("tiny-canny [") and len(models[0]) == len("tiny-canny [12345678]")
    modules = client.get("/controlnet/module_list").json()
    assert "none" in modules["module_list"] and set(modules["module_detail"]) >= {"none"}
    detected = client.post("/controlnet/detect", json={"controlnet_module": "none", "controlnet_input_images": [png64(1)]})
    assert detected.status_code == 200 and detected.json()["info"] == "Success"
    assert len(detected.json()["images"]) == 1
    bad = client.post("/controlnet/detect", json={"controlnet_module": "nope", "controlnet_input_images": [png64(1)]})
    assert bad.status_code == 422 and "nope" in bad.text


def test_units_over_http_positional_and_named(client: TestClient) -> None:
    plain = first_image(txt2img(client))
    unit = {"enabled": True, "module": "none", "model": "tiny-canny", "image": png64(2), "weight": 1.0,
            "resize_mode": "Crop and Resize", "control_mode": 0, "pixel_perfect": False, "processor_res": 64,
            "threshold_a": 64, "threshold_b": 64, "guidance_start": 0.0, "guidance_end": 1.0, "low_vram": False}
    positional = txt2img(client, {"ControlNet": {"args": [unit, {**unit, "enabled": False}]}})
    controlled = first_image(positional)
    assert not np.array_equal(controlled, plain)
    assert "ControlNet 0: " in positional.json()["info"]
    named = first_image(txt2img(client, {"controlnet": {"args": {"unit_0": unit}}}))
    assert np.array_equal(named, controlled)


def test_bad_units_are_422_naming_the_field(client: TestClient) -> None:
    unit = {"enabled": True, "module": "none", "model": "tiny-canny", "image": png64(2)}
    for bad, word in (({**unit, "weight": 5}, "weight"), ({**unit, "model": "missing"}, "tiny-canny ["),
                      ({**unit, "image": "aGVsbG8="}, "image"), ({**unit, "module": "nope"}, "nope")):
        reply = txt2img(client, {"controlnet": {"args": [bad]}})
        assert reply.status_code == 422 and word in reply.text, reply.text


def test_data_url_images_work(client: TestClient, tmp_path: Path) -> None:
    unit = {"enabled": True, "module": "none", "model": "tiny-canny", "image": png64(2)}
    with_url = {**unit, "image": "data:image/png;base64," + unit["image"]}
    a = first_image(txt2img(client, {"controlnet": {"args": [unit]}}))
    b = first_image(txt2img(client, {"controlnet": {"args": [with_url]}}))
    assert np.array_equal(a, b)

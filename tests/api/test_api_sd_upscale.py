"""SD upscale over POST /sdapi/v1/img2img, as A1111's own API tests and its clients send it, and
its controls in the img2img tab's Script section."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools.tiny_upscaler import write_tiny_upscaler
from modules.infotext import parse_infotext
from modules.params import GenerationRequest
from modules.ui.extension_panels import build_extension_controls
from modules.web.credentials import load_auth
from tests.conftest import make_services

API = "/sdapi/v1"
NAMES = ["None", "Lanczos", "Nearest", "4x-tiny"]  # as GET /upscalers lists them, in that order


def png_b64(size: int, seed: int = 0) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def body(script_args: Any, init_size: int = 64, **extra: Any) -> dict[str, Any]:
    return {"prompt": "a castle", "steps": 2, "width": 64, "height": 64, "seed": 7, "sampler_name": "Euler",
            "denoising_strength": 0.4, "init_images": [png_b64(init_size)], "script_name": "sd upscale",
            "script_args": script_args, **extra}


def images_of(reply: Any) -> list[Image.Image]:
    assert reply.status_code == 200, reply.text
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in reply.json()["images"]]


def upscale_params(reply: Any) -> dict[str, str]:
    text = json.loads(reply.json()["info"])["infotexts"][0]
    return parse_infotext(text).params


@pytest.fixture(scope="module")
def served(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    services = make_services(tmp_path_factory.mktemp("sd-upscale-data"), tiny_models.folder)
    write_tiny_upscaler(services.paths.models_dir / "ESRGAN" / "4x-tiny.pth", 4)
    flags = parse_flags(["--api", "--nowebui"], {})
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    yield TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1"), services
    services.close()


@pytest.fixture(scope="module")
def client(served: tuple[TestClient, Any]) -> TestClient:
    return served[0]


def test_a1111s_own_api_test_request_upscales_and_saves(client: TestClient, served: tuple[TestClient, Any]) -> None:
    reply = client.post(f"{API}/img2img", json=body(["", 8, "Lanczos", 2.0], save_images=True))
    [image] = images_of(reply)
    assert image.size == (128, 128)  # 64 px scaled by 2: nine 64 px tiles overlapping by 8
    params = upscale_params(reply)
    assert (params["SD upscale overlap"], params["SD upscale upscaler"]) == ("8", "Lanczos")
    assert (params["Seed"], params["Size"], params["Denoising strength"]) == ("7", "64x64", "0.4")  # the first tile's
    saved = sorted((served[1].paths.outputs_dir / "img2img-images").glob("*/*.png"))
    assert [path.name[6:] for path in saved] == ["7.png"]  # the result alone, not its tiles
    with Image.open(saved[0]) as file:
        assert file.size == (128, 128)
        assert "SD upscale overlap: 8" in file.info["parameters"]
        assert "SD upscale upscaler: Lanczos" in file.info["parameters"]
        assert file.info["parameters"] == json.loads(reply.json()["info"])["infotexts"][0]


def test_the_upscaler_by_its_index_as_a1111s_ui_sends_it(client: TestClient) -> None:
    reply = client.post(f"{API}/img2img", json=body(["", 0, 1, 1.0]))
    [image] = images_of(reply)
    assert image.size == (64, 64)  # scale 1: one tile
    assert upscale_params(reply)["SD upscale upscaler"] == "Lanczos"
    model = client.post(f"{API}/img2img", json=body(["", 0, 3, 2.0], init_size=32))  # index 3: the model file
    assert [image.size for image in images_of(model)] == [(64, 64)]
    assert upscale_params(model)["SD upscale upscaler"] == "4x-tiny"


def test_named_args_leave_the_rest_at_their_defaults(client: TestClient) -> None:
    reply = client.post(f"{API}/img2img", json=body({"upscaler": "nearest", "scale_factor": 1.5, "overlap": 32},
                                                    n_iter=2))
    images = images_of(reply)
    assert [image.size for image in images] == [(96, 96)] * 2  # one image per iteration
    assert upscale_params(reply)["SD upscale upscaler"] == "Nearest"  # the list's spelling
    assert json.loads(reply.json()["info"])["all_seeds"] == [7, 8]  # iteration n starts at seed + n
    assert not np.array_equal(np.asarray(images[0]), np.asarray(images[1]))


@pytest.mark.parametrize(("script_args", "where", "words"), [
    (["", 8, "Bicubic", 2.0], "script_args.upscaler", ["'Bicubic'", *NAMES]),
    (["", 8, 9, 2.0], "script_args.upscaler", ["9", *NAMES]),
    (["", 300, "Lanczos", 2.0], "script_args.overlap", ["between 0 and 256", "300"]),
    (["", 8, "Lanczos", 5], "script_args.scale_factor", ["between 1 and 4"]),
    (["", 64, "Lanczos", 2.0], "script_args.overlap", ["smaller than a tile"]),
    ({"upscaler": "None"}, "script_args.overlap", ["64 px"]),  # the default overlap is a whole 64 px tile
], ids=["unknown-name", "index-past-the-end", "overlap-past-256", "scale-past-4", "overlap-a-whole-tile",
        "default-overlap-on-a-64px-tile"])
def test_bad_args_are_422_naming_the_arg(client: TestClient, script_args: Any, where: str,
                                         words: list[str]) -> None:
    reply = client.post(f"{API}/img2img", json=body(script_args))
    assert reply.status_code == 422, reply.text
    assert where in reply.text and all(word in reply.text for word in words), reply.text


def test_an_upscaled_image_smaller_than_a_tile_is_refused_before_any_work(client: TestClient) -> None:
    reply = client.post(f"{API}/img2img", json=body(["", 8, "Lanczos", 1.5], init_size=32))  # 48 px < 64
    assert reply.status_code == 422
    assert "48x48" in reply.text and "smaller than a tile (64x64)" in reply.text
    assert client.get(f"{API}/progress").json()["state"]["job_count"] == 0


def test_a_mask_is_refused_and_none_keeps_the_size_as_in_a1111(client: TestClient) -> None:
    masked = client.post(f"{API}/img2img", json=body(["", 8, "Lanczos", 2.0], mask=png_b64(64)))
    assert masked.status_code == 422 and "takes no mask" in masked.text
    kept = client.post(f"{API}/img2img", json=body(["", 0, "None", 2.0]))
    assert [image.size for image in images_of(kept)] == [(64, 64)]
    assert upscale_params(kept)["SD upscale upscaler"] == "None"


def test_listed_for_img2img_only_and_the_server_serves_on(client: TestClient) -> None:
    assert client.post(f"{API}/img2img", json=body(["", 300, "Lanczos", 2.0])).status_code == 422
    scripts = client.get(f"{API}/scripts").json()
    assert "sd upscale" in scripts["img2img"] and "sd upscale" not in scripts["txt2img"]
    txt2img = client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                   "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2]})
    assert txt2img.status_code == 422 and "unknown script" in txt2img.text
    assert [u["name"] for u in client.get(f"{API}/upscalers").json()] == NAMES


def test_the_img2img_tab_offers_the_upscalers_by_name_and_runs_what_the_api_runs(
        client: TestClient, served: tuple[TestClient, Any]) -> None:
    services = served[1]
    with gr.Blocks():
        controls = build_extension_controls("img2img", "img2img", services)
    assert controls.script is not None and "SD upscale" in [choice[0] for choice in controls.script.choices]
    form = controls.scripts["SD upscale"]
    assert [choice[0] for choice in form["upscaler"].choices] == NAMES
    assert "0" in form["overlap"].info and "256" in form["overlap"].info  # the range, stated beside the box
    received = {component: component.value for component in controls.inputs()}
    received.update({controls.script: "SD upscale", form["upscaler"]: "Lanczos", form["overlap"]: 0,
                     form["scale_factor"]: 1.0})
    _params, title, values = controls.read(received)
    request = GenerationRequest(prompt="a castle", steps=2, width=64, height=64, seed=7, sampler="Euler",
                                denoising_strength=0.4, init_image=base64.b64decode(png_b64(64)), save_images=False)
    from_ui = services.generation.run_script(title, "img2img", request, values)
    from_api = images_of(client.post(f"{API}/img2img", json=body(["", 0, 1, 1.0])))
    with Image.open(io.BytesIO(from_ui.images[0].png)) as image:
        assert np.array_equal(np.asarray(image), np.asarray(from_api[0]))


"""Every family through the A1111 API with a real third-party client, on tiny random checkpoints.

One server (the app on a local port, in this process) over one models folder holding a tiny
checkpoint of each family. For each, the ``webuiapi`` client generates with
``override_settings={"sd_model_checkpoint": <that model>}``: the image comes back at the asked size;
the PNG's infotext, read back by ``/sdapi/v1/png-info``, gives the request's prompt, steps, sampler,
seed, size and CFG (FLUX.1 dev: its Distilled CFG Scale and a set Shift too); the same request again
gives the same PNG bytes and another seed another image. FLUX.1 Fill goes through img2img inpaint.
``/sdapi/v1/sd-models`` names each model's family.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import make_services
from tests.server_process import free_port

webuiapi = pytest.importorskip("webuiapi")

WIDTH, HEIGHT = 80, 64  # not square: a swapped width and height would show


@dataclass(frozen=True)
class Case:
    """One family's checkpoint and the request the client sends for it."""

    tiny: str  # tiny_model's --arch
    family: str  # its key in /sd-models
    sampler: str
    steps: int
    cfg_scale: float
    negative_prompt: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # Forge's fields webuiapi has no argument for

    @property
    def file(self) -> str:
        return f"tiny-{self.tiny}.safetensors"


CASES = {case.tiny: case for case in (
    Case("sd2", "sd2", "DPM++ 2M", 3, 7.0, "blurry"),
    Case("sd2-v", "sd2_v", "Euler a", 3, 6.5, "blurry"),
    Case("sd35", "sd35", "Euler", 3, 4.5, "blurry"),
    Case("sd35-medium", "sd35_medium", "DPM++ 2M", 3, 5.5, "blurry"),
    Case("flux-dev", "flux_dev", "Euler", 3, 1.0, extra={"distilled_cfg_scale": 4.5, "shift": 2.0}),
    Case("flux-schnell", "flux_schnell", "Euler", 2, 1.0),
    Case("flux2-klein", "flux2_klein", "DPM++ 2M", 2, 1.0),
    Case("zimage", "zimage", "Euler", 3, 2.5, "blurry"),
)}
FILL = Case("flux-fill", "flux_fill", "Euler", 2, 1.0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from modules.devtools.tiny_model import TinyArch, write_tiny_model

    folder = tmp_path_factory.mktemp("every-family")
    for case in (*CASES.values(), FILL):
        write_tiny_model(TinyArch(case.tiny), folder / case.file, seed=1)
    return folder


@pytest.fixture(scope="module")
def api(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app served over HTTP on a local port from a thread of this process (the client speaks
    HTTP through ``requests``; a subprocess would only add its start-up time)."""
    import uvicorn

    services = make_services(tmp_path_factory.mktemp("every-family-data"), folder)
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning",
                                           log_config=None))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield webuiapi.WebUIApi(host="127.0.0.1", port=server.config.port)
    finally:
        server.should_exit = True
        thread.join(30)
        services.close()


def _post(api: Any, route: str, payload: dict[str, Any]) -> Any:
    """A request with Forge's fields webuiapi's methods do not take, through the client's own session."""
    return api._to_api_result(api.session.post(url=f"{api.baseurl}/{route}", json=payload))


def _txt2img(api: Any, case: Case, seed: int) -> Any:
    request = dict(prompt=f"a red house, {case.tiny}", negative_prompt=case.negative_prompt, seed=seed,
                   steps=case.steps, sampler_name=case.sampler, cfg_scale=case.cfg_scale, width=WIDTH,
                   height=HEIGHT, override_settings={"sd_model_checkpoint": case.file},
                   override_settings_restore_afterwards=False)  # the next request keeps the model loaded
    if not case.extra:
        return api.txt2img(**request)
    # webuiapi builds the whole A1111 body itself; the same body plus Forge's fields.
    return _post(api, "txt2img", {**request, "scheduler": "automatic", **case.extra})


def _png(result: Any) -> bytes:
    return base64.b64decode(result.json["images"][0])


def _check_png_info(api: Any, result: Any, case: Case, seed: int, prompt: str) -> dict[str, Any]:
    params = api.png_info(result.image).json["parameters"]
    assert params["Prompt"] == prompt
    assert params["Negative prompt"] == case.negative_prompt
    assert (params["Steps"], params["Sampler"], params["Seed"]) == (str(case.steps), case.sampler, str(seed))
    assert params["Size"] == f"{WIDTH}x{HEIGHT}"
    assert float(params["CFG scale"]) == case.cfg_scale
    assert params["Model"] == case.file.removesuffix(".safetensors")
    return params


@pytest.mark.parametrize("name", list(CASES))
def test_each_family_generates_round_trips_its_infotext_and_reproduces(api: Any, name: str) -> None:
    case, seed = CASES[name], 1234
    first = _txt2img(api, case, seed)
    assert first.image.size == (WIDTH, HEIGHT) and len(first.images) == 1
    assert first.info["seed"] == seed and first.info["sd_model_name"] == case.file.removesuffix(".safetensors")
    params = _check_png_info(api, first, case, seed, f"a red house, {case.tiny}")
    if name == "flux-dev":
        assert (params["Distilled CFG Scale"], params["Shift"]) == ("4.5", "2")
    assert _png(_txt2img(api, case, seed)) == _png(first)  # the same request, the same bytes
    other = _txt2img(api, case, seed + 1)
    assert other.image.tobytes() != first.image.tobytes()  # and the seed is what picks the image


def test_flux_fill_inpaints_through_img2img(api: Any) -> None:
    init = Image.new("RGB", (WIDTH, HEIGHT), (200, 60, 40))
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    ImageDraw.Draw(mask).rectangle((24, 16, 55, 47), fill=255)

    def inpaint() -> Any:
        return api.img2img(images=[init], mask_image=mask, inpainting_fill=1, denoising_strength=1.0,
                           prompt="a red house, flux-fill", seed=99, steps=FILL.steps, sampler_name=FILL.sampler,
                           cfg_scale=FILL.cfg_scale, width=WIDTH, height=HEIGHT,
                           override_settings={"sd_model_checkpoint": FILL.file},
                           override_settings_restore_afterwards=False)

    first = inpaint()
    assert first.image.size == (WIDTH, HEIGHT)
    pixels = first.image.convert("RGB")
    assert pixels.getpixel((2, 2)) == (200, 60, 40)  # outside the mask: the image as it was
    assert pixels.getpixel((40, 32)) != (200, 60, 40)  # inside: painted over
    params = _check_png_info(api, first, FILL, 99, "a red house, flux-fill")
    # A body without the field gets Forge's API default (3.5, as Forge's processing class has it, on
    # every family; Fill's 30 is the UI's preset), and the infotext says what was used.
    assert params["Distilled CFG Scale"] == "3.5"
    assert _png(inpaint()) == _png(first)


def test_sd_models_name_every_family(api: Any, folder: Path) -> None:
    items = {item["filename"]: item for item in api.session.get(f"{api.baseurl}/sd-models").json()}
    for case in (*CASES.values(), FILL):
        item = items[str(folder / case.file)]
        assert item["family"] == case.family, case.file
        assert item["family_label"] and item["title"].startswith(case.file)


"""The ``webuiapi`` package's ControlNet flow (ControlNetUnit, the /controlnet routes) against a
started server with a tiny ControlNet in its models/ControlNet folder."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.server_process import start_server, stop_server

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def tiny_controlnet_title(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(the data dir holding models/ControlNet/tiny-canny.safetensors, its title "tiny-canny [hash8]")."""
    from modules.devtools.tiny_controlnet import build_for_arch, write_tiny_controlnet
    from modules.devtools.tiny_model import TinyArch

    data = tmp_path_factory.mktemp("cn-client-data")
    path = write_tiny_controlnet(build_for_arch(TinyArch.SD15), data / "models" / "ControlNet" / "tiny-canny.safetensors")
    return data, f"tiny-canny [{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}]"


@pytest.fixture(scope="module")
def api(tiny_models, tiny_controlnet_title: tuple[Path, str]) -> Iterator[object]:
    proc, server = start_server(tiny_controlnet_title[0], tiny_models.folder, "--api", "--ckpt",
                                "tiny-sd15.safetensors", ready_path="/sdapi/v1/options")
    port = int(server.url.rsplit(":", 1)[1])
    yield webuiapi.WebUIApi(host="127.0.0.1", port=port)
    stop_server(proc)


def control_image() -> Image.Image:
    """Hard shapes on a plain ground: canny finds their edges."""
    image = Image.new("RGB", (64, 64), "black")
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 40, 50), fill="white")
    draw.ellipse((30, 5, 60, 35), fill="gray")
    return image


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_controlnet_unit_flow(api, tiny_controlnet_title: tuple[Path, str]) -> None:
    title = tiny_controlnet_title[1]
    assert api.controlnet_model_list() == [title]
    assert "canny" in api.controlnet_module_list()

    job = {"prompt": "a house", "seed": 11, "steps": 3, "width": 64, "height": 64, "cfg_scale": 7,
           "sampler_name": "Euler"}
    plain = api.txt2img(**job)
    unit = webuiapi.ControlNetUnit(image=control_image(), module="canny", model=title)
    # A dict of our own: webuiapi writes the units into its default ``alwayson_scripts={}``, which every
    # later call of the process would then send again (its own "workaround" comment says as much).
    controlled = api.txt2img(**job, alwayson_scripts={}, controlnet_units=[unit])
    infotext = controlled.info["infotexts"][0]
    assert f'ControlNet 0: "Module: canny, Model: {title}' in infotext
    assert "ControlNet" not in plain.info["infotexts"][0]
    assert controlled.image.size == (64, 64)
    assert np.abs(pixels(controlled.image) - pixels(plain.image)).mean() > 1  # the control changed the picture

    detected = api.controlnet_detect([control_image()], module="canny", processor_res=64, threshold_a=100,
                                     threshold_b=200)
    assert len(detected.images) == 1
    edges = np.asarray(detected.images[0].convert("L"))
    assert edges.max() == 255 and edges.min() == 0  # an edge map: white edges on black
    assert (edges == 255).mean() < 0.5

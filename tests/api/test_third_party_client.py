"""A real third-party client of A1111's API (the ``webuiapi`` package) against a started server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from PIL import Image, ImageDraw

from tests.server_process import start_server, stop_server

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def api(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    proc, server = start_server(tmp_path_factory.mktemp("client-data"), tiny_models.folder, "--api", "--ckpt",
                                "tiny-sd15.safetensors", ready_path="/sdapi/v1/options")
    port = int(server.url.rsplit(":", 1)[1])
    yield webuiapi.WebUIApi(host="127.0.0.1", port=port)
    stop_server(proc)


def test_webuiapi_txt2img_img2img_png_info_and_model_switch(api) -> None:
    assert api.util_get_current_model().startswith("tiny-sd15.safetensors [")
    result = api.txt2img(prompt="a cat", negative_prompt="dog", seed=5, steps=4, width=64, height=64, cfg_scale=7,
                         sampler_name="Euler a", batch_size=2, styles=["None"])
    assert result.info["all_seeds"] == [5, 6] and len(result.images) == 3 and result.image.size == (128, 64)
    init = Image.new("RGB", (64, 64), "red")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 20, 63), fill=255)
    edited = api.img2img(images=[init], mask_image=mask, prompt="x", steps=4, width=64, height=64,
                         denoising_strength=0.8, inpainting_fill=1, seed=3)
    assert edited.image.size == (64, 64) and edited.info["seed"] == 3
    assert api.png_info(result.images[1]).info.startswith("a cat\nNegative prompt: dog\nSteps: 4")
    api.util_set_model("tiny-sd15-b.safetensors")
    api.util_wait_for_ready()
    assert api.util_get_current_model().startswith("tiny-sd15-b.safetensors [")
    assert api.get_progress()["state"]["job_count"] == 0
    assert [s["name"] for s in api.get_samplers()][0] == "DPM++ 2M"
    api.interrupt()
    api.skip()


def test_webuiapi_extras_single_and_batch(api) -> None:
    source = Image.new("RGB", (40, 24), "teal")
    ImageDraw.Draw(source).ellipse((4, 4, 20, 20), fill="orange")
    single = api.extra_single_image(image=source, upscaler_1="Lanczos", upscaling_resize=2)
    assert single.image.size == (80, 48)
    assert single.info == "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"
    batch = api.extra_batch_images(images=[source, source.resize((16, 16))], upscaler_1="Nearest",
                                   resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=32)
    assert [image.size for image in batch.images] == [(64, 32), (64, 32)]
    assert api.extra_single_image(image=source).image.size == (40, 24)  # only an image: returned as it was

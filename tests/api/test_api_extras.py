"""POST /sdapi/v1/extra-single-image and /extra-batch-images, as A1111's API and its clients use them."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools.tiny_upscaler import write_tiny_upscaler
from modules.web.credentials import load_auth
from tests.api.images import random_png
from tests.conftest import make_services

API = "/sdapi/v1"
SOURCE_PARAMETERS = "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64"

# A1111's own API test body for extras (its defaults, spelled out).
A1111_EXTRAS = {"resize_mode": 0, "show_extras_results": True, "gfpgan_visibility": 0, "codeformer_visibility": 0,
                "codeformer_weight": 0, "upscaling_resize": 2, "upscaling_resize_w": 128, "upscaling_resize_h": 128,
                "upscaling_crop": True, "upscaler_1": "None", "upscaler_2": "None", "extras_upscaler_2_visibility": 0}


def _png(size: tuple[int, int] = (40, 24), seed: int = 0, parameters: str | None = SOURCE_PARAMETERS) -> bytes:
    return random_png(size, seed, parameters)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _image(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


@pytest.fixture(scope="module")
def client(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    services = make_services(tmp_path_factory.mktemp("extras-data"), tiny_models.folder)
    write_tiny_upscaler(services.paths.models_dir / "ESRGAN" / "4x-tiny.pth", 4, seed=3)
    flags = parse_flags(["--api"], {})
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    with TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1") as test_client:
        test_client.services = services  # type: ignore[attr-defined]
        yield test_client
    services.close()


def test_a1111_body_with_lanczos_upscales_by_two_and_says_so(client: TestClient) -> None:
    source = _png((40, 24))
    reply = client.post(f"{API}/extra-single-image", json={**A1111_EXTRAS, "upscaler_1": "Lanczos",
                                                           "image": _b64(source)})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert set(body) == {"html_info", "image"}
    image = _image(body["image"])
    assert image.size == (80, 48)
    # A1111's Lanczos upscaler: resize by the factor, then to the size rounded down to a multiple of 8.
    expected = Image.open(io.BytesIO(source)).convert("RGB").resize((80, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))
    assert body["html_info"] == "<p>Postprocess upscale by: 2, Postprocess upscaler: Lanczos</p>"
    assert image.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
    assert image.info["parameters"] == SOURCE_PARAMETERS  # the source's parameters are kept


def test_only_an_image_is_a_no_op_that_returns_it(client: TestClient) -> None:
    source = _png((40, 24), seed=1)
    reply = client.post(f"{API}/extra-single-image", json={"image": _b64(source)})
    assert reply.status_code == 200, reply.text
    image = _image(reply.json()["image"])
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(Image.open(io.BytesIO(source)).convert("RGB")))
    assert reply.json()["html_info"] == "<p></p>"


def test_a_model_upscaler_makes_the_scaled_size(client: TestClient) -> None:
    reply = client.post(f"{API}/extra-single-image", json={"image": _b64(_png((16, 16), seed=2)),
                                                           "upscaler_1": "4x-tiny", "upscaling_resize": 3})
    assert reply.status_code == 200, reply.text
    assert _image(reply.json()["image"]).size == (48, 48)
    assert "Postprocess upscaler: 4x-tiny" in reply.json()["html_info"]


def test_scale_to_with_crop_pastes_the_upscale_centred(client: TestClient) -> None:
    body = {"image": _b64(_png((40, 20), seed=3)), "resize_mode": 1, "upscaling_resize_w": 64,
            "upscaling_resize_h": 64, "upscaling_crop": True, "upscaler_1": "Nearest"}
    reply = client.post(f"{API}/extra-single-image", json=body)
    assert reply.status_code == 200, reply.text
    image = np.asarray(_image(reply.json()["image"]).convert("RGB"))
    # factor max(64/40, 64/20) = 3.2 -> 128x64, cropped to 64x64 around the centre.
    assert image.shape == (64, 64, 3)
    source = Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB")
    whole = np.asarray(source.resize((128, 64), Image.Resampling.NEAREST))
    assert np.array_equal(image, whole[:, 32:96])
    html_info = reply.json()["html_info"]
    assert "Postprocess upscale to: 64x64" in html_info and "Postprocess crop to: 64x64" in html_info


def test_second_upscaler_is_blended_by_its_visibility(client: TestClient) -> None:
    source = _png((24, 24), seed=4)
    body = {"image": _b64(source), "upscaler_1": "Lanczos", "upscaler_2": "Nearest",
            "extras_upscaler_2_visibility": 0.25}
    reply = client.post(f"{API}/extra-single-image", json=body)
    assert reply.status_code == 200, reply.text
    image = np.asarray(_image(reply.json()["image"]).convert("RGB")).astype(float)
    original = Image.open(io.BytesIO(source)).convert("RGB")
    lanczos = np.asarray(original.resize((48, 48), Image.Resampling.LANCZOS)).astype(float)
    nearest = np.asarray(original.resize((48, 48), Image.Resampling.NEAREST)).astype(float)
    assert np.abs(image - (0.75 * lanczos + 0.25 * nearest)).max() <= 1.0
    assert "Postprocess upscaler 2: Nearest" in reply.json()["html_info"]


def test_batch_returns_every_image_in_order(client: TestClient) -> None:
    sizes = [(16, 16), (24, 16)]
    body = {"upscaler_1": "Lanczos", "upscaling_resize": 2,
            "imageList": [{"data": _b64(_png(size, seed=i)), "name": f"in{i}.png"} for i, size in enumerate(sizes)]}
    reply = client.post(f"{API}/extra-batch-images", json=body)
    assert reply.status_code == 200, reply.text
    assert [_image(b64).size for b64 in reply.json()["images"]] == [(32, 32), (48, 32)]


def test_the_api_saves_nothing_as_in_a1111(client: TestClient) -> None:
    folder = client.services.paths.outputs_dir / "extras-images"  # type: ignore[attr-defined]
    assert not folder.exists() or not any(folder.iterdir())


@pytest.mark.parametrize("change, field, words", [
    ({"upscaler_1": "8x-nothing"}, "upscaler_1", ["8x-nothing", "Lanczos", "4x-tiny"]),
    ({"upscaler_1": "Latent"}, "upscaler_1", ["Latent"]),
    ({"upscaling_resize": 9}, "upscaling_resize", ["between 1 and 8"]),
    ({"resize_mode": 2}, "resize_mode", ["0", "1"]),
    ({"gfpgan_visibility": 1.5}, "gfpgan_visibility", ["between 0 and 1"]),
    ({"upscaler_1": "Lanczos", "upscaling_resize": 8, "image_size": (400, 300)}, "image", ["3200x2400", "2048"]),
    ({"upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5}, "upscaler_2", ["upscaler_1"]),
    ({"show_extras_results": False}, "show_extras_results", ["folder"]),
    ({"image": "not base64!"}, "image", ["base64"]),
])
def test_bad_requests_are_422_naming_the_field_and_the_server_keeps_serving(
        client: TestClient, change: dict, field: str, words: list[str]) -> None:
    change = dict(change)
    size = change.pop("image_size", (16, 16))
    body = {"image": _b64(_png(size, seed=5)), **change}
    reply = client.post(f"{API}/extra-single-image", json=body)
    assert reply.status_code == 422, reply.text
    assert field in reply.text and all(word in reply.text for word in words), reply.text
    assert client.post(f"{API}/extra-single-image", json={"image": _b64(_png())}).status_code == 200


def test_empty_batch_and_missing_image_are_422(client: TestClient) -> None:
    assert client.post(f"{API}/extra-batch-images", json={"imageList": []}).status_code == 422
    assert client.post(f"{API}/extra-single-image", json={"upscaler_1": "Lanczos"}).status_code == 422

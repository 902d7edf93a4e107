"""Extras results follow ``samples_format``, as A1111's do: the API's reply images and the saved files,
with what was done (and the source's parameters) in EXIF UserComment for JPEG and WebP."""

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
from modules.services.extras_request import ExtrasImage, ExtrasRequest
from modules.web.credentials import load_auth
from tests.api.images import random_png
from tests.conftest import make_services

API = "/sdapi/v1"
SOURCE_PARAMETERS = "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64"
DONE = "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286


def _user_comment(data: bytes) -> str:
    """The EXIF UserComment as A1111 writes it with piexif: ``UNICODE\\0`` then UTF-16 big-endian."""
    with Image.open(io.BytesIO(data)) as image:
        raw = image.getexif().get_ifd(EXIF_IFD)[USER_COMMENT]
    assert raw[:8] == b"UNICODE\x00"
    return raw[8:].decode("utf-16-be")


def _is_webp(data: bytes) -> bool:
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


@pytest.fixture(scope="module")
def client(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    services = make_services(tmp_path_factory.mktemp("extras-format-data"), tiny_models.folder)
    flags = parse_flags(["--api"], {})
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    with TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1") as test_client:
        test_client.services = services  # type: ignore[attr-defined]
        yield test_client
    services.close()


@pytest.fixture
def webp(client: TestClient) -> Iterator[None]:
    reply = client.post(f"{API}/options", json={"samples_format": "webp", "jpeg_quality": 90})
    assert reply.status_code == 200, reply.text
    yield
    assert client.post(f"{API}/options", json={"samples_format": "png", "jpeg_quality": 80}).status_code == 200


def test_api_reply_is_webp_with_the_parameters_and_what_was_done(client: TestClient, webp: None) -> None:
    source = random_png((40, 24), 1, SOURCE_PARAMETERS)
    reply = client.post(f"{API}/extra-single-image", json={"image": base64.b64encode(source).decode(),
                                                           "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert reply.status_code == 200, reply.text
    data = base64.b64decode(reply.json()["image"])
    assert _is_webp(data)
    # The source's parameters line gains what Extras did, so PNG Info reads both.
    assert _user_comment(data) == f"{SOURCE_PARAMETERS}, {DONE}"
    with Image.open(io.BytesIO(data)) as image:
        pixels = np.asarray(image.convert("RGB")).astype(float)
    # A1111: the Lanczos upscale, saved as WEBP with quality=jpeg_quality.
    upscaled = Image.open(io.BytesIO(source)).convert("RGB").resize((80, 48), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    upscaled.save(buffer, format="WEBP", quality=90)
    expected = np.asarray(Image.open(buffer).convert("RGB")).astype(float)
    assert np.array_equal(pixels, expected)
    info = client.post(f"{API}/png-info", json={"image": reply.json()["image"]}).json()
    assert info["info"].startswith("a cat") and "Seed: 5" in info["info"]
    assert info["parameters"]["Postprocess upscaler"] == "Lanczos"


def test_saved_result_is_a_webp_file_png_info_reads(client: TestClient, webp: None) -> None:
    # The Extras tab saves (A1111's API does not): A1111 writes the postprocessing text alone into
    # a JPEG/WebP saved from an image that carried no parameters.
    services = client.services  # type: ignore[attr-defined]
    source = random_png((32, 32), 2, None)
    result = services.extras.run(ExtrasRequest(images=(ExtrasImage(source, "my photo.png"),), upscaler_1="Lanczos",
                                               upscaling_resize=2, save=True))
    path = result.paths[0]
    assert path is not None and path.parent.name == "extras-images"
    assert path.name == "00000-my photo.webp"
    data = path.read_bytes()
    assert _is_webp(data) and data == result.encoded[0]
    assert _user_comment(data) == DONE
    info = client.post(f"{API}/png-info", json={"image": base64.b64encode(data).decode()}).json()
    assert DONE in info["info"]
    with Image.open(path) as image:
        assert image.size == (64, 64)


def test_jpeg_quality_is_honoured_and_png_stays_the_default(client: TestClient) -> None:
    source = base64.b64encode(random_png((48, 48), 3, SOURCE_PARAMETERS)).decode()
    sizes = {}
    for quality in (10, 95):
        assert client.post(f"{API}/options", json={"samples_format": "jpg", "jpeg_quality": quality}).status_code == 200
        try:
            reply = client.post(f"{API}/extra-single-image", json={"image": source, "upscaler_1": "Nearest"})
        finally:
            client.post(f"{API}/options", json={"samples_format": "png", "jpeg_quality": 80})
        data = base64.b64decode(reply.json()["image"])
        assert data[:3] == b"\xff\xd8\xff"  # JPEG
        assert _user_comment(data).endswith("Postprocess upscale by: 2, Postprocess upscaler: Nearest")
        sizes[quality] = len(data)
    assert sizes[10] < sizes[95]
    reply = client.post(f"{API}/extra-single-image", json={"image": source, "upscaler_1": "Nearest"})
    with Image.open(io.BytesIO(base64.b64decode(reply.json()["image"]))) as image:
        assert image.format == "PNG" and image.info["parameters"] == SOURCE_PARAMETERS

"""GET /sdapi/v1/upscalers and /realesrgan-models list the model files; hires fix refuses unknown names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools.tiny_upscaler import write_tiny_upscaler
from modules.web.credentials import load_auth
from tests.conftest import make_services

API = "/sdapi/v1"


@pytest.fixture(scope="module")
def client(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    services = make_services(tmp_path_factory.mktemp("upscaler-data"), tiny_models.folder)
    models = services.paths.models_dir
    write_tiny_upscaler(models / "ESRGAN" / "4x-tiny.pth", 4)
    write_tiny_upscaler(models / "RealESRGAN" / "2x-real.safetensors", 2)
    flags = parse_flags(["--api"], {})
    auth = load_auth(flags.gradio_auth, flags.gradio_auth_path, flags.api_auth)
    yield TestClient(app_module._build_app(flags, services, auth), base_url="http://127.0.0.1")
    services.close()


def test_upscalers_lists_builtins_then_models_with_their_scale(client: TestClient) -> None:
    listed = client.get(f"{API}/upscalers").json()
    assert [u["name"] for u in listed] == ["None", "Lanczos", "Nearest", "4x-tiny", "2x-real"]
    by_name = {u["name"]: u for u in listed}
    assert by_name["4x-tiny"]["scale"] == 4 and by_name["2x-real"]["scale"] == 2
    assert by_name["4x-tiny"]["model_path"].endswith("4x-tiny.pth")
    assert set(by_name["4x-tiny"]) == {"name", "model_name", "model_path", "model_url", "scale"}


def test_realesrgan_models_lists_that_folder_only(client: TestClient) -> None:
    listed = client.get(f"{API}/realesrgan-models").json()
    assert [(m["name"], m["scale"]) for m in listed] == [("2x-real", 2)]
    assert listed[0]["path"].endswith("2x-real.safetensors")


def test_unknown_hr_upscaler_is_422_listing_the_available_names(client: TestClient) -> None:
    response = client.post(f"{API}/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                                    "enable_hr": True, "hr_upscaler": "8x-nothing"})
    assert response.status_code == 422
    text = response.text
    assert "8x-nothing" in text and "4x-tiny" in text and "2x-real" in text and "Latent" in text

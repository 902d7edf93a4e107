"""A checkpoint that needs a part it does not bundle answers 409 with what to put where, over every
route that loads a model; the model loaded before stays loaded and the server keeps generating.

A real tiny FLUX.1 transformer file without its text encoders, VAE or tokenizer sits beside a tiny
SD 1.5; the tokenizer case (the one Atelier can download) is also faked at the loader, so the
download offer is checked whatever a family names its tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools import tiny_flux
from modules.devtools.tiny_model import TinyArch, write_tiny_model
from modules.engine.tokenizer_files import missing_tokenizer
from modules.web.credentials import load_auth
from tests.conftest import make_services

SD15 = "tiny-sd15.safetensors"
FLUX = "flux1-schnell.safetensors"  # the BFL transformer alone, as users download it
TXT2IMG = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "seed": 1, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any, Path]]:
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    write_tiny_model(TinyArch.SD15, checkpoints / SD15, seed=0)
    parts = tiny_flux.write_tiny_parts(TinyArch.FLUX_SCHNELL, tmp_path_factory.mktemp("flux-parts"), seed=0)
    parts["transformer"].rename(checkpoints / FLUX)
    services = make_services(tmp_path_factory.mktemp("data"), checkpoints)
    services.generation.switch_model(SD15).future.result()
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    yield TestClient(app, base_url="http://127.0.0.1"), services, parts["t5xxl"].parent
    services.close()


def _still_serving(client: TestClient) -> None:
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("tiny-sd15")
    reply = client.post("/sdapi/v1/txt2img", json=TXT2IMG)
    assert reply.status_code == 200 and len(reply.json()["images"]) == 1


def _refusal(reply: Any) -> dict[str, Any]:
    assert reply.status_code == 409, reply.text
    body = reply.json()
    assert body["error"] == "MissingComponentError" and body["checkpoint"].endswith(FLUX)
    assert body["file"] and body["folder"] and body["file"] in body["detail"] and body["folder"] in body["detail"]
    return body


def test_a_missing_text_encoder_is_a_409_naming_the_file_and_folder(served) -> None:
    client, services, _parts = served
    body = _refusal(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": FLUX}))
    assert "T5" in body["component"] and "t5xxl" in body["file"]
    assert Path(body["folder"]) == services.paths.text_encoder_dirs[0]
    assert body["download"] is None  # not something Atelier fetches: the file is to be put there
    _still_serving(client)


def test_a_job_naming_the_checkpoint_is_refused_the_same_way(served) -> None:
    client, _services, _parts = served
    override = {**TXT2IMG, "override_settings": {"sd_model_checkpoint": FLUX}}
    for route in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"):
        body = dict(override, init_images=[_png()]) if route.endswith("img2img") else override
        _refusal(client.post(route, json=body))
    _still_serving(client)


def test_the_next_missing_part_is_named_once_the_first_is_in_place(served) -> None:
    client, services, parts = served
    (services.paths.text_encoder_dirs[0]).mkdir(parents=True, exist_ok=True)
    for name in ("t5xxl_fp16.safetensors", "clip_l.safetensors"):
        (services.paths.text_encoder_dirs[0] / name).write_bytes((parts / name).read_bytes())
    body = _refusal(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": FLUX}))
    assert "VAE" in body["component"] and "ae.safetensors" in body["file"]
    _still_serving(client)


def test_a_missing_tokenizer_offers_the_download_route(served, monkeypatch: pytest.MonkeyPatch) -> None:
    client, services, _parts = served
    from modules.services import models

    real = models.load_model

    def load(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == FLUX:
            raise missing_tokenizer(path, "t5xxl", services.paths.tokenizers_dir)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", load)
    body = _refusal(client.post("/sdapi/v1/options", json={"sd_model_checkpoint": FLUX}))
    assert body["component"] == "tokenizer:t5xxl" and "tokenizer.json" in body["file"]
    assert body["download"] == {"method": "POST", "route": "/sdapi/v1/download-component",
                                "body": {"component": "tokenizer:t5xxl"}}
    assert body["url"].startswith("https://huggingface.co/")
    _still_serving(client)


def _png() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


"""The live preview options through the API: A1111's ``show_progress_type`` and
``show_progress_every_n_steps`` read and written by ``/sdapi/v1/options``, refused out of range or
unsupported (naming what is allowed), overridden per job, and seen in ``/progress``'s current_image."""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools.tiny_taesd import write_tiny_taesd
from modules.engine.taesd import TaesdVariant
from modules.web.credentials import load_auth
from tests.conftest import TinyModels, make_services

API = "/sdapi/v1"
JOB = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 5, "sampler_name": "Euler"}
ALLOWED = ("Approx cheap", "TAESD", "Full")


@dataclass(frozen=True)
class Served:
    app: object
    services: object
    config: Path

    def client(self) -> TestClient:
        return TestClient(self.app, base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def served(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("preview-data")
    write_tiny_taesd(data / "models" / "VAE-taesd", TaesdVariant.SD)  # as if fetched once before
    services = make_services(data, tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result(timeout=120)
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    yield Served(app, services, services.paths.config_file)
    services.close()


def _config(served: Served) -> str | None:
    return served.config.read_text() if served.config.exists() else None


def blocky(image: Image.Image) -> bool:
    """Made of flat 8x8 blocks, as the Approx cheap preview is."""
    small = image.resize((image.width // 8, image.height // 8), Image.Resampling.NEAREST)
    return np.array_equal(np.asarray(small.resize(image.size, Image.Resampling.NEAREST)), np.asarray(image))


# --- GET / POST /options ---------------------------------------------------------------------------


def test_options_show_a1111s_defaults_and_round_trip(served: Served) -> None:
    client = served.client()
    options = client.get(f"{API}/options").json()
    assert options["show_progress_type"] == "Approx cheap" and options["show_progress_every_n_steps"] == 10
    try:
        sent = {**options, "show_progress_type": "TAESD", "show_progress_every_n_steps": -1}
        assert client.post(f"{API}/options", json=sent).status_code == 200
        back = client.get(f"{API}/options").json()
        assert (back["show_progress_type"], back["show_progress_every_n_steps"]) == ("TAESD", -1)
        assert "show_progress_type: TAESD" in (_config(served) or "")  # kept in config.yaml
    finally:
        client.post(f"{API}/options", json={"show_progress_type": "Approx cheap", "show_progress_every_n_steps": 10})
    assert client.get(f"{API}/options").json()["show_progress_type"] == "Approx cheap"


@pytest.mark.parametrize("value", ["Approx NN", "taesd", "", 3, None])
def test_an_unsupported_method_is_refused_naming_the_supported_ones(served: Served, value: object) -> None:
    client = served.client()
    before, config = client.get(f"{API}/options").json(), _config(served)
    response = client.post(f"{API}/options", json={"show_progress_type": value})
    assert response.status_code == 422, response.text
    assert "show_progress_type" in response.text and all(label in response.text for label in ALLOWED)
    if value == "Approx NN":
        assert "not offered" in response.text
    assert client.get(f"{API}/options").json() == before and _config(served) == config


@pytest.mark.parametrize("value", [33, -2, 1.5, "5", True])
def test_a_period_out_of_range_is_refused_naming_the_range(served: Served, value: object) -> None:
    client = served.client()
    config = _config(served)
    response = client.post(f"{API}/options", json={"show_progress_every_n_steps": value})
    assert response.status_code == 422, response.text
    assert "show_progress_every_n_steps" in response.text and "-1 to 32" in response.text
    assert _config(served) == config


@pytest.mark.parametrize("override, needle", [
    ({"show_progress_type": "Approx NN"}, "Approx cheap, TAESD, Full"),
    ({"show_progress_every_n_steps": 64}, "-1 to 32"),
])
def test_a_job_overriding_with_a_bad_value_is_a_422(served: Served, override: dict, needle: str) -> None:
    response = served.client().post(f"{API}/txt2img", json={**JOB, "override_settings": override})
    assert response.status_code == 422 and needle in response.text, response.text


# --- /progress shows the chosen method --------------------------------------------------------------


def _preview_while_running(served: Served, override: dict) -> Image.Image:
    """The first current_image /progress shows for a long job with ``override``; the job is then stopped."""
    outcome: dict[str, object] = {}
    body = {**JOB, "steps": 150, "n_iter": 4, "override_settings": override}
    worker = threading.Thread(target=lambda: outcome.update(reply=served.client().post(f"{API}/txt2img", json=body)))
    worker.start()
    client, image = served.client(), None
    try:
        deadline = time.monotonic() + 120
        while image is None and time.monotonic() < deadline:
            progress = client.get(f"{API}/progress").json()
            if progress["current_image"]:
                image = Image.open(io.BytesIO(base64.b64decode(progress["current_image"]))).convert("RGB")
            time.sleep(0.05)
    finally:
        client.post(f"{API}/interrupt")
        worker.join(120)
    assert outcome["reply"].status_code == 200  # type: ignore[union-attr]
    assert image is not None, "no preview seen"
    return image


def test_progress_shows_a_taesd_preview_when_the_job_asks_for_one(served: Served) -> None:
    image = _preview_while_running(served, {"show_progress_type": "TAESD", "show_progress_every_n_steps": 1})
    assert image.size == (64, 64) and not blocky(image)  # detail in every pixel
    assert served.client().get(f"{API}/options").json()["show_progress_type"] == "Approx cheap"  # that job only


def test_progress_shows_the_servers_approx_cheap_preview_by_default(served: Served) -> None:
    image = _preview_while_running(served, {"show_progress_every_n_steps": 1})
    assert image.size == (64, 64) and blocky(image)


def test_progress_shows_a_full_preview_set_as_the_servers_option(served: Served) -> None:
    client = served.client()
    assert client.post(f"{API}/options", json={"show_progress_type": "Full"}).status_code == 200
    try:
        image = _preview_while_running(served, {"show_progress_every_n_steps": 1})
    finally:
        client.post(f"{API}/options", json={"show_progress_type": "Approx cheap"})
    assert image.size == (64, 64) and not blocky(image)

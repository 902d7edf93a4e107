"""``tiling: true`` through the API: the image's left and right edges meet,
the infotext says ``Tiling: True`` and reads back as tiling, and the model's convolutions pad as
before once the job is over, also when it failed."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

SMALL = {"prompt": "a brick wall", "width": 64, "height": 64, "steps": 3, "seed": 5, "sampler_name": "Euler"}


def txt2img(client: TestClient, **changes: object) -> tuple[list[np.ndarray], str]:
    reply = client.post("/sdapi/v1/txt2img", json={**SMALL, **changes})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    info = json.loads(body["info"])
    shown = body["images"][info["index_of_first_image"]:]
    images = [Image.open(io.BytesIO(base64.b64decode(item))).convert("RGB") for item in shown]
    return [np.asarray(image).astype(np.int16) for image in images], info["infotexts"][0]


def seam(pixels: list[np.ndarray]) -> float:
    """How much the pictures jump where they wrap (last column to first), over how much they change
    between neighbouring columns inside: below 1 for pictures that tile, about 1 or more otherwise."""
    return float(np.mean([np.abs(p[:, -1] - p[:, 0]).mean() / np.abs(np.diff(p, axis=1)).mean() for p in pixels]))


def conv_modes(services: object) -> set[str]:
    pipe = services.models.loaded_model().pipeline  # type: ignore[attr-defined]
    return {m.padding_mode for part in (pipe.unet, pipe.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)}


def test_a_tiling_job_meets_at_its_edges_and_says_so_in_its_infotext(served) -> None:
    client, services = served
    tiled, text = txt2img(client, tiling=True, batch_size=4)
    plain, plain_text = txt2img(client, batch_size=4)
    assert "Tiling: True" in text and "Tiling" not in plain_text
    assert seam(tiled) < 0.9 < seam(plain), (seam(tiled), seam(plain))
    assert conv_modes(services) == {"zeros"}  # the model pads as before for the next job


def test_an_infotext_with_tiling_makes_a_tiling_job(served) -> None:
    client, _ = served
    tiled, text = txt2img(client, tiling=True)
    reply = client.post("/sdapi/v1/txt2img", json={"infotext": text})  # everything from the infotext
    assert reply.status_code == 200, reply.text
    again_text = json.loads(reply.json()["info"])["infotexts"][0]
    again = [np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]))).convert("RGB"))]
    assert "Tiling: True" in again_text
    assert np.array_equal(tiled, again)
    _, chosen = txt2img(client, infotext=text, tiling=False)  # the client's own choice wins
    assert "Tiling" not in chosen


def test_a_failing_tiling_job_leaves_the_padding_as_it_was(served, monkeypatch: pytest.MonkeyPatch) -> None:
    client, services = served
    seen: list[set[str]] = []

    def failing_run_task(*args: object, **kwargs: object) -> None:
        seen.append(conv_modes(services))
        raise RuntimeError("the sampler broke")

    monkeypatch.setattr("modules.services.renderer.run_task", failing_run_task)
    quiet = TestClient(client.app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    reply = quiet.post("/sdapi/v1/txt2img", json={**SMALL, "tiling": True})
    assert reply.status_code >= 500
    assert seen == [{"circular"}]  # the job ran with circular padding...
    assert conv_modes(services) == {"zeros"}  # ...and its failure put the padding back

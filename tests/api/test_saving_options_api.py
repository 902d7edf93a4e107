"""A1111's saving options over HTTP: set with POST /sdapi/v1/options, noticed in the files a
txt2img writes, in the images its reply carries, and in what PNG Info reads back."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from starlette.testclient import TestClient

from modules.config import load_settings
from modules.services.images import read_infotext

SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 5, "sampler_name": "Euler"}
API = "/sdapi/v1"


@pytest.fixture
def client(served: tuple[TestClient, object]) -> Iterator[TestClient]:
    c, services = served
    defaults = {"samples_format": "png", "save_txt": False, "return_grid": True, "grid_save": True, "n_rows": -1,
                "samples_filename_pattern": "", "outdir_txt2img_samples": "outputs/txt2img-images"}
    yield c
    assert c.post(f"{API}/options", json=defaults).status_code == 200


def generated(c: TestClient, **extra: object) -> dict:
    reply = c.post(f"{API}/txt2img", json={**SMALL, **extra})
    assert reply.status_code == 200, reply.text
    return reply.json()


def newest(services: object, suffix: str) -> Path:
    return max(services.paths.outputs_dir.rglob(f"*{suffix}"), key=lambda p: p.stat().st_mtime_ns)


def test_webp_option_writes_a_webp_whose_parameters_read_back(client: TestClient, served) -> None:
    services = served[1]
    assert client.post(f"{API}/options", json={"samples_format": "webp"}).status_code == 200
    assert client.get(f"{API}/options").json()["samples_format"] == "webp"
    reply = generated(client, save_images=True, seed=4321)
    infotext = json.loads(reply["info"])["infotexts"][0]
    saved = newest(services, ".webp")
    assert saved.name.endswith("-4321.webp") and saved.read_bytes()[8:12] == b"WEBP"
    assert read_infotext(saved) == infotext and "Seed: 4321" in infotext
    # The reply's image is a WebP too (A1111's encode_pil_to_base64), its parameters inside.
    data = base64.b64decode(reply["images"][0])
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    # POST /png-info reads the parameters back from the saved WebP.
    info = client.post(f"{API}/png-info", json={"image": base64.b64encode(saved.read_bytes()).decode()}).json()
    assert info["info"] == infotext and info["parameters"]["Seed"] == "4321"
    assert "samples_format: webp" in services.paths.config_file.read_text()


def test_jpg_reply_and_txt_beside_the_image(client: TestClient, served) -> None:
    services = served[1]
    assert client.post(f"{API}/options", json={"samples_format": "jpg", "save_txt": True,
                                               "samples_filename_pattern": "[seed]-[prompt_words]"}).status_code == 200
    reply = generated(client, save_images=True, seed=77)
    data = base64.b64decode(reply["images"][0])
    assert data[:3] == b"\xff\xd8\xff"
    saved = newest(services, ".jpg")
    assert saved.name.endswith("-77-a red cube.jpg")
    text = saved.with_suffix(".txt").read_text(encoding="utf-8")
    assert text == json.loads(reply["info"])["infotexts"][0] + "\n"
    info = client.post(f"{API}/png-info", json={"image": reply["images"][0]}).json()
    assert info["parameters"]["Seed"] == "77"


def test_grid_first_and_its_rows(client: TestClient, served) -> None:
    reply = generated(client, batch_size=3)
    assert len(reply["images"]) == 4  # the grid first (return_grid), then three images
    assert json.loads(reply["info"])["index_of_first_image"] == 1
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(base64.b64decode(reply["images"][0]))) as grid:
        assert grid.size == (128, 128)  # 3 images: round(sqrt(3)) = 2 rows of 2
    assert client.post(f"{API}/options", json={"n_rows": 1}).status_code == 200
    with Image.open(BytesIO(base64.b64decode(generated(client, batch_size=3)["images"][0]))) as grid:
        assert grid.size == (192, 64)
    assert client.post(f"{API}/options", json={"return_grid": False}).status_code == 200
    assert len(generated(client, batch_size=3)["images"]) == 3


def test_output_folder_moves_within_outputs_only(client: TestClient, served) -> None:
    services = served[1]
    outputs = services.paths.outputs_dir
    assert client.post(f"{API}/options", json={"outdir_txt2img_samples": "outputs/mine"}).status_code == 200
    generated(client, save_images=True, seed=99)
    assert list((outputs / "mine").rglob("*-99.png"))
    for hostile in ("/etc", "../../outside", "outputs/../../x", "models/Stable-diffusion", "outputs\\..\\.."):
        refused = client.post(f"{API}/options", json={"outdir_txt2img_samples": hostile, "samples_format": "jpg"})
        assert refused.status_code == 422, hostile
        assert "outdir_txt2img_samples" in refused.text
    options = client.get(f"{API}/options").json()
    assert options["outdir_txt2img_samples"] == "outputs/mine" and options["samples_format"] == "png"  # all or none


def test_unknown_a1111_options_are_kept_and_echoed(client: TestClient, served) -> None:
    services = served[1]
    sent = {"js_modal_lightbox": False, "ui_reorder_list": ["inpaint", "sampler"], "font": ""}
    assert client.post(f"{API}/options", json=sent).status_code == 200
    options = client.get(f"{API}/options").json()
    assert {k: options[k] for k in sent} == sent
    stored = yaml.safe_load(services.paths.config_file.read_text())["a1111_extra"]
    assert stored["ui_reorder_list"] == ["inpaint", "sampler"]
    assert load_settings(services.paths.config_file).a1111_extra["js_modal_lightbox"] is False  # a restart takes it
    # The whole GET answer sent back is fine.
    assert client.post(f"{API}/options", json=options).status_code == 200
    # A job may name a kept option; one Atelier neither knows nor keeps is refused by name.
    generated(client, override_settings={"js_modal_lightbox": True})
    refused = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"no_such_option_x": 1}})
    assert refused.status_code == 422 and "override_settings.no_such_option_x" in refused.text


@pytest.mark.parametrize("body", [
    {"deep": json.loads("[" * 50 + "]" * 50)},
    {"huge": "x" * 100_000},
    {f"key{i}": i for i in range(1100)},
    {"k" * 500: 1},
])
def test_hostile_unknown_options_are_refused(client: TestClient, served, body: dict) -> None:
    before = client.get(f"{API}/options").json()
    refused = client.post(f"{API}/options", json=body)
    assert refused.status_code == 422, refused.text[:200]
    assert client.get(f"{API}/options").json() == before


def test_batch_tags_and_a_grid_returned_but_not_saved(client: TestClient, served) -> None:
    services = served[1]
    pattern = "[seed]-[batch_number]-[seed_last]-[job_timestamp]"
    assert client.post(f"{API}/options", json={"samples_filename_pattern": pattern, "grid_save": False}).status_code == 200
    grids_before = set(services.paths.outputs_dir.rglob("grid-*"))
    reply = generated(client, save_images=True, seed=300, batch_size=2)
    assert len(reply["images"]) == 3  # return_grid: the grid still comes first
    assert set(services.paths.outputs_dir.rglob("grid-*")) == grids_before  # grid_save off: not on disk
    names = sorted(p.name for p in services.paths.outputs_dir.rglob("*-300-1-301-*.png")) + sorted(
        p.name for p in services.paths.outputs_dir.rglob("*-301-2-301-*.png"))
    assert len(names) == 2
    stamps = {name.rsplit("-", 1)[1].removesuffix(".png") for name in names}
    assert len(stamps) == 1 and len(stamps.pop()) == 14  # one job, one %Y%m%d%H%M%S timestamp

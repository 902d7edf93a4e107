"""Face restoration through the REST API: ``restore_faces: true`` changes only the face's crop and
says ``Face restoration: <name>`` in the infotext and the PNG; a restorer without a model is a 422
naming the folder; ``/face-restorers`` lists both; the two options read, write and refuse like A1111's.

A random GFPGAN is installed, CodeFormer is not, and the detector "finds" one face in every image.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.config import Settings
from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.face_detection import FaceBox, crop_box
from modules.paths import resolve_paths
from modules.services.container import build_services
from modules.web.credentials import load_auth
from tests.conftest import TinyModels
from tests.face_restorer_files import FixedFaces, install, restorer_file

API = "/sdapi/v1"
FACE = FaceBox(20, 20, 36, 36)
SMALL = {"prompt": "a portrait", "width": 64, "height": 64, "steps": 2, "seed": 11, "sampler_name": "Euler",
         "override_settings": {"face_restoration_model": "GFPGAN"}}


@dataclass(frozen=True)
class Served:
    client: TestClient
    services: object


@pytest.fixture(scope="module")
def served(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("face-data")
    paths = resolve_paths(data_dir=data, ckpt_dir=tiny_models.folder)
    install(restorer_file(tmp_path_factory, "gfpgan"), paths.gfpgan_dirs[0], "GFPGANv1.4.pth")
    services = build_services(paths, Settings(), choose_device(DevicePolicy(use_cpu=True)),
                              face_detector=FixedFaces((FACE,)))
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    yield Served(TestClient(app, base_url="http://127.0.0.1"), services)
    services.close()


def txt2img(client: TestClient, **changes: object) -> tuple[np.ndarray, dict, Image.Image]:
    reply = client.post(f"{API}/txt2img", json={**SMALL, **changes})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    return np.asarray(image.convert("RGB")), json.loads(body["info"]), image


def test_face_restorers_lists_both_with_the_folder_of_the_installed_model(served: Served) -> None:
    listed = served.client.get(f"{API}/face-restorers").json()
    folder = str(served.services.paths.gfpgan_dirs[0])  # type: ignore[attr-defined]
    assert listed == [{"name": "CodeFormer", "cmd_dir": None}, {"name": "GFPGAN", "cmd_dir": folder}]


def test_restore_faces_changes_only_the_faces_crop_and_names_the_restorer(served: Served) -> None:
    plain, plain_info, _ = txt2img(served.client, restore_faces=False)
    restored, info, png = txt2img(served.client, restore_faces=True, save_images=True)
    crop = crop_box(FACE, 64, 64)
    outside = np.ones((64, 64), dtype=bool)
    outside[crop.top:crop.bottom, crop.left:crop.right] = False
    difference = (plain != restored).any(axis=-1)
    assert not difference[outside].any()
    assert difference[FACE.top:FACE.bottom, FACE.left:FACE.right].mean() > 0.9
    assert "Face restoration: GFPGAN" in info["infotexts"][0] and "Face restoration" not in plain_info["infotexts"][0]
    assert "Face restoration: GFPGAN" in png.info["parameters"]
    assert (info["restore_faces"], info["face_restoration_model"]) == (True, "GFPGAN")
    assert (plain_info["restore_faces"], plain_info["face_restoration_model"]) == (False, None)
    saved = sorted((served.services.paths.outputs_dir / "txt2img-images").rglob("*.png"))  # type: ignore[attr-defined]
    assert saved and "Face restoration: GFPGAN" in Image.open(saved[-1]).info["parameters"]


def test_a_restorer_without_a_model_is_refused_naming_its_folder_and_the_server_goes_on(served: Served) -> None:
    reply = served.client.post(f"{API}/txt2img", json={**SMALL, "restore_faces": True, "override_settings": {}})
    assert reply.status_code == 422, reply.text
    codeformer = str(served.services.paths.codeformer_dirs[0])  # type: ignore[attr-defined]
    assert "restore_faces" in reply.text and "codeformer-v0.1.0.pth" in reply.text
    assert codeformer in reply.json()["errors"]
    assert served.services.queue.pending_count() == 0  # type: ignore[attr-defined]
    assert served.client.get(f"{API}/face-restorers").status_code == 200
    assert served.client.post(f"{API}/txt2img", json={**SMALL, "steps": 1}).status_code == 200


def test_the_options_read_write_and_refuse_bad_values(served: Served) -> None:
    client = served.client
    options = client.get(f"{API}/options").json()
    assert (options["face_restoration_model"], options["code_former_weight"]) == ("CodeFormer", 0.5)
    try:
        sent = {**options, "face_restoration_model": "GFPGAN", "code_former_weight": 0.3}
        assert client.post(f"{API}/options", json=sent).status_code == 200
        back = client.get(f"{API}/options").json()
        assert (back["face_restoration_model"], back["code_former_weight"]) == ("GFPGAN", 0.3)
        refused = (({"face_restoration_model": "RestoreFormer"}, "CodeFormer, GFPGAN"),
                   ({"code_former_weight": 1.5}, "from 0 to 1"), ({"code_former_weight": "high"}, "from 0 to 1"))
        for bad, allowed in refused:
            reply = client.post(f"{API}/options", json=bad)
            assert reply.status_code == 422 and allowed in reply.text and next(iter(bad)) in reply.text
        assert client.get(f"{API}/options").json()["code_former_weight"] == 0.3  # nothing changed
    finally:
        client.post(f"{API}/options", json={"face_restoration_model": "CodeFormer", "code_former_weight": 0.5})


# --- Extras: face restoration with visibility, before or after the upscale -----------------------


def _extras(client: TestClient, source: bytes, **fields: object) -> tuple[np.ndarray, str]:
    reply = client.post(f"{API}/extra-single-image", json={"image": base64.b64encode(source).decode(), **fields})
    assert reply.status_code == 200, reply.text
    image = Image.open(io.BytesIO(base64.b64decode(reply.json()["image"])))
    return np.asarray(image.convert("RGB")).astype(int), reply.json()["html_info"]


def test_extras_blends_the_restored_faces_by_their_visibility(served: Served) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    source = buffer.getvalue()
    full, full_info = _extras(served.client, source, gfpgan_visibility=1)
    half, half_info = _extras(served.client, source, gfpgan_visibility=0.5)
    crop = crop_box(FACE, 64, 64)
    outside = np.ones((64, 64), dtype=bool)
    outside[crop.top:crop.bottom, crop.left:crop.right] = False
    original = pixels.astype(int)
    assert (full[outside] == original[outside]).all() and (full != original).any()
    assert np.abs(half - (original + full) / 2).max() <= 1  # Image.blend at 0.5
    assert full_info == "<p>GFPGAN visibility: 1</p>" and half_info == "<p>GFPGAN visibility: 0.5</p>"
    # Upscale first (2x Lanczos), then the faces; or faces first: A1111's infotext keeps the order.
    after, after_info = _extras(served.client, source, gfpgan_visibility=1, upscaler_1="Lanczos",
                                upscale_first=True)
    assert after.shape == (128, 128, 3)
    assert after_info.index("Postprocess upscaler") < after_info.index("GFPGAN visibility")
    _, before_info = _extras(served.client, source, gfpgan_visibility=1, upscaler_1="Lanczos")
    assert before_info.index("GFPGAN visibility") < before_info.index("Postprocess upscaler")


def test_extras_refuses_a_restorer_without_a_model_naming_where_it_goes(served: Served) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "gray").save(buffer, format="PNG")
    reply = served.client.post(f"{API}/extra-single-image", json={
        "image": base64.b64encode(buffer.getvalue()).decode(), "codeformer_visibility": 0.5})
    assert reply.status_code == 422 and "codeformer_visibility" in reply.text
    assert "codeformer-v0.1.0.pth" in reply.text

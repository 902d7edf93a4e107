"""LoRA, embeddings, VAE, hires fix and refiner over the REST API, as A1111 clients use them."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from modules.infotext import parse_infotext
from tests.server_process import Server, start_server, stop_server

API = "/sdapi/v1"
SMALL = {"steps": 3, "width": 64, "height": 64, "cfg_scale": 5, "seed": 11, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from modules.devtools.tiny_embedding import write_tiny_embedding
    from modules.devtools.tiny_lora import write_tiny_lora
    from modules.devtools.tiny_vae import write_tiny_vae

    data = tmp_path_factory.mktemp("api-addons")
    loras, embeddings = tmp_path_factory.mktemp("my-loras"), tmp_path_factory.mktemp("my-embeddings")
    (data / "models" / "VAE").mkdir(parents=True)
    write_tiny_lora(tiny_models.sd15_file, loras / "tiny.safetensors", seed=3)
    write_tiny_embedding(embeddings / "shinyemb.pt", checkpoint=tiny_models.sd15_file, seed=2)
    write_tiny_vae(tiny_models.sd15_file, data / "models" / "VAE" / "other-vae.safetensors", seed=9)
    proc, srv = start_server(data, tiny_models.folder, "--api", "--ckpt", "tiny-sd15.safetensors",
                             "--lora-dir", str(loras), "--embeddings-dir", str(embeddings), ready_path=f"{API}/options")
    yield srv
    stop_server(proc)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def infotext_params(body: dict) -> dict[str, str]:
    return dict(parse_infotext(json.loads(body["info"])["infotexts"][0]).params)


def test_lists_of_loras_vaes_and_embeddings(client: httpx.Client) -> None:
    loras = client.get(f"{API}/loras").json()
    assert [item["name"] for item in loras] == ["tiny"]
    # The alias is the name it was trained under (kohya's ss_output_name), as A1111 shows it.
    assert loras[0]["alias"] == loras[0]["metadata"]["ss_output_name"]
    assert loras[0]["path"].endswith("tiny.safetensors")
    assert client.get(f"{API}/sd-vae").json()[0]["model_name"] == "other-vae.safetensors"
    embeddings = client.get(f"{API}/embeddings").json()
    assert embeddings["loaded"]["shinyemb"]["vectors"] == 2 and embeddings["skipped"] == {}


def test_lora_tag_over_the_api(client: httpx.Client) -> None:
    plain = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cube"}).json()
    lora = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cube <lora:tiny:1>"}).json()
    assert plain["images"][0] != lora["images"][0]
    assert infotext_params(lora)["Lora hashes"].startswith("tiny: ")
    missing = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cube <lora:absent:1>"})
    assert missing.status_code == 422 and "absent" in missing.text
    assert client.get(f"{API}/progress").status_code == 200  # still serving


def test_lora_named_by_its_alias_over_the_api(client: httpx.Client) -> None:
    alias = client.get(f"{API}/loras").json()[0]["alias"]
    assert alias != "tiny"  # the file is tiny.safetensors; the alias is its ss_output_name
    by_alias = client.post(f"{API}/txt2img", json={**SMALL, "prompt": f"a cube <lora:{alias}:1>"})
    by_name = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a cube <lora:tiny:1>"})
    assert by_alias.status_code == 200 and by_name.status_code == 200, by_alias.text
    assert infotext_params(by_alias.json())["Lora hashes"].split(": ")[1] == \
        infotext_params(by_name.json())["Lora hashes"].split(": ")[1]  # the same file
    pixels = [Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).tobytes() for r in (by_alias, by_name)]
    assert pixels[0] == pixels[1]  # the same LoRA applied (the PNGs differ only in their prompt text)


def test_hires_fix_over_the_api(client: httpx.Client) -> None:
    r = client.post(f"{API}/txt2img", json={**SMALL, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent",
                                            "hr_second_pass_steps": 2, "denoising_strength": 0.55})
    assert r.status_code == 200, r.text
    body = r.json()
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as image:
        assert image.size == (128, 128)
    params = infotext_params(body)
    assert (params["Hires upscale"], params["Hires steps"], params["Denoising strength"]) == ("2", "2", "0.55")
    assert json.loads(body["info"])["denoising_strength"] == 0.55
    too_big = client.post(f"{API}/txt2img", json={**SMALL, "width": 1024, "height": 1024, "enable_hr": True,
                                                  "hr_scale": 4})
    assert too_big.status_code == 422 and "hr_scale" in too_big.text


def test_vae_option_and_per_request_override(client: httpx.Client) -> None:
    options = client.get(f"{API}/options").json()
    assert options["sd_vae"] == "Automatic"
    bad = client.post(f"{API}/options", json={**options, "sd_vae": "missing.pt"})
    assert bad.status_code == 422 and "sd_vae" in bad.text
    per_request = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"sd_vae": "other-vae.safetensors"}})
    assert infotext_params(per_request.json())["VAE"] == "other-vae.safetensors"
    assert json.loads(per_request.json()["info"])["sd_vae_name"] == "other-vae.safetensors"
    assert client.get(f"{API}/options").json()["sd_vae"] == "Automatic"  # an override is for that job only
    assert client.post(f"{API}/options", json={"sd_vae": "other-vae.safetensors"}).status_code == 200
    assert client.get(f"{API}/options").json()["sd_vae"] == "other-vae.safetensors"
    assert "VAE" in infotext_params(client.post(f"{API}/txt2img", json=SMALL).json())
    assert client.post(f"{API}/options", json={"sd_vae": "None"}).status_code == 200
    assert "VAE" not in infotext_params(client.post(f"{API}/txt2img", json=SMALL).json())


def test_refiner_and_seed_resize_over_the_api(client: httpx.Client) -> None:
    r = client.post(f"{API}/txt2img", json={**SMALL, "refiner_checkpoint": "tiny-sd15-b.safetensors",
                                            "refiner_switch_at": 0.5, "seed_resize_from_w": 96,
                                            "seed_resize_from_h": 96})
    assert r.status_code == 200, r.text
    params = infotext_params(r.json())
    assert params["Refiner"].startswith("tiny-sd15-b") and params["Seed resize from"] == "96x96"
    info = json.loads(r.json()["info"])
    assert (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (96, 96)
    missing = client.post(f"{API}/txt2img", json={**SMALL, "refiner_checkpoint": "nothing-like-it"})
    assert missing.status_code == 422 and "refiner_checkpoint" in missing.text


def test_refresh_finds_new_loras(client: httpx.Client, server: Server, tiny_models) -> None:
    from modules.devtools.tiny_lora import write_tiny_lora

    folder = __import__("pathlib").Path(client.get(f"{API}/loras").json()[0]["path"]).parent
    write_tiny_lora(tiny_models.sd15_file, folder / "fresh.safetensors", seed=8)
    assert "fresh" not in [i["name"] for i in client.get(f"{API}/loras").json()]
    assert client.post(f"{API}/refresh-loras").status_code == 200
    assert "fresh" in [i["name"] for i in client.get(f"{API}/loras").json()]

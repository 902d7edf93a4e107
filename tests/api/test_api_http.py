"""The A1111-compatible REST API over real HTTP, on a started server with tiny models."""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from modules.infotext import parse_infotext
from tests.server_process import Server, start_server, stop_server

API = "/sdapi/v1"
SMALL = {"steps": 3, "width": 64, "height": 64, "cfg_scale": 5}


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    proc, srv = start_server(tmp_path_factory.mktemp("api-data"), tiny_models.folder, "--api", "--ckpt",
                             "tiny-sd15.safetensors", ready_path=f"{API}/options")
    yield srv
    stop_server(proc)


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(image_b64: str) -> Image.Image:
    assert not image_b64.startswith("data:")
    return Image.open(io.BytesIO(base64.b64decode(image_b64)))


def test_txt2img_seed_and_batch(client: httpx.Client) -> None:
    r = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "a red cube", "negative_prompt": "blur", "seed": 4242,
                                            "batch_size": 2, "sampler_name": "Euler a", "url": "ignored",
                                            "hr_additional_modules": [], "alwayson_scripts": {}, "styles": None})
    assert r.status_code == 200, r.text
    body = r.json()
    info = json.loads(body["info"])
    assert info["all_seeds"] == [4242, 4243] and info["seed"] == 4242
    assert info["sd_model_name"] == "tiny-sd15" and len(info["sd_model_hash"]) == 10
    assert (info["width"], info["height"], info["steps"], info["sampler_name"]) == (64, 64, 3, "Euler a")
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1  # grid first, then both images
    for image_b64, text in zip(body["images"], info["infotexts"]):
        with decode(image_b64) as image:
            assert image.info["parameters"] == text
    assert parse_infotext(info["infotexts"][2]).params["Seed"] == "4243"
    assert body["parameters"]["prompt"] == "a red cube"


def test_img2img_with_mask_keeps_the_unmasked_area(client: httpx.Client) -> None:
    init = Image.new("RGB", (64, 64), (210, 40, 40))
    ImageDraw.Draw(init).rectangle((32, 0, 63, 63), fill=(40, 40, 210))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 15, 63), fill=255)
    r = client.post(f"{API}/img2img", json={**SMALL, "prompt": "x", "seed": 1, "denoising_strength": 1.0,
                                            "init_images": ["data:image/png;base64," + b64_png(init)],
                                            "mask": b64_png(mask), "mask_blur": 2, "inpainting_fill": 1})
    assert r.status_code == 200, r.text
    with decode(r.json()["images"][0]) as out:
        result = np.asarray(out.convert("RGB")).astype(int)
    assert np.array_equal(result[:, 24:], np.asarray(init).astype(int)[:, 24:])
    info = json.loads(r.json()["info"])
    assert "Denoising strength: 1," in info["infotexts"][0] and "Mask blur: 2," in info["infotexts"][0]


def test_png_info_reads_back_a_generated_image(client: httpx.Client) -> None:
    made = client.post(f"{API}/txt2img", json={**SMALL, "prompt": "png info, with: punctuation", "seed": 7}).json()
    r = client.post(f"{API}/png-info", json={"image": made["images"][0]})
    assert r.status_code == 200
    body = r.json()
    assert body["info"] == json.loads(made["info"])["infotexts"][0]
    assert body["parameters"]["Prompt"] == "png info, with: punctuation" and body["parameters"]["Seed"] == "7"
    plain = client.post(f"{API}/png-info", json={"image": b64_png(Image.new("RGB", (8, 8)))}).json()
    assert plain["info"] == ""


def test_options_switch_the_checkpoint_and_accept_the_whole_get_back(client: httpx.Client) -> None:
    titles = [m["title"] for m in client.get(f"{API}/sd-models").json()]
    options = client.get(f"{API}/options").json()
    assert options["sd_model_checkpoint"] in titles
    r = client.post(f"{API}/options", json={**options, "sd_model_checkpoint": "tiny-sd15-b.safetensors"})
    assert r.status_code == 200 and r.json() is None
    switched = client.get(f"{API}/options").json()
    assert switched["sd_model_checkpoint"].startswith("tiny-sd15-b.safetensors [")
    info = json.loads(client.post(f"{API}/txt2img", json={**SMALL, "seed": 1}).json()["info"])
    assert info["sd_model_name"] == "tiny-sd15-b"
    missing = client.post(f"{API}/options", json={"sd_model_checkpoint": "no-such-model"})
    assert missing.status_code == 404 and "no-such-model" in missing.text
    by_hash = next(m for m in client.get(f"{API}/sd-models").json() if m["model_name"] == "tiny-sd15")
    client.post(f"{API}/options", json={"sd_model_checkpoint": by_hash["filename"]})
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"].startswith("tiny-sd15.safetensors")


def test_a1111s_options_write_case_flips_send_seed_and_reads_it_back(client: httpx.Client) -> None:
    before = client.get(f"{API}/options").json()["send_seed"]
    assert client.post(f"{API}/options", json={"send_seed": not before}).status_code == 200
    assert client.get(f"{API}/options").json()["send_seed"] is (not before)
    refused = client.post(f"{API}/options", json={"send_seed": "maybe"})
    assert refused.status_code == 422 and "send_seed" in refused.text
    assert client.post(f"{API}/options", json={"send_seed": before}).status_code == 200


def test_progress_while_a_job_runs_and_interrupt(client: httpx.Client, server: Server) -> None:
    idle = client.get(f"{API}/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0
    outcome: dict = {}

    def long_job() -> None:
        with httpx.Client(base_url=server.url, timeout=300) as other:
            outcome["response"] = other.post(f"{API}/txt2img", json={**SMALL, "steps": 150, "n_iter": 20, "seed": 3})

    worker = threading.Thread(target=long_job)
    worker.start()
    seen = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        p = client.get(f"{API}/progress").json()
        if p["state"]["sampling_step"] > 2 and p["current_image"]:
            seen = p
            break
        time.sleep(0.1)
    assert seen is not None, "no progress seen"
    assert 0 < seen["progress"] < 1 and seen["state"]["job_count"] == 20 and seen["state"]["sampling_steps"] == 150
    with decode(seen["current_image"]) as preview:
        assert preview.size == (64, 64)
    assert client.post(f"{API}/interrupt").status_code == 200  # no body, no content type
    worker.join(120)
    response = outcome["response"]
    assert response.status_code == 200
    assert len(json.loads(response.json()["info"])["all_seeds"]) < 20
    assert client.get(f"{API}/progress").json()["state"]["job_count"] == 0
    assert client.post(f"{API}/skip").status_code == 200


def test_override_settings_apply_to_one_request_only(client: httpx.Client) -> None:
    first = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"CLIP_stop_at_last_layers": 2}})
    assert "Clip skip: 2," in json.loads(first.json()["info"])["infotexts"][0]
    second = client.post(f"{API}/txt2img", json=SMALL)
    assert "Clip skip" not in json.loads(second.json()["info"])["infotexts"][0]


def test_infotext_fills_unset_fields(client: httpx.Client) -> None:
    text = "a blue boat\nNegative prompt: rain\nSteps: 4, Sampler: DPM++ 2M Karras, CFG scale: 3, Seed: 99, Size: 64x64"
    info = json.loads(client.post(f"{API}/txt2img", json={"infotext": text, "seed": 5}).json()["info"])
    assert (info["prompt"], info["negative_prompt"], info["steps"], info["seed"]) == ("a blue boat", "rain", 4, 5)
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in info["infotexts"][0]


def test_lenient_values_and_clear_4xx_for_bad_ones(client: httpx.Client) -> None:
    ok = client.post(f"{API}/txt2img", json={**SMALL, "steps": "3", "cfg_scale": "7.0", "width": 64.0,
                                             "seed": 4294967295, "sampler_index": "Euler", "scheduler": "karras",
                                             "negative_prompt": None, "clip_skip": None})
    assert ok.status_code == 200, ok.text
    for body, field in ((({**SMALL, "width": 100}), "width"), ({**SMALL, "steps": 0}, "steps"),
                        ({**SMALL, "sampler_name": "Nope"}, "sampler"), ({**SMALL, "scheduler": "wobbly"}, "scheduler"),
                        ({**SMALL, "cfg_scale": "lots"}, "cfg_scale")):
        r = client.post(f"{API}/txt2img", json=body)
        assert r.status_code == 422 and field in r.text, (field, r.text)
    assert client.post(f"{API}/txt2img", content=b"{not json").status_code == 422
    bad_image = client.post(f"{API}/img2img", json={**SMALL, "init_images": ["bm90IGFuIGltYWdl"]})
    assert bad_image.status_code == 422 and "init_image" in bad_image.text
    missing = client.post(f"{API}/txt2img", json={**SMALL, "override_settings": {"sd_model_checkpoint": "ghost"}})
    assert missing.status_code == 404 and "ghost" in missing.text
    assert client.get(f"{API}/no-such-route").status_code == 404
    assert client.get(f"{API}/progress").status_code == 200  # still serving


def test_save_images_is_honoured(client: httpx.Client, server: Server) -> None:
    def saved() -> int:
        return len(list((server.data_dir / "outputs").rglob("*.png")))

    before = saved()
    client.post(f"{API}/txt2img", json={**SMALL, "save_images": False})
    assert saved() == before
    client.post(f"{API}/txt2img", json={**SMALL, "save_images": True})
    assert saved() == before + 1
    assert client.post(f"{API}/txt2img", json={**SMALL, "send_images": False}).json()["images"] == []


def test_lists_have_a1111_shapes(client: httpx.Client, server: Server) -> None:
    from modules.samplers import SAMPLERS, ScheduleType

    samplers = client.get(f"{API}/samplers").json()
    assert [s["name"] for s in samplers] == [s.name for s in SAMPLERS]
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    schedulers = client.get(f"{API}/schedulers").json()
    assert [s["label"] for s in schedulers] == [s.value for s in ScheduleType]
    assert set(schedulers[0]) == {"name", "label", "aliases", "default_rho", "need_inner_model"}
    model = client.get(f"{API}/sd-models").json()[0]
    # A1111's keys, and the model family (clients ignore keys they do not know)
    assert set(model) == {"title", "model_name", "hash", "sha256", "filename", "config", "family", "family_label"}
    assert client.get(f"{API}/embeddings").json() == {"loaded": {}, "skipped": {}}
    assert set(client.get(f"{API}/scripts").json()) == {"txt2img", "img2img"}
    assert "ram" in client.get(f"{API}/memory").json()
    for route in ("sd-vae", "prompt-styles", "loras"):
        assert client.get(f"{API}/{route}").json() == []
    extensions = {e["name"]: e for e in client.get(f"{API}/extensions").json()}
    assert {"xyz_plot", "prompt_matrix", "prompts_from_file"} <= set(extensions)
    assert extensions["xyz_plot"]["enabled"] is True and extensions["xyz_plot"]["version"]
    assert "x/y/z plot" in client.get(f"{API}/scripts").json()["txt2img"]
    assert client.post(f"{API}/refresh-checkpoints").status_code == 200
    assert client.get("/docs").status_code == 200 and "/sdapi/v1/txt2img" in client.get("/openapi.json").text
    assert httpx.get(f"{server.url}//sdapi/v1/progress").status_code == 200  # base URL ending in "/"
    flags = client.get(f"{API}/cmd-flags").json()
    assert flags["api"] is True and flags["gradio_auth"] is None and flags["ray_address"] is None


def test_workers_lists_the_in_process_worker(client: httpx.Client) -> None:
    body = client.get(f"{API}/workers").json()
    assert body["mode"] == "local" and len(body["workers"]) == 1
    worker = body["workers"][0]
    assert set(worker) == {"name", "host", "device", "model", "state", "busy", "jobs_done", "job_id"}
    assert worker["state"] in ("idle", "busy") and "cpu" in worker["device"]


def test_unload_and_reload_checkpoint(client: httpx.Client) -> None:
    assert client.post(f"{API}/unload-checkpoint").status_code == 200
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] is None
    assert client.post(f"{API}/reload-checkpoint").status_code == 200
    assert client.get(f"{API}/options").json()["sd_model_checkpoint"] is not None


def test_oversized_bodies_are_refused_before_reading(server: Server) -> None:
    # Only the headers are sent: the refusal must come before the server reads 65 MB.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(f"POST {API}/txt2img HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {65 * 1024 * 1024}\r\n\r\n".encode())
        reply = b""
        while b"limit" not in reply and (part := conn.recv(4096)):  # headers and body may come apart
            reply += part
    assert reply.startswith(b"HTTP/1.1 413") and b"limit" in reply


def test_start_up_lists_answer_in_a1111_shape(client: httpx.Client) -> None:
    upscalers = client.get(f"{API}/upscalers").json()
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest"]
    assert set(upscalers[0]) == {"name", "model_name", "model_path", "model_url", "scale"}
    modes = [m["name"] for m in client.get(f"{API}/latent-upscale-modes").json()]
    assert modes[0] == "Latent" and "Latent (bicubic antialiased)" in modes
    for route in ("hypernetworks", "realesrgan-models"):
        assert client.get(f"{API}/{route}").json() == []
    assert client.get(f"{API}/face-restorers").json() == [{"name": "CodeFormer", "cmd_dir": None},
                                                          {"name": "GFPGAN", "cmd_dir": None}]

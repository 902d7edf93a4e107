"""Remote engines over the A1111 API, against the offline fake of OpenAI's and Google's image APIs
with the official clients pointed at it: the models listed, jobs through the same queue (saved with
their infotext), what is refused and what is only noted, the providers' failures, interrupt, the
admin's switch, an account's daily limit, and the key never shown anywhere.

One app (in process, API on, two accounts) over the tiny SD 1.5 checkpoint; the providers' keys come
from config settings, as config.yaml gives them.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.devtools.fake_image_apis import FakeImageApis
from modules.identity import Role, UserLimits
from modules.web.credentials import load_auth
from tests.api.waiting import wait_for
from tests.conftest import TinyModels, make_services

KEY = "sk-test-SECRET-7f3a9c2e"
USERS = {"root": "root-password-333", "uma": "uma-password-4444", "ursa": "ursa-password-55555"}
T2I, I2I, Q = "/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/queue"
DALLE3 = {"override_settings": {"sd_model_checkpoint": "openai/dall-e-3"}, "width": 1024, "height": 1024,
          "save_images": True}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{USERS[name]}".encode()).decode()}


class _Everything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def remote(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """(client, services, fake, log lines): the clients' own loggers at DEBUG, every line kept."""
    logs = _Everything()
    loggers = [logging.getLogger(name) for name in ("", "openai", "httpx", "httpx2", "google_genai", "modules")]
    levels = [lg.level for lg in loggers]
    logging.getLogger().addHandler(logs)
    for lg in loggers[1:]:
        lg.setLevel(logging.DEBUG)
    with FakeImageApis(key=KEY) as fake:
        services = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder, openai_api_key=KEY,
                                 openai_base_url=fake.openai_base_url, google_api_key=KEY,
                                 google_base_url=fake.google_base_url, remote_retries=1)
        services.generation.switch_model("tiny-sd15.safetensors").future.result()
        services.accounts.add("root", USERS["root"], Role.ADMIN)
        services.accounts.add("uma", USERS["uma"], Role.USER)
        app = app_module._build_app(parse_flags(["--api", "--nowebui"], {}), services, load_auth(None, None, None))
        yield TestClient(app, base_url="http://127.0.0.1"), services, fake, logs.lines
        services.close()
    logging.getLogger().removeHandler(logs)
    for lg, level in zip(loggers, levels):
        lg.setLevel(level)


def _saved(services: Any) -> set[Path]:
    return set(Path(services.paths.outputs_dir).rglob("*.png"))


def test_models_are_listed_with_what_they_support(remote) -> None:
    client, _, _, _ = remote
    models = {m["title"]: m for m in client.get("/sdapi/v1/sd-models", headers=auth("uma")).json()}
    assert models["openai/dall-e-3"]["hash"] is None and models["openai/dall-e-3"]["model_name"] == "openai/dall-e-3"
    assert "google/imagen-4.0-generate-001" in models and "tiny-sd15.safetensors" in " ".join(models)
    listed = {m["title"]: m for m in client.get("/sdapi/v1/remote-models", headers=auth("uma")).json()}
    dalle3 = listed["openai/dall-e-3"]
    assert dalle3["sizes"] == ["1024x1024", "1792x1024", "1024x1792"] and dalle3["max_images_per_call"] == 1
    assert dalle3["qualities"] == ["standard", "hd"] and dalle3["styles"] == ["vivid", "natural"]
    assert dalle3["prices"]["1024x1024 hd"] == 0.08 and not dalle3["negative_prompt"]
    assert listed["google/imagen-3.0-generate-001"]["negative_prompt"] and listed["openai/dall-e-2"]["masked_edits"]
    # The server's own list adds what the table lacks (an image model only; its chat models are left out).
    assert client.post("/sdapi/v1/refresh-checkpoints", headers=auth("root")).status_code == 200
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models", headers=auth("uma")).json()]
    assert "openai/fake-image-model" in titles and "openai/gpt-4o" not in titles


def test_a_txt2img_job_is_saved_with_its_infotext_and_notes_what_it_did_not_apply(remote) -> None:
    client, services, fake, _ = remote
    fake.clear()
    reply = client.post(T2I, json={**DALLE3, "prompt": "a lighthouse", "steps": 30, "sampler_name": "DPM++ 2M",
                                   "quality": "hd", "style": "natural"}, headers=auth("uma"))
    assert reply.status_code == 200, reply.text
    info = reply.json()["info"]
    assert "steps" in info and "sampler_name" in info and "not applied" in info  # the warning names them
    image = Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0])))
    assert image.size == (1024, 1024)
    text = image.info["parameters"]
    assert "Model: openai/dall-e-3" in text and 'Revised prompt: "revised: a lighthouse"' in text
    assert "Quality: hd" in text and "Style: natural" in text and "Steps:" not in text and "Seed:" not in text
    call = fake.calls[-1]
    assert (call["model"], call["size"], call["quality"], call["style"], call["n"]) == (
        "dall-e-3", "1024x1024", "hd", "natural", 1)
    # PNG Info reads it back, and the history has the job with its owner.
    png = base64.b64encode(Path(sorted(_saved(services), key=lambda p: p.stat().st_mtime)[-1]).read_bytes()).decode()
    read = client.post("/sdapi/v1/png-info", json={"image": png}, headers=auth("uma")).json()
    assert read["parameters"]["Model"] == "openai/dall-e-3" and read["parameters"]["Quality"] == "hd"


@pytest.mark.parametrize(("fields", "named"), [
    ({"seed": 5}, "seed"), ({"width": 512, "height": 512}, "width"), ({"enable_hr": True}, "enable_hr"),
    ({"batch_size": 2}, "batch_size"), ({"negative_prompt": "blurry"}, "negative_prompt"),
    ({"quality": "ultra"}, "quality"), ({"restore_faces": True}, "restore_faces"),
    ({"prompt": "a cat <lora:thing:1>"}, "prompt"),
])
def test_what_would_change_the_result_is_refused_naming_the_field(remote, fields, named) -> None:
    client, services, fake, _ = remote
    before, calls = _saved(services), len(fake.calls)
    reply = client.post(T2I, json={**DALLE3, "prompt": "a cat", **fields}, headers=auth("root"))
    assert reply.status_code == 422, reply.text
    assert named in [e["loc"][-1] for e in reply.json()["detail"]]
    assert _saved(services) == before and len(fake.calls) == calls  # nothing sent, nothing saved


def test_a_local_checkpoint_refuses_the_remote_options(remote) -> None:
    client, _, _, _ = remote
    reply = client.post(T2I, json={"prompt": "x", "width": 64, "height": 64, "steps": 2, "quality": "hd"},
                        headers=auth("root"))
    assert reply.status_code == 422 and "quality" in reply.text


def test_provider_failures_are_clear_nothing_is_saved_and_the_server_goes_on(remote) -> None:
    client, services, fake, _ = remote
    before = _saved(services)
    limited = client.post(T2I, json={**DALLE3, "prompt": "busy [fail:429]"}, headers=auth("root"))
    assert limited.status_code == 503 and limited.json()["detail"].startswith("openai: rate limited")
    assert sum(c["prompt"] == "busy [fail:429]" for c in fake.calls) == 2  # one retry (remote_retries: 1)
    refused = client.post(T2I, json={**DALLE3, "prompt": "bad [policy]"}, headers=auth("root"))
    assert refused.status_code == 422 and refused.json()["reason"] == "content_policy"
    down = client.post(T2I, json={**DALLE3, "prompt": "down [fail:500]"}, headers=auth("root"))
    assert down.status_code == 502 and "openai: the provider's server failed" in down.json()["detail"]
    assert _saved(services) == before
    fake.clear()
    retried = client.post(T2I, json={**DALLE3, "prompt": "flaky [fail:500x1]"}, headers=auth("root"))
    assert retried.status_code == 200 and len(fake.calls) == 2  # retried once, then made
    local = client.post(T2I, json={"prompt": "still serving", "width": 64, "height": 64, "steps": 2},
                        headers=auth("root"))
    assert local.status_code == 200


def test_a_bad_key_names_the_provider_and_never_the_key(remote) -> None:
    client, services, _, _ = remote
    services.remote.saved.save(services.remote.status()[1].provider, api_key="wrong-key-0000")
    try:
        reply = client.post(T2I, json={"override_settings": {"sd_model_checkpoint": "google/imagen-4.0-generate-001"},
                                       "width": 1024, "height": 1024, "prompt": "x"}, headers=auth("root"))
    finally:
        services.remote.saved.save(services.remote.status()[1].provider, clear_key=True)
    assert reply.status_code == 502 and reply.json()["reason"] == "bad_key"
    assert reply.json()["detail"].startswith("google:") and "wrong-key-0000" not in reply.text


def test_imagen_takes_a_negative_prompt_where_it_has_one_and_offers_no_edits(remote) -> None:
    client, _, fake, _ = remote
    imagen3 = {"override_settings": {"sd_model_checkpoint": "google/imagen-3.0-generate-001"},
               "width": 1280, "height": 896, "batch_size": 2}
    reply = client.post(T2I, json={**imagen3, "prompt": "a fox", "negative_prompt": "fog"}, headers=auth("root"))
    assert reply.status_code == 200, reply.text
    assert (fake.calls[-1]["aspect_ratio"], fake.calls[-1]["negative_prompt"], fake.calls[-1]["n"]) == ("4:3", "fog", 2)
    assert len(reply.json()["images"]) == 3  # the grid first, then both images
    edit = client.post(I2I, json={**imagen3, "prompt": "a fox", "init_images": [_png(1280, 896)]},
                       headers=auth("root"))
    assert edit.status_code == 422 and "init_images" in edit.text


def _png(width: int, height: int, colour: str = "gray") -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


def test_inpainting_sends_the_mask_as_the_provider_reads_it(remote) -> None:
    client, _, fake, _ = remote
    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (0, 0, 128, 256))  # the left half is repainted
    out = io.BytesIO()
    mask.save(out, format="PNG")
    reply = client.post(I2I, json={"override_settings": {"sd_model_checkpoint": "openai/dall-e-2"},
                                   "width": 256, "height": 256, "prompt": "a red door", "init_images": [_png(300, 200)],
                                   "mask": base64.b64encode(out.getvalue()).decode(), "mask_blur": 0,
                                   "inpaint_full_res": 0},
                        headers=auth("root"))
    assert reply.status_code == 200, reply.text
    sent = Image.open(io.BytesIO(fake.calls[-1]["mask"]))
    assert sent.mode == "RGBA" and sent.getpixel((10, 10))[3] == 0 and sent.getpixel((250, 10))[3] == 255
    assert Image.open(io.BytesIO(fake.calls[-1]["image"])).size == (256, 256)


def test_the_selected_model_is_used_when_a_job_names_none(remote) -> None:
    client, _, fake, _ = remote
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "openai/dall-e-2"},
                       headers=auth("root")).status_code == 200
    try:
        assert client.get("/sdapi/v1/options", headers=auth("root")).json()["sd_model_checkpoint"] == "openai/dall-e-2"
        reply = client.post(T2I, json={"prompt": "selected", "width": 512, "height": 512}, headers=auth("uma"))
        assert reply.status_code == 200 and fake.calls[-1]["prompt"] == "selected"
    finally:
        client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-sd15.safetensors"}, headers=auth("root"))
    assert client.get("/sdapi/v1/options", headers=auth("root")).json()["sd_model_checkpoint"].startswith("tiny-sd15")


def test_interrupt_abandons_the_call_and_saves_nothing(remote) -> None:
    client, services, _, _ = remote
    before = _saved(services)
    job = client.post(f"{Q}/txt2img", json={**DALLE3, "prompt": "slow [slow:1.5]"}, headers=auth("root")).json()["id"]
    wait_for(lambda: client.get(f"{Q}/{job}", headers=auth("root")).json()["state"] == "running")
    assert client.post("/sdapi/v1/interrupt", headers=auth("root")).status_code == 200
    ended = wait_for(lambda: (item := client.get(f"{Q}/{job}", headers=auth("root")).json())["state"]
                     not in ("queued", "running") and item)
    assert ended["state"] == "interrupted"
    next_job = client.post(T2I, json={**DALLE3, "prompt": "after the interrupt"}, headers=auth("root"))
    assert next_job.status_code == 200
    import time
    time.sleep(1.6)  # the abandoned call answers now: what it made is dropped
    assert len(_saved(services) - before) == 1


def test_an_accounts_daily_remote_images_are_limited(remote) -> None:
    client, services, _, _ = remote
    services.accounts.add("ursa", USERS["ursa"], Role.USER, UserLimits(remote_images_per_day=3))
    two = {"override_settings": {"sd_model_checkpoint": "openai/dall-e-2"}, "width": 256, "height": 256}
    assert client.post(T2I, json={**two, "prompt": "one", "batch_size": 2}, headers=auth("ursa")).status_code == 200
    too_many = client.post(T2I, json={**two, "prompt": "two", "batch_size": 2}, headers=auth("ursa"))
    assert too_many.status_code == 429 and too_many.json()["limit"] == "remote_images_per_day"
    assert int(too_many.headers["Retry-After"]) > 80_000
    never = client.post(T2I, json={**two, "prompt": "four", "batch_size": 4}, headers=auth("ursa"))
    assert never.status_code == 403 and never.json()["limit"] == "remote_images_per_day"
    local = client.post(T2I, json={"prompt": "local is not counted", "width": 64, "height": 64, "steps": 2},
                        headers=auth("ursa"))
    assert local.status_code == 200


def test_an_admin_switches_remote_engines_off(remote) -> None:
    client, _, _, _ = remote
    assert client.post("/sdapi/v1/options", json={"remote_engines": False}, headers=auth("uma")).status_code == 403
    assert client.post("/sdapi/v1/options", json={"remote_engines": False}, headers=auth("root")).status_code == 200
    try:
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models", headers=auth("uma")).json()]
        assert not any(t.startswith(("openai/", "google/")) for t in titles)
        reply = client.post(T2I, json={**DALLE3, "prompt": "off"}, headers=auth("uma"))
        assert reply.status_code == 403 and reply.json()["limit"] == "remote_engines"
    finally:
        client.post("/sdapi/v1/options", json={"remote_engines": True}, headers=auth("root"))


def test_keys_are_set_by_admins_and_never_shown_logged_or_saved(remote) -> None:
    client, services, _, logs = remote
    new_key = "sk-saved-in-the-ui-91b2"
    assert client.post("/sdapi/v1/remote-engines", json={"provider": "openai", "api_key": new_key},
                       headers=auth("uma")).status_code == 403
    saved = client.post("/sdapi/v1/remote-engines", json={"provider": "openai", "api_key": new_key},
                        headers=auth("root"))
    assert saved.status_code == 200 and saved.json()["providers"][0]["key_source"] == "saved in the UI"
    access_file = Path(services.paths.data_dir) / "remote_engines.json"
    assert access_file.stat().st_mode & 0o777 == 0o600
    client.post("/sdapi/v1/remote-engines", json={"provider": "openai", "clear_key": True}, headers=auth("root"))
    refused = client.post("/sdapi/v1/options", json={"openai_api_key": new_key}, headers=auth("root"))
    assert refused.status_code == 422 and new_key not in refused.text
    replies = [client.get(path, headers=auth("root")).text for path in
               ("/sdapi/v1/options", "/sdapi/v1/cmd-flags", "/sdapi/v1/remote-engines", "/sdapi/v1/remote-models",
                "/sdapi/v1/sd-models", f"{Q}/history")]
    replies += [saved.text]
    for secret in (KEY, new_key):
        assert not any(secret in text for text in replies)
        assert not any(secret in line for line in logs), "a key reached the log"
        for path in _saved(services):
            assert secret.encode() not in path.read_bytes()
    assert any("openai" in line.lower() for line in logs)  # the clients' loggers were heard


def test_xyz_plot_crosses_prompt_sr_with_a_remote_and_a_local_model(remote) -> None:
    client, _, fake, _ = remote
    fake.clear()
    # X: Prompt S/R (cat -> dog); Y: Checkpoint name; the plot's fixed seed is not applied to the remote cells.
    args = ["Prompt S/R", "cat, dog", [], "Checkpoint name", "openai/dall-e-2, tiny-sd15", [], "Nothing", "", [],
            True, True, False, False, False, False, False, 0, False]
    reply = client.post(T2I, json={"prompt": "a cat", "width": 256, "height": 256, "steps": 2, "seed": 7,
                                   "script_name": "x/y/z plot", "script_args": args}, headers=auth("root"))
    assert reply.status_code == 200, reply.text
    assert sorted(c["prompt"] for c in fake.calls) == ["a cat", "a dog"]
    assert len(reply.json()["images"]) == 5  # the grid, then the four cells


def test_prompts_from_file_and_styles_reach_the_remote_model(remote) -> None:
    client, services, fake, _ = remote
    from modules.services.styles import PromptStyle

    services.styles.save(PromptStyle("watercolour", prompt="{prompt}, watercolour"))
    fake.clear()
    reply = client.post(T2I, json={"prompt": "", "width": 256, "height": 256, "styles": ["watercolour"],
                                   "override_settings": {"sd_model_checkpoint": "openai/dall-e-2"},
                                   "script_name": "prompts from file or textbox",
                                   "script_args": [False, False, "start", "a red cube\na blue cone"]},
                        headers=auth("root"))
    assert reply.status_code == 200, reply.text
    assert [c["prompt"] for c in fake.calls] == ["a red cube, watercolour", "a blue cone, watercolour"]


def test_an_enabled_controlnet_unit_is_refused_and_a_disabled_one_dropped(remote) -> None:
    client, _, fake, _ = remote
    unit = {"enabled": True, "module": "canny", "model": "None", "image": _png(256, 256)}
    body = {"override_settings": {"sd_model_checkpoint": "openai/dall-e-2"}, "width": 256, "height": 256,
            "prompt": "guided"}
    refused = client.post(T2I, json={**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}},
                          headers=auth("root"))
    assert refused.status_code == 422 and "alwayson_scripts" in refused.text and "controlnet" in refused.text
    calls = len(fake.calls)
    made = client.post(T2I, json={**body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "enabled": False}]}}},
                       headers=auth("root"))
    assert made.status_code == 200, made.text
    assert len(fake.calls) == calls + 1


def test_a_script_that_relies_on_seeds_and_denoising_is_refused(remote) -> None:
    client, _, fake, _ = remote
    calls = len(fake.calls)
    reply = client.post(I2I, json={"override_settings": {"sd_model_checkpoint": "openai/dall-e-2"}, "width": 256,
                                   "height": 256, "prompt": "tiles", "init_images": [_png(256, 256)],
                                   "script_name": "sd upscale", "script_args": ["", 64, "Lanczos", 2.0]},
                        headers=auth("root"))
    assert reply.status_code == 422 and "script_name" in reply.text and len(fake.calls) == calls

"""Category 1, bad input: every malformed or hostile request is a clear 4xx naming the field it is
about, answered before any model work, and the server keeps serving afterwards.

"Before any model work" is checked in the server's log: a request that reached the worker leaves a
job line (finished or failed) or a checkpoint-load line there, and these refusals must leave none.
The same limits hold for the UI, whose form values go through the same service call.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache

import httpx
import pytest

from modules.errors import ModelNotFoundError, ValidationError
from modules.params import GenerationRequest
from tests.reliability.support import (
    API,
    WORKER_LINE,
    b64,
    log_since,
    log_size,
    png_bomb,
    png_bytes,
    wait_for_model,
)
from tests.server_process import Server, start_server, stop_server

CATEGORY = "1 bad input"
SMALL = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 2, "seed": 1}
# A refusal is cheap; this bound only catches a request that did real work (a shared CI box can be
# slow, so it is loose: the log check is the precise one).
REFUSAL_SECONDS = 5.0
TEN_MB = 10 * 1024 * 1024


@cache
def bomb_b64() -> str:
    """20000x20000 at 1 bit: 400 megapixels in about 50 KB, past even Pillow's own refusal limit."""
    return b64(png_bomb(20000, 20000))


@cache
def palette_bomb_b64() -> str:
    """6000x6000 palette image: under Pillow's limits, over Atelier's 4096x4096."""
    return b64(png_bomb(6000, 6000, bit_depth=8, palette=True))


def huge_number_body() -> bytes:
    return b'{"width": ' + b"9" * 5000 + b"}"  # past Python's 4300-digit int parsing limit


def deep_body() -> bytes:
    return b"[" * 100_000 + b"]" * 100_000


@dataclass(frozen=True)
class Bad:
    id: str
    route: str
    make: Callable[[], object]  # the body: bytes are sent as they are, anything else as JSON
    field: str | None  # the loc after "body", dotted; None for a whole-body error (loc ["body"])
    words: str  # part of the message
    status: int = 422


def _t(id: str, changes: dict, field: str | None, words: str, status: int = 422) -> Bad:
    return Bad(id, "txt2img", lambda: {**SMALL, **changes}, field, words, status)


def _raw(id: str, route: str, body: bytes | Callable[[], bytes], field: str | None, words: str) -> Bad:
    return Bad(id, route, body if callable(body) else (lambda: body), field, words)


def _i2i(id: str, changes: Callable[[], dict], field: str, words: str) -> Bad:
    return Bad(id, "img2img", lambda: {**SMALL, "init_images": [b64(png_bytes())], **changes()}, field, words)


CASES = [
    _t("width-not-multiple-of-8", {"width": 100}, "width", "multiple of 8"),
    _t("height-not-multiple-of-8", {"height": 68}, "height", "multiple of 8"),
    _t("width-0", {"width": 0}, "width", "between"),
    _t("height-negative", {"height": -64}, "height", "between"),
    _t("width-100000", {"width": 100000}, "width", "between"),
    _t("height-100000", {"height": 100000}, "height", "between"),
    _t("width-fraction", {"width": "64.5"}, "width", "whole number"),
    _t("steps-0", {"steps": 0}, "steps", "between"),
    _t("steps-10000", {"steps": 10000}, "steps", "between"),
    _t("steps-true", {"steps": True}, "steps", "whole number"),
    _t("steps-fraction", {"steps": 2.5}, "steps", "whole number"),
    _t("batch-size-10000", {"batch_size": 10000}, "batch_size", "between"),
    _t("n-iter-10000", {"n_iter": 10000}, "n_iter", "between"),
    _t("cfg-NaN-text", {"cfg_scale": "NaN"}, "cfg_scale", "finite"),
    _t("cfg-Infinity-text", {"cfg_scale": "Infinity"}, "cfg_scale", "finite"),
    _t("cfg-minus-Infinity-text", {"cfg_scale": "-Infinity"}, "cfg_scale", "finite"),
    _t("cfg-0", {"cfg_scale": 0}, "cfg_scale", "between"),
    _raw("cfg-1e309", "txt2img", b'{"width": 64, "height": 64, "steps": 2, "cfg_scale": 1e309}', "cfg_scale", "finite"),
    _raw("cfg-NaN-literal", "txt2img", b'{"width": 64, "height": 64, "steps": 2, "cfg_scale": NaN}', "cfg_scale",
         "finite"),
    _t("prompt-10MB", {"prompt": "x" * TEN_MB}, "prompt", "limit"),
    _t("negative-prompt-10MB", {"negative_prompt": "x" * TEN_MB}, "negative_prompt", "limit"),
    _raw("prompt-lone-surrogate", "txt2img", b'{"width": 64, "height": 64, "steps": 2, "prompt": "a \\ud800 b"}',
         "prompt", "surrogate"),
    _raw("hr-prompt-lone-surrogate", "txt2img",
         b'{"width": 64, "height": 64, "steps": 2, "enable_hr": true, "hr_prompt": "\\udfff"}', "hr_prompt",
         "surrogate"),
    _t("sampler-unknown", {"sampler_name": "Nope"}, "sampler_name", "unknown sampler"),
    _raw("sampler-lone-surrogate", "txt2img", b'{"width": 64, "height": 64, "steps": 2, "sampler_name": "\\ud800"}',
         "sampler_name", "unknown sampler"),
    _t("scheduler-unknown", {"scheduler": "wobbly"}, "scheduler", "unknown schedule"),
    _t("checkpoint-unknown", {"override_settings": {"sd_model_checkpoint": "no-such-model.safetensors"}}, None,
       "no-such-model.safetensors", status=404),
    _t("seed-2-to-the-64", {"seed": 2**64}, "seed", "between"),
    _t("seed-text", {"seed": "abc"}, "seed", "number"),
    _t("subseed-strength-2", {"subseed_strength": 2}, "subseed_strength", "between"),
    _t("hires-scale-100", {"enable_hr": True, "hr_scale": 100}, "hr_scale", "between"),
    _t("prompt-as-list", {"prompt": ["a", "b"]}, "prompt", "string"),
    _t("steps-as-object", {"steps": {"n": 2}}, "steps", "integer"),
    _t("styles-as-text", {"styles": "cinematic"}, "styles", "list"),
    _t("override-settings-as-list", {"override_settings": [1]}, "override_settings", "dictionary"),
    _t("clip-skip-override-text", {"override_settings": {"CLIP_stop_at_last_layers": "abc"}},
       "override_settings.CLIP_stop_at_last_layers", "number"),
    _t("alwayson-script-not-an-object", {"alwayson_scripts": {"x": 5}}, "alwayson_scripts.x", "object"),
    Bad("body-json-array", "txt2img", lambda: [SMALL], None, "dictionary"),
    Bad("body-json-string", "txt2img", lambda: "a red cube", None, "dictionary"),
    _raw("body-invalid-json", "txt2img", b"{not json", None, "not valid JSON"),
    _raw("body-not-utf8", "txt2img", b'{"prompt": "\xff\xfe"}', None, "not valid JSON"),
    _raw("body-empty", "txt2img", b"", None, "empty"),
    _raw("body-whitespace", "img2img", b"  \n", None, "empty"),
    _raw("body-5000-digit-number", "txt2img", huge_number_body, None, "not valid JSON"),
    _raw("body-nested-100000-deep", "txt2img", deep_body, None, "nested too deeply"),
    _i2i("init-not-base64", lambda: {"init_images": ["!!not base64!!"]}, "init_images", "base64"),
    _i2i("init-base64-text", lambda: {"init_images": [b64(b"not an image, just text")]}, "init_images",
         "not a readable image"),
    _i2i("init-bomb-20000x20000", lambda: {"init_images": [bomb_b64()]}, "init_images", "limit"),
    _i2i("init-palette-6000x6000", lambda: {"init_images": [palette_bomb_b64()]}, "init_images", "limit"),
    _i2i("mask-bomb-20000x20000", lambda: {"mask": bomb_b64()}, "mask", "limit"),
    _i2i("init-missing", lambda: {"init_images": []}, "init_images", "required"),
    _i2i("resize-mode-99", lambda: {"resize_mode": 99}, "resize_mode", "0-3"),
    _i2i("inpainting-fill-99", lambda: {"mask": b64(png_bytes()), "inpainting_fill": 99}, "inpainting_fill", "0-3"),
    Bad("png-info-not-base64", "png-info", lambda: {"image": "!!not base64!!"}, "image", "base64"),
    Bad("png-info-text", "png-info", lambda: {"image": b64(b"plain text")}, "image", "not a readable image"),
    Bad("png-info-bomb-20000x20000", "png-info", lambda: {"image": bomb_b64()}, "image", "limit"),
    _raw("png-info-empty-body", "png-info", b"", "image", "empty"),
    Bad("options-json-array", "options", lambda: [{"sd_vae": "None"}], None, "JSON object"),
]


@dataclass(frozen=True)
class Running:
    proc: object
    server: Server


@pytest.fixture(scope="module")
def running(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    proc, srv = start_server(tmp_path_factory.mktemp("bad-input-data"), tiny_models.folder, "--api", "--ckpt",
                             "tiny-sd15.safetensors", ready_path=f"{API}/options")
    with httpx.Client(base_url=srv.url, timeout=120) as client:
        wait_for_model(client)  # the startup load is a worker job itself: let it finish first
    yield Running(proc, srv)
    stop_server(proc)  # type: ignore[arg-type]


@pytest.fixture
def client(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.server.url, timeout=120) as c:
        yield c


def _send(client: httpx.Client, case: Bad) -> httpx.Response:
    body = case.make()
    url = f"{API}/{case.route}"
    if isinstance(body, bytes):
        return client.post(url, content=body, headers={"content-type": "application/json"})
    return client.post(url, json=body)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_4xx_before_any_model_work(client: httpx.Client, running: Running, case: Bad) -> None:
    offset = log_size(running.server)
    started = time.monotonic()
    response = _send(client, case)
    elapsed = time.monotonic() - started
    assert response.status_code == case.status, response.text[:600]
    assert len(response.content) < 20_000, "an error must not echo the payload back"
    reply = response.json()
    if case.status == 422:
        expected = ["body"] if case.field is None else ["body", *case.field.split(".")]
        named = [d for d in reply["detail"] if d["loc"] == expected]
        assert named, f"no error at {expected}: {reply['detail']}"
        assert any(case.words in d["msg"] for d in named), named
    else:
        assert case.words in reply["detail"]
    assert elapsed < REFUSAL_SECONDS, f"refusal took {elapsed:.1f} s"
    assert not WORKER_LINE.search(log_since(running.server, offset)), "the request reached the worker"
    idle = client.get(f"{API}/progress").json()
    assert idle["state"]["job_count"] == 0 and idle["progress"] == 0


def test_the_server_still_serves_after_the_barrage(client: httpx.Client, running: Running) -> None:
    assert running.proc.poll() is None  # type: ignore[attr-defined]
    response = client.post(f"{API}/txt2img", json={**SMALL, "seed": 4242})
    assert response.status_code == 200, response.text[:600]
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [4242] and len(response.json()["images"]) == 1


# --- the UI's path: form values -> request -> the same service call -----------------------------


def _form_request(**changes: object) -> GenerationRequest:
    """The shared form fields as the browser sends them (sliders send floats), by name, made a request."""
    from modules.ui.form_fields import request_from_values

    values = {"prompt": "a red cube", "negative_prompt": "", "sampler": "Euler", "schedule": "Automatic",
              "steps": 2.0, "cfg_scale": 7.0, "width": 64.0, "height": 64.0, "seed": 1.0, "batch_count": 1.0,
              "batch_size": 1.0, "clip_skip": 1.0, "styles": [], "variation_seed": -1, "variation_strength": 0.0,
              "seed_resize_from_width": 0, "seed_resize_from_height": 0, "tiling": False, "restore_faces": False,
              "distilled_cfg_scale": 3.5, "shift": None, "quality": None, "style": None}
    return request_from_values({**values, **changes})


UI_CASES = [
    ("width-not-multiple-of-8", {"width": 100.0}, "width"),
    ("quality-on-a-local-checkpoint", {"quality": "hd"}, "quality"),
    ("width-0", {"width": 0.0}, "width"),
    ("height-100000", {"height": 100000.0}, "height"),
    ("steps-0", {"steps": 0.0}, "steps"),
    ("steps-10000", {"steps": 10000.0}, "steps"),
    ("steps-fraction", {"steps": 2.5}, "steps"),
    ("batch-count-10000", {"batch_count": 10000.0}, "batch_count"),
    ("batch-size-10000", {"batch_size": 10000.0}, "batch_size"),
    ("cfg-nan", {"cfg_scale": math.nan}, "cfg_scale"),
    ("cfg-inf", {"cfg_scale": math.inf}, "cfg_scale"),
    ("prompt-10MB", {"prompt": "x" * TEN_MB}, "prompt"),
    ("prompt-lone-surrogate", {"prompt": "a \ud800 b"}, "prompt"),
    ("sampler-unknown", {"sampler": "Nope"}, "sampler"),
    ("schedule-unknown", {"schedule": "Wobbly"}, "schedule"),
    ("restore-faces-without-a-model", {"restore_faces": True}, "restore_faces"),
]


@pytest.mark.parametrize(("changes", "field"), [c[1:] for c in UI_CASES], ids=[c[0] for c in UI_CASES])
def test_ui_form_values_are_refused_naming_the_field(services, changes: dict, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        services.generation.submit(_form_request(**changes))
    assert field in [e.field for e in refused.value.errors], refused.value
    assert services.queue.pending_count() == 0 and services.queue.current() is None


def test_ui_images_and_checkpoint_are_refused_before_queuing(services) -> None:
    bad_requests = [
        (GenerationRequest(prompt="x", width=64, height=64, steps=2, init_image=png_bomb(20000, 20000)), "init_image"),
        (GenerationRequest(prompt="x", width=64, height=64, steps=2, init_image=b"not an image"), "init_image"),
        (GenerationRequest(prompt="x", width=64, height=64, steps=2, init_image=png_bytes(),
                           mask=png_bomb(20000, 20000)), "mask"),
    ]
    for request, field in bad_requests:
        with pytest.raises(ValidationError) as refused:
            services.generation.submit(request)
        assert [e.field for e in refused.value.errors] == [field]
    with pytest.raises(ModelNotFoundError):
        services.generation.submit(GenerationRequest(prompt="x", width=64, height=64, steps=2,
                                                     checkpoint="no-such-model.safetensors"))
    assert services.queue.pending_count() == 0 and services.queue.current() is None

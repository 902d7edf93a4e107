"""Extensions over the REST API of a started server: A1111's ``alwayson_scripts`` and /extensions."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

# Imported here before pytest loads it from pytest_plugins below: registered first so pytest can
# still rewrite its asserts (and does not warn that it cannot).
pytest.register_assert_rewrite("modules.devtools.extension_testing")

from modules.devtools.extension_testing import TINY_CHECKPOINT, TinyCheckpoints, write_extension  # noqa: E402
from modules.infotext import parse_infotext  # noqa: E402
from tests.server_process import Server, start_server, stop_server  # noqa: E402

pytest_plugins = ["modules.devtools.extension_testing"]

API = "/sdapi/v1"
SMALL = {"steps": 2, "width": 64, "height": 64, "cfg_scale": 5, "seed": 1}
STAMP_PREFIX = Path(__file__).resolve().parents[1] / "fixtures" / "extensions" / "stamp_prefix"
MAGENTA = (255, 0, 255)


@pytest.fixture(scope="module")
def server(atelier_tiny_checkpoints: TinyCheckpoints,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    """A server whose data dir holds the example extension and one that cannot even be imported."""
    data = tmp_path_factory.mktemp("api-ext-data")
    shutil.copytree(STAMP_PREFIX, data / "extensions" / "stamp_prefix", ignore=shutil.ignore_patterns("__pycache__"))
    write_extension(data / "extensions", "broken", "def setup(ext)\n    pass\n")  # a syntax error
    proc, srv = start_server(data, atelier_tiny_checkpoints.folder, "--api", "--ckpt", TINY_CHECKPOINT,
                             ready_path=f"{API}/options")
    yield srv, proc
    stop_server(proc)


@pytest.fixture
def client(server: tuple[Server, Any]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0].url, timeout=120) as c:
        yield c


def txt2img(client: httpx.Client, prompt: str, alwayson_scripts: dict[str, Any]) -> httpx.Response:
    return client.post(f"{API}/txt2img", json={**SMALL, "prompt": prompt, "alwayson_scripts": alwayson_scripts})


def first_image(response: httpx.Response) -> tuple[np.ndarray, str]:
    """(RGB pixels, parameters text) of the reply's first image."""
    assert response.status_code == 200, response.text
    body = response.json()
    info = json.loads(body["info"])
    with Image.open(io.BytesIO(base64.b64decode(body["images"][0]))) as image:
        assert image.info["parameters"] == info["infotexts"][0]
        return np.asarray(image.convert("RGB")), info["infotexts"][0]


def stamped(pixels: np.ndarray) -> bool:
    return bool((pixels[:4, :4] == MAGENTA).all())


def test_positional_args_as_a1111_sends_them(client: httpx.Client) -> None:
    pixels, text = first_image(txt2img(client, "a lighthouse", {"stamp_prefix": {"args": ["best quality", True]}}))
    assert parse_infotext(text).prompt == "best quality, a lighthouse"
    assert stamped(pixels)


def test_args_by_name_keep_the_other_defaults(client: httpx.Client) -> None:
    pixels, text = first_image(txt2img(client, "a lighthouse", {"stamp_prefix": {"args": {"prefix": "x"}}}))
    assert parse_infotext(text).prompt == "x, a lighthouse"
    assert stamped(pixels)  # "stamp" was not sent: its default (true)

    pixels, text = first_image(txt2img(client, "a lighthouse", {"stamp_prefix": {"stamp": False}}))  # no "args"
    assert parse_infotext(text).prompt == "masterpiece, a lighthouse"
    assert not stamped(pixels)


def test_no_alwayson_scripts_still_runs_the_extension_with_its_defaults(client: httpx.Client) -> None:
    pixels, text = first_image(txt2img(client, "a lighthouse", {}))
    assert parse_infotext(text).prompt == "masterpiece, a lighthouse" and stamped(pixels)


@pytest.mark.parametrize(("scripts", "loc", "message"), [
    ({"not_installed": {"args": []}}, ["body", "alwayson_scripts", "not_installed"], "is not installed"),
    ({"broken": {"args": []}}, ["body", "alwayson_scripts", "broken"], "is failed"),
    ({"stamp_prefix": {"args": {"stamp": "maybe"}}}, ["body", "alwayson_scripts", "stamp_prefix", "stamp"],
     "true or false"),
    ({"stamp_prefix": {"args": ["x", True, 3]}}, ["body", "alwayson_scripts", "stamp_prefix"], "at most 2 values"),
], ids=["unknown", "failed", "bad-value", "too-many-args"])
def test_bad_alwayson_scripts_are_422_naming_the_field(client: httpx.Client, scripts: dict, loc: list[str],
                                                       message: str) -> None:
    r = txt2img(client, "a lighthouse", scripts)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert [d["loc"] for d in detail] == [loc]
    assert message in detail[0]["msg"]


def test_extensions_list_shows_each_with_its_state(client: httpx.Client) -> None:
    r = client.get(f"{API}/extensions")
    assert r.status_code == 200, r.text
    by_name = {item["name"]: item for item in r.json()}
    assert by_name["stamp_prefix"]["state"] == "enabled" and by_name["stamp_prefix"]["enabled"] is True
    assert by_name["stamp_prefix"]["version"] == "1.0.0" and by_name["stamp_prefix"]["error"] == ""
    assert by_name["broken"]["state"] == "failed" and by_name["broken"]["enabled"] is False
    assert "SyntaxError" in by_name["broken"]["error"]


def test_the_server_keeps_serving_after_refused_and_failed_extension_requests(client: httpx.Client,
                                                                             server: tuple[Server, Any]) -> None:
    for scripts in ({"not_installed": {}}, {"broken": {}}, {"stamp_prefix": {"args": {"nope": 1}}}):
        assert txt2img(client, "a lighthouse", scripts).status_code == 422
    _srv, proc = server
    assert proc.poll() is None
    assert client.get(f"{API}/options").status_code == 200
    pixels, text = first_image(txt2img(client, "still here", {"stamp_prefix": {"args": ["ok"]}}))
    assert parse_infotext(text).prompt == "ok, still here" and stamped(pixels)

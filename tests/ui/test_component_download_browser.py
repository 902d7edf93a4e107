"""A FLUX.1 transformer file without its T5 tokenizer, in the browser: choosing it names the missing
tokenizer and offers "Download tokenizer:t5xxl"; the click downloads the files from the model's own
repository (a fake Hugging Face hub served over HTTP by this test) and loads the checkpoint, which then
generates. And over the API: a file whose bytes do not match the hash the hub publishes is refused
with the reason, and nothing is left in the tokenizers folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modules.engine.tokenizer_files import tokenizer_source
from modules.infotext import parse_infotext
from modules.paths import resolve_paths
from tests.server_process import Server, start_server, stop_server

pytestmark = pytest.mark.browser

SD15 = "tiny-sd15.safetensors"
FLUX = "flux1-schnell.safetensors"  # the BFL transformer alone, as users download it
COMMIT = "0123456789abcdef0123456789abcdef01234567"
T5 = tokenizer_source("t5xxl")
QWEN = tokenizer_source("qwen3")


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    """The part of the Hugging Face hub ``get_hf_file_metadata`` and ``hf_hub_download`` use:
    ``HEAD`` / ``GET /<repo>/resolve/<revision>/<path>``. As the real hub answers: ``X-Repo-Commit``,
    a quoted ``ETag`` (the git blob SHA-1 of a plain file), and for LFS files ``X-Linked-Etag`` (the
    SHA-256) and ``X-Linked-Size``. ``corrupt`` paths are served with one byte changed (same size)."""

    files: dict[str, bytes]  # "<repo>/<path>" -> bytes
    lfs: frozenset[str] = frozenset()
    corrupt: set[str] = field(default_factory=set)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, "<repo>/<path>")

    def answer(self, method: str, url_path: str) -> tuple[int, dict[str, str], bytes]:
        match = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", url_path.split("?")[0])
        key = f"{match.group(1)}/{match.group(3)}" if match else url_path
        self.requests.append((method, key))
        if key not in self.files:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}, b"Entry not found"
        data = self.files[key]
        headers = {"X-Repo-Commit": COMMIT, "Content-Length": str(len(data)),
                   "Content-Type": "application/octet-stream", "ETag": f'"{_git_blob_sha1(data)}"'}
        if key in self.lfs:
            digest = hashlib.sha256(data).hexdigest()
            headers.update({"ETag": f'"{digest}"', "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data))})
        if key in self.corrupt:
            data = data[:-2] + bytes([data[-2] ^ 1]) + data[-1:]
        return 200, headers, data

    def saw(self, method: str) -> set[str]:
        return {key for seen, key in self.requests if seen == method}


def _serve(hub: FakeHub) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, with_body: bool) -> None:
            status, headers, body = hub.answer(self.command, self.path)
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if with_body:
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._reply(with_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._reply(with_body=True)

        def log_message(self, *args: Any) -> None:  # quiet: the hub's own list says what was asked
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def _hub_files(tokenizer_dir: Path) -> dict[str, bytes]:
    """FLUX.1-schnell's tokenizer_2 files (the tiny T5 tokenizer) and a Qwen3 set for the API case."""
    t5 = {name: (tokenizer_dir / name).read_bytes() for name in ("tokenizer.json", "tokenizer_config.json")}
    # transformers no longer writes special_tokens_map.json; the real repository has it.
    t5["special_tokens_map.json"] = json.dumps({"eos_token": "</s>", "pad_token": "<pad>",
                                                "unk_token": "<unk>"}).encode()
    files = {f"{T5.repo_id}/{T5.subfolder}/{name}": data for name, data in t5.items()}
    files.update({f"{QWEN.repo_id}/{name}": json.dumps({"file": name, "pad": "x" * 300}).encode()
                  for name in QWEN.files})
    return files


@dataclass(frozen=True)
class RunningHub:
    fake: FakeHub
    url: str
    parts: dict[str, Path]  # write_tiny_parts' files


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHub]:
    from modules.devtools import tiny_flux
    from modules.devtools.tiny_model import TinyArch

    parts = tiny_flux.write_tiny_parts(TinyArch.FLUX_SCHNELL, tmp_path_factory.mktemp("flux-parts"), seed=0)
    files = _hub_files(parts["tokenizer"])
    fake = FakeHub(files, lfs=frozenset(k for k in files if k.endswith("/tokenizer.json")))
    httpd = _serve(fake)
    yield RunningHub(fake, f"http://127.0.0.1:{httpd.server_address[1]}", parts)
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(hub: RunningHub, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A tiny SD 1.5 loaded at start; beside it the FLUX.1 transformer file, with CLIP-L / T5 in a
    text-encoder folder and the VAE in a VAE folder, and no tokenizer anywhere."""
    from modules.devtools.tiny_model import TinyArch, write_tiny_model

    checkpoints, encoders, vaes = (tmp_path_factory.mktemp(name) for name in ("ckpt", "encoders", "vaes"))
    write_tiny_model(TinyArch.SD15, checkpoints / SD15, seed=0)
    hub.parts["transformer"].rename(checkpoints / FLUX)
    for name in ("clip_l", "t5xxl"):
        hub.parts[name].rename(encoders / hub.parts[name].name)
    hub.parts["vae"].rename(vaes / hub.parts["vae"].name)
    data = tmp_path_factory.mktemp("download-ui-data")
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(data / "hf-home")}  # the hub's cache stays in the test's folder
    proc, srv = start_server(data, checkpoints, "--ckpt", SD15, "--api", "--text-encoder-dir", str(encoders),
                             "--vae-dir", str(vaes), env=env)
    yield srv
    stop_server(proc)


def _tokenizers_dir(srv: Server) -> Path:
    return resolve_paths(data_dir=srv.data_dir).tokenizers_dir


def set_number(page, elem_id: str, value: int | float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def test_pick_flux_without_its_tokenizer_download_it_and_generate(page, server: Server, hub: RunningHub) -> None:
    target = _tokenizers_dir(server) / T5.folder_name
    status = page.locator("#sd_model_status")
    offer = page.locator("#download_missing_component")
    page.wait_for_function("() => document.querySelector('#setting_sd_model_checkpoint input').value !== ''")
    assert not offer.is_visible()

    page.locator("#setting_sd_model_checkpoint input").click()
    page.get_by_role("option", name=re.compile(r"^flux1-schnell\.safetensors")).click()
    offer.wait_for(state="visible")
    assert offer.inner_text().strip() == "Download tokenizer:t5xxl"
    # The message names the part, its files and the folder they go in; SD 1.5 stays loaded.
    message = status.inner_text()
    assert "tokenizer:t5xxl" in message and "tokenizer.json" in message and T5.folder_name in message
    assert "tiny-sd15" in message
    assert not target.exists() and not [r for r in hub.fake.requests if T5.repo_id in r[1]]  # not before the click

    offer.click()
    page.wait_for_function("() => document.querySelector('#sd_model_status').innerText.includes('Loaded: flux1')")
    assert page.locator("#setting_sd_model_checkpoint input").input_value().startswith("flux1-schnell")
    offer.wait_for(state="hidden")
    served = {f"{T5.repo_id}/{T5.subfolder}/{name}" for name in T5.files}
    assert hub.fake.saw("HEAD") >= served and hub.fake.saw("GET") >= served
    assert sorted(p.name for p in target.iterdir()) == sorted(T5.files)
    for name in T5.files:
        assert (target / name).read_bytes() == hub.fake.files[f"{T5.repo_id}/{T5.subfolder}/{name}"]

    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    set_number(page, "txt2img_steps", 2)
    page.locator("#txt2img_prompt textarea").fill("a lighthouse")
    page.locator("#txt2img_generate").click()
    page.wait_for_function("() => document.querySelector('#html_info_txt2img textarea').value.includes('Seed:')")
    params = parse_infotext(page.locator("#html_info_txt2img textarea").input_value()).params
    assert params["Model"] == "flux1-schnell" and params["Size"] == "64x64" and params["Steps"] == "2"
    page.locator("#txt2img_gallery img").first.wait_for()


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_file_not_matching_the_hubs_hash_is_refused_and_nothing_is_left(server: Server, hub: RunningHub) -> None:
    route = server.url + "/sdapi/v1/download-component"
    corrupt = f"{QWEN.repo_id}/tokenizer.json"
    hub.fake.corrupt.add(corrupt)
    try:
        status, body = _post(route, {"component": "tokenizer:qwen3"})
    finally:
        hub.fake.corrupt.discard(corrupt)
    assert status == 502, body
    assert "tokenizer.json" in body["detail"] and "hash" in body["detail"]
    assert corrupt in hub.fake.saw("GET")  # the hub was reached: the refusal is the checksum, not the network
    folder = _tokenizers_dir(server)
    leftovers = [p.name for p in folder.iterdir()] if folder.exists() else []
    assert not [name for name in leftovers if QWEN.folder_name in name], leftovers  # no copy, no .part folder

    # Served intact, the same request lands the whole set.
    status, body = _post(route, {"component": "tokenizer:qwen3"})
    assert status == 200, body
    assert body["component"] == "tokenizer:qwen3" and Path(body["path"]) == folder / QWEN.folder_name
    for name in QWEN.files:
        assert (folder / QWEN.folder_name / name).read_bytes() == hub.fake.files[f"{QWEN.repo_id}/{name}"]

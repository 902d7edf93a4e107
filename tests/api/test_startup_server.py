"""A started server answers before torch is imported; what needs the engine waits for it, and an
engine that cannot be built (a device flag this machine cannot honour) stops the server with exit 2."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import httpx
from PIL import Image

from modules.services.engine_slot import STARTING
from tests.server_process import ROOT, free_port, start_server, stop_server

API = "/sdapi/v1"


def test_a_txt2img_posted_as_soon_as_the_server_answers_waits_for_the_startup_model(tiny_models,
                                                                                      tmp_path: Path) -> None:
    proc, server = start_server(tmp_path / "data", tiny_models.folder, "--api", "--ckpt", "tiny-sd15.safetensors",
                                ready_path=f"{API}/samplers")
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            # Importing torch alone takes longer than this request: the engine is still being built.
            assert client.get(f"{API}/workers").json()["workers"][0]["device"] == STARTING
            assert client.get("/").status_code == 200  # the UI page, meanwhile
            reply = client.post(f"{API}/txt2img", json={"prompt": "a cat", "steps": 3, "width": 64, "height": 64,
                                                        "seed": 3})
            assert reply.status_code == 200, reply.text[:500]
            with Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]))) as image:
                assert image.size == (64, 64)
            assert client.get(f"{API}/options").json()["sd_model_checkpoint"].startswith("tiny-sd15.safetensors [")
            assert client.get(f"{API}/workers").json()["workers"][0]["device"] != STARTING
    finally:
        stop_server(proc)


def test_a_device_flag_that_cannot_work_here_stops_the_started_server_with_exit_2(tiny_models,
                                                                                   tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "COMMANDLINE_ARGS": ""}
    with log.open("w") as out:  # --lowvram on the CPU is refused whatever the machine has
        proc = subprocess.run([sys.executable, str(ROOT / "app.py"), "--api", "--nowebui", "--port", str(free_port()),
                               "--data-dir", str(tmp_path), "--ckpt-dir", str(tiny_models.folder), "--use-cpu", "all",
                               "--lowvram"], check=False, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=300)
    text = log.read_text()
    assert proc.returncode == 2, text[-3000:]
    assert "--lowvram moves models between a CUDA GPU and RAM" in text and "Traceback" not in text


def test_an_unreadable_startup_checkpoint_leaves_the_server_serving_with_the_reason(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}" + bytes(64))
    proc, server = start_server(tmp_path / "data", models, "--api", ready_path=f"{API}/samplers")
    try:
        with httpx.Client(base_url=server.url, timeout=300) as client:
            # Posted before the engine is built: it waits, then fails with the file's problem instead of hanging.
            reply = client.post(f"{API}/txt2img", json={"prompt": "a cat", "steps": 2, "width": 64, "height": 64})
            assert reply.status_code == 500 and reply.json()["error"] == "ModelLoadError", reply.text[:500]
            assert "broken.safetensors" in reply.json()["detail"]
            assert client.get(f"{API}/options").json()["sd_model_checkpoint"] is None
            assert client.get("/").status_code == 200
        log = server.log.read_text()
        assert "Startup model not loaded:" in log and "broken.safetensors" in log
    finally:
        stop_server(proc)

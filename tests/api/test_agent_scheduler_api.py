"""agent-scheduler's API (/agent-scheduler/v1) in that extension's shapes, over the studio's queue.

One app (in process, API only, no sign-in) over the tiny SD 1.5 checkpoint: what a script written
for the extension does — queue, poll the task, list the history, fetch the images.
"""

from __future__ import annotations

import base64
import io
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.api.waiting import wait_for
from tests.conftest import TinyModels, make_services

AS = "/agent-scheduler/v1"
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}


@pytest.fixture(scope="module")
def client(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    services = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    app = app_module._build_app(parse_flags(["--api", "--nowebui"], {}), services, load_auth(None, None, None))
    yield TestClient(app, base_url="http://127.0.0.1")
    services.close()


def task(client: TestClient, task_id: str) -> dict[str, Any]:
    reply = client.get(f"{AS}/task/{task_id}")
    assert reply.status_code == 200 and reply.json()["success"], reply.text
    return reply.json()["data"]


def settled(client: TestClient, task_id: str) -> dict[str, Any] | None:
    data = task(client, task_id)
    return data if data["status"] not in ("pending", "running") else None


def test_a_task_is_queued_polled_listed_and_its_images_fetched(client: TestClient) -> None:
    queued = client.post(f"{AS}/queue/txt2img", json={**SMALL, "prompt": "a red kite", "seed": 5,
                                                      "checkpoint": "tiny-sd15.safetensors"})
    assert queued.status_code == 200, queued.text
    task_id = queued.json()["task_id"]
    done = wait_for(lambda: settled(client, task_id))
    assert done["status"] == "done" and done["type"] == "txt2img" and done["id"] == task_id
    assert done["params"]["prompt"] == "a red kite" and done["params"]["checkpoint"] == "tiny-sd15.safetensors"
    position = client.get(f"{AS}/task/{task_id}/position").json()
    assert position == {"success": True, "data": {"status": "done", "position": None}}

    history = client.get(f"{AS}/history").json()
    assert history["total"] == 1 and history["tasks"][0]["id"] == task_id
    assert isinstance(history["tasks"][0]["created_at"], int)  # the extension's milliseconds
    assert client.get(f"{AS}/history", params={"status": "failed"}).json() == {"tasks": [], "total": 0}

    results = client.get(f"{AS}/task/{task_id}/results").json()
    assert results["success"] and len(results["data"]) == 1
    head, encoded = results["data"][0]["image"].split(",", 1)
    assert head == "data:image/png;base64"
    assert Image.open(io.BytesIO(base64.b64decode(encoded))).size == (64, 64)
    assert results["data"][0]["infotext"].startswith("a red kite")
    archive = client.get(f"{AS}/task/{task_id}/results", params={"zip": "true"})
    assert archive.headers["content-type"] == "application/zip"
    assert len(zipfile.ZipFile(io.BytesIO(archive.content)).namelist()) == 1


def test_the_line_a_move_a_delete_and_a_requeue(client: TestClient) -> None:
    long = client.post(f"{AS}/queue/txt2img", json={**SMALL, "steps": 150, "n_iter": 100}).json()["task_id"]
    wait_for(lambda: task(client, long)["status"] == "running")
    first = client.post(f"{AS}/queue/txt2img", json={**SMALL, "prompt": "first"}).json()["task_id"]
    second = client.post(f"{AS}/queue/txt2img", json={**SMALL, "prompt": "second"}).json()["task_id"]
    line = client.get(f"{AS}/queue").json()
    assert line["current_task_id"] == long and line["paused"] is False and line["total_pending_tasks"] == 3
    assert [(t["id"], t["status"], t["position"]) for t in line["pending_tasks"]] == [
        (long, "running", 0), (first, "pending", 1), (second, "pending", 2)]

    assert client.post(f"{AS}/task/{second}/move/top").json()["success"]
    assert client.get(f"{AS}/task/{second}/position").json()["data"] == {"status": "pending", "position": 1}
    assert client.delete(f"{AS}/task/{first}").json() == {"success": True, "message": "Task deleted"}
    assert client.delete(f"{AS}/task/{long}").json() == {"success": True, "message": "Task interrupted"}
    assert wait_for(lambda: settled(client, second))["status"] == "done"
    assert task(client, long)["status"] == task(client, first)["status"] == "interrupted"

    again = client.post(f"{AS}/task/{second}/requeue").json()
    assert again["success"] and again["task_id"] != second
    assert wait_for(lambda: settled(client, again["task_id"]))["params"]["prompt"] == "second"


def test_what_is_refused_or_not_found(client: TestClient) -> None:
    hooked = client.post(f"{AS}/queue/txt2img", json={**SMALL, "callback_url": "http://example.com/done"})
    assert hooked.status_code == 422 and "callback_url" in hooked.text
    assert client.get(f"{AS}/task/no-such-task").status_code == 404
    assert client.get(f"{AS}/task/no-such-task").json() == {"success": False, "message": "Task not found"}
    # Without sign-in there is no account: full access, and nothing to hold tokens.
    assert client.get("/sdapi/v1/account").json()["signed_in"] is False
    assert client.post("/sdapi/v1/account/tokens", json={"label": "x"}).status_code == 400

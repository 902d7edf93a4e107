"""The studio's queue routes, /sdapi/v1/queue, as two users and an admin see and steer them.

One app (in process, API only) over the tiny SD 1.5 checkpoint with three accounts; an admin's
long job holds the worker while the others' jobs wait in line, so what the line shows is stable.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.api.queue_api import FileLinks
from modules.cmd_args import parse_flags
from modules.identity import Role, UserLimits
from modules.web.credentials import load_auth
from tests.api.waiting import wait_for
from tests.conftest import TinyModels, make_services

Q = "/sdapi/v1/queue"
SMALL = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}
USERS = {"alice": "alice-password-1", "bob": "bob-password-22", "root": "root-password-333"}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{USERS[name]}".encode()).decode()}


@pytest.fixture(scope="module")
def studio(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Any]]:
    services = make_services(tmp_path_factory.mktemp("data"), tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    services.accounts.add("alice", USERS["alice"], Role.USER, UserLimits(max_steps=40))
    services.accounts.add("bob", USERS["bob"], Role.USER)
    services.accounts.add("root", USERS["root"], Role.ADMIN)
    app = app_module._build_app(parse_flags(["--api", "--nowebui"], {}), services, load_auth(None, None, None))
    yield TestClient(app, base_url="http://127.0.0.1"), services
    services.close()


def queue(client: TestClient, name: str, prompt: str, **fields: Any) -> str:
    reply = client.post(f"{Q}/txt2img", json={**SMALL, "prompt": prompt, **fields}, headers=auth(name))
    assert reply.status_code == 200, reply.text
    assert reply.json()["position"] >= 0  # 0: it started at once
    return reply.json()["id"]


def ended(client: TestClient, name: str, job_id: str) -> dict[str, Any] | None:
    item = client.get(f"{Q}/{job_id}", headers=auth(name)).json()
    return item if item["state"] not in ("queued", "running") else None


def test_the_line_as_each_user_sees_it_and_steers_it(studio) -> None:
    client, services = studio
    blocker = queue(client, "root", "the long admin job", steps=150, n_iter=100)
    wait_for(lambda: client.get(Q, headers=auth("root")).json()["running"])
    a1, a2 = queue(client, "alice", "alpha lighthouse", seed=11), queue(client, "alice", "alpha second")
    b1 = queue(client, "bob", "bravo harbour", seed=22)

    assert client.get(f"{Q}/{b1}", headers=auth("bob")).json()["position"] == 2  # fair: after one of alice's
    seen_by_bob = client.get(Q, headers=auth("bob")).json()
    alices = [e for e in seen_by_bob["pending"] if e["owner"] == "alice"]
    assert len(alices) == 2 and all(e["id"] is None and e["prompt"] is None for e in alices)
    assert seen_by_bob["total_pending"] == 3 and seen_by_bob["running"][0]["owner"] == "root"
    seen_by_alice = client.get(Q, headers=auth("alice")).json()
    assert {e["id"]: e["prompt"] for e in seen_by_alice["pending"] if e["owner"] == "alice"} == {
        a1: "alpha lighthouse", a2: "alpha second"}
    # Fair order: alice, bob, alice. Another user's job is not found, to look at or to cancel.
    assert [e["owner"] for e in seen_by_alice["pending"]] == ["alice", "bob", "alice"]
    assert client.get(f"{Q}/{a1}", headers=auth("bob")).status_code == 404
    assert client.post(f"{Q}/{a1}/cancel", headers=auth("bob")).status_code == 404

    assert client.post(f"{Q}/{a2}/cancel", headers=auth("alice")).status_code == 200
    assert client.post(f"{Q}/{b1}/move", json={"position": 1}, headers=auth("alice")).status_code == 403
    moved = client.post(f"{Q}/{b1}/move", json={"position": 1}, headers=auth("root"))
    assert moved.status_code == 200 and moved.json()["position"] == 1
    assert [e["owner"] for e in client.get(Q, headers=auth("root")).json()["pending"]] == ["bob", "alice"]

    assert client.post(f"{Q}/{blocker}/cancel", headers=auth("root")).status_code == 200
    done_a1 = wait_for(lambda: ended(client, "alice", a1))
    done_b1 = wait_for(lambda: ended(client, "bob", b1))
    assert done_a1["state"] == done_b1["state"] == "finished"
    assert done_b1["finished_at"] <= done_a1["started_at"]  # the admin's move held
    assert client.get(f"{Q}/{a2}", headers=auth("alice")).json()["state"] == "cancelled"
    assert client.get(f"{Q}/{blocker}", headers=auth("root")).json()["state"] == "interrupted"


def test_history_search_run_again_and_delete(studio) -> None:
    client, services = studio
    mine = client.get(f"{Q}/history", headers=auth("alice")).json()
    assert {i["state"] for i in mine["items"]} == {"finished", "cancelled"} and mine["total"] == 2
    assert all(i["owner"] == "alice" for i in mine["items"])  # bob's job is not in alice's history
    assert client.get(f"{Q}/history", headers=auth("root")).json()["total"] == 4
    found = client.get(f"{Q}/history", params={"search": "lighthouse"}, headers=auth("alice")).json()
    assert found["total"] == 1
    item = found["items"][0]
    assert item["parameters"]["steps"] == 2 and item["parameters"]["sampler_name"] == "Euler"
    image = item["images"][0]
    assert image["seed"] == 11 and image["index"] == 0 and image["url"] is None  # no UI on this server
    saved = services.paths.outputs_dir / image["path"]
    assert saved.is_file()

    again = client.post(f"{Q}/history/{item['id']}/run-again", headers=auth("alice"))
    assert again.status_code == 200 and again.json()["id"] != item["id"]
    rerun = wait_for(lambda: ended(client, "alice", again.json()["id"]))
    assert rerun["state"] == "finished" and rerun["images"][0]["seed"] == 11 and rerun["owner"] == "alice"

    assert client.delete(f"{Q}/history/{item['id']}", headers=auth("bob")).status_code == 404
    assert saved.is_file()
    deleted = client.delete(f"{Q}/history/{item['id']}", headers=auth("alice"))
    assert deleted.status_code == 200 and deleted.json()["files_deleted"] >= 1
    assert not saved.exists()
    assert client.get(f"{Q}/{item['id']}", headers=auth("alice")).status_code == 404


def test_a_limit_is_refused_before_any_work_naming_it(studio) -> None:
    client, _services = studio
    reply = client.post(f"{Q}/txt2img", json={**SMALL, "steps": 50}, headers=auth("alice"))
    assert reply.status_code == 403 and reply.json()["limit"] == "max_steps"
    assert client.post(f"{Q}/txt2img", json={**SMALL, "script_name": "x/y/z plot"},
                       headers=auth("alice")).status_code == 422


def test_file_links_go_through_the_ui_file_route(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    inside = outputs / "txt2img-images" / "a b.png"
    links = FileLinks(outputs, "/atelier")
    assert links.relative(inside) == "txt2img-images/a b.png"
    assert links.url(inside) == f"/atelier/gradio_api/file={inside.resolve()}".replace(" ", "%20")
    assert links.url(tmp_path / "elsewhere.png") is None and links.relative(tmp_path / "elsewhere.png") is None
    assert FileLinks(outputs, None).url(inside) is None

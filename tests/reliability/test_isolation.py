"""Two signed-in users: neither can watch, interrupt or skip the other's job, unless the admin says
the instance is single-user (``shared_jobs: true``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.reliability.support import start_txt2img, wait_running
from tests.server_process import Server, start_server, stop_server

API = "/sdapi/v1"
ALICE, BOB = ("alice", "a-secret"), ("bob", "b-secret")
LONG = {"prompt": "a slow job", "steps": 40, "width": 64, "height": 64, "n_iter": 3, "seed": 9}


def _server(tiny_models, data: Path, shared: bool) -> tuple[object, Server]:
    data.mkdir(parents=True, exist_ok=True)
    (data / "config.yaml").write_text(f"shared_jobs: {'true' if shared else 'false'}\n")
    return start_server(data, tiny_models.folder, "--api", "--api-auth", "alice:a-secret,bob:b-secret",
                        "--ckpt", "tiny-sd15.safetensors", ready_path=f"{API}/options")


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    proc, srv = _server(tiny_models, tmp_path_factory.mktemp("isolated"), shared=False)
    yield srv
    stop_server(proc)


def test_another_user_cannot_watch_interrupt_or_skip_my_job(server: Server) -> None:
    job = start_txt2img(server, ALICE, LONG)
    with httpx.Client(base_url=server.url, auth=ALICE, timeout=60) as alice, \
            httpx.Client(base_url=server.url, auth=BOB, timeout=60) as bob:
        wait_running(alice)
        seen_by_bob = bob.get(f"{API}/progress").json()
        assert seen_by_bob["state"]["job_count"] == 0 and seen_by_bob["current_image"] is None
        assert bob.post(f"{API}/interrupt").status_code == 200  # answered, but Alice's job goes on
        assert bob.post(f"{API}/skip").status_code == 200
        assert alice.get(f"{API}/progress").json()["state"]["job_count"] == 3
    job["thread"].join(300)
    info = json.loads(job["reply"].json()["info"])
    assert info["all_seeds"] == [9, 10, 11]  # all three images: nothing was interrupted or skipped


def test_the_owner_can_interrupt_their_own_job(server: Server) -> None:
    job = start_txt2img(server, BOB, LONG)
    with httpx.Client(base_url=server.url, auth=BOB, timeout=60) as bob:
        wait_running(bob)
        assert bob.post(f"{API}/interrupt").status_code == 200
    job["thread"].join(300)
    assert len(json.loads(job["reply"].json()["info"])["all_seeds"]) < 3


def test_a_single_user_instance_shares_jobs(tiny_models, tmp_path: Path) -> None:
    proc, srv = _server(tiny_models, tmp_path / "shared", shared=True)
    try:
        job = start_txt2img(srv, ALICE, LONG)
        with httpx.Client(base_url=srv.url, auth=BOB, timeout=60) as bob:
            assert wait_running(bob)["state"]["job_count"] == 3  # Bob sees Alice's job
            assert bob.post(f"{API}/interrupt").status_code == 200
        job["thread"].join(300)
        assert len(json.loads(job["reply"].json()["info"])["all_seeds"]) < 3
    finally:
        stop_server(proc)

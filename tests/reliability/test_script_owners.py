"""Scripts' jobs and ``host.generate`` jobs belong to the user who started them: another signed-in
user can neither watch, interrupt nor skip them (jobs not shared), as with a plain job
(``test_isolation.py``). The user flows from the face (API route, UI event) through the script into
every job it submits, whichever host the script calls."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modules.params import GenerationRequest
from modules.ui.extension_panels import run_script_for
from tests.conftest import TinyModels, make_services
from tests.reliability.support import start_txt2img, wait_running
from tests.server_process import Server, start_server, stop_server

CATEGORY = "isolation"
API = "/sdapi/v1"
ALICE, BOB = ("alice", "a-secret"), ("bob", "b-secret")
SEEDS = [9, 10, 11]
# Three jobs of 40 steps: slow enough to watch, interrupt and skip on the tiny model.
SLOW = {"prompt": "a slow script", "steps": 40, "width": 64, "height": 64, "seed": 9}
XYZ = {"script_name": "x/y/z plot", "script_args": {"x_type": "Seed", "x_values": "9, 10, 11"}}

# A user's script that makes one job per seed through the host named by "via": the script's own
# (``run.host``), one kept from APP_STARTED, or the script's own called from a thread it starts. Its
# STEP_END notes each job's id, so a test can look the job up in the queue.
PROBE = """
import json
import threading
from dataclasses import replace
from pathlib import Path

from modules.extension_api import Hook, Param, Script

EVENTS = Path({events!r})
KEPT = {{}}


def generate(run, request):
    if run.values["via"] == "kept host":
        return KEPT["host"].generate(request)
    if run.values["via"] == "script host":
        return run.host.generate(request)
    box = []
    worker = threading.Thread(target=lambda: box.append(run.host.generate(request)))
    worker.start()
    worker.join()
    return box[0]


def seed_walk(run):
    results = []
    for i in range(run.values["count"]):
        result = generate(run, replace(run.request, seed=run.request.seed + i, batch_count=1))
        results.append(result)
        if result.interrupted:
            break
    return replace(results[-1], images=tuple(image for result in results for image in result.images), grid=None)


def note_step(ctx):
    if ctx.step == 1:
        with EVENTS.open("a", encoding="utf-8") as out:
            out.write(json.dumps({{"job": ctx.job_id}}) + "\\n")


def setup(ext):
    ext.on(Hook.APP_STARTED, lambda ctx: KEPT.update(host=ctx.host))
    ext.on(Hook.STEP_END, note_step)
    ext.add_script(Script(title="Owner probe", run=seed_walk, params=(
        Param.choice("via", ["script host", "kept host", "thread"]), Param.int("count", 3, minimum=1, maximum=8))))
"""
VIAS = ("script host", "kept host", "thread")


def _probe(data: Path, events: Path) -> None:
    """The probe, where users put their extensions (``<data dir>/extensions/``)."""
    folder = data / "extensions" / "owner_probe"
    folder.mkdir(parents=True)
    (folder / "extension.yaml").write_text("name: owner_probe\nversion: 1.0.0\napi_version: 1\nentry: main.py\n",
                                           encoding="utf-8")
    (folder / "main.py").write_text(textwrap.dedent(PROBE).format(events=str(events)), encoding="utf-8")


def _job_ids(events: Path) -> list[str]:
    if not events.exists():
        return []
    return [json.loads(line)["job"] for line in events.read_text(encoding="utf-8").splitlines()]


# --- over HTTP, as another user would try it ------------------------------------------------------


def _users(data: Path) -> None:
    """Alice and Bob as accounts with the user role (--gradio-auth logins would be admins, who see all)."""
    from modules.identity import Role
    from modules.services.accounts import AccountStore
    from modules.services.studio_db import db_path, open_studio_db

    db = open_studio_db(db_path(data))
    store = AccountStore(db)
    for name, password in (ALICE, BOB):
        store.add(name, password, Role.USER)
    db.close()


@pytest.fixture(scope="module")
def server(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("script-owners")
    (data / "config.yaml").write_text("shared_jobs: false\n")
    _probe(data, data / "events.jsonl")
    _users(data)
    proc, srv = start_server(data, tiny_models.folder, "--api", "--ckpt", "tiny-sd15.safetensors",
                             ready_path=f"{API}/options")
    yield srv
    stop_server(proc)


def _seeds(job: dict[str, Any]) -> list[int]:
    job["thread"].join(300)
    reply = job["reply"]
    assert reply.status_code == 200, reply.text
    return json.loads(reply.json()["info"])["all_seeds"]


SCRIPTS = {"x/y/z plot": XYZ, **{f"host.generate via {via}": {"script_name": "owner probe",
                                                               "script_args": {"via": via, "count": 3}}
                                 for via in VIAS}}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_another_user_cannot_watch_interrupt_or_skip_my_script(server: Server, script: dict[str, Any]) -> None:
    job = start_txt2img(server, ALICE, {**SLOW, **script})
    with httpx.Client(base_url=server.url, auth=ALICE, timeout=60) as alice, \
            httpx.Client(base_url=server.url, auth=BOB, timeout=60) as bob:
        wait_running(alice)
        seen_by_bob = bob.get(f"{API}/progress").json()
        assert seen_by_bob["state"]["job_count"] == 0 and seen_by_bob["current_image"] is None
        assert seen_by_bob["progress"] == 0
        assert bob.post(f"{API}/interrupt").status_code == 200  # answered, but Alice's script goes on
        assert bob.post(f"{API}/skip").status_code == 200
        # Still running, and hers to see (an X/Y/Z plot counts its cells' jobs, as A1111's does).
        assert wait_running(alice)["state"]["job_count"] == (len(SEEDS) if script is XYZ else 1)
    assert _seeds(job) == SEEDS  # every cell: nothing was interrupted or skipped


@pytest.mark.parametrize("script", [XYZ, SCRIPTS["host.generate via kept host"]], ids=["x/y/z plot", "kept host"])
def test_the_owner_can_interrupt_their_own_script(server: Server, script: dict[str, Any]) -> None:
    job = start_txt2img(server, BOB, {**SLOW, **script})
    with httpx.Client(base_url=server.url, auth=BOB, timeout=60) as bob:
        wait_running(bob)
        assert bob.post(f"{API}/interrupt").status_code == 200
    assert len(_seeds(job)) < len(SEEDS)  # the script stopped at the interrupted job


# --- in process: who owns each job, for every face and host --------------------------------------


@pytest.fixture(scope="module")
def probed(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    data = tmp_path_factory.mktemp("owners-in-process")
    events = data / "events.jsonl"
    _probe(data, events)
    services = make_services(data, tiny_models.folder)
    services.extensions.app_started()  # as app.py does: the probe keeps this host
    yield services, events
    services.close()


def _owners(services: Any, events: Path, before: int) -> list[str | None]:
    jobs = [services.queue.get(job_id) for job_id in _job_ids(events)[before:]]
    return [job.owner for job in jobs if job is not None]


def _run_in_the_ui(services: Any, owner: str, request: GenerationRequest, values: dict[str, Any]) -> None:
    for _snapshot, _image, done in run_script_for(services, owner, "Owner probe", "txt2img", request, values):
        if done is not None:
            assert len(done.images) == values["count"]


@pytest.mark.parametrize("face", ["api", "ui"])
@pytest.mark.parametrize("via", VIAS)
def test_every_job_a_script_submits_is_its_users(probed: tuple[Any, Path], face: str, via: str) -> None:
    services, events = probed
    request = GenerationRequest(prompt="owned", steps=2, width=64, height=64, seed=1,
                                checkpoint="tiny-sd15.safetensors", save_images=False)
    values = {"via": via, "count": 2}
    before = len(_job_ids(events))
    if face == "api":
        services.generation.run_script("owner probe", "txt2img", request, values, owner="alice")
    else:
        _run_in_the_ui(services, "alice", request, values)
    assert _owners(services, events, before) == ["alice", "alice"]
    host = services.extensions.host("owner_probe")
    assert host.owner is None and services.extensions.acting_user() is None  # nothing leaks past the script

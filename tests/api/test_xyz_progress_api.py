"""The X/Y/Z plot through the A1111 API: positional ``script_args`` with axis positions, and
``/progress`` saying which of the plot's jobs runs, as A1111's ``state.job`` does ("k out of n")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

import app as app_module
from modules.cmd_args import parse_flags
from modules.web.credentials import load_auth
from tests.conftest import TinyModels, make_services

API = "/sdapi/v1"
JOB = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 60, "seed": 5, "sampler_name": "Euler",
       "script_name": "x/y/z plot",
       # A1111's run() arguments: Seed (1) on X, Nothing on Y and Z, its UI's defaults after that.
       "script_args": [1, "1-3", [], 0, "", [], 0, "", [], True, True, False, False, False, False, False, 0, False]}


@pytest.fixture(scope="module")
def client(tiny_models: TinyModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    services = make_services(tmp_path_factory.mktemp("xyz-data"), tiny_models.folder)
    services.generation.switch_model("tiny-sd15.safetensors").future.result(timeout=120)
    app = app_module._build_app(parse_flags(["--api"], {}), services, load_auth(None, None, None))
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client
    services.close()


def test_progress_counts_the_plots_jobs(client: TestClient) -> None:
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: outcome.update(response=client.post(f"{API}/txt2img", json=JOB)))
    worker.start()
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 240
    while worker.is_alive() and time.monotonic() < deadline:
        state = client.get(f"{API}/progress", params={"skip_current_image": True}).json()["state"]
        if state["job"].endswith("out of 3") and (not seen or seen[-1]["job"] != state["job"]):
            seen.append(state)
        time.sleep(0.05)
    worker.join(240)
    assert outcome["response"].status_code == 200, outcome["response"].text
    assert [state["job"] for state in seen][:1] == ["1 out of 3"]
    assert {state["job_count"] for state in seen} == {3}
    assert all(state["job_no"] == int(state["job"].split()[0]) - 1 for state in seen)
    assert len(seen) >= 2  # the count went on from cell to cell


def test_bad_axis_values_answer_422_naming_the_field(client: TestClient) -> None:
    args = list(JOB["script_args"])
    args[0], args[1] = 4, "5-1"  # Steps, a range A1111 reads as empty
    response = client.post(f"{API}/txt2img", json={**JOB, "script_args": args, "steps": 2})
    assert response.status_code == 422
    assert "X values" in response.text and "gives no values" in response.text

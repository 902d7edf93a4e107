"""Ray workers running the tiny model: affinity, identical outputs, steering, a worker killed mid-job.

Two worker actors on fake GPUs render; the front (Services with the Ray queue) saves. The tests run
in file order: the last one kills a worker.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from modules.params import GenerationRequest, GenerationResult
from modules.services.images import OutputKind
from modules.services.queue_contract import QueueMode, WorkerState
from tests.conftest import TinyModels, make_services

MODEL_A, MODEL_B = "tiny-sd15.safetensors", "tiny-sd15-b.safetensors"
CFG_RESCALE = Path(__file__).parents[2] / "docs" / "examples" / "cfg_rescale"  # an AFTER_CFG + INFOTEXT extension
LONG_STEPS = 150  # the largest allowed: about a second per batch on the tiny model


def request(seed: int, model: str = MODEL_A, **changes: Any) -> GenerationRequest:
    values: dict[str, Any] = dict(prompt="a lighthouse", negative_prompt="fog", steps=3, width=64, height=64, seed=seed,
                                  sampler="Euler a", checkpoint=model)
    return GenerationRequest(**{**values, **changes})


def wait_until(condition: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def cluster(tiny_models: TinyModels, spawn_workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two tiny-model workers, and front services that dispatch to them."""
    import ray

    from modules.engine.devices import DevicePolicy
    from modules.services.scaleout.engine_host import EngineConfig
    from modules.services.scaleout.front import ScaleOut
    from modules.services.scaleout.slots import DispatchSettings

    # The same user extension on the front and on the workers' host, as a user installs it on each.
    worker_data, front_data = tmp_path_factory.mktemp("worker-data"), tmp_path_factory.mktemp("front-data")
    for data in (worker_data, front_data):
        shutil.copytree(CFG_RESCALE, data / "extensions" / CFG_RESCALE.name)
    engine = EngineConfig(data_dir=worker_data, ckpt_dir=tiny_models.folder,
                          policy=DevicePolicy(use_cpu=True), torch_threads=1)
    namespace, handles = spawn_workers(engine)
    settings = DispatchSettings(namespace=namespace, discover_seconds=0.2, poll_seconds=0.05)
    services = make_services(front_data, tiny_models.folder, scale_out=ScaleOut(address="auto", dispatch=settings))
    assert services.queue.mode is QueueMode.RAY
    wait_until(lambda: len(services.queue.workers()) == 2)
    yield services, handles, ray
    services.close()


def loads(ray: Any, handles: list[Any]) -> list[int]:
    return [info.loads for info in ray.get([h.describe.remote() for h in handles])]


def saved_files(services: Any) -> list[Path]:
    folder = services.outputs.saver.folder(OutputKind.TXT2IMG)
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


def test_eight_jobs_over_two_workers_load_each_model_once(cluster) -> None:
    services, handles, ray = cluster
    before = loads(ray, handles)
    jobs = [services.generation.submit(request(seed=i, model=MODEL_A if i % 2 == 0 else MODEL_B)) for i in range(8)]
    results: list[GenerationResult] = [job.future.result(120) for job in jobs]
    assert [r.seeds for r in results] == [(i,) for i in range(8)]
    assert all(r.images[0].path is not None and r.images[0].path.is_file() for r in results)
    assert [r.model_title.split(" [")[0] for r in results] == [MODEL_A, MODEL_B] * 4
    after = loads(ray, handles)
    assert sum(after) - sum(before) <= 2 and all(a - b <= 1 for a, b in zip(after, before))  # no reloads
    workers = services.queue.workers()
    assert len(workers) == 2 and all(w.jobs_done >= 4 for w in workers)
    assert {w.model.split(" [")[0] for w in workers if w.model} == {MODEL_A, MODEL_B}
    assert all(w.host and "cpu" in w.device for w in workers)


def pixels(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB").tobytes()


def test_outputs_and_seeds_match_the_in_process_queue(cluster, tiny_models: TinyModels,
                                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    import torch

    services, _handles, _ray = cluster
    requests = [request(seed=1234, batch_size=2), request(seed=99, model=MODEL_B, sampler="DPM++ 2M")]
    remote = [services.generation.generate(r, timeout=120) for r in requests]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run: the same arithmetic, the same bits
    local_services = make_services(tmp_path_factory.mktemp("local-data"), tiny_models.folder)
    try:
        local = [local_services.generation.generate(r, timeout=120) for r in requests]
    finally:
        local_services.close()
        torch.set_num_threads(threads)
    for mine, theirs in zip(remote, local):
        assert mine.seeds == theirs.seeds
        assert [i.infotext for i in mine.images] == [i.infotext for i in theirs.images]
        assert [pixels(i.png) for i in mine.images] == [pixels(i.png) for i in theirs.images]
        assert (mine.grid is None) == (theirs.grid is None) == (len(mine.images) == 1)
        if mine.grid is not None and theirs.grid is not None:  # made by the front from the workers' PNGs
            assert pixels(mine.grid.png) == pixels(theirs.grid.png) and mine.grid.path is not None
        assert all(i.path is not None and i.path.read_bytes() == i.png for i in mine.images)


def test_sampling_hooks_and_infotext_keys_run_on_the_worker(cluster) -> None:
    services, _handles, _ray = cluster
    plain = services.generation.generate(request(seed=5, cfg_scale=9.0), timeout=120).images[0]
    tweaked = services.generation.generate(request(seed=5, cfg_scale=9.0, extension_params={
        "CFG_Rescale": {"multiplier": 0.7}}), timeout=120).images[0]  # alwayson names match in any case
    assert "CFG Rescale: 0.7" in tweaked.infotext and "CFG Rescale" not in plain.infotext
    assert pixels(tweaked.png) != pixels(plain.png)


def test_interrupt_stops_one_job_and_not_the_other(cluster) -> None:
    services, _handles, _ray = cluster
    first = services.generation.submit(request(seed=5, steps=LONG_STEPS, batch_count=2))
    second = services.generation.submit(request(seed=6, model=MODEL_B, steps=LONG_STEPS, batch_count=2))
    queue = services.queue
    wait_until(lambda: queue.snapshot(first).step >= 3 and queue.snapshot(second).step >= 3)
    wait_until(lambda: second.context.preview() is not None, timeout=10)
    assert second.context.preview().size == (64, 64)  # type: ignore[union-attr]
    assert queue.interrupt(first.id)
    stopped, finished = first.future.result(60), second.future.result(120)
    assert stopped.interrupted and len(stopped.images) < 2
    assert not finished.interrupted and finished.seeds == (6, 7)


def test_the_selected_checkpoint_goes_to_its_holder_and_unload_frees_every_worker(cluster) -> None:
    services, handles, ray = cluster
    services.generation.switch_model(MODEL_B).future.result(60)
    assert services.models.current().name == MODEL_B  # selected, not loaded, on the front
    result = services.generation.generate(request(seed=3, model=None), timeout=120)  # type: ignore[arg-type]
    assert result.model_title.startswith(MODEL_B)
    services.generation.unload_model().future.result(60)
    wait_until(lambda: all(info.model is None for info in ray.get([h.describe.remote() for h in handles])))
    wait_until(lambda: all(w.model is None for w in services.queue.workers()))  # the panel follows within a read


def test_the_panel_and_the_api_show_the_workers(cluster) -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from modules.api import routes
    from modules.cmd_args import Flags
    from modules.ui import workers_panel

    services, _handles, _ray = cluster
    app = FastAPI()
    routes.install(app, services, Flags(api=True))
    body = TestClient(app).get("/sdapi/v1/workers").json()
    assert body["mode"] == "ray" and sorted(w["name"] for w in body["workers"]) == ["testhost/gpu0", "testhost/gpu1"]
    assert all(w["jobs_done"] >= 4 and not w["busy"] for w in body["workers"])
    assert [row[0] for row in workers_panel.rows(services)] == ["testhost/gpu0", "testhost/gpu1"]
    assert "2 worker(s) on Ray" in workers_panel.summary(services)


def test_a_killed_workers_job_finishes_on_the_other(cluster) -> None:
    services, handles, ray = cluster
    files_before = saved_files(services)
    job = services.generation.submit(request(seed=4242, steps=LONG_STEPS, batch_count=2))
    queue = services.queue
    wait_until(lambda: queue.snapshot(job).step >= 3)
    running_on = next(w.name for w in queue.workers() if w.job_id == job.id)
    victim = next(h for h, info in zip(handles, ray.get([h.describe.remote() for h in handles]))
                  if info.name.endswith(running_on))
    ray.kill(victim, no_restart=True)
    result = job.future.result(120)
    assert not result.interrupted and result.seeds == (4242, 4243)
    new_files = sorted(set(saved_files(services)) - set(files_before))
    assert [p.name.split("-", 1)[1] for p in new_files] == ["4242.png", "4243.png"]  # each image once
    wait_until(lambda: len(queue.workers()) == 1)
    survivor = queue.workers()[0]
    assert survivor.name != running_on and survivor.state is WorkerState.IDLE

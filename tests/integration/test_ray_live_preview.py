"""Live previews from a Ray worker: a TAESD preview reaches the front with its detail (it is not a
block picture to send at 1/8), an Approx cheap one still travels small and comes back exact."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.devtools.tiny_taesd import write_tiny_taesd
from modules.engine.taesd import TaesdVariant
from modules.params import GenerationRequest, PreviewMethod
from modules.services.queue_contract import QueueMode
from tests.conftest import TinyModels, make_services


def wait_until(condition: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def blocky(image: Image.Image) -> bool:
    small = image.resize((image.width // 8, image.height // 8), Image.Resampling.NEAREST)
    return np.array_equal(np.asarray(small.resize(image.size, Image.Resampling.NEAREST)), np.asarray(image))


@pytest.fixture(scope="module")
def front(tiny_models: TinyModels, spawn_workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One tiny-model worker whose models folder holds a TAESD, and front services dispatching to it."""
    from modules.engine.devices import DevicePolicy
    from modules.services.scaleout.engine_host import EngineConfig
    from modules.services.scaleout.front import ScaleOut
    from modules.services.scaleout.slots import DispatchSettings

    worker_data = tmp_path_factory.mktemp("worker-data")
    write_tiny_taesd(worker_data / "models" / "VAE-taesd", TaesdVariant.SD)
    engine = EngineConfig(data_dir=worker_data, ckpt_dir=tiny_models.folder, policy=DevicePolicy(use_cpu=True),
                          torch_threads=1)
    namespace, _handles = spawn_workers(engine, 1)
    settings = DispatchSettings(namespace=namespace, discover_seconds=0.2, poll_seconds=0.05)
    services = make_services(tmp_path_factory.mktemp("front-data"), tiny_models.folder,
                             scale_out=ScaleOut(address="auto", dispatch=settings))
    assert services.queue.mode is QueueMode.RAY
    wait_until(lambda: len(services.queue.workers()) == 1)
    yield services
    services.close()


def _first_preview(services: Any, method: PreviewMethod) -> Image.Image:
    request = GenerationRequest(prompt="a lighthouse", steps=150, width=64, height=64, seed=3, sampler="Euler",
                                checkpoint="tiny-sd15.safetensors", preview_method=method, preview_every=1)
    job = services.generation.submit(request)
    try:
        wait_until(lambda: job.context.preview() is not None, timeout=120)
        preview = job.context.preview()
    finally:
        services.queue.interrupt(job.id)
        job.future.result(120)
    assert preview is not None
    return preview


def test_a_taesd_preview_reaches_the_front_with_its_detail(front) -> None:
    preview = _first_preview(front, PreviewMethod.TAESD)
    assert preview.size == (64, 64) and not blocky(preview)


def test_a_cheap_preview_still_reaches_the_front_as_blocks(front) -> None:
    preview = _first_preview(front, PreviewMethod.APPROX_CHEAP)
    assert preview.size == (64, 64) and blocky(preview)

"""Ray for the scale-out tests: one local Ray instance per test session, started on first use.

Two fake GPUs (a custom resource) stand for the GPUs of a host; worker actors ask for one each. Tests
that start workers put them in a namespace of their own and kill them when done, so the next
module's workers get the fake GPUs.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

FAKE_GPUS = 2


def ensure_local_ray() -> Any:
    """Ray, started here with two fake GPUs unless this process is connected already (a slow test
    that ran its own multi-node cluster shuts it down, and the next user starts this one again)."""
    ray = pytest.importorskip("ray", reason="the scale-out tests need Ray (tests/requirements.txt)")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, resources={"fake_gpu": FAKE_GPUS}, include_dashboard=False,
                 log_to_driver=False, namespace="atelier-tests")
    return ray


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    ray = ensure_local_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def spawn_workers(ray_session: Any) -> Iterator[Callable[..., tuple[str, list[Any]]]]:
    """``spawn(engine, count)`` -> (namespace, handles): workers on fake GPUs, killed after the module."""
    from modules.services.scaleout.pool import WorkerSlots
    from modules.services.scaleout.pool import spawn_workers as spawn
    from modules.services.scaleout.protocol import worker_name

    handles: list[Any] = []

    def start(engine: Any, count: int = FAKE_GPUS) -> tuple[str, list[Any]]:
        ensure_local_ray()
        namespace = f"atelier-test-{uuid.uuid4().hex[:8]}"
        started = spawn([worker_name("testhost", f"gpu{i}") for i in range(count)], engine,
                        WorkerSlots(count=count, resource="fake_gpu"), namespace=namespace)
        handles.extend(started)
        return namespace, started

    yield start
    if ray_session.is_initialized():
        for handle in handles:
            ray_session.kill(handle, no_restart=True)

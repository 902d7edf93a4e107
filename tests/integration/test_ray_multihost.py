"""Several hosts (Ray nodes of one machine, ray.cluster_utils.Cluster): workers on two nodes share
the jobs, a node that leaves mid-job loses nothing, and a node that joins later gets work, all
without restarting the front. Slow (a cluster of three nodes): ATELIER_SLOW=1 runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from modules.devtools.fake_worker import FakeEngineConfig, FakeHooks
from modules.params import GenerationRequest

pytestmark = pytest.mark.slow
NAMESPACE = "atelier-multihost"


def wait_until(condition: Callable[[], Any], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # the session's single-node Ray: this test needs its own cluster
        ray.shutdown()
    made = Cluster(initialize_head=True, connect=True, head_node_args={"num_cpus": 1})
    yield made
    ray.shutdown()
    made.shutdown()


def add_host(cluster: Any, name: str) -> tuple[Any, Any]:
    """A node with one fake GPU, and its worker."""
    from modules.services.scaleout.pool import WorkerSlots, spawn_workers
    from modules.services.scaleout.protocol import worker_name

    node = cluster.add_node(num_cpus=1, resources={"fake_gpu": 1})
    cluster.wait_for_nodes()
    [handle] = spawn_workers([worker_name(name, "gpu0")], FakeEngineConfig(step_seconds=0.01),
                             WorkerSlots(1, resource="fake_gpu"), namespace=NAMESPACE, node_id=node.node_id)
    return node, handle


def test_hosts_join_share_and_leave_without_losing_a_job(cluster) -> None:
    from modules.services.scaleout.ray_queue import RayJobQueue
    from modules.services.scaleout.slots import DispatchSettings

    hosts = {name: add_host(cluster, name) for name in ("host-a", "host-b")}
    queue = RayJobQueue(FakeHooks(), 16, settings=DispatchSettings(namespace=NAMESPACE, discover_seconds=0.2))
    queue.start()
    try:
        wait_until(lambda: len(queue.workers()) == 2)
        jobs = [queue.submit(GenerationRequest(prompt=str(i), steps=30, seed=i)) for i in range(6)]
        results = [job.future.result(60) for job in jobs]
        assert len({r["pid"] for r in results}) == 2  # both hosts worked
        assert {w.host for w in queue.workers()} and all(w.jobs_done >= 1 for w in queue.workers())

        long = queue.submit(GenerationRequest(prompt="long", steps=400, seed=7))
        wait_until(lambda: queue.snapshot(long).step >= 5)
        on = next(w.name for w in queue.workers() if w.job_id == long.id)
        cluster.remove_node(hosts[on.split("/")[0]][0])  # that host goes away mid-job
        assert long.future.result(60)["batches"] == [0]
        wait_until(lambda: len(queue.workers()) == 1)

        hosts["host-c"] = add_host(cluster, "host-c")  # a new host joins the running front (its handle kept:
        # the process that starts a worker owns it, and Ray ends an actor whose owner dropped it)
        wait_until(lambda: len(queue.workers()) == 2)
        both = [queue.submit(GenerationRequest(prompt=f"late{i}", steps=200)) for i in range(2)]
        wait_until(lambda: all(queue.snapshot(job).step >= 1 for job in both))
        assert {w.job_id for w in queue.workers()} == {job.id for job in both}
        assert all(job.future.result(60)["batches"] == [0] for job in both)
    finally:
        queue.stop(10)

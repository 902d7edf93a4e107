"""Starting worker actors on a host, and finding the ones that joined the cluster.

Workers are named actors in one namespace (``worker:<host>/<slot>``); the process that starts them
owns them, so when it ends (Ctrl+C on ``app.py worker``) they leave with it and the front notices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from modules.services.scaleout.engine_host import EngineFactory
from modules.services.scaleout.protocol import NAME_PREFIX, NAMESPACE
from modules.services.scaleout.worker import RenderWorker

log = logging.getLogger(__name__)
_CONCURRENCY = 4  # run + progress + interrupt/skip + describe at once


@dataclass(frozen=True)
class WorkerSlots:
    """How many workers to start on this node and what each needs from Ray."""

    count: int
    num_gpus: float = 1.0  # one GPU each: Ray sets CUDA_VISIBLE_DEVICES per actor
    resource: str | None = None  # instead of a GPU, one unit of this custom resource (tests: "fake_gpu")
    num_cpus: float = 0.0


def spawn_workers(names: list[str], engine: EngineFactory, slots: WorkerSlots, namespace: str = NAMESPACE,
                  node_id: str | None = None) -> list[Any]:
    """Start one named worker actor per name, pinned to ``node_id`` (this node when None); returns the
    handles once every worker has built its engine."""
    node = node_id or ray.get_runtime_context().get_node_id()
    options: dict[str, Any] = {"max_concurrency": _CONCURRENCY, "max_restarts": 0, "num_cpus": slots.num_cpus,
                               "namespace": namespace,
                               "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node, soft=False)}
    if slots.resource:
        options["resources"] = {slots.resource: 1}
    else:
        options["num_gpus"] = slots.num_gpus
    actor_class = ray.remote(RenderWorker)
    handles = [actor_class.options(name=name, **options).remote(name, engine, node)  # type: ignore[attr-defined]
               for name in names]
    described = ray.get([handle.describe.remote() for handle in handles])
    for info in described:
        log.info("Worker %s ready on %s (%s); %d checkpoint(s)", info.name, info.host, info.device,
                 len(info.checkpoints))
    return handles


def worker_names(namespace: str = NAMESPACE) -> set[str]:
    """Names of the live worker actors in ``namespace``."""
    return {entry["name"] for entry in ray.util.list_named_actors(all_namespaces=True)
            if entry.get("namespace") == namespace and entry["name"].startswith(NAME_PREFIX)}


def find_worker(name: str, namespace: str = NAMESPACE) -> Any | None:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:  # it left between the listing and now
        return None

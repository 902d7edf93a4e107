"""The front process's side of scale-out: how the Ray queue reaches the generation service.

Jobs are pinned to a concrete checkpoint name at submission (the selected one when a request names
none), because workers each hold their own model and the dispatcher matches jobs to them by name.
Choosing a checkpoint in the UI selects it here (no weights load on the front); the workers load it
with their first job that needs it. Finished work is stored here: extensions' AFTER_IMAGE and
IMAGE_SAVED hooks, the files and the grid; the sampling-time hooks ran on the worker. Jobs on remote
models (openai/..., google/...) are run on the front, where the providers' keys are.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from modules.errors import ConfigError, NoModelLoadedError
from modules.params import GenerationRequest, GenerationResult
from modules.services.extras_run import ExtrasWorker
from modules.services.job_types import ExtrasJob, JobContext, JobSpec, ModelSwitch, ModelUnload
from modules.services.models import ModelManager
from modules.services.outputs import OutputStore, StoreSink
from modules.services.queue_contract import JobQueueContract
from modules.services.remote.engines import RemoteEngines
from modules.services.remote.remote_render import RemoteRenderer, is_remote_job
from modules.services.renderer import RenderedJob
from modules.services.scaleout.slots import DispatchSettings


class GenerationFront:
    """:class:`modules.services.scaleout.slots.FrontHooks` over the front's models and store."""

    def __init__(self, models: ModelManager, outputs: OutputStore, extras: ExtrasWorker | None = None,
                 remote: RemoteEngines | None = None) -> None:
        self._outputs = outputs
        self._models = models
        self._extras = extras  # Extras jobs run on the front, in the order they were queued
        self._remote = remote  # jobs on remote models run on the front too: the keys stay here

    def _is_remote(self, spec: JobSpec) -> bool:
        return (self._remote is not None and isinstance(spec, GenerationRequest)
                and is_remote_job(spec, self._models.registry))

    def pin(self, spec: JobSpec) -> JobSpec:
        if not isinstance(spec, GenerationRequest) or self._is_remote(spec):
            return spec
        registry = self._models.registry
        wanted = spec.checkpoint or self._default_checkpoint()
        refiner = spec.refiner
        if refiner is not None:
            refiner = replace(refiner, checkpoint=registry.require(refiner.checkpoint).name)
        return replace(spec, checkpoint=registry.require(wanted).name, refiner=refiner)

    def _default_checkpoint(self) -> str:
        current = self._models.current()
        if current is not None:
            return current.name
        available = self._models.registry.all()
        if not available:
            folders = ", ".join(str(f) for f in self._models.registry.folders)
            raise NoModelLoadedError(f"No checkpoint found. Put a .safetensors file or a diffusers folder in {folders} "
                                     "(and in each worker's models folder), then refresh the checkpoint list.")
        return available[0].name

    def remote(self, spec: JobSpec) -> bool:
        return isinstance(spec, GenerationRequest) and not self._is_remote(spec)

    def needs(self, spec: JobSpec) -> tuple[str, ...]:
        assert isinstance(spec, GenerationRequest) and spec.checkpoint is not None  # pinned
        refiner = spec.refiner
        if refiner is not None and refiner.switch_at < 1.0 and refiner.checkpoint != spec.checkpoint:
            return spec.checkpoint, refiner.checkpoint
        return (spec.checkpoint,)

    def run_here(self, spec: JobSpec, context: JobContext) -> Any:
        if isinstance(spec, ModelSwitch):
            return self._models.select(spec.checkpoint)
        if isinstance(spec, ModelUnload):
            return self._models.unload()
        if isinstance(spec, ExtrasJob) and self._extras is not None:
            return self._extras(spec, context)
        if self._is_remote(spec) and self._remote is not None:
            assert isinstance(spec, GenerationRequest)
            sink = StoreSink(self._outputs)
            return sink.result(RemoteRenderer(self._remote).render(spec, context, sink))
        raise TypeError(f"not a front job: {type(spec).__name__}")

    def finish(self, spec: JobSpec, result: Any) -> GenerationResult:
        assert isinstance(result, RenderedJob)
        return self._outputs.store(result)

    def unrun(self, spec: JobSpec) -> GenerationResult | None:
        if isinstance(spec, GenerationRequest):
            return GenerationResult(request=spec, images=(), interrupted=True)
        return None


@dataclass(frozen=True)
class ScaleOut:
    """Run jobs on Ray workers: ``--ray-address`` (or ``ray_address`` in config.yaml)."""

    address: str  # "auto" or HOST:PORT
    allow_public: bool = False
    dispatch: DispatchSettings = DispatchSettings()


def build_ray_queue(models: ModelManager, outputs: OutputStore, limit: int, shared: bool,
                    options: ScaleOut, extras: ExtrasWorker | None = None,
                    remote: RemoteEngines | None = None) -> tuple[JobQueueContract, Callable[[], None]]:
    """The Ray queue over the front's models and store, connected (or with the head started) as ``options`` say;
    and what to call at exit. Ray is imported only here: it is an optional dependency."""
    from modules.services.scaleout.cluster import RayAddress, connect_front, stop_ray_node

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--ray-address needs Ray. Install it with ./webui.sh --ray-address ... "
                          "(or: venv/bin/python -m pip install ray==2.60.0).")
    head = connect_front(RayAddress.parse(options.address), options.allow_public, options.dispatch.namespace)
    from modules.services.scaleout.ray_queue import RayJobQueue  # after connecting: see connect_front

    queue = RayJobQueue(GenerationFront(models, outputs, extras, remote), limit, shared=shared,
                        settings=options.dispatch)
    return queue, lambda: stop_ray_node(head)

"""The in-process worker's executor: what the one worker thread does with each job it takes.

A checkpoint switch or unload changes the models; a generation is rendered here and stored here,
batch by batch (the renderer hands each batch to the front's store as it finishes). A job on a remote
model is rendered by its provider's call instead (:mod:`modules.services.remote.remote_render`).
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.params import GenerationRequest, GenerationResult
from modules.services.extensions import ExtensionManager
from modules.services.extras_run import ExtrasOutput, ExtrasWorker
from modules.services.job_hooks import job_hooks_for
from modules.services.job_types import ExtrasJob, JobContext, JobSpec, ModelSwitch, ModelUnload
from modules.services.models import CheckpointInfo
from modules.services.outputs import OutputStore, StoreSink
from modules.services.remote.remote_render import RemoteRenderer, is_remote_job
from modules.services.renderer import Renderer


@dataclass(frozen=True)
class InProcessExecutor:
    renderer: Renderer
    outputs: OutputStore
    extensions: ExtensionManager
    extras: ExtrasWorker | None = None
    remote: RemoteRenderer | None = None  # jobs on remote models (openai/..., google/...)

    def __call__(self, spec: JobSpec, context: JobContext) -> GenerationResult | CheckpointInfo | list[ExtrasOutput] | None:
        if isinstance(spec, ExtrasJob):
            if self.extras is None:
                raise TypeError("this worker runs no Extras jobs")
            return self.extras(spec, context)
        if isinstance(spec, ModelSwitch):
            return self.renderer.models.switch(spec.checkpoint)
        if isinstance(spec, ModelUnload):
            return self.renderer.models.unload()
        assert isinstance(spec, GenerationRequest)
        sink = StoreSink(self.outputs)
        if self.remote is not None and is_remote_job(spec, self.renderer.models.registry):
            return sink.result(self.remote.render(spec, context, sink))
        hooks = job_hooks_for(self.extensions, context.job_id, spec)
        return sink.result(self.renderer.render(spec, context, sink, hooks))

"""The one generation path. The UI and the API both call :meth:`GenerationService.submit`.

``submit`` validates at the edge (every bad field reported before any model work), fixes the seed
and the sampler name, and queues the job. The worker then runs :meth:`execute`, which reads as
numbered steps: model -> batches (sample, save each image with its infotext) -> grid -> result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from PIL import Image

from modules import __version__
from modules.engine.loader import LoadedModel
from modules.engine.model_detect import ModelArch
from modules.engine.preview import latents_to_preview
from modules.engine.txt2img import Txt2ImgBatch, run_txt2img
from modules.errors import GenerationError
from modules.infotext import ModelIdentity, build_infotext
from modules.params import (
    GeneratedImage,
    GenerationLimits,
    GenerationRequest,
    GenerationResult,
    normalize_request,
    validate_request,
)
from modules.samplers import resolve_sampler
from modules.services.images import ImageSaver, OutputKind, make_grid
from modules.services.jobs import Job, JobContext, JobQueue, JobSpec, ModelSwitch
from modules.services.models import CheckpointInfo, ModelManager

log = logging.getLogger(__name__)
VERSION_TEXT = f"Atelier {__version__}"
TXT2IMG_ARCHS = (ModelArch.SD1, ModelArch.SD2_V, ModelArch.SDXL)


class _Observer:
    """Adapts a job's context to the engine's step observer."""

    def __init__(self, context: JobContext, model: LoadedModel) -> None:
        self._context = context
        self._arch = model.arch

    def on_step(self, step: int, total: int, latents: Any) -> None:
        self._context.on_step(step, total, latents, self._render)

    def should_stop(self) -> bool:
        return self._context.should_stop()

    def _render(self, latents: Any) -> Image.Image:
        return latents_to_preview(latents, self._arch)


class GenerationService:
    """Validates requests, queues them, and turns them into saved images."""

    def __init__(self, models: ModelManager, saver: ImageSaver, limits: GenerationLimits, save_grid: bool) -> None:
        self.models = models
        self.saver = saver
        self.limits = limits
        self.save_grid = save_grid
        self.queue: JobQueue | None = None  # attached by the composition root

    def attach(self, job_queue: JobQueue) -> None:
        self.queue = job_queue

    def _queue(self) -> JobQueue:
        if self.queue is None:
            raise RuntimeError("GenerationService used before a job queue was attached")
        return self.queue

    # --- faces call these ---------------------------------------------------------------------

    def prepare(self, request: GenerationRequest) -> GenerationRequest:
        """Validate (raises ValidationError naming every bad field) and normalise a request."""
        validate_request(request, self.limits)
        if request.checkpoint:
            self.models.registry.require(request.checkpoint)  # a missing model fails before queuing
        return normalize_request(request)

    def submit(self, request: GenerationRequest) -> Job:
        return self._queue().submit(self.prepare(request))

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        """Submit and wait: for callers that need no progress (tests, scripts, extensions)."""
        result = self.submit(request).future.result(timeout)
        assert isinstance(result, GenerationResult)
        return result

    def switch_model(self, checkpoint: str) -> Job:
        self.models.registry.require(checkpoint)
        return self._queue().submit(ModelSwitch(checkpoint))

    # --- the worker runs this -----------------------------------------------------------------

    def execute(self, spec: JobSpec, context: JobContext) -> GenerationResult | CheckpointInfo:
        if isinstance(spec, ModelSwitch):
            return self.models.load(spec.checkpoint)
        return self._txt2img(spec, context)

    def _txt2img(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        started = time.perf_counter()
        if context.interrupted:  # interrupted while waiting in the queue
            return GenerationResult(request=request, images=(), interrupted=True)
        # 1. The model: the one the request names, else the loaded one.
        model, info = self.models.acquire(request.checkpoint)
        if model.arch not in TXT2IMG_ARCHS:
            raise GenerationError(f"{info.name} is an {model.arch.label} model; txt2img needs a base model")
        identity = ModelIdentity(name=info.model_name, hash=info.shorthash)
        found = resolve_sampler(request.sampler)
        assert found is not None  # prepare() normalised it
        # 2. Each batch: sample, then save every image with its own infotext.
        saved: list[GeneratedImage] = []
        pixels: list[Image.Image] = []
        for batch_index in range(request.batch_count):
            if context.interrupted:
                break
            context.begin_batch(batch_index, request.batch_count, request.steps)
            first = batch_index * request.batch_size
            seeds = tuple(request.seed_for(first + i) for i in range(request.batch_size))
            batch = Txt2ImgBatch(prompt=request.prompt, negative_prompt=request.negative_prompt, sampler=found[0],
                                 schedule=request.schedule, steps=request.steps, cfg_scale=request.cfg_scale,
                                 width=request.width, height=request.height, clip_skip=request.clip_skip, seeds=seeds)
            images = run_txt2img(model, batch, _Observer(context, model))
            if images is None:  # interrupted or skipped mid-batch: its images are unfinished
                continue
            for offset, (image, seed) in enumerate(zip(images, seeds, strict=True)):
                text = build_infotext(request, seed, identity, VERSION_TEXT)
                path = self.saver.save(image, text, OutputKind.TXT2IMG, seed).path
                saved.append(GeneratedImage(path=path, seed=seed, infotext=text, index=first + offset))
                pixels.append(image)
        # 3. A grid for jobs of more than one image, with the first image's parameters.
        grid = None
        if self.save_grid and len(saved) > 1:
            grid_saved = self.saver.save(make_grid(pixels), saved[0].infotext, OutputKind.TXT2IMG_GRID)
            grid = GeneratedImage(path=grid_saved.path, seed=saved[0].seed, infotext=saved[0].infotext, index=-1)
        elapsed = time.perf_counter() - started
        log.info("txt2img: %d image(s), %s, %d steps, %dx%d, seed %d, %s, %.1f s%s", len(saved), request.sampler,
                 request.steps, request.width, request.height, request.seed, info.title, elapsed,
                 " (interrupted)" if context.interrupted else "")
        return GenerationResult(request=replace(request, checkpoint=info.title), images=tuple(saved), grid=grid,
                                interrupted=context.interrupted, model_title=info.title, elapsed_seconds=elapsed)

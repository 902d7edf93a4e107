"""The renderer: the worker side of a job. A prepared request goes in; images with their infotext
and structured metadata (which checkpoint and VAE made them) come out.

It reads as numbered steps (:meth:`Renderer.render`): model, VAE, LoRAs and embeddings -> inputs ->
batches (sample, with hires fix and refiner when asked) -> what was made. Finished images leave
batch by batch through an :class:`ImageSink`: the in-process worker's sink is the front's store
(saving hooks, files), a Ray worker's collects PNG bytes for the front to store. The renderer saves
nothing itself and knows no extension manager: the job's hooks it is given (:class:`RenderHooks`)
are all it calls, which is where sampling-time hooks run, here or on a remote worker. Images an
extension gave their own prompts (``request.per_image``) are sampled in runs of the same prompts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from PIL import Image

from modules import VERSION_TEXT
from modules.engine.generate import ImageTask, RefinerPlan, run_task
from modules.engine.hires import run_hires
from modules.engine.loader import LoadedModel
from modules.engine.lora import apply_loras
from modules.engine.memory import is_out_of_memory
from modules.engine.sampling.hooks import DenoiserHooks
from modules.engine.tiling import seamless_tiling
from modules.engine.vram_choice import budget_bytes
from modules.errors import AddonLoadError, FieldError, NotEnoughMemoryError, OutOfMemoryError, ValidationError
from modules.extension_helpers import png_with_infotext
from modules.infotext import ModelIdentity, build_infotext
from modules.params import (
    DEFAULT_CODE_FORMER_WEIGHT,
    DEFAULT_FACE_RESTORER,
    NO_LIVE_PREVIEW,
    VAE_AUTOMATIC,
    VAE_NONE,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    ModelsUsed,
)
from modules.services.addon_library import AddonLibrary, JobEmbeddings, JobPrompts
from modules.services.addons import AddonFile
from modules.services.face_restorers import FaceRestorers
from modules.services.image_upscale import enlarging_resize
from modules.services.job_inputs import JobInputs
from modules.services.memory_estimate import choose_for_request, forced_mode
from modules.services.models import CheckpointInfo, ModelManager
from modules.services.preview_decoders import PreviewDecoders
from modules.services.render_tasks import (
    check_family,
    fit_server_defaults,
    hires_plan,
    image_task,
    prompt_runs,
    prompts_of,
    with_every_prompt,
)
from modules.services.upscaler_library import UpscalerLibrary

log = logging.getLogger(__name__)


class RenderHooks(DenoiserHooks, Protocol):
    """A job's extension hooks, where it renders (see :mod:`modules.services.job_hooks`)."""

    warnings: list[str]  # of handlers skipped for this job

    def job_start(self, model: LoadedModel) -> None: ...

    def job_end(self) -> None: ...

    def begin_batch(self) -> None: ...

    def step_end(self, step: int, total: int, interrupt: Callable[[], None]) -> None: ...

    def infotext(self, index: int, seed: int, prompt: str) -> Mapping[str, object]: ...


class JobProgress(Protocol):
    """What the renderer reports progress to and is stopped by (a job's context)."""

    job_id: str

    @property
    def interrupted(self) -> bool: ...

    def interrupt(self) -> None: ...

    def should_stop(self) -> bool: ...

    def begin_batch(self, index: int, count: int, steps: int) -> None: ...

    def on_step(self, step: int, total: int, latents: Any, render: Callable[[Any], Image.Image]) -> None: ...


class ImageSink(Protocol):
    """Where finished images go, batch by batch: ``texts`` are their infotexts, ``first`` the
    job index of the first one. ``batch`` answers the final images (for the grid)."""

    def batch(self, request: GenerationRequest, images: list[Image.Image], first: int,
              texts: list[str]) -> list[Image.Image]: ...

    def first_pass(self, request: GenerationRequest, images: list[Image.Image], first: int,
                   texts: list[str]) -> None: ...


@dataclass(frozen=True)
class Rendering:
    """What a job's rendering came to; the images themselves went to the sink."""

    request: GenerationRequest  # its checkpoint is the title of the one that ran
    models: ModelsUsed
    interrupted: bool
    elapsed_seconds: float
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class RenderedJob:
    """What a worker made for a job, before anything is saved; plain values, so it crosses processes."""

    result: GenerationResult  # images carry PNG bytes (parameters inside) and no path; no grid yet
    first_pass: tuple[GeneratedImage, ...] = ()  # hires fix's first pass, when the request keeps it
    model_loads: tuple[tuple[str, str], ...] = ()  # (title, architecture) of checkpoints loaded for it


@dataclass
class EncodingSink:
    """A remote worker's sink: each image encoded as a PNG with its infotext, for the front to store."""

    images: list[GeneratedImage] = field(default_factory=list)
    first_passes: list[GeneratedImage] = field(default_factory=list)

    def batch(self, request: GenerationRequest, images: list[Image.Image], first: int,
              texts: list[str]) -> list[Image.Image]:
        self.images += _encoded(request, images, first, texts)
        return []  # the front makes the grid from what it stores

    def first_pass(self, request: GenerationRequest, images: list[Image.Image], first: int, texts: list[str]) -> None:
        self.first_passes += _encoded(request, images, first, texts)

    def rendered(self, rendering: Rendering) -> RenderedJob:
        result = GenerationResult(request=rendering.request, images=tuple(self.images),
                                  interrupted=rendering.interrupted, model_title=rendering.models.checkpoint_title,
                                  elapsed_seconds=rendering.elapsed_seconds, warnings=rendering.warnings,
                                  models=rendering.models)
        return RenderedJob(result=result, first_pass=tuple(self.first_passes))


def _encoded(request: GenerationRequest, images: list[Image.Image], first: int, texts: list[str]) -> list[GeneratedImage]:
    return [GeneratedImage(path=None, seed=request.seed_for(first + offset), infotext=text, index=first + offset,
                           png=png_with_infotext(image, text)) for offset, (image, text) in enumerate(zip(images, texts))]


class _Observer:
    """Adapts a job's progress to the engine's step observer: hands the job's context the latents of
    the steps that get a live preview (with how to draw them), and calls the step hook each step."""

    def __init__(self, context: JobProgress, model: LoadedModel, request: GenerationRequest,
                 hooks: RenderHooks | None, previews: PreviewDecoders) -> None:
        self._context = context
        self._request = request
        self._hooks = hooks
        self._preview = request.live_preview
        self._render = (previews.renderer(model, self._preview.method)
                        if self._preview.every != NO_LIVE_PREVIEW else _no_preview)

    def on_step(self, step: int, total: int, denoised: Any) -> None:
        kept = denoised if self._preview.due(step, total) else None
        self._context.on_step(step, total, kept, self._render)
        if self._hooks is not None:
            self._hooks.step_end(step, total, self._context.interrupt)

    def should_stop(self) -> bool:
        return self._context.should_stop()


def _no_preview(latents: Any) -> Image.Image:
    raise AssertionError("a job without live previews keeps no latents to draw")


@dataclass(frozen=True)
class _JobSetup:
    """What a job runs on, fixed before its first batch."""

    model: LoadedModel
    info: CheckpointInfo
    identity: ModelIdentity
    used: ModelsUsed
    prompts: JobPrompts
    embeddings: JobEmbeddings
    refiner: RefinerPlan | None
    extra: dict[str, object]  # infotext keys beyond the request's own
    notes: list[str] = field(default_factory=list)
    hooks: RenderHooks | None = None  # the job's extension hooks


class Renderer:
    """Renders prepared jobs on this process's device."""

    def __init__(self, models: ModelManager, addons: AddonLibrary, previews: PreviewDecoders | None = None,
                 upscalers: UpscalerLibrary | None = None, face_restorers: FaceRestorers | None = None) -> None:
        self.models = models
        self.addons = addons
        self.upscalers = upscalers  # the upscaler models hires fix may use (None: the built-ins only)
        self.face_restorers = face_restorers  # what "Restore faces" runs (None: refused)
        self.previews = previews or PreviewDecoders(None)  # None: TAESD previews fall back to Approx cheap

    def render(self, request: GenerationRequest, context: JobProgress, sink: ImageSink,
               hooks: RenderHooks | None = None) -> Rendering:
        """Run a prepared job with its extension hooks; out of GPU memory, the memory is given back and
        the error says what to try."""
        try:
            return self._render(request, context, sink, hooks)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        # Out of the except block, so the traceback's frames (and the tensors they hold) are gone
        # before the memory is released.
        self.models.release()
        if self.face_restorers is not None:
            self.face_restorers.release()
        width, height = request.output_size
        raise OutOfMemoryError(
            f"Out of GPU memory making {request.batch_size} image(s) of {width}x{height}. Try a smaller size or "
            "batch size, or start Atelier with --medvram (or --lowvram). Memory was released; the next job can run.")

    def _render(self, request: GenerationRequest, context: JobProgress, sink: ImageSink,
                hooks: RenderHooks | None) -> Rendering:
        started = time.perf_counter()
        if context.interrupted:  # interrupted while waiting in the queue
            return Rendering(request, ModelsUsed(), True, 0.0, ())
        # 1. The model and everything the job adds to it (extensions' JOB_START last).
        request, job = self._setup(request)  # the request as the model's family takes the server's defaults
        job = replace(job, hooks=hooks)
        made = 0
        try:
            if hooks is not None:
                hooks.job_start(job.model)
            # 2. Inputs, decoded once for all batches.
            inputs = JobInputs.of(request, enlarging_resize(request.img2img_upscaler, self.upscalers,
                                                            job.model.execution_device))
            # 3. Each batch: sample, then hand every image with its own infotext to the sink.
            for batch_index in range(request.batch_count):
                if context.interrupted:
                    break
                images = self._run_batch(request, job, inputs, batch_index, context, sink)
                if images is None:  # interrupted or skipped mid-batch: its images are unfinished
                    continue
                first = batch_index * request.batch_size
                images = self._restore_faces(request, images, job)
                sink.batch(request, inputs.finish(images), first, self._texts(request, first, len(images), job))
                made += len(images)
        finally:
            if hooks is not None:
                hooks.job_end()  # the model as it was, before it goes back to the cache
            self.models.job_done(job.model)
        elapsed = time.perf_counter() - started
        log.info("%s: %d image(s), %s, %d steps, %dx%d, seed %d, %s, %.1f s%s",
                 "img2img" if request.is_img2img else "txt2img", made, request.sampler, request.steps,
                 request.width, request.height, request.seed, job.info.title, elapsed,
                 " (interrupted)" if context.interrupted else "")
        notes = inputs.notes + tuple(f"{tag} was ignored: Atelier has no handler for that kind of network."
                                     for tag in job.prompts.ignored_tags) + tuple(dict.fromkeys(job.notes))
        if hooks is not None:
            notes += tuple(dict.fromkeys(hooks.warnings))
        return Rendering(replace(request, checkpoint=job.info.title), job.used, context.interrupted, elapsed, notes)

    def _texts(self, request: GenerationRequest, first: int, count: int, job: _JobSetup) -> list[str]:
        texts = []
        for index in range(first, first + count):
            variation = request.variation_seed_for(index) if request.variation_strength > 0 else None
            seed = request.seed_for(index)
            prompt, negative = request.prompts_for(index)
            own = replace(request, prompt=prompt, negative_prompt=negative) if request.per_image else request
            extra = job.extra
            if job.hooks is not None:
                extra = {**extra, **job.hooks.infotext(index, seed, prompt)}
            texts.append(build_infotext(own, seed, job.identity, VERSION_TEXT, extra=extra, variation_seed=variation))
        return texts

    def _restore_faces(self, request: GenerationRequest, images: list[Image.Image],
                       job: _JobSetup) -> list[Image.Image]:
        """A1111's "Restore faces": each decoded image, before the inpainting overlay, extensions'
        AFTER_IMAGE hooks and saving, on the job's device."""
        if not request.restore_faces:
            return images
        if self.face_restorers is None:  # the front refuses it first; a worker without restorers says so
            raise ValidationError([FieldError("restore_faces", "face restoration is not available on this worker")])
        name = request.face_restoration_model or DEFAULT_FACE_RESTORER
        weight = DEFAULT_CODE_FORMER_WEIGHT if request.code_former_weight is None else request.code_former_weight
        device = job.model.execution_device
        return [self.face_restorers.restore(image, name, weight, device) for image in images]

    def _setup(self, request: GenerationRequest) -> tuple[GenerationRequest, _JobSetup]:
        """The model, its VAE, the LoRAs the prompts name, the embeddings they mention, the refiner."""
        model, info = self.models.acquire(request.checkpoint)
        request = fit_server_defaults(request, model)
        check_family(request, model)  # what the family cannot honour: refused before any work
        model = self._memory_mode_for(model, request)
        vae, notes = self._vae_for(request, model, info), []
        if vae is None and request.vae not in (None, VAE_AUTOMATIC, VAE_NONE):
            notes.append(f"The server's VAE {request.vae} does not fit {model.arch.label}; the model's own was used.")
        prompts = self.addons.prompts(with_every_prompt(request))
        apply_loras(model.pipeline, prompts.loras, fuse=self.models.fast_path)
        embeddings = self.addons.embeddings_for(model, prompts.texts())
        refiner = refiner_info = None
        if request.refiner is not None and request.refiner.switch_at < 1.0:
            refiner_model, refiner_info = self.models.acquire_refiner(request.refiner.checkpoint)
            refiner = RefinerPlan(refiner_model, request.refiner.switch_at)
        extra = self._extra_infotext(request, prompts, embeddings, vae, refiner_info)
        used = ModelsUsed(checkpoint_title=info.title, checkpoint_name=info.model_name, checkpoint_hash=info.shorthash,
                          vae_name=vae.name if vae is not None else None,
                          vae_hash=self.addons.vaes.short_hash(vae) if vae is not None else None)
        identity = ModelIdentity(name=info.model_name, hash=info.shorthash, family=model.arch.value)
        return request, _JobSetup(model, info, identity, used, prompts, embeddings, refiner, extra, notes)

    def _vae_for(self, request: GenerationRequest, model: LoadedModel, info: CheckpointInfo) -> AddonFile | None:
        """The job's VAE, put in place. The server's VAE setting (not the request's own choice) that
        does not fit the model's family (an SD VAE on FLUX) gives way to the model's own VAE."""
        vae = self.addons.vae_file(request.vae or VAE_AUTOMATIC, info.model_name)
        try:
            self.models.use_vae(model, vae)
        except AddonLoadError:
            if "vae" not in request.server_defaults or not model.arch.is_flow:
                raise
            vae = None
            self.models.use_vae(model, None)
        return vae

    def _memory_mode_for(self, model: LoadedModel, request: GenerationRequest) -> LoadedModel:
        """The model in the memory mode the job's predicted peak allows (CUDA only; logged). A job that
        cannot fit is refused before any work, after cached models have left the GPU."""
        if budget_bytes(model) is None:  # off CUDA the models share system memory: nothing to choose
            return model
        forced = forced_mode(model.device, model.arch)
        try:
            choice = choose_for_request(model, request, forced)
        except NotEnoughMemoryError:
            self.models.make_room()
            choice = choose_for_request(model, request, forced)
        log.info("Memory: %s", choice.reason)
        return self.models.use_mode(model, choice.mode)

    def _run_batch(self, request: GenerationRequest, job: _JobSetup, inputs: JobInputs, batch_index: int,
                   context: JobProgress, sink: ImageSink) -> list[Image.Image] | None:
        """One batch's finished images (hires fix's second pass included), or None when stopped; images
        with prompts of their own (an extension's per-image plan) are sampled in runs of equal prompts."""
        first = batch_index * request.batch_size
        made: list[Image.Image] = []
        for start, count in prompt_runs(request, first, request.batch_size):
            prompts = prompts_of(request, start, job.prompts)
            task = replace(image_task(request, inputs, start, prompts, job.embeddings, count), hooks=job.hooks)
            images = self._run_images(request, job, task, batch_index, start, context, sink)
            if images is None:
                return None
            made += images
        return made

    def _run_images(self, request: GenerationRequest, job: _JobSetup, task: ImageTask, batch_index: int, first: int,
                    context: JobProgress, sink: ImageSink) -> list[Image.Image] | None:
        observer = _Observer(context, job.model, request, job.hooks, self.previews)
        tiling = seamless_tiling(request.tiling, job.model, job.refiner)  # around sampling and decoding
        if job.hooks is not None:
            job.hooks.begin_batch()
        if request.hires is None:
            context.begin_batch(batch_index, request.batch_count, request.steps)
            with tiling:
                return run_task(job.model, task, observer, job.refiner)
        plan = hires_plan(request, task, job.prompts, self.upscalers)
        context.begin_batch(batch_index, request.batch_count, request.steps + plan.task.steps)
        keep_first = None
        if request.hires.save_first_pass and request.save_images:
            def keep_first(images: list[Image.Image]) -> None:
                sink.first_pass(request, images, first, self._texts(request, first, len(images), job))
        with tiling:
            return run_hires(job.model, task, plan, observer, job.refiner, keep_first)

    def _extra_infotext(self, request: GenerationRequest, prompts: JobPrompts, embeddings: JobEmbeddings,
                        vae: AddonFile | None, refiner: CheckpointInfo | None) -> dict[str, object]:
        """Infotext keys beyond the request's own: VAE, refiner, hires fix, LoRA and TI hashes."""
        extra: dict[str, object] = {}
        if vae is not None:
            extra["VAE hash"] = self.addons.vaes.short_hash(vae)
            extra["VAE"] = vae.name
        if refiner is not None and request.refiner is not None:
            extra["Refiner"] = f"{refiner.model_name} [{refiner.shorthash}]" if refiner.shorthash else refiner.model_name
            extra["Refiner switch at"] = request.refiner.switch_at
        extra["Lora hashes"] = prompts.lora_hashes
        extra["TI hashes"] = embeddings.ti_hashes
        return extra

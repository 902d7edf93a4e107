"""The one generation path. The UI and the API both call :meth:`GenerationService.submit`.

``submit`` validates at the edge (every bad field reported before any model work), fixes the seeds
and the sampler name, and queues the job. The worker then runs :meth:`execute`, which reads as
numbered steps: model -> inputs -> batches (sample, save each image with its infotext) -> grid.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, ImageOps

from modules import VERSION_TEXT
from modules.engine.generate import ImageTask, run_task
from modules.engine.latents import blurred_mask, overlay_original
from modules.engine.loader import LoadedModel
from modules.engine.preview import latents_to_preview
from modules.engine.sampling.loop import NoisePlan
from modules.engine.token_count import TokenCount, count_tokens
from modules.errors import FieldError, NoModelLoadedError, ValidationError
from modules.infotext import ModelIdentity, build_infotext
from modules.params import (
    GeneratedImage,
    GenerationLimits,
    GenerationRequest,
    GenerationResult,
    MaskedContent,
    normalize_request,
    validate_request,
)
from modules.samplers import resolve_sampler
from modules.services.image_input import decode_image
from modules.services.image_prep import Crop, fill_masked, fit_image
from modules.services.images import ImageSaver, OutputKind, make_grid, png_bytes
from modules.services.jobs import (
    Job,
    JobContext,
    JobQueue,
    JobSpec,
    ModelSwitch,
    ModelUnload,
)
from modules.services.models import CheckpointInfo, ModelManager
from modules.services.styles import StyleStore

log = logging.getLogger(__name__)


class _Observer:
    """Adapts a job's context to the engine's step observer."""

    def __init__(self, context: JobContext, model: LoadedModel) -> None:
        self._context = context
        self._arch = model.arch

    def on_step(self, step: int, total: int, denoised: Any) -> None:
        self._context.on_step(step, total, denoised, self._render)

    def should_stop(self) -> bool:
        return self._context.should_stop()

    def _render(self, latents: Any) -> Image.Image:
        return latents_to_preview(latents, self._arch)


@dataclass(frozen=True)
class _Inputs:
    """A request's images, decoded and prepared: what the engine sees, and what the result is
    put back into (the whole picture, for "only masked")."""

    init_image: Image.Image | None = None  # for the engine: fitted, maybe cropped and filled
    mask: Image.Image | None = None  # for the engine: blurred, white = repaint
    original: Image.Image | None = None  # the fitted init image
    full_mask: Image.Image | None = None  # the blurred mask at the original's size
    crop: Crop | None = None
    notes: tuple[str, ...] = ()

    @staticmethod
    def of(request: GenerationRequest) -> _Inputs:
        if request.init_image is None:
            return _Inputs()
        image = decode_image(request.init_image, "init_image").convert("RGB")
        if request.mask is None or not request.inpaint_only_masked:
            # "Only masked" keeps the picture's own size: only the crop is fitted to the output size.
            image = fit_image(image, request.width, request.height, request.resize_mode)
        if request.mask is None:
            return _Inputs(init_image=image, original=image)
        raw = decode_image(request.mask, "mask").convert("L")
        notes = ()
        if raw.size != image.size:
            notes = (f"The mask was {raw.width}x{raw.height}; it was resized to {image.width}x{image.height} "
                     "to match the image.",)
            raw = raw.resize(image.size, Image.Resampling.LANCZOS)
        mask = ImageOps.invert(raw) if request.invert_mask else raw
        if mask.point(lambda v: 255 if v > 127 else 0).getbbox() is None:
            raise ValidationError([FieldError("mask", "is empty: nothing would change. Paint the area to repaint.")])
        blurred = blurred_mask(mask, request.mask_blur)
        crop = Crop.around(mask, request.only_masked_padding, request.width, request.height) \
            if request.inpaint_only_masked else None
        engine_image = crop.cut(image, request.width, request.height) if crop else image
        engine_mask = crop.cut(blurred, request.width, request.height) if crop else blurred
        if request.masked_content is MaskedContent.FILL:
            engine_image = fill_masked(engine_image, engine_mask)
        return _Inputs(engine_image, engine_mask, image, blurred, crop, notes)

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        """Results put back: pasted into the whole picture for "only masked", original kept outside the mask."""
        if self.crop is None or self.original is None or self.full_mask is None:
            return images
        return [overlay_original(self.crop.paste(image, self.original), self.original, self.full_mask)
                for image in images]


class GenerationService:
    """Validates requests, queues them, and turns them into saved images."""

    def __init__(self, models: ModelManager, saver: ImageSaver, styles: StyleStore, limits: GenerationLimits,
                 save_grid: bool) -> None:
        self.models = models
        self.saver = saver
        self.styles = styles
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
        _Inputs.of(request)  # unreadable or oversized images fail here, before queuing
        if request.checkpoint:
            self.models.registry.require(request.checkpoint)  # a missing model fails before queuing
        return normalize_request(self._apply_styles(request))

    def _apply_styles(self, request: GenerationRequest) -> GenerationRequest:
        """Styles go into the prompts once, here; the infotext records their names (A1111's Styles array)."""
        if not request.styles:
            return request
        applied = tuple(name for name in request.styles if self.styles.get(name) is not None)
        prompt, negative = self.styles.apply(applied, request.prompt, request.negative_prompt)
        return replace(request, prompt=prompt, negative_prompt=negative, styles=(),
                       applied_styles=request.applied_styles + applied)

    def submit(self, request: GenerationRequest) -> Job:
        return self._queue().submit(self.prepare(request))

    def generate(self, request: GenerationRequest, timeout: float | None = None) -> GenerationResult:
        """Submit and wait: for callers that need no progress (tests, scripts, extensions)."""
        result = self.submit(request).future.result(timeout)
        assert isinstance(result, GenerationResult)
        return result

    def count_tokens(self, prompt: str, steps: int) -> TokenCount:
        """The prompt's token count and chunk capacity, for the counter beside the prompt box."""
        return count_tokens(prompt or "", max(1, int(steps)))

    def switch_model(self, checkpoint: str) -> Job:
        self.models.registry.require(checkpoint)
        return self._queue().submit(ModelSwitch(checkpoint))

    def unload_model(self) -> Job:
        return self._queue().submit(ModelUnload())

    def reload_model(self) -> Job:
        """Load again the checkpoint that was loaded last (after an unload), or the current one."""
        last = self.models.last_loaded()
        if last is None:
            raise NoModelLoadedError("No checkpoint has been loaded yet; choose one first.")
        return self._queue().submit(ModelSwitch(last.name))

    # --- the worker runs this -----------------------------------------------------------------

    def execute(self, spec: JobSpec, context: JobContext) -> GenerationResult | CheckpointInfo | None:
        if isinstance(spec, ModelSwitch):
            return self.models.load(spec.checkpoint)
        if isinstance(spec, ModelUnload):
            return self.models.unload()
        return self._generate(spec, context)

    def _task(self, request: GenerationRequest, inputs: _Inputs, first: int) -> ImageTask:
        found = resolve_sampler(request.sampler)
        assert found is not None  # prepare() normalised it
        indices = range(first, first + request.batch_size)
        variations = request.variation_strength > 0
        noise = NoisePlan(seeds=tuple(request.seed_for(i) for i in indices), source=request.rng,
                          variation_seeds=tuple(request.variation_seed_for(i) for i in indices) if variations else None,
                          variation_strength=request.variation_strength,
                          eta_noise_seed_delta=request.eta_noise_seed_delta)
        return ImageTask(prompt=request.prompt, negative_prompt=request.negative_prompt, sampler=found[0],
                         schedule=request.schedule, steps=request.steps, cfg_scale=request.cfg_scale,
                         width=request.width, height=request.height, clip_skip=request.clip_skip, noise=noise,
                         init_image=inputs.init_image, mask=inputs.mask,
                         denoising_strength=request.denoising_strength, masked_content=request.masked_content)

    def _save(self, request: GenerationRequest, images: list[Image.Image], first: int,
              identity: ModelIdentity) -> list[GeneratedImage]:
        kind = OutputKind.IMG2IMG if request.is_img2img else OutputKind.TXT2IMG
        saved = []
        for offset, image in enumerate(images):
            index = first + offset
            variation = request.variation_seed_for(index) if request.variation_strength > 0 else None
            text = build_infotext(request, request.seed_for(index), identity, VERSION_TEXT, variation_seed=variation)
            saved.append(self._output(request, image, text, kind, request.seed_for(index), index))
        return saved

    def _output(self, request: GenerationRequest, image: Image.Image, text: str, kind: OutputKind,
                seed: int, index: int) -> GeneratedImage:
        data = png_bytes(image, text)  # encoded once: saved, and what the API sends back
        path = self.saver.save_png(data, kind, None if kind.is_grid else seed) if request.save_images else None
        return GeneratedImage(path=path, seed=seed, infotext=text, index=index, png=data)

    def _generate(self, request: GenerationRequest, context: JobContext) -> GenerationResult:
        started = time.perf_counter()
        if context.interrupted:  # interrupted while waiting in the queue
            return GenerationResult(request=request, images=(), interrupted=True)
        # 1. The model: the one the request names, else the loaded one.
        model, info = self.models.acquire(request.checkpoint)
        identity = ModelIdentity(name=info.model_name, hash=info.shorthash)
        # 2. Inputs, decoded once for all batches.
        inputs = _Inputs.of(request)
        # 3. Each batch: sample, then save every image with its own infotext.
        saved: list[GeneratedImage] = []
        pixels: list[Image.Image] = []
        for batch_index in range(request.batch_count):
            if context.interrupted:
                break
            context.begin_batch(batch_index, request.batch_count, request.steps)
            first = batch_index * request.batch_size
            images = run_task(model, self._task(request, inputs, first), _Observer(context, model))
            if images is None:  # interrupted or skipped mid-batch: its images are unfinished
                continue
            images = inputs.finish(images)
            saved += self._save(request, images, first, identity)
            pixels += images
        # 4. A grid for jobs of more than one image, with the first image's parameters.
        grid = None
        if self.save_grid and len(saved) > 1:
            kind = OutputKind.IMG2IMG_GRID if request.is_img2img else OutputKind.TXT2IMG_GRID
            grid = self._output(request, make_grid(pixels), saved[0].infotext, kind, saved[0].seed, -1)
        elapsed = time.perf_counter() - started
        log.info("%s: %d image(s), %s, %d steps, %dx%d, seed %d, %s, %.1f s%s",
                 "img2img" if request.is_img2img else "txt2img", len(saved), request.sampler, request.steps,
                 request.width, request.height, request.seed, info.title, elapsed,
                 " (interrupted)" if context.interrupted else "")
        return GenerationResult(request=replace(request, checkpoint=info.title), images=tuple(saved), grid=grid,
                                interrupted=context.interrupted, model_title=info.title, elapsed_seconds=elapsed,
                                warnings=inputs.notes)

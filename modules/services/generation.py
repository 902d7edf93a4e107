"""The one generation path. The UI and the API both call :meth:`GenerationService.submit`.

``submit`` validates at the edge (every bad field reported before any model work, LoRA names and
the VAE included), fixes the seeds and the sampler name, and queues the job. The worker then runs
:meth:`execute`, which reads as numbered steps: model, VAE, LoRAs and embeddings -> inputs ->
batches (sample, with hires fix and refiner when asked; save each image with its infotext) -> grid.

A service built with ``render_only=True`` (a remote worker's) runs the same steps but saves nothing
and runs no saving hooks: :meth:`render` returns PNG bytes with their infotext, and the front
process stores them with :meth:`store` (:class:`modules.services.outputs.OutputStore`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

from modules import VERSION_TEXT
from modules.engine.generate import ImageTask, RefinerPlan, run_task
from modules.engine.hires import HiresPlan, run_hires
from modules.engine.loader import LoadedModel
from modules.engine.lora import apply_loras
from modules.engine.memory import is_out_of_memory
from modules.engine.preview import latents_to_preview
from modules.engine.sampling.loop import NoisePlan
from modules.engine.token_count import TokenCount, count_tokens
from modules.errors import (
    AtelierError,
    ExtensionError,
    FieldError,
    NoModelLoadedError,
    OutOfMemoryError,
    ValidationError,
)
from modules.extension_api import Hook, ScriptRun
from modules.infotext import ModelIdentity, build_infotext
from modules.params import (
    LATENT_SCALE,
    VAE_AUTOMATIC,
    GeneratedImage,
    GenerationLimits,
    GenerationRequest,
    GenerationResult,
    normalize_request,
    validate_request,
)
from modules.samplers import resolve_sampler
from modules.services.addon_library import AddonLibrary, JobEmbeddings, JobPrompts
from modules.services.addons import AddonFile
from modules.services.extensions import ExtensionManager
from modules.services.images import ImageSaver, png_bytes
from modules.services.job_inputs import JobInputs
from modules.services.jobs import (
    Job,
    JobContext,
    JobSpec,
    ModelSwitch,
    ModelUnload,
)
from modules.services.models import CheckpointInfo, ModelManager
from modules.services.outputs import OutputStore, RenderedJob
from modules.services.queue_contract import JobQueueContract
from modules.services.settings_store import clip_skip_max_of, clip_skip_problem
from modules.services.styles import StyleStore
from modules.upscalers import find_upscaler

log = logging.getLogger(__name__)


class _Observer:
    """Adapts a job's context to the engine's step observer; extensions' STEP_END hooks see each step."""

    def __init__(self, context: JobContext, model: LoadedModel, request: GenerationRequest,
                 extensions: ExtensionManager) -> None:
        self._context = context
        self._arch = model.arch
        self._request = request
        self._extensions = extensions if extensions.has(Hook.STEP_END) else None

    def on_step(self, step: int, total: int, denoised: Any) -> None:
        self._context.on_step(step, total, denoised, self._render)
        if self._extensions is not None:
            self._extensions.step_end(self._context.job_id, step, total, self._request, self._context.interrupt)

    def should_stop(self) -> bool:
        return self._context.should_stop()

    def _render(self, latents: Any) -> Image.Image:
        return latents_to_preview(latents, self._arch)


@dataclass(frozen=True)
class _JobSetup:
    """What a job runs on, fixed before its first batch."""

    model: LoadedModel
    info: CheckpointInfo
    identity: ModelIdentity
    prompts: JobPrompts
    embeddings: JobEmbeddings
    refiner: RefinerPlan | None
    extra: dict[str, object]  # infotext keys beyond the request's own
    notes: list[str] = field(default_factory=list)  # problems the caller should hear of (a failed save)
    first_pass: list[GeneratedImage] = field(default_factory=list)  # render-only: hires first passes to keep


class GenerationService:
    """Validates requests, queues them, and turns them into saved images."""

    def __init__(self, models: ModelManager, saver: ImageSaver, styles: StyleStore, limits: GenerationLimits,
                 save_grid: bool, addons: AddonLibrary, extensions: ExtensionManager,
                 render_only: bool = False) -> None:
        self.models = models
        self.addons = addons
        self.extensions = extensions
        self.saver = saver
        self.styles = styles
        self.limits = limits
        self.save_grid = save_grid
        self.outputs = OutputStore(saver, extensions, save_grid)
        self.render_only = render_only  # a remote worker's: images come back as bytes, the front saves them
        self.queue: JobQueueContract | None = None  # attached by the composition root

    def attach(self, job_queue: JobQueueContract) -> None:
        self.queue = job_queue

    def _queue(self) -> JobQueueContract:
        if self.queue is None:
            raise RuntimeError("GenerationService used before a job queue was attached")
        return self.queue

    # --- faces call these ---------------------------------------------------------------------

    def prepare(self, request: GenerationRequest, owner: str | None = None) -> GenerationRequest:
        """Validate (raises ValidationError naming every bad field) and normalise a request that
        ``owner`` submits (the user its BEFORE_GENERATE hooks' host acts for)."""
        validate_request(request, self.limits)
        JobInputs.of(request)  # unreadable or oversized images fail here, before queuing
        if request.checkpoint:
            self.models.registry.require(request.checkpoint)  # a missing model fails before queuing
        if request.refiner is not None and self.models.registry.find(request.refiner.checkpoint) is None:
            names = ", ".join(i.title for i in self.models.registry.all())
            raise ValidationError([FieldError("refiner_checkpoint",
                                              f"checkpoint not found: {request.refiner.checkpoint!r}; available: {names}")])
        self.addons.check(request)
        self._check_clip_skip(request)
        request = self.extensions.check_params(self._apply_styles(request))
        changed = self.extensions.before_generate(request, owner)
        if changed is not request:  # an extension's change is held to the same rules
            validate_request(changed, self.limits)
            self.addons.check(changed)
        return normalize_request(changed)

    def _check_clip_skip(self, request: GenerationRequest) -> None:
        """A clip skip past the loaded model's text-encoder layers is refused before queuing (the
        engine checks again for a model loaded later, on a worker)."""
        current = self.models.current()
        if request.checkpoint and (current is None or self.models.registry.find(request.checkpoint) != current):
            return  # another model will be loaded for this job; the engine checks it there
        problem = clip_skip_problem(request.clip_skip, clip_skip_max_of(self.models.loaded_model()))
        if problem is not None:
            raise ValidationError([FieldError("clip_skip", problem)])

    def _apply_styles(self, request: GenerationRequest) -> GenerationRequest:
        """Styles go into the prompts once, here; the infotext records their names (A1111's Styles array)."""
        if not request.styles:
            return request
        applied = tuple(name for name in request.styles if self.styles.get(name) is not None)
        prompt, negative = self.styles.apply(applied, request.prompt, request.negative_prompt)
        return replace(request, prompt=prompt, negative_prompt=negative, styles=(),
                       applied_styles=request.applied_styles + applied)

    def submit(self, request: GenerationRequest, owner: str | None = None) -> Job:
        """Queue a job for ``owner`` (the signed-in user, who alone may watch or stop it when jobs
        are not shared)."""
        return self._queue().submit(self.prepare(request, owner), owner)

    def generate(self, request: GenerationRequest, timeout: float | None = None,
                 owner: str | None = None) -> GenerationResult:
        """Submit and wait: for callers that need no progress (tests, scripts, extensions)."""
        result = self.submit(request, owner).future.result(timeout)
        assert isinstance(result, GenerationResult)
        return result

    def run_script(self, title: str, tab: str, request: GenerationRequest,
                   values: Mapping[str, Any] | list[Any], owner: str | None = None) -> GenerationResult:
        """Run an extension's script (A1111's Script dropdown / ``script_name``) in the caller's thread
        for ``owner`` (the signed-in user): its generations go through the queue like any other job,
        each one ``owner``'s."""
        name, script = self.extensions.find_script(title, tab)
        checked = self.extensions.script_values(script, values)
        validate_request(request, self.limits)
        try:
            with self.extensions.acting_for(owner):
                return script.run(ScriptRun(request, checked, self.extensions.host(name, owner)))
        except AtelierError:
            raise
        except Exception as exc:  # the script's bug: reported, and the extension is switched off
            self.extensions.fail(name, f"script {script.title}", exc)
            raise ExtensionError(f"The script {script.title!r} failed: {type(exc).__name__}: {exc}") from exc

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

    def render(self, request: GenerationRequest, context: JobContext) -> RenderedJob:
        """A remote worker's half of a job (needs ``render_only``): the images as PNG bytes, unsaved."""
        if not self.render_only:
            raise RuntimeError("render() belongs to a render-only service; the in-process worker uses execute()")
        first_pass: list[GeneratedImage] = []
        result = self._generate(request, context, first_pass)
        return RenderedJob(result=result, first_pass=tuple(first_pass))

    def store(self, rendered: RenderedJob) -> GenerationResult:
        """The front's half of a remotely rendered job: saving hooks, files and the grid."""
        return self.outputs.store(rendered)

    def _task(self, request: GenerationRequest, inputs: JobInputs, first: int, prompts: JobPrompts,
              embeddings: JobEmbeddings) -> ImageTask:
        found = resolve_sampler(request.sampler)
        assert found is not None  # prepare() normalised it
        indices = range(first, first + request.batch_size)
        variations = request.variation_strength > 0
        resize = request.seed_resize
        noise = NoisePlan(seeds=tuple(request.seed_for(i) for i in indices), source=request.rng,
                          variation_seeds=tuple(request.variation_seed_for(i) for i in indices) if variations else None,
                          variation_strength=request.variation_strength,
                          eta_noise_seed_delta=request.eta_noise_seed_delta,
                          resize_from=(resize[1] // LATENT_SCALE, resize[0] // LATENT_SCALE) if resize else None)
        return ImageTask(prompt=prompts.prompt, negative_prompt=prompts.negative_prompt, sampler=found[0],
                         schedule=request.schedule, steps=request.steps, cfg_scale=request.cfg_scale,
                         width=request.width, height=request.height, clip_skip=request.clip_skip, noise=noise,
                         init_image=inputs.init_image, mask=inputs.mask,
                         denoising_strength=request.denoising_strength, masked_content=request.masked_content,
                         embeddings=embeddings.by_name or None)

    @staticmethod
    def _hires_plan(request: GenerationRequest, first: ImageTask, prompts: JobPrompts) -> HiresPlan:
        hires = request.hires
        assert hires is not None
        width, height = hires.final_size(request.width, request.height)
        sampler = resolve_sampler(hires.sampler)[0] if hires.sampler else first.sampler  # type: ignore[index]
        second = replace(first, prompt=prompts.hires_prompt or first.prompt,
                         negative_prompt=prompts.hires_negative_prompt or first.negative_prompt,
                         sampler=sampler, schedule=hires.schedule or first.schedule,
                         steps=hires.steps or request.steps, width=width, height=height,
                         denoising_strength=hires.denoising_strength)
        upscaler = find_upscaler(hires.upscaler)
        assert upscaler is not None  # validated
        return HiresPlan(task=second, upscaler=upscaler, upscale_size=hires.upscale_size(request.width, request.height))

    def _save(self, request: GenerationRequest, images: list[Image.Image], first: int, job: _JobSetup,
              keep: list[GeneratedImage] | None = None) -> tuple[list[GeneratedImage], list[Image.Image]]:
        """Each image with its infotext: stored (hooks, file) in process, or encoded for the front
        when render-only (``keep`` collects them there); and the final images, for the grid."""
        texts = []
        for offset in range(len(images)):
            index = first + offset
            variation = request.variation_seed_for(index) if request.variation_strength > 0 else None
            texts.append(build_infotext(request, request.seed_for(index), job.identity, VERSION_TEXT, extra=job.extra,
                                        variation_seed=variation))
        if not self.render_only:
            return self.outputs.keep(request, images, first, texts, job.notes)
        encoded = [GeneratedImage(path=None, seed=request.seed_for(first + offset), infotext=text, index=first + offset,
                                  png=png_bytes(image, text)) for offset, (image, text) in enumerate(zip(images, texts))]
        if keep is not None:
            keep += encoded
        return encoded, []

    def _setup(self, request: GenerationRequest) -> _JobSetup:
        """The model, its VAE, the LoRAs the prompts name, the embeddings they mention, the refiner."""
        model, info = self.models.acquire(request.checkpoint)
        vae = self.addons.vae_file(request.vae or VAE_AUTOMATIC, info.model_name)
        self.models.use_vae(model, vae)
        prompts = self.addons.prompts(request)
        apply_loras(model.pipeline, prompts.loras)
        embeddings = self.addons.embeddings_for(model, prompts.texts())
        refiner = refiner_info = None
        if request.refiner is not None and request.refiner.switch_at < 1.0:
            refiner_model, refiner_info = self.models.acquire_refiner(request.refiner.checkpoint)
            refiner = RefinerPlan(refiner_model, request.refiner.switch_at)
        extra = self._extra_infotext(request, prompts, embeddings, vae, refiner_info)
        return _JobSetup(model, info, ModelIdentity(name=info.model_name, hash=info.shorthash), prompts, embeddings,
                         refiner, extra)

    def _run_batch(self, request: GenerationRequest, job: _JobSetup, inputs: JobInputs, batch_index: int,
                   context: JobContext) -> list[Image.Image] | None:
        """One batch's finished images (hires fix's second pass included), or None when stopped."""
        first = batch_index * request.batch_size
        task = self._task(request, inputs, first, job.prompts, job.embeddings)
        observer = _Observer(context, job.model, request, self.extensions)
        if request.hires is None:
            context.begin_batch(batch_index, request.batch_count, request.steps)
            return run_task(job.model, task, observer, job.refiner)
        plan = self._hires_plan(request, task, job.prompts)
        context.begin_batch(batch_index, request.batch_count, request.steps + plan.task.steps)
        keep_first = None
        if request.hires.save_first_pass and request.save_images:
            def keep_first(images: list[Image.Image]) -> None:
                self._save(request, images, first, job, job.first_pass)
        return run_hires(job.model, task, plan, observer, job.refiner, keep_first)

    def _generate(self, request: GenerationRequest, context: JobContext,
                  first_pass: list[GeneratedImage] | None = None) -> GenerationResult:
        try:
            return self._generate_images(request, context, first_pass)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            self.models.release()  # the failed job's tensors are garbage now: give their memory back
            width, height = request.output_size
            raise OutOfMemoryError(
                f"Out of GPU memory making {request.batch_size} image(s) of {width}x{height}. Try a smaller size or "
                "batch size, or start Atelier with --medvram (or --lowvram). Memory was released; the next job "
                "can run.") from exc

    def _generate_images(self, request: GenerationRequest, context: JobContext,
                         first_pass: list[GeneratedImage] | None = None) -> GenerationResult:
        started = time.perf_counter()
        if context.interrupted:  # interrupted while waiting in the queue
            return GenerationResult(request=request, images=(), interrupted=True)
        # 1. The model and everything the job adds to it.
        job = self._setup(request)
        if first_pass is not None:  # render-only: hires first passes go to the caller's list
            job = replace(job, first_pass=first_pass)
        # 2. Inputs, decoded once for all batches.
        inputs = JobInputs.of(request)
        # 3. Each batch: sample, then save every image with its own infotext.
        saved: list[GeneratedImage] = []
        pixels: list[Image.Image] = []
        for batch_index in range(request.batch_count):
            if context.interrupted:
                break
            images = self._run_batch(request, job, inputs, batch_index, context)
            if images is None:  # interrupted or skipped mid-batch: its images are unfinished
                continue
            images = inputs.finish(images)
            first = batch_index * request.batch_size
            outputs, finals = self._save(request, images, first, job)
            saved += outputs
            pixels += finals  # the grid shows what was saved, extensions' changes included
        # 4. A grid for jobs of more than one image, with the first image's parameters (the front
        # makes it for a render-only worker's job).
        grid = None if self.render_only else self.outputs.grid(request, saved, pixels, job.notes)
        elapsed = time.perf_counter() - started
        title = job.info.title
        log.info("%s: %d image(s), %s, %d steps, %dx%d, seed %d, %s, %.1f s%s",
                 "img2img" if request.is_img2img else "txt2img", len(saved), request.sampler, request.steps,
                 request.width, request.height, request.seed, title, elapsed,
                 " (interrupted)" if context.interrupted else "")
        notes = inputs.notes + tuple(f"{tag} was ignored: Atelier has no handler for that kind of network."
                                     for tag in job.prompts.ignored_tags) + tuple(dict.fromkeys(job.notes))
        return GenerationResult(request=replace(request, checkpoint=title), images=tuple(saved), grid=grid,
                                interrupted=context.interrupted, model_title=title, elapsed_seconds=elapsed,
                                warnings=notes)

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

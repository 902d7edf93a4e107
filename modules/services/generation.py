"""The front: the one generation path the UI and the API both call (:meth:`GenerationService.submit`).

The front owns a job until it is queued and after it is done: it validates at the edge (every bad
field reported before any model work, LoRA names and the VAE included), merges the server's
settings into what the request leaves unset (once, for every face), applies styles and extension
params, runs BEFORE_GENERATE, fixes the seeds and the sampler name, and queues the job with its
owner (extensions' PLAN_IMAGES may give each image its own prompt and seed). The renderer
(:mod:`modules.services.renderer`) runs it on a worker, here or on a Ray
worker; the front's store (:mod:`modules.services.outputs`) saves what comes back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from modules.engine.token_count import TokenCount
from modules.errors import (
    AccountNotFoundError,
    AddonNotFoundError,
    AtelierError,
    ExtensionError,
    FieldError,
    NoModelLoadedError,
    ValidationError,
)
from modules.extension_api import ScriptRun
from modules.identity import UserLimits
from modules.params import GenerationLimits, GenerationRequest, GenerationResult, code_former_weight_problem
from modules.request_checks import normalize_request, validate_request
from modules.services import memory_estimate
from modules.services.addon_library import AddonLibrary
from modules.services.extensions import ExtensionManager
from modules.services.face_restorers import FaceRestorers
from modules.services.image_upscale import image_upscaler
from modules.services.job_inputs import JobInputs
from modules.services.job_types import Job, ModelSwitch, ModelUnload
from modules.services.memory_estimate import MemoryEstimate
from modules.services.models import ModelManager
from modules.services.queue_contract import JobQueueContract
from modules.services.remote.catalog import RemoteModel, split_title
from modules.services.remote.engines import RemoteEngines, selected_job
from modules.services.remote.remote_front import extension_refusals, local_refusals, remote_request
from modules.services.server_options import with_server_defaults
from modules.services.settings_store import SettingsStore, clip_skip_max_of, clip_skip_problem
from modules.services.styles import StyleStore
from modules.services.token_counter import count_prompt_tokens
from modules.services.upscaler_library import UpscalerLibrary
from modules.services.user_limits import DAY, check_limits, check_remote_images, checkpoint_names

log = logging.getLogger(__name__)


class GenerationService:
    """Validates and completes requests, and queues them with their owner."""

    def __init__(self, models: ModelManager, styles: StyleStore, limits: GenerationLimits, addons: AddonLibrary,
                 extensions: ExtensionManager, options: SettingsStore, queue: JobQueueContract,
                 upscalers: UpscalerLibrary | None = None, face_restorers: FaceRestorers | None = None,
                 account_limits: Callable[[str], UserLimits] | None = None,
                 recent_jobs: Callable[[str, float], Sequence[float]] | None = None,
                 remote: RemoteEngines | None = None,
                 remote_images: Callable[[str, float], Sequence[tuple[float, int]]] | None = None) -> None:
        self.models = models
        self.upscalers = upscalers  # the upscaler models hires fix may name
        self.face_restorers = face_restorers  # what "Restore faces" runs (None: it is refused)
        self.addons = addons
        self.extensions = extensions
        self.styles = styles
        self.limits = limits
        self.options = options  # the server's settings in force: what a job leaves unset
        self.queue = queue
        self.account_limits = account_limits  # an account's limits by name (None: nobody has any)
        self.recent_jobs = recent_jobs  # when an owner's jobs since a time were accepted (jobs per hour)
        self.remote = remote  # hosted models (openai/..., google/...); None: none on this server
        self.remote_images = remote_images  # (accepted at, images) of an owner's remote jobs since a time

    # --- faces call these ---------------------------------------------------------------------

    def prepare(self, request: GenerationRequest, owner: str | None = None) -> GenerationRequest:
        """Validate (raises ValidationError naming every bad field) and normalise a request that
        ``owner`` submits (the user its BEFORE_GENERATE hooks' host acts for). ``owner``'s limits
        come first: a request past one is refused (ForbiddenError, RateLimitError) before any work."""
        remote = self.remote_model(request.checkpoint)
        if remote is not None:
            return self._prepare_remote(request, owner, remote)
        if local_refusals(request):
            raise ValidationError(local_refusals(request))
        limits = self._check_limits(request, owner)
        request = self._with_server_defaults(request)
        upscalers = self.upscalers.names() if self.upscalers is not None and request.hires is not None else []
        validate_request(request, self.limits, upscalers)
        JobInputs.of(request)  # unreadable or oversized images fail here, before queuing
        if request.checkpoint:
            self.models.registry.require(request.checkpoint)  # a missing model fails before queuing
        if request.refiner is not None and self.models.registry.find(request.refiner.checkpoint) is None:
            names = ", ".join(i.title for i in self.models.registry.all())
            raise ValidationError([FieldError("refiner_checkpoint",
                                              f"checkpoint not found: {request.refiner.checkpoint!r}; available: {names}")])
        self.addons.check(request)
        self._check_clip_skip(request)
        self._check_face_restoration(request)
        self._check_img2img_upscaler(request)
        request = self.extensions.check_params(self._apply_styles(request))
        changed = self.extensions.before_generate(request, owner)
        if changed is not request:  # an extension's change is held to the same rules
            changed = self._with_server_defaults(changed)
            validate_request(changed, self.limits, upscalers)
            self.addons.check(changed)
            self._check_face_restoration(changed)
            if limits is not None:  # nor may it take the job past the owner's limits
                self._check_limits(changed, owner, limits, count_jobs=False)
        # Per-image prompts and seeds are planned once the seeds are fixed, and belong to the job.
        planned = self.extensions.plan_images(normalize_request(changed, upscalers=upscalers), owner)
        return replace(planned, owner=owner)

    def remote_model(self, checkpoint: str | None) -> RemoteModel | None:
        """The remote model a job on ``checkpoint`` runs on (None: the server's selection), or None for
        a local checkpoint; why not (ModelNotFoundError, ForbiddenError) for a remote one not on offer."""
        if self.remote is None:
            return None
        if not checkpoint:
            return self.remote.selected()
        if split_title(checkpoint) is None or self.models.registry.find(checkpoint) is not None:
            return None
        return self.remote.require(checkpoint)

    def _prepare_remote(self, request: GenerationRequest, owner: str | None, model: RemoteModel) -> GenerationRequest:
        """The front's steps for a remote model: extensions asked to act are refused (the rest of their
        parameters go), its own rules (refusals, unused fields noted), the owner's limits, styles, the
        server's limits and images; no extension hook or sampler step runs."""
        request = self.extensions.check_params(request)  # parameters that ask nothing of their extension go
        acting = extension_refusals(model, self.extensions.acting(request))
        if acting:
            raise ValidationError(acting)
        request = remote_request(replace(request, extension_params={}), model)
        limits = self._check_limits(request, owner)
        if limits is not None and owner is not None and self.remote_images is not None:
            now = time.time()
            check_remote_images(limits, request.images_per_job, self.remote_images(owner, now - DAY), now)
        request = self._apply_styles(request)
        request = remote_request(request, model)  # a style may have brought a negative prompt or a tag
        validate_request(request, self.limits, [])
        JobInputs.of(request)
        return replace(request, owner=owner)

    def _check_limits(self, request: GenerationRequest, owner: str | None, limits: UserLimits | None = None,
                      count_jobs: bool = True) -> UserLimits | None:
        """Refuse a request past ``owner``'s limits (their own, or ``limits``); the limits checked."""
        if owner is None or (limits is None and self.account_limits is None):
            return None
        if limits is None:
            try:
                limits = self.account_limits(owner)  # type: ignore[misc]
            except AccountNotFoundError:  # an --api-auth login: no account, no limits
                return None
        if not limits.any:
            return limits
        now = time.time()
        recent = self.recent_jobs(owner, now - 3600) if count_jobs and self.recent_jobs is not None else ()
        check_limits(request, limits, recent, now, self._checkpoint_names(request.checkpoint),
                     self._checkpoint_names(request.refiner.checkpoint) if request.refiner is not None else ())
        return limits

    def _checkpoint_names(self, query: str | None) -> tuple[str, ...]:
        """The names of the checkpoint ``query`` finds (None: the server's current one) for the
        limits' globs; a name nothing matches is its own only name (and is refused later)."""
        info = self.models.registry.find(query) if query else self.models.current()
        if info is None:
            return checkpoint_names(query)
        return checkpoint_names(info.title, info.name, info.path.name, info.model_name)

    def _with_server_defaults(self, request: GenerationRequest) -> GenerationRequest:
        """What the request leaves to the server (None), from the settings in force now: the one
        place server defaults meet a job, whichever face sent it."""
        return with_server_defaults(request, self.options.get())

    def _check_clip_skip(self, request: GenerationRequest) -> None:
        """A clip skip past the loaded model's text-encoder layers is refused before queuing (the
        engine checks again for a model loaded later, on a worker)."""
        current = self.models.current()
        if request.checkpoint and (current is None or self.models.registry.find(request.checkpoint) != current):
            return  # another model will be loaded for this job; the engine checks it there
        problem = clip_skip_problem(request.clip_skip, clip_skip_max_of(self.models.loaded_model()))
        if problem is not None:
            raise ValidationError([FieldError("clip_skip", problem)])

    def _check_img2img_upscaler(self, request: GenerationRequest) -> None:
        """An init image's upscaler (A1111's upscaler_for_img2img) must be one Extras could use."""
        name = request.img2img_upscaler
        if request.init_image is None or not name or name.strip().lower() == "none":
            return
        if self.upscalers is None:
            raise ValidationError([FieldError("upscaler_for_img2img", "no upscaler models on this server")])
        try:
            image_upscaler(name, self.upscalers)
        except AddonNotFoundError as exc:
            raise ValidationError([FieldError("upscaler_for_img2img", str(exc))]) from exc

    def _check_face_restoration(self, request: GenerationRequest) -> None:
        """A job that asks to restore faces without a model of the chosen restorer is refused, saying
        which file to put where: it is never accepted and then skipped."""
        if not request.restore_faces:
            return
        if self.face_restorers is None:
            raise ValidationError([FieldError("restore_faces", "face restoration is not available on this server")])
        problem = code_former_weight_problem(request.code_former_weight)
        if problem is not None:
            raise ValidationError([FieldError("code_former_weight", problem)])
        self.face_restorers.require(request.face_restoration_model or "", "restore_faces")

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
        return self.queue.submit(self.prepare(request, owner), owner)

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
        model = self.remote_model(request.checkpoint)
        if model is not None and not script.remote:  # its jobs would rely on a seed, a sampler or denoising
            raise ValidationError([FieldError("script_name", f"the script {script.title!r} cannot run on "
                                              f"{model.title}, which has no seed, sampler or denoising")])
        request = self._with_server_defaults(request)
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
        return count_prompt_tokens(prompt or "", steps, self.addons, self.models.loaded_model())

    def estimate_memory(self, request: GenerationRequest, init_image: bool = False) -> MemoryEstimate:
        """The predicted peak device memory of one batch of ``request`` on the loaded model, its
        memory mode and whether it fits, for the text beside the Generate button (``init_image``: the
        tab sends one, which ``request`` leaves out). Changes nothing; "load a model" without one."""
        return memory_estimate.estimate(self.models.loaded_model(), request, init_image)

    def switch_model(self, checkpoint: str) -> Job:
        """Queue a switch to a local checkpoint; a remote model is selected at once (nothing loads),
        and jobs that name no checkpoint run on it until a local one is chosen again."""
        if self.remote is not None and self.models.registry.find(checkpoint) is None \
                and split_title(checkpoint) is not None:
            return selected_job(self.remote.select(checkpoint))
        self.models.registry.require(checkpoint)
        if self.remote is not None:
            self.remote.select(None)
        return self.queue.submit(ModelSwitch(checkpoint))

    def unload_model(self) -> Job:
        return self.queue.submit(ModelUnload())

    def reload_model(self) -> Job:
        """Load again the checkpoint that was loaded last (after an unload), or the current one."""
        last = self.models.last_loaded()
        if last is None:
            raise NoModelLoadedError("No checkpoint has been loaded yet; choose one first.")
        return self.queue.submit(ModelSwitch(last.name))

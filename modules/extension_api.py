"""The one module extensions import: hooks, their contexts, typed parameters, scripts, the host.

An extension is a folder with an ``extension.yaml`` manifest and a Python file whose ``setup``
function receives an :class:`ExtensionSetup` and registers what the extension does::

    from modules.extension_api import BeforeGenerate, ExtensionSetup, Hook, Param, with_prompt

    def setup(ext: ExtensionSetup) -> None:
        ext.add_params(Param.text("prefix", default="masterpiece", label="Prompt prefix"))

        def prefix(ctx: BeforeGenerate):
            return with_prompt(ctx.request, f"{ctx.params['prefix']}, {ctx.request.prompt}")

        ext.on(Hook.BEFORE_GENERATE, prefix)

Versioning: :data:`API_VERSION` is the version this Atelier offers; it also runs extensions written
for every version in :data:`SUPPORTED_API_VERSIONS`. A manifest states the versions it works with,
as a whole number (``api_version: 1``) or a range (``api_version: ">=1,<3"``); an extension none of
whose versions Atelier offers is refused with a message (never half-loaded). Additions that break
nobody (a new hook, a new context field with a default) keep the number; anything that could break
a working extension raises it, and the change is documented.

Hooks run in :class:`Hook` order within a job; for one hook, handlers run by their ``order``
(lower first), then built-in extensions before users', then by extension name. A handler of an
extension written for API 2 that raises fails the job it ran for, or is skipped for that job with a
warning in its result (its ``on_error``, :class:`OnError`); either way the message names the
extension, and the extension keeps running for other jobs. An extension written for API 1 only keeps
API 1's rule: a handler that raises marks its extension failed for the rest of the run.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from PIL import Image

from modules.errors import FieldError, ValidationError
from modules.extension_helpers import (
    decode_png,
    find_checkpoint,
    fixed_seed,
    is_sampler,
    offset_seed,
    png_with_infotext,
    random_seed,
    with_denoising,
    with_sampler,
)
from modules.extension_host_api import ExtensionSettings, Host
from modules.extension_param import Param, ParamKind, find_upscaler_name
from modules.extension_sampling import (
    AfterCfg,
    Denoised,
    ImagePrompt,
    InfotextFields,
    InfotextReader,
    JobInfo,
    JobStart,
    ModelCall,
    ModelCallChanges,
    ModelPatches,
    ModelView,
    OnError,
    PanelValue,
    PlanImages,
    Route,
    RouteCall,
)
from modules.infotext import ParsedInfotext, parse_infotext
from modules.labelled_grid import Label, font_size_for, labelled_grid
from modules.params import MAX_SEED, GeneratedImage, GenerationRequest, GenerationResult
from modules.request_checks import validate_request
from modules.samplers import ScheduleType, find_schedule, sampler_names
from modules.server_effects import changes_server

# Besides the hooks and their contexts: the request and result types, their validation and errors,
# samplers and schedules, and helpers scripts share (seeds, checkpoints by name, grids and their PNGs).
__all__ = ["API_VERSION", "MAX_SEED", "SUPPORTED_API_VERSIONS", "AfterCfg", "AfterImage", "AppStarted",
           "BeforeGenerate", "Denoised", "ExtensionSettings", "ExtensionSetup", "FieldError", "GeneratedImage",
           "GenerationRequest", "GenerationResult", "Handler", "Hook", "Host", "ImagePrompt", "ImageSaved",
           "InfotextFields", "InfotextReader", "JobInfo", "JobStart", "Label", "ModelCall", "ModelCallChanges",
           "ModelLoaded", "ModelPatches", "ModelView", "OnError", "PanelValue", "Param", "ParamKind",
           "ParsedInfotext", "PlanImages", "Route", "RouteCall", "ScheduleType", "Script", "ScriptRun",
           "SettingsSection", "StepEnd", "UiPanel", "UiTabs", "ValidationError", "changes_server", "decode_png",
           "find_checkpoint", "find_schedule", "find_upscaler_name", "fixed_seed", "font_size_for", "frozen_params",
           "is_sampler", "labelled_grid", "offset_seed", "parse_infotext", "png_with_infotext", "random_seed",
           "sampler_names", "validate_request", "with_denoising", "with_prompt", "with_sampler"]

API_VERSION = 2  # the version this Atelier offers
SUPPORTED_API_VERSIONS = (1, 2)  # every version whose extensions it runs unchanged


class Hook(enum.IntEnum):
    """Every hook, numbered in the order they come in an app's life and in a job."""

    APP_STARTED = 10  # handler(AppStarted) -> None; once, when the app is built, just before it serves
    MODEL_LOADED = 20  # handler(ModelLoaded) -> None; after a checkpoint load succeeded
    BEFORE_GENERATE = 30  # handler(BeforeGenerate) -> GenerationRequest | None; None keeps the request
    PLAN_IMAGES = 32  # v2, front: handler(PlanImages) -> list[ImagePrompt] | None; per-image prompts/seeds
    JOB_START = 34  # v2, worker: handler(JobStart) -> None; load, prepare, patch the model for the job
    MODEL_CALL = 36  # v2, worker: handler(ModelCall) -> None; add residuals/conditions to each UNet call
    DENOISED = 37  # v2, worker: handler(Denoised) -> Tensor | None; every row's prediction, before guidance
    AFTER_CFG = 38  # v2, worker: handler(AfterCfg) -> Tensor | None; the guided prediction
    STEP_END = 40  # handler(StepEnd) -> None; after every sampling step; may ask to interrupt
    INFOTEXT = 45  # v2, worker: handler(InfotextFields) -> dict | None; keys added to an image's infotext
    AFTER_IMAGE = 50  # handler(AfterImage) -> Image | None; None keeps the image
    IMAGE_SAVED = 60  # handler(ImageSaved) -> None; after the image was written (or returned unsaved)
    UI_TABS = 100  # handler(UiTabs) -> None; builds a whole tab's content (Gradio) inside it
    UI_PANEL = 110  # handler(UiPanel) -> dict[param name, Gradio component or PanelValue]; txt2img/img2img
    SETTINGS_SECTION = 120  # handler(SettingsSection) -> None; builds controls in the Extensions tab


# --- hook contexts -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AppStarted:
    host: Host


@dataclass(frozen=True)
class ModelLoaded:
    title: str  # "name.safetensors [hash]"
    architecture: str  # "SD 1.x", "SDXL", ...


@dataclass(frozen=True)
class BeforeGenerate:
    """Return a changed request (:func:`with_prompt`, ``dataclasses.replace``) or None."""

    request: GenerationRequest
    params: Mapping[str, Any]  # this extension's values for the job (defaults when not sent)
    host: Host
    user: str | None = None  # v2: the user the job belongs to (None: no login)


@dataclass(frozen=True)
class StepEnd:
    """Worker. v2 adds the job (its request and user) and this extension's host (``host.settings()``)."""

    job_id: str
    step: int
    total: int
    params: Mapping[str, Any]
    request_interrupt: Callable[[], None]  # stop the job after this step, as the Interrupt button does
    job: JobInfo | None = None
    host: Host | None = None


@dataclass(frozen=True)
class AfterImage:
    """Return a replacement image (same size or not) or None."""

    request: GenerationRequest
    image: Image.Image
    seed: int
    index: int  # position of the image in the job
    params: Mapping[str, Any]
    user: str | None = None  # v2: the user the job belongs to
    host: Host | None = None  # v2: this extension's host (``host.settings()``)


@dataclass(frozen=True)
class ImageSaved:
    request: GenerationRequest
    path: Path | None  # None when the job asked not to save (API default)
    infotext: str
    seed: int
    index: int
    params: Mapping[str, Any]
    user: str | None = None  # v2: the user the job belongs to
    host: Host | None = None  # v2: this extension's host


@dataclass(frozen=True)
class UiTabs:
    """Build the tab's content with Gradio; the tab itself (titled by :meth:`ExtensionSetup.add_tab`) exists."""

    host: Host


@dataclass(frozen=True)
class UiPanel:
    """Build controls for the extension's params; return ``{param name: component}``."""

    tab: str  # "txt2img" or "img2img"
    elem_prefix: str  # use it in elem_ids, e.g. f"{ctx.elem_prefix}_strength"
    host: Host


@dataclass(frozen=True)
class SettingsSection:
    host: Host


# --- scripts: a whole run replaced by the extension (A1111's Script dropdown) ---------------------


@dataclass(frozen=True)
class ScriptRun:
    request: GenerationRequest  # the job the form (or API body) describes
    values: Mapping[str, Any]  # the script's params, checked
    host: Host


@dataclass(frozen=True)
class Script:
    """A run mode chosen in the Script dropdown (or the API's ``script_name``)."""

    title: str  # as the dropdown shows it; the API matches it case-insensitively
    run: Callable[[ScriptRun], GenerationResult]
    params: tuple[Param, ...] = ()
    tabs: frozenset[str] = frozenset({"txt2img", "img2img"})
    # Whether its jobs mean what they should on a remote model (openai/..., google/...), which has
    # no seed, sampler or denoising: a script that relies on them is refused there (422, script_name).
    remote: bool = False


# --- registration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handler:
    hook: Hook
    call: Callable[[Any], Any]
    order: int = 0
    on_error: OnError = OnError.FAIL_JOB  # v2 extensions; API 1 ones keep API 1's rule


@dataclass
class ExtensionSetup:
    """What ``setup(ext)`` fills in. Registration happens once, at load time."""

    name: str
    handlers: list[Handler] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    tab_title: str | None = None
    infotext_readers: list[InfotextReader] = field(default_factory=list)
    routes: list[Route] = field(default_factory=list)
    route_prefix: str | None = None  # "/controlnet": where its routes are served (default "/ext/<name>")
    api_version: int = API_VERSION  # the version the host runs it as (the highest both support)
    title: str | None = None  # what its panel is titled in the UI (default: its name)

    def on(self, hook: Hook, handler: Callable[[Any], Any], *, order: int = 0,
           on_error: OnError = OnError.FAIL_JOB) -> None:
        """Call ``handler(context)`` at ``hook``; lower ``order`` runs first. ``on_error``: what an
        exception in it does to the job (v2)."""
        if not isinstance(hook, Hook):
            raise TypeError(f"not a hook: {hook!r}")
        if not isinstance(on_error, OnError):
            raise TypeError(f"not an OnError: {on_error!r}")
        self.handlers.append(Handler(hook, handler, order, on_error))

    def add_infotext(self, write: Callable[[InfotextFields], Mapping[str, object] | None],
                     read: InfotextReader | None = None, *, on_error: OnError = OnError.FAIL_JOB) -> None:
        """Keys this extension adds to every image's infotext (``write``, an INFOTEXT handler), and how
        a pasted or sent infotext gives its params back (``read``), so its images reproduce."""
        self.on(Hook.INFOTEXT, write, on_error=on_error)
        if read is not None:
            self.infotext_readers.append(read)

    def add_route(self, method: str, path: str, call: Callable[[RouteCall], Any]) -> None:
        """A REST route under this extension's prefix (:meth:`set_route_prefix`), behind the server's
        login, host and origin rules like every route."""
        method = method.upper()
        if method not in ("GET", "POST"):
            raise ValueError(f"route method must be GET or POST, got {method!r}")
        if not path.startswith("/"):
            raise ValueError(f"route path must start with '/', got {path!r}")
        self.routes.append(Route(method, path, call))

    def set_title(self, title: str) -> None:
        """v2: the title its panel shows in txt2img/img2img ("ControlNet"), instead of its name."""
        self.title = title

    def set_route_prefix(self, prefix: str) -> None:
        """Serve this extension's routes under ``prefix`` ("/controlnet", as A1111's extension does)
        instead of ``/ext/<name>``; one path segment, not one of the server's own."""
        self.route_prefix = prefix

    def add_params(self, *params: Param) -> None:
        names = {p.name for p in self.params}
        for param in params:
            if param.name in names:
                raise ValueError(f"parameter {param.name!r} declared twice")
            names.add(param.name)
            self.params.append(param)

    def add_script(self, script: Script) -> None:
        self.scripts.append(script)

    def add_tab(self, title: str, build: Callable[[UiTabs], None]) -> None:
        """A whole tab in the UI, titled ``title``, whose content ``build`` makes."""
        self.tab_title = title
        self.on(Hook.UI_TABS, build)


def frozen_params(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


def with_prompt(request: GenerationRequest, prompt: str) -> GenerationRequest:
    """``request`` with another prompt (a convenience for BEFORE_GENERATE handlers)."""
    return replace(request, prompt=prompt)

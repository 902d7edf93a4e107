"""The one module extensions import: hooks, their contexts, typed parameters, scripts, the host.

An extension is a folder with an ``extension.yaml`` manifest and a Python file whose ``setup``
function receives an :class:`ExtensionSetup` and registers what the extension does::

    from modules.extension_api import BeforeGenerate, ExtensionSetup, Hook, Param, with_prompt

    def setup(ext: ExtensionSetup) -> None:
        ext.add_params(Param.text("prefix", default="masterpiece", label="Prompt prefix"))

        def prefix(ctx: BeforeGenerate):
            return with_prompt(ctx.request, f"{ctx.params['prefix']}, {ctx.request.prompt}")

        ext.on(Hook.BEFORE_GENERATE, prefix)

Versioning: :data:`API_VERSION` is a whole number. A manifest names the version it was written
for; an extension whose ``api_version`` differs from Atelier's is refused with a message (never
half-loaded). Additions that break nobody (a new hook, a new context field with a default) keep the
number; anything that could break a working extension raises it, and the change is documented.

Hooks run in :class:`Hook` order within a job; for one hook, handlers run by their ``order``
(lower first), then built-in extensions before users', then by extension name. A handler that
raises marks its extension failed for the rest of the run (shown in the Extensions tab, traceback
in the log) and the job goes on without it.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

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
from modules.extension_param import Param, ParamKind, find_upscaler_name
from modules.labelled_grid import Label, font_size_for, labelled_grid
from modules.params import MAX_SEED, GeneratedImage, GenerationRequest, GenerationResult
from modules.request_checks import validate_request
from modules.samplers import ScheduleType, find_schedule, sampler_names
from modules.server_effects import changes_server

# Besides the hooks and their contexts: the request and result types, their validation and errors,
# samplers and schedules, and helpers scripts share (seeds, checkpoints by name, grids and their PNGs).
__all__ = ["API_VERSION", "MAX_SEED", "AfterImage", "AppStarted", "BeforeGenerate", "ExtensionSettings",
           "ExtensionSetup", "FieldError", "GeneratedImage", "GenerationRequest", "GenerationResult", "Handler",
           "Hook", "Host", "ImageSaved", "Label", "ModelLoaded", "Param", "ParamKind", "ScheduleType", "Script",
           "ScriptRun", "SettingsSection", "StepEnd", "UiPanel", "UiTabs", "ValidationError", "changes_server",
           "decode_png", "find_checkpoint", "find_schedule", "find_upscaler_name", "fixed_seed", "font_size_for",
           "frozen_params", "is_sampler", "labelled_grid", "offset_seed", "png_with_infotext", "random_seed",
           "sampler_names", "validate_request", "with_denoising", "with_prompt", "with_sampler"]

API_VERSION = 1


class Hook(enum.IntEnum):
    """Every hook, numbered in the order they come in an app's life and in a job."""

    APP_STARTED = 10  # handler(AppStarted) -> None; once, when the app is built, just before it serves
    MODEL_LOADED = 20  # handler(ModelLoaded) -> None; after a checkpoint load succeeded
    BEFORE_GENERATE = 30  # handler(BeforeGenerate) -> GenerationRequest | None; None keeps the request
    STEP_END = 40  # handler(StepEnd) -> None; after every sampling step; may ask to interrupt
    AFTER_IMAGE = 50  # handler(AfterImage) -> Image | None; None keeps the image
    IMAGE_SAVED = 60  # handler(ImageSaved) -> None; after the image was written (or returned unsaved)
    UI_TABS = 100  # handler(UiTabs) -> None; builds a whole tab's content (Gradio) inside it
    UI_PANEL = 110  # handler(UiPanel) -> dict[param name, Gradio component]; in txt2img/img2img
    SETTINGS_SECTION = 120  # handler(SettingsSection) -> None; builds controls in the Extensions tab


class Host(Protocol):
    """Atelier as extensions see it. Generations go through the same queue as everyone's jobs."""

    def generate(self, request: GenerationRequest) -> GenerationResult:
        """Run a job and wait for it (never call this from a STEP_END or AFTER_IMAGE handler:
        those run on the worker, which would wait for itself)."""
        ...

    def checkpoints(self) -> list[str]:
        """Titles of the checkpoints found, as the checkpoint list shows them."""
        ...

    def save_grid(self, image: Image.Image, infotext: str, img2img: bool = False) -> Path:
        """Save a grid image (with its parameters text) to txt2img-grids (img2img-grids)."""
        ...

    def save_image(self, image: Image.Image, infotext: str, seed: int, img2img: bool = False) -> Path:
        """Save a finished image (with its parameters text) to txt2img-images (img2img-images), named
        after ``seed`` as the job's own images are. No hook runs for it."""
        ...

    def upscaler_names(self) -> list[str]:
        """The upscalers of Extras and SD upscale, as GET /sdapi/v1/upscalers lists them: "None",
        "Lanczos", "Nearest", then the model files found now."""
        ...

    def upscale(self, image: Image.Image, upscaler: str, factor: float) -> Image.Image:
        """``image`` upscaled by ``factor`` with the upscaler named ``upscaler`` (A1111's
        ``Upscaler.upscale``): the result is ``int(side * factor)`` rounded down to a multiple of 8 on
        each side. A model upscaler runs as a job in the queue (on the GPU worker), the caller's own;
        "None" only resizes. Never call it from a STEP_END or AFTER_IMAGE handler."""
        ...

    def settings(self) -> ExtensionSettings:
        """This extension's own persisted settings."""
        ...


class ExtensionSettings(Protocol):
    """A small persisted key -> value store per extension (kept in the data dir)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


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


@dataclass(frozen=True)
class StepEnd:
    job_id: str
    step: int
    total: int
    params: Mapping[str, Any]
    request_interrupt: Callable[[], None]  # stop the job after this step, as the Interrupt button does


@dataclass(frozen=True)
class AfterImage:
    """Return a replacement image (same size or not) or None."""

    request: GenerationRequest
    image: Image.Image
    seed: int
    index: int  # position of the image in the job
    params: Mapping[str, Any]


@dataclass(frozen=True)
class ImageSaved:
    request: GenerationRequest
    path: Path | None  # None when the job asked not to save (API default)
    infotext: str
    seed: int
    index: int
    params: Mapping[str, Any]


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


# --- registration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handler:
    hook: Hook
    call: Callable[[Any], Any]
    order: int = 0


@dataclass
class ExtensionSetup:
    """What ``setup(ext)`` fills in. Registration happens once, at load time."""

    name: str
    handlers: list[Handler] = field(default_factory=list)
    params: list[Param] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)
    tab_title: str | None = None

    def on(self, hook: Hook, handler: Callable[[Any], Any], *, order: int = 0) -> None:
        """Call ``handler(context)`` at ``hook``; lower ``order`` runs first."""
        if not isinstance(hook, Hook):
            raise TypeError(f"not a hook: {hook!r}")
        self.handlers.append(Handler(hook, handler, order))

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

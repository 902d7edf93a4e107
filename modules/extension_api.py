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
import math
from collections.abc import Callable, Mapping, Sequence
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


class ParamKind(enum.Enum):
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    TEXT = "text"
    CHOICE = "choice"
    UPSCALER = "upscaler"  # a name from Host.upscaler_names(), or its index there
    NOTE = "note"  # a text the UI shows; it carries no value
    TEXTS = "texts"  # a list of texts (A1111's multi-select dropdowns)


@dataclass(frozen=True)
class Param:
    """One value an extension takes from a job, by name: from its UI panel or the API's
    ``alwayson_scripts`` / ``script_args``. Values are checked and converted with :meth:`coerce`."""

    name: str
    kind: ParamKind
    default: Any
    label: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    lines: int = 1  # text boxes: how many lines the UI shows
    # Choices: a list whose positions clients may send instead of a name (A1111's index dropdowns,
    # e.g. the X/Y/Z plot's axis types); its names pass too, for the extension to judge.
    indexed: tuple[str, ...] = ()

    @staticmethod
    def bool(name: str, default: bool = False, label: str = "") -> Param:
        return Param(name, ParamKind.BOOL, default, label)

    @staticmethod
    def int(name: str, default: int = 0, label: str = "", minimum: float | None = None,
            maximum: float | None = None) -> Param:
        return Param(name, ParamKind.INT, default, label, minimum=minimum, maximum=maximum)

    @staticmethod
    def float(name: str, default: float = 0.0, label: str = "", minimum: float | None = None,
              maximum: float | None = None) -> Param:
        return Param(name, ParamKind.FLOAT, default, label, minimum=minimum, maximum=maximum)

    @staticmethod
    def text(name: str, default: str = "", label: str = "", lines: int = 1) -> Param:
        return Param(name, ParamKind.TEXT, default, label, lines=lines)

    @staticmethod
    def choice(name: str, choices: Sequence[str], default: str | None = None, label: str = "",
               indexed: Sequence[str] = ()) -> Param:
        return Param(name, ParamKind.CHOICE, default if default is not None else choices[0], label,
                     choices=tuple(choices), indexed=tuple(indexed))

    @staticmethod
    def texts(name: str, label: str = "") -> Param:
        """A list of texts (``[]`` by default), as A1111's multi-select dropdowns send them."""
        return Param(name, ParamKind.TEXTS, (), label)

    @staticmethod
    def upscaler(name: str, default: str = "None", label: str = "") -> Param:
        """An upscaler of :meth:`Host.upscaler_names`, by name or, as A1111's UI sends it, by its index
        in that list. The list is the server's (model files come and go), so the value is only checked
        for its form here; turn it into a name with :func:`find_upscaler_name`. The UI shows a dropdown."""
        return Param(name, ParamKind.UPSCALER, default, label)

    @staticmethod
    def note(name: str, text: str) -> Param:
        """A text the UI shows (A1111 scripts' info labels). It holds the label's place in A1111's
        positional ``script_args``, so clients' lists line up: any value sent there is accepted and
        the value seen is always ``text``."""
        return Param(name, ParamKind.NOTE, text, text)

    def coerce(self, value: Any) -> Any:
        """``value`` as this parameter's type; ValueError with a reason a user understands."""
        if value is None or self.kind is ParamKind.NOTE:
            return self.default
        if self.kind is ParamKind.UPSCALER:
            return self._upscaler(value)
        if self.kind is ParamKind.BOOL:
            if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
                return value.strip().lower() in ("true", "1")
            if not isinstance(value, (bool, int)) or value not in (0, 1, True, False):
                raise ValueError(f"must be true or false, got {value!r}")
            return bool(value)
        if self.kind in (ParamKind.INT, ParamKind.FLOAT):
            return self._number(value)
        if self.kind is ParamKind.CHOICE:
            return self._choice(value)
        if self.kind is ParamKind.TEXTS:
            if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"must be a list of texts, got {value!r}")
            return tuple(value)
        if not isinstance(value, str):
            raise ValueError(f"must be text, got {value!r}")
        return value

    def _choice(self, value: Any) -> str:
        if self.indexed and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not float(value).is_integer() or not 0 <= value < len(self.indexed):
                raise ValueError(f"must be a name or a position from 0 to {len(self.indexed) - 1}, got {value!r}")
            return self.indexed[int(value)]
        if value not in self.choices and value not in self.indexed:
            raise ValueError(f"must be one of {', '.join(self.choices)}, got {value!r}")
        return value

    @staticmethod
    def _upscaler(value: Any) -> str | int:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() and value >= 0:
            return int(value)
        raise ValueError(f"must be an upscaler's name or its index in the upscaler list, got {value!r}")

    def _number(self, value: Any) -> int | float:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"must be a number, got {value!r}")
        if self.kind is ParamKind.INT:
            if not number.is_integer():
                raise ValueError(f"must be a whole number, got {value!r}")
            number = int(number)
        if self.minimum is not None and number < self.minimum or self.maximum is not None and number > self.maximum:
            raise ValueError(f"must be {self.range_text()}, got {value!r}")
        return number

    def range_text(self) -> str:
        """The range a number must be in, as the UI and a refusal state it ("" when it has none)."""
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum:g} and {self.maximum:g}"
        if self.minimum is not None:
            return f"at least {self.minimum:g}"
        return f"at most {self.maximum:g}" if self.maximum is not None else ""


# --- the host: what an extension may ask of Atelier ---------------------------------------------


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


def find_upscaler_name(value: str | int, names: Sequence[str]) -> str | None:
    """The upscaler among ``names`` (:meth:`Host.upscaler_names`) that a :meth:`Param.upscaler` value
    means: a name in any case, or an index into ``names``; None when it means none."""
    if isinstance(value, int):
        return names[value] if 0 <= value < len(names) else None
    return next((name for name in names if name.lower() == value.strip().lower()), None)


def frozen_params(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


def with_prompt(request: GenerationRequest, prompt: str) -> GenerationRequest:
    """``request`` with another prompt (a convenience for BEFORE_GENERATE handlers)."""
    return replace(request, prompt=prompt)

"""The host facade extensions receive (:class:`modules.extension_api.Host`), one per extension.

Generations go through the same validation and queue as the UI's and the API's, so an extension's
jobs show in progress and can be interrupted like any other. Every job has an owner: the user whose
script runs on the calling thread, whichever host the script calls (its own, or one kept from
APP_STARTED); elsewhere (a thread the script started) the user the host was handed out for (a
script's, a BEFORE_GENERATE hook's); None only for a host handed out for nobody (APP_STARTED, the UI
hooks) used outside a script. Settings are a small YAML file per extension in the data dir, written
atomically. Upscaling runs the function it was given on the calling thread (a script's own).
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from PIL import Image

from modules.atomic import write_text_atomic
from modules.errors import ExtensionError
from modules.params import GenerationRequest, GenerationResult
from modules.services.checkpoint_registry import CheckpointRegistry
from modules.services.extension_files import ExtensionFiles
from modules.services.extensions import ExtensionManager
from modules.services.images import ImageSaver, OutputKind
from modules.upscalers import UpscalerKind, find_upscaler, upscaler_names

if TYPE_CHECKING:
    from modules.services.generation import GenerationService


class FileSettings:
    """An extension's settings: plain YAML values (text, numbers, booleans, lists, mappings)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            return self._read().get(key, default)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            data = self._read()
            data[key] = value
            write_text_atomic(self._path, yaml.safe_dump(data, sort_keys=True))


# (image, upscaler name, factor, owner) -> upscaled: an Extras job of the owner's, on the worker
Upscale = Callable[[Image.Image, str, float, "str | None"], Image.Image]


class ExtensionHost:
    def __init__(self, name: str, generation: Callable[[], GenerationService], extensions: ExtensionManager,
                 registry: CheckpointRegistry, settings_dir: Path, saver: ImageSaver,
                 upscaler_models: Callable[[], list[str]], upscale: Upscale,
                 files: ExtensionFiles | None = None, remote_titles: Callable[[], list[str]] = list) -> None:
        self.name = name
        self._remote_titles = remote_titles  # the remote models on offer (openai/dall-e-3, ...)
        self._files = files  # model folders, downloads and hashes (None: this host offers none)
        self._extensions = extensions
        self._generation = generation  # the generation front once the engine is built (asking waits for it)
        self._saver = saver
        self._registry = registry
        self._upscaler_models = upscaler_models  # the model files' names, listed again on every call
        self._upscale = upscale
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self._settings = FileSettings(settings_dir / f"{safe}.yaml")
        self._owner: str | None = None  # the user it was handed out for; see generate()

    @property
    def owner(self) -> str | None:
        return self._owner

    def for_owner(self, owner: str | None) -> ExtensionHost:
        """This host acting for ``owner`` (its settings store shared, so their writes stay serialised)."""
        bound = copy.copy(self)
        bound._owner = owner
        return bound

    def _job_owner(self) -> str | None:
        """Who a job submitted now belongs to: the user of a script running on this thread, whoever
        kept this host; else the user the host was handed out for."""
        acting = self._extensions.acting_user()
        return acting if acting is not None else self._owner

    def _refuse_waiting_on_the_worker(self) -> None:
        refusal = self._extensions.refusal_for_generate()
        if refusal is not None:  # it would wait for itself forever
            raise ExtensionError(f"Extension {self.name}: {refusal}")

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self._refuse_waiting_on_the_worker()
        return self._generation().generate(request, owner=self._job_owner())

    def checkpoints(self) -> list[str]:
        return [info.title for info in self._registry.all()] + self._remote_titles()

    def save_grid(self, image: Image.Image, infotext: str, img2img: bool = False) -> Path:
        kind = OutputKind.IMG2IMG_GRID if img2img else OutputKind.TXT2IMG_GRID
        return self._saver.save(image, infotext, kind).path

    def save_image(self, image: Image.Image, infotext: str, seed: int, img2img: bool = False) -> Path:
        kind = OutputKind.IMG2IMG if img2img else OutputKind.TXT2IMG
        return self._saver.save(image, infotext, kind, seed).path

    def upscaler_names(self) -> list[str]:
        # Latent modes resize latents between hires passes; they cannot upscale an image.
        models = self._upscaler_models()
        specs = [find_upscaler(name, models) for name in upscaler_names(models)]
        return [spec.name for spec in specs if spec is not None and spec.kind is not UpscalerKind.LATENT]

    def upscale(self, image: Image.Image, upscaler: str, factor: float) -> Image.Image:
        self._refuse_waiting_on_the_worker()  # the upscale is queued on the worker too
        return self._upscale(image, upscaler, factor, self._job_owner())

    def settings(self) -> FileSettings:
        return self._settings

    def _model_files(self) -> ExtensionFiles:
        if self._files is None:
            raise ExtensionError(f"Extension {self.name}: this host has no model folders")
        return self._files

    def model_dirs(self, kind: str) -> tuple[Path, ...]:
        return self._model_files().model_dirs(kind)

    def download(self, url: str, kind: str, file_name: str, sha256: str) -> Path:
        return self._model_files().download(url, kind, file_name, sha256)

    def sha256(self, path: Path) -> str:
        return self._model_files().sha256(path)


class WorkerHost:
    """The host extensions' worker-side hooks get on a Ray worker: its own checkpoints, model folders,
    downloads and settings file. Starting jobs, saving and upscaling belong to the front."""

    def __init__(self, name: str, registry: CheckpointRegistry, settings_dir: Path, files: ExtensionFiles) -> None:
        self.name = name
        self._registry = registry
        self._files = files
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        self._settings = FileSettings(settings_dir / f"{safe}.yaml")

    def for_owner(self, owner: str | None) -> WorkerHost:
        return self  # it submits no jobs: nobody to act for

    def _front_only(self, what: str) -> ExtensionError:
        return ExtensionError(f"Extension {self.name}: {what} is not available on a worker (the front does it)")

    def generate(self, request: GenerationRequest) -> GenerationResult:
        raise self._front_only("host.generate()")

    def checkpoints(self) -> list[str]:
        return [info.title for info in self._registry.all()]

    def save_grid(self, image: Image.Image, infotext: str, img2img: bool = False) -> Path:
        raise self._front_only("host.save_grid()")

    def save_image(self, image: Image.Image, infotext: str, seed: int, img2img: bool = False) -> Path:
        raise self._front_only("host.save_image()")

    def upscaler_names(self) -> list[str]:
        return []

    def upscale(self, image: Image.Image, upscaler: str, factor: float) -> Image.Image:
        raise self._front_only("host.upscale()")

    def settings(self) -> FileSettings:
        return self._settings

    def model_dirs(self, kind: str) -> tuple[Path, ...]:
        return self._files.model_dirs(kind)

    def download(self, url: str, kind: str, file_name: str, sha256: str) -> Path:
        return self._files.download(url, kind, file_name, sha256)

    def sha256(self, path: Path) -> str:
        return self._files.sha256(path)

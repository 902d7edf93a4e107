"""The host facade extensions receive (:class:`modules.extension_api.Host`), one per extension.

Generations go through the same validation and queue as the UI's and the API's, so an extension's
jobs show in progress and can be interrupted like any other. Every job has an owner: the user whose
script runs on the calling thread, whichever host the script calls (its own, or one kept from
APP_STARTED); elsewhere (a thread the script started) the user the host was handed out for (a
script's, a BEFORE_GENERATE hook's); None only for a host handed out for nobody (APP_STARTED, the UI
hooks) used outside a script. Settings are a small YAML file per extension in the data dir, written
atomically.
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
from modules.services.extensions import ExtensionManager
from modules.services.images import ImageSaver, OutputKind

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


class ExtensionHost:
    def __init__(self, name: str, generation: Callable[[], GenerationService], extensions: ExtensionManager,
                 registry: CheckpointRegistry, settings_dir: Path, saver: ImageSaver) -> None:
        self.name = name
        self._extensions = extensions
        self._generation = generation  # the generation front once the engine is built (asking waits for it)
        self._saver = saver
        self._registry = registry
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

    def generate(self, request: GenerationRequest) -> GenerationResult:
        refusal = self._extensions.refusal_for_generate()
        if refusal is not None:  # it would wait for itself forever
            raise ExtensionError(f"Extension {self.name}: {refusal}")
        acting = self._extensions.acting_user()  # a script on this thread: its user, whoever kept this host
        owner = acting if acting is not None else self._owner
        return self._generation().generate(request, owner=owner)

    def checkpoints(self) -> list[str]:
        return [info.title for info in self._registry.all()]

    def save_grid(self, image: Image.Image, infotext: str, img2img: bool = False) -> Path:
        kind = OutputKind.IMG2IMG_GRID if img2img else OutputKind.TXT2IMG_GRID
        return self._saver.save(image, infotext, kind).path

    def settings(self) -> FileSettings:
        return self._settings

"""Which family each checkpoint file belongs to, and the separate parts (text encoders, VAEs) on disk.

``/sdapi/v1/sd-models`` and the UI show a checkpoint's family (Forge's presets follow it). A loaded
checkpoint's family is known already; another safetensors file's is read from its header (a few
kilobytes) and the family registry's detection, once per file version. Nothing is imported from the
engine until a family is asked for, so building the app never pulls torch in.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The files Forge lists under models/text_encoder and models/VAE (GET /sdapi/v1/sd-modules).
MODULE_SUFFIXES = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModuleFile:
    """A text encoder or VAE file, by its file name (Forge's ``model_name``)."""

    name: str
    path: Path


def module_files(folders: Iterable[Path], skip: Iterable[Path] = ()) -> list[ModuleFile]:
    """Every encoder or VAE file under ``folders`` (sub-folders too, ``skip`` and hidden ones left
    out), sorted by name as Forge lists them."""
    skipped = {folder.resolve() for folder in skip}
    found: dict[Path, ModuleFile] = {}
    for root in folders:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if any(path.resolve().is_relative_to(folder) for folder in skipped):
                continue
            if path.is_file() and path.suffix.lower() in MODULE_SUFFIXES:
                found.setdefault(path.resolve(), ModuleFile(path.name, path))
    return sorted(found.values(), key=lambda item: item.name.lower())


def _detect(path: Path) -> str | None:
    """The family key of a checkpoint on disk, from its header or model_index.json; None when that
    cannot be told without loading it (pickled .ckpt files, unknown layouts)."""
    from modules.engine.checkpoint_files import SAFETENSORS_SUFFIXES, read_safetensors_index
    from modules.engine.families import registry
    from modules.engine.model_detect import UnknownArchitecture, sidecar_arch
    from modules.engine.quantized import is_gguf, read_gguf_index
    from modules.errors import ModelLoadError

    try:
        if path.is_dir():
            return registry.detect_folder(path)[1].value
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            index = read_safetensors_index(path)
        elif is_gguf(path):
            index = read_gguf_index(path)
        else:
            return None
        # as the loader decides: A1111's .yaml beside an SD 2.x file names eps or v
        return sidecar_arch(path, registry.detect_file(index)[1]).value
    except (UnknownArchitecture, ModelLoadError, OSError, ValueError) as exc:
        log.debug("No family for %s: %s", path, exc)
        return None


class FamilyFinder:
    """Family keys of checkpoint files, cached per file version (path, size, modification time)."""

    def __init__(self, loaded: Callable[[Path], str | None]) -> None:
        self._loaded = loaded  # the family of a model in memory, without reading its file
        self._lock = threading.Lock()
        self._found: dict[tuple[Path, int, int], str | None] = {}

    def family_of(self, path: Path) -> str | None:
        known = self._loaded(path)
        if known is not None:
            return known
        try:
            stat = path.stat()
        except OSError:
            return None
        key = (path, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            if key in self._found:
                return self._found[key]
        family = _detect(path)
        with self._lock:
            self._found[key] = family
        return family

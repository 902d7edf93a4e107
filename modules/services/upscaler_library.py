"""The upscaler models in A1111's folders (models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ScuNET).

Files are named as A1111 names them, by their stem; the folders are listed again on every call, so
a file dropped in shows up without a restart. One model is kept loaded (the last one used); the
scale each file upscales by is read once per file version for the lists. Torch and spandrel are
imported when a model is first loaded, never at import.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from modules.errors import AddonLoadError, AddonNotFoundError

if TYPE_CHECKING:
    from modules.engine.upscale_models import UpscaleModel

log = logging.getLogger(__name__)

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
DEFAULT_SCALE = 4  # what A1111 lists for a file whose scale it does not know
KIND = "upscaler"


@dataclass(frozen=True)
class UpscalerFile:
    name: str  # the file's stem (a standard model's A1111 label), as the UI, the API and the infotext write it
    path: Path
    folder: str  # the models folder it is in (ESRGAN, RealESRGAN, ...)

    def version(self) -> tuple[str, int, int]:
        """What identifies this file's contents for the caches: path, size and modification time."""
        stat = self.path.stat()
        return str(self.path), stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class TileOptions:
    """A1111's ``ESRGAN_tile`` and ``ESRGAN_tile_overlap``: the tile side (0: no tiling) and overlap, px."""

    tile: int = 192
    overlap: int = 8


class UpscalerLibrary:
    """Finds, lists, loads and runs the upscaler models in ``folders``."""

    def __init__(self, folders: Sequence[Path], tiles: Callable[[], TileOptions] = TileOptions,
                 aliases: Mapping[str, str] | None = None, extra_architectures: Callable[[], bool] = bool) -> None:
        self.folders = tuple(folders)
        # Whether spandrel's extra (non-commercial) architectures may load: the setting in force.
        self.extra_architectures = extra_architectures
        # File name (lower case) -> the label A1111 lists it under ("RealESRGAN_x4plus.pth": "R-ESRGAN 4x+").
        self.aliases = dict(aliases or {})
        self.tiles = tiles  # read on every upscale: the settings in force (ESRGAN_tile, ESRGAN_tile_overlap)
        self._lock = threading.Lock()
        self._loaded: tuple[tuple[tuple[str, int, int], str], UpscaleModel] | None = None
        self._scales: dict[tuple[str, int, int], int] = {}

    # --- listing ------------------------------------------------------------------------------

    def files(self, folder: Path | None = None) -> list[UpscalerFile]:
        """The model files (of one folder, or of all), sorted by name within each folder; a name
        that appears twice is the first folder's."""
        found: dict[str, UpscalerFile] = {}
        for directory in (folder,) if folder is not None else self.folders:
            if not directory.is_dir():
                continue
            for path in sorted(directory.rglob("*"), key=lambda p: str(p).lower()):
                if path.suffix.lower() in SUFFIXES and path.is_file():
                    name = self.aliases.get(path.name.lower(), path.stem)
                    found.setdefault(name.lower(), UpscalerFile(name, path, directory.name))
        return list(found.values())

    def names(self) -> list[str]:
        return [item.name for item in self.files()]

    def find(self, name: str) -> UpscalerFile | None:
        wanted = name.strip().lower()
        return next((item for item in self.files() if item.name.lower() == wanted), None)

    def require(self, name: str) -> UpscalerFile:
        found = self.find(name)
        if found is None:
            raise AddonNotFoundError(KIND, name, self.names())
        return found

    def scale_of(self, item: UpscalerFile) -> int:
        """The factor the model upscales by (loaded once on the CPU to know it); :data:`DEFAULT_SCALE`
        for a file that cannot be loaded (using it says why)."""
        key = item.version()
        with self._lock:
            if key not in self._scales:
                self._scales[key] = self._read_scale(item)
            return self._scales[key]

    def _read_scale(self, item: UpscalerFile) -> int:
        from modules.engine.upscale_models import load_upscale_model

        try:
            return load_upscale_model(item.path, extra_architectures=self.extra_architectures()).scale
        except AddonLoadError as exc:
            log.warning("%s", exc)
            return DEFAULT_SCALE

    # --- running ------------------------------------------------------------------------------

    def model(self, name: str, device: object = "cpu") -> UpscaleModel:
        """The named model, loaded on ``device`` (kept until another one is asked for)."""
        from modules.engine.upscale_models import load_upscale_model

        item = self.require(name)
        extra = self.extra_architectures()
        key = (item.version(), f"{device}{' +extra' if extra else ''}")
        with self._lock:
            if self._loaded is not None and self._loaded[0] == key:
                return self._loaded[1]
            self._loaded = None  # the previous model's memory goes before the next one loads
            loaded = load_upscale_model(item.path, device, extra)  # type: ignore[arg-type]
            self._loaded = (key, loaded)
            self._scales[item.version()] = loaded.scale
            return loaded

    def upscale(self, image: Image.Image, name: str, size: tuple[int, int], device: object = "cpu") -> Image.Image:
        """``image`` upscaled by the named model to exactly ``size`` (width, height)."""
        from modules.engine.upscale_models import upscale_to
        from modules.engine.upscale_tiles import TileSettings

        model = self.model(name, device)
        tiles = self.tiles()
        return upscale_to(model, image, size, TileSettings(tiles.tile, tiles.overlap))

    def release(self) -> None:
        """Forget the loaded model (its memory is freed with it)."""
        with self._lock:
            self._loaded = None

"""The host as extensions see it (:class:`Host`) and their settings store; extensions import both
from :mod:`modules.extension_api`, which re-exports them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from modules.params import GenerationRequest, GenerationResult


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

    def model_dirs(self, kind: str) -> tuple[Path, ...]:
        """v2: the folders models of ``kind`` live in (A1111's folder names: "ControlNet", "clip_vision",
        "ControlNetAnnotators", ...): ``<models dir>/<kind>`` first (where downloads go), then the folder
        a flag adds (``--controlnet-dir`` for "ControlNet"). On a Ray worker: the worker's own folders."""
        ...

    def download(self, url: str, kind: str, file_name: str, sha256: str) -> Path:
        """v2: ``model_dirs(kind)[0] / file_name``, fetched from ``url`` first when it is not there
        (progress in the log, the SHA-256 checked, written atomically; one download per file at a
        time). DownloadError naming the address and the folder to put the file in when it cannot."""
        ...

    def sha256(self, path: Path) -> str:
        """v2: the file's SHA-256 in hex, cached (by size and modification time) across runs."""
        ...


class ExtensionSettings(Protocol):
    """A small persisted key -> value store per extension (kept in the data dir)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...

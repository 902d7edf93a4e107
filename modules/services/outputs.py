"""The "store" half of a job, on the front: extensions' AFTER_IMAGE hooks, the PNG on disk,
IMAGE_SAVED, the grid.

In process, the renderer hands each batch to a :class:`StoreSink` as it finishes, so images are on
disk while the job goes on. A remote worker only renders (:class:`RenderedJob`: PNG bytes with their
infotext, no paths); the front then stores what came back with :meth:`OutputStore.store`, so no
folder is shared between hosts and files are named by one process.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from PIL import Image

from modules.extension_api import Hook
from modules.params import GeneratedImage, GenerationRequest, GenerationResult
from modules.services.extensions import ExtensionManager
from modules.services.images import ImageSaver, OutputKind, make_grid, png_bytes

if TYPE_CHECKING:  # the renderer imports torch; the store only reads what it hands over
    from modules.services.renderer import RenderedJob, Rendering

log = logging.getLogger(__name__)


def _decode(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


class OutputStore:
    """Runs the saving hooks and writes images; one per front process."""

    def __init__(self, saver: ImageSaver, extensions: ExtensionManager, save_grid: bool) -> None:
        self.saver = saver
        self.extensions = extensions
        self.save_grid = save_grid

    def keep(self, request: GenerationRequest, images: Sequence[Image.Image], first: int, texts: Sequence[str],
             notes: list[str]) -> tuple[list[GeneratedImage], list[Image.Image]]:
        """Each image after the extensions' AFTER_IMAGE hooks, saved with its infotext; and those
        final images (for the grid)."""
        kind = OutputKind.IMG2IMG if request.is_img2img else OutputKind.TXT2IMG
        saved, final = [], []
        for offset, (image, text) in enumerate(zip(images, texts)):
            index, seed = first + offset, request.seed_for(first + offset)
            image = self.extensions.after_image(request, image, seed, index)
            output = self.output(request, png_bytes(image, text), text, kind, seed, index, notes)
            self.extensions.image_saved(request, output.path, text, seed, index)
            saved.append(output)
            final.append(image)
        return saved, final

    def output(self, request: GenerationRequest, data: bytes, text: str, kind: OutputKind, seed: int, index: int,
               notes: list[str]) -> GeneratedImage:
        """The encoded image, saved when the request asks (a failed save becomes a note, not an error)."""
        path = None
        if request.save_images:
            try:
                path = self.saver.save_png(data, kind, None if kind.is_grid else seed)
            except OSError as exc:  # disk full, folder gone, permissions: the image still goes back
                log.error("Could not save the %s image of seed %d: %s", kind.value, seed, exc)
                notes.append(f"Could not save an image to {kind.value} ({exc.strerror or exc}); "
                             "it is shown here but not on disk.")
        return GeneratedImage(path=path, seed=seed, infotext=text, index=index, png=data)

    def grid(self, request: GenerationRequest, saved: Sequence[GeneratedImage], pixels: Sequence[Image.Image],
             notes: list[str]) -> GeneratedImage | None:
        """A grid for jobs of more than one image, with the first image's parameters."""
        if not self.save_grid or len(saved) <= 1:
            return None
        kind = OutputKind.IMG2IMG_GRID if request.is_img2img else OutputKind.TXT2IMG_GRID
        text = saved[0].infotext
        return self.output(request, png_bytes(make_grid(pixels), text), text, kind, saved[0].seed, -1, notes)

    def store(self, rendered: RenderedJob) -> GenerationResult:
        """Save what a remote worker rendered, as the in-process worker would have: hooks, files, grid."""
        result, notes = rendered.result, []
        for title, architecture in rendered.model_loads:
            self.extensions.model_loaded(title, architecture)
        for image in rendered.first_pass:
            self._keep_png(result.request, image, notes)
        saved, pixels = [], []
        for image in result.images:
            output, pixel = self._keep_png(result.request, image, notes)
            saved.append(output)
            pixels.append(pixel)
        grid = None
        if self.save_grid and len(saved) > 1:
            grid = self.grid(result.request, saved, [p if p is not None else _decode(s.png)
                                                     for p, s in zip(pixels, saved)], notes)
        return replace(result, images=tuple(saved), grid=grid, warnings=result.warnings + tuple(dict.fromkeys(notes)))

    def _keep_png(self, request: GenerationRequest, image: GeneratedImage,
                  notes: list[str]) -> tuple[GeneratedImage, Image.Image | None]:
        """One rendered image stored; decoded (and encoded again) only when an AFTER_IMAGE hook may change it."""
        kind = OutputKind.IMG2IMG if request.is_img2img else OutputKind.TXT2IMG
        data, pixels = image.png, None
        if self.extensions.has(Hook.AFTER_IMAGE):
            pixels = self.extensions.after_image(request, _decode(data), image.seed, image.index)
            data = png_bytes(pixels, image.infotext)
        output = self.output(request, data, image.infotext, kind, image.seed, image.index, notes)
        self.extensions.image_saved(request, output.path, image.infotext, image.seed, image.index)
        return output, pixels


@dataclass
class StoreSink:
    """The in-process sink: each batch stored as it finishes (hooks, file), kept for the result."""

    outputs: OutputStore
    saved: list[GeneratedImage] = field(default_factory=list)
    pixels: list[Image.Image] = field(default_factory=list)  # what was saved, extensions' changes included
    notes: list[str] = field(default_factory=list)  # problems the caller should hear of (a failed save)

    def batch(self, request: GenerationRequest, images: list[Image.Image], first: int,
              texts: list[str]) -> list[Image.Image]:
        saved, finals = self.outputs.keep(request, images, first, texts, self.notes)
        self.saved += saved
        self.pixels += finals
        return finals

    def first_pass(self, request: GenerationRequest, images: list[Image.Image], first: int, texts: list[str]) -> None:
        self.outputs.keep(request, images, first, texts, self.notes)

    def result(self, rendering: Rendering) -> GenerationResult:
        """The job's result: what was stored, a grid for more than one image, every warning."""
        grid = self.outputs.grid(rendering.request, self.saved, self.pixels, self.notes)
        return GenerationResult(request=rendering.request, images=tuple(self.saved), grid=grid,
                                interrupted=rendering.interrupted, model_title=rendering.models.checkpoint_title,
                                elapsed_seconds=rendering.elapsed_seconds,
                                warnings=rendering.warnings + tuple(dict.fromkeys(self.notes)), models=rendering.models)

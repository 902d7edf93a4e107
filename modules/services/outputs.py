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
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from modules.extension_api import Hook
from modules.extension_helpers import png_with_infotext as png_bytes
from modules.infotext import parse_infotext
from modules.params import GeneratedImage, GenerationRequest, GenerationResult
from modules.services import image_format
from modules.services.extensions import ExtensionManager
from modules.services.filename_pattern import NameContext
from modules.services.images import ImageSaver, OutputKind, grid_rows, make_grid

if TYPE_CHECKING:  # the renderer imports torch; the store only reads what it hands over
    from modules.services.renderer import RenderedJob, Rendering

log = logging.getLogger(__name__)


def _decode(png: bytes) -> Image.Image:
    with Image.open(io.BytesIO(png)) as image:
        return image.convert("RGB")


def name_context(request: GenerationRequest, text: str, seed: int | None, index: int, size: tuple[int, int],
                 job_time: datetime, now: datetime, grid: bool = False) -> NameContext:
    """What the file name tags read for one image: its own prompt and parameters (from its infotext,
    so a script's per-image prompt counts), its seed, its batch, the job's start."""
    parsed = parse_infotext(text)
    params = parsed.params
    batch = max(index, 0) // request.batch_size
    return NameContext(
        seed=seed, prompt=parsed.prompt or request.prompt, negative_prompt=parsed.negative_prompt,
        steps=request.steps, cfg=request.cfg_scale, width=size[0], height=size[1], sampler=request.sampler,
        scheduler=params.get("Schedule type", ""), model_name=params.get("Model", ""),
        model_hash=params.get("Model hash", ""), styles=request.applied_styles,
        first_seed=request.seed_for(0), last_seed=request.seed_for(request.batch_count * request.batch_size - 1),
        batch_size=request.batch_size, batch_index=max(index, 0) % request.batch_size, iteration=batch,
        batch_count=request.batch_count,
        denoising=request.denoising_strength if request.is_img2img else None, clip_skip=request.clip_skip,
        job_timestamp=job_time, now=now, grid=grid, owner=request.owner)


class SaveLedger(Protocol):
    """Which files each job saved (the job store): a job run again after a restart reuses them."""

    def saved_file(self, job_id: str, kind: str, index: int) -> Path | None: ...

    def record_file(self, job_id: str, kind: str, index: int, path: Path, seed: int | None) -> None: ...


class OutputStore:
    """Runs the saving hooks and writes images as the saving settings (the saver's) say; one per front process."""

    def __init__(self, saver: ImageSaver, extensions: ExtensionManager, ledger: SaveLedger | None = None) -> None:
        self.saver = saver
        self.extensions = extensions
        self.ledger = ledger

    def keep(self, request: GenerationRequest, images: Sequence[Image.Image], first: int, texts: Sequence[str],
             notes: list[str], job_time: datetime | None = None,
             first_pass: bool = False) -> tuple[list[GeneratedImage], list[Image.Image]]:
        """Each image after the extensions' AFTER_IMAGE hooks, saved with its infotext; and those
        final images (for the grid)."""
        kind = OutputKind.IMG2IMG if request.is_img2img else OutputKind.TXT2IMG
        saved, final = [], []
        for offset, (image, text) in enumerate(zip(images, texts)):
            index, seed = first + offset, request.seed_for(first + offset)
            image = self.extensions.after_image(request, image, seed, index, notes)
            output = self.output(request, png_bytes(image, text), text, kind, seed, index, notes, job_time, image,
                                 first_pass=first_pass)
            self.extensions.image_saved(request, output.path, text, seed, index, notes)
            saved.append(output)
            final.append(image)
        return saved, final

    def output(self, request: GenerationRequest, data: bytes, text: str, kind: OutputKind, seed: int, index: int,
               notes: list[str], job_time: datetime | None = None, image: Image.Image | None = None,
               save: bool = True, first_pass: bool = False) -> GeneratedImage:
        """The encoded image (PNG), saved when the request asks in the format the settings name
        (a failed save becomes a note, not an error). A job's image saved before (the job ran again
        after a restart) is not written again: the ledger gives its file."""
        path = None
        if request.save_images and save:
            try:
                key = f"{kind.value}-first-pass" if first_pass else kind.value  # hires fix's first pass: its own file
                job_id, ledger = request.job_id, self.ledger
                path = ledger.saved_file(job_id, key, index) if ledger is not None and job_id is not None else None
                if path is None:
                    path = self._save(request, data, text, kind, seed, index, job_time, image)
                    if ledger is not None and job_id is not None:
                        ledger.record_file(job_id, key, index, path, seed)
            except (OSError, ValueError) as exc:  # disk full, folder gone or outside its root, EXIF too long
                log.error("Could not save the %s image of seed %d: %s", kind.value, seed, exc)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                notes.append(f"Could not save an image to {kind.value} ({reason}); it is shown here but not on disk.")
        return GeneratedImage(path=path, seed=seed, infotext=text, index=index, png=data)

    def _save(self, request: GenerationRequest, data: bytes, text: str, kind: OutputKind, seed: int, index: int,
              job_time: datetime | None, image: Image.Image | None) -> Path:
        settings = self.saver.settings()
        pixels = image if image is not None else _decode(data)
        fmt = image_format.effective_format(settings.grid_format if kind.is_grid else settings.samples_format,
                                            pixels.size, text)
        encoded = data if fmt == "png" else image_format.encode(pixels, text, fmt, settings.jpeg_quality)
        now = self.saver.now()
        ctx = name_context(request, text, seed, index, pixels.size, job_time or now, now, kind.is_grid)
        return self.saver.save_encoded(encoded, fmt, text, kind, ctx)

    def grid(self, request: GenerationRequest, saved: Sequence[GeneratedImage], pixels: Sequence[Image.Image],
             notes: list[str], job_time: datetime | None = None) -> GeneratedImage | None:
        """A1111's grid for jobs of more than one image, with the first image's parameters: made when
        ``return_grid`` or ``grid_save``, saved when ``grid_save``, in the result when ``return_grid``;
        ``n_rows`` rows (-1: about square, 0: the batch size)."""
        settings = self.saver.settings()
        if not (settings.save_grid or settings.return_grid) or len(saved) <= 1:
            return None
        kind = OutputKind.IMG2IMG_GRID if request.is_img2img else OutputKind.TXT2IMG_GRID
        text = saved[0].infotext
        picture = make_grid(pixels, grid_rows(len(pixels), settings.n_rows, request.batch_size))
        grid = self.output(request, png_bytes(picture, text), text, kind, saved[0].seed, -1, notes, job_time, picture,
                           save=settings.save_grid)
        return grid if settings.return_grid else None

    def store(self, rendered: RenderedJob) -> GenerationResult:
        """Save what a remote worker rendered, as the in-process worker would have: hooks, files, grid."""
        result, notes = rendered.result, []
        for title, architecture in rendered.model_loads:
            self.extensions.model_loaded(title, architecture)
        for image in rendered.first_pass:
            self._keep_png(result.request, image, notes, first_pass=True)
        saved, pixels = [], []
        for image in result.images:
            output, pixel = self._keep_png(result.request, image, notes)
            saved.append(output)
            pixels.append(pixel)
        grid = None
        if len(saved) > 1:
            job_time = self.saver.now() - timedelta(seconds=result.elapsed_seconds or 0)
            grid = self.grid(result.request, saved, [p if p is not None else _decode(s.png)
                                                     for p, s in zip(pixels, saved)], notes, job_time)
        return replace(result, images=tuple(saved), grid=grid, warnings=result.warnings + tuple(dict.fromkeys(notes)))

    def _keep_png(self, request: GenerationRequest, image: GeneratedImage, notes: list[str],
                  first_pass: bool = False) -> tuple[GeneratedImage, Image.Image | None]:
        """One rendered image stored; decoded (and encoded again) only when an AFTER_IMAGE hook may change it."""
        kind = OutputKind.IMG2IMG if request.is_img2img else OutputKind.TXT2IMG
        data, pixels = image.png, None
        if self.extensions.has(Hook.AFTER_IMAGE):
            pixels = self.extensions.after_image(request, _decode(data), image.seed, image.index, notes)
            data = png_bytes(pixels, image.infotext)
        output = self.output(request, data, image.infotext, kind, image.seed, image.index, notes, first_pass=first_pass)
        self.extensions.image_saved(request, output.path, image.infotext, image.seed, image.index, notes)
        return output, pixels


@dataclass
class StoreSink:
    """The in-process sink: each batch stored as it finishes (hooks, file), kept for the result."""

    outputs: OutputStore
    saved: list[GeneratedImage] = field(default_factory=list)
    pixels: list[Image.Image] = field(default_factory=list)  # what was saved, extensions' changes included
    notes: list[str] = field(default_factory=list)  # problems the caller should hear of (a failed save)
    started: datetime = field(default_factory=datetime.now)  # the job's start: A1111's [job_timestamp]

    def batch(self, request: GenerationRequest, images: list[Image.Image], first: int,
              texts: list[str]) -> list[Image.Image]:
        saved, finals = self.outputs.keep(request, images, first, texts, self.notes, self.started)
        self.saved += saved
        self.pixels += finals
        return finals

    def first_pass(self, request: GenerationRequest, images: list[Image.Image], first: int, texts: list[str]) -> None:
        self.outputs.keep(request, images, first, texts, self.notes, self.started, first_pass=True)

    def result(self, rendering: Rendering) -> GenerationResult:
        """The job's result: what was stored, a grid for more than one image, every warning."""
        grid = self.outputs.grid(rendering.request, self.saved, self.pixels, self.notes, self.started)
        return GenerationResult(request=rendering.request, images=tuple(self.saved), grid=grid,
                                interrupted=rendering.interrupted, model_title=rendering.models.checkpoint_title,
                                elapsed_seconds=rendering.elapsed_seconds,
                                warnings=rendering.warnings + tuple(dict.fromkeys(self.notes)), models=rendering.models)

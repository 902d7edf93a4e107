"""The Extras front: one path for the Extras tab and ``/sdapi/v1/extra-single-image`` /
``/extra-batch-images``, and the upscale that extensions (SD upscale) ask for.

The front owns a job until it is queued and after it is done (:meth:`ExtrasService.run`):
1. every value and name is checked and every image read (its size known) before any work; an
upscaler, a face restorer or a result size that cannot be had is a 422 naming it; 2. the job is
queued like a generation, so upscaler models share the GPU with no one; 3. what comes back is
saved to ``outputs/extras-images`` when the request says so (the UI's results; A1111's API does not
save), in ``samples_format`` as A1111 saves them. Folders a batch may read from are the inputs and
outputs folders only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from PIL import Image

from modules.errors import AddonNotFoundError, FieldError, ValidationError
from modules.services.extras_request import (
    MAX_BATCH,
    NO_UPSCALER,
    ExtrasImage,
    ExtrasRequest,
    ResizeMode,
    check_values,
    output_size,
)
from modules.services.extras_run import ExtrasOutput, encode_as
from modules.services.image_input import decode_image
from modules.services.image_upscale import image_upscaler, upscale_by
from modules.services.images import ImageSaver
from modules.services.job_types import ExtrasJob, Job
from modules.services.queue_contract import JobQueueContract
from modules.services.upscaler_library import UpscalerLibrary

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_FILE_BYTES = 64 * 1024 * 1024  # an image file in a batch folder larger than this is refused


class FaceChecks(Protocol):
    def require(self, name: str, field: str) -> None: ...


@dataclass(frozen=True)
class ExtrasResult:
    """The processed images (PNG bytes with their texts), each encoded as ``samples_format`` said
    when the job finished, and where each was saved (None: not saved)."""

    outputs: tuple[ExtrasOutput, ...]
    encoded: tuple[bytes, ...]
    paths: tuple[Path | None, ...]
    interrupted: bool = False

    @property
    def infotext(self) -> str:
        """The last image's postprocessing text, as A1111's Extras shows it."""
        return self.outputs[-1].infotext if self.outputs else ""

    def images(self) -> list[Image.Image]:
        return [Image.open(io.BytesIO(output.png)) for output in self.outputs]


class ExtrasService:
    """Checks, queues and stores Extras jobs."""

    def __init__(self, queue: JobQueueContract, upscalers: UpscalerLibrary, faces: FaceChecks | None,
                 saver: ImageSaver, max_size: Callable[[], int], input_roots: Sequence[Path]) -> None:
        self.queue = queue
        self.upscalers = upscalers
        self.faces = faces
        self.saver = saver
        self._max_size = max_size  # the max_image_size in force
        self.input_roots = tuple(input_roots)

    # --- checks -------------------------------------------------------------------------------

    def prepare(self, request: ExtrasRequest) -> ExtrasRequest:
        """``request`` checked: values, upscaler and restorer names, every image readable and its
        result within ``max_image_size``. ValidationError naming each problem."""
        max_size = self._max_size()
        check_values(request, max_size)
        errors: list[FieldError] = []
        self._check_upscalers(request, errors)
        self._check_faces(request, errors)
        if errors:
            raise ValidationError(errors)
        for index, item in enumerate(request.images):
            field = "image" if len(request.images) == 1 else f"imageList.{index}"
            image = decode_image(item.data, field)
            width, height = output_size(request, image.width, image.height)
            if max(width, height) > max_size:
                errors.append(FieldError(field, f"would become {width}x{height}; the largest side allowed is "
                                                f"{max_size} px (max_image_size)"))
        if errors:
            raise ValidationError(errors)
        return request

    def _check_upscalers(self, request: ExtrasRequest, errors: list[FieldError]) -> None:
        wanted = [("upscaler_1", request.upscaler_1)] if request.upscales else []
        if request.blends_second:
            wanted.append(("upscaler_2", request.upscaler_2))
        for field, name in wanted:
            try:
                image_upscaler(name, self.upscalers)
            except AddonNotFoundError as exc:
                errors.append(FieldError(field, str(exc)))

    def _check_faces(self, request: ExtrasRequest, errors: list[FieldError]) -> None:
        for name, field, visibility in (("GFPGAN", "gfpgan_visibility", request.gfpgan_visibility),
                                        ("CodeFormer", "codeformer_visibility", request.codeformer_visibility)):
            if visibility <= 0:
                continue
            if self.faces is None:
                errors.append(FieldError(field, "face restoration is not available on this server"))
                continue
            try:
                self.faces.require(name, field)
            except ValidationError as exc:
                errors += exc.errors

    # --- running ------------------------------------------------------------------------------

    def submit(self, request: ExtrasRequest, owner: str | None = None) -> Job:
        return self.queue.submit(ExtrasJob(self.prepare(request)), owner)

    def finish(self, request: ExtrasRequest, job: Job) -> ExtrasResult:
        """The stored result of a finished job: each image encoded as ``samples_format`` (at
        ``jpeg_quality``) and saved so when the request says so."""
        outputs = tuple(job.future.result())
        settings = self.saver.settings()
        files = [encode_as(output, settings.samples_format, settings.jpeg_quality) for output in outputs]
        paths = tuple(self.saver.save_extras(data, output.name, fmt) if request.save else None
                      for output, (data, fmt) in zip(outputs, files))
        return ExtrasResult(outputs, tuple(data for data, _ in files), paths,
                            interrupted=len(outputs) < len(request.images))

    def run(self, request: ExtrasRequest, owner: str | None = None) -> ExtrasResult:
        """Check, queue, wait, store: for callers on their own thread (the UI, extensions)."""
        job = self.submit(request, owner)
        return self.finish(request, job)

    def upscale(self, image: Image.Image, upscaler: str, factor: float, owner: str | None = None) -> Image.Image:
        """``image`` upscaled by ``factor`` (A1111's Upscaler.upscale), not saved: a queued job on the
        worker; "None" (a plain Lanczos resize to the target, no model) right here."""
        if upscaler.strip().lower() == NO_UPSCALER.lower():
            check_values(ExtrasRequest(images=(ExtrasImage(b""),), upscaling_resize=factor), self._max_size())
            return upscale_by(image.convert("RGB"), image_upscaler(upscaler, self.upscalers), factor, self.upscalers)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        request = ExtrasRequest(images=(ExtrasImage(buffer.getvalue()),), resize_mode=ResizeMode.SCALE_BY,
                                upscaling_resize=factor, upscaler_1=upscaler)
        result = self.run(request, owner)
        if not result.outputs:
            raise ValidationError([FieldError("upscaler", "the upscale was interrupted")])
        return result.images()[0].convert("RGB")

    # --- batch from a folder ------------------------------------------------------------------

    def folder_images(self, folder: str) -> list[Path]:
        """The images in ``folder``, which must lie inside one of the input roots (after following
        links): a client's path is never trusted."""
        roots = ", ".join(str(root) for root in self.input_roots)
        if not folder.strip():
            raise ValidationError([FieldError("input_dir", f"is empty: give a folder inside {roots}")])
        raw = Path(folder.strip()).expanduser()
        candidates = [raw] if raw.is_absolute() else [root / raw for root in self.input_roots]
        for candidate in candidates:
            resolved = candidate.resolve()
            if self._inside(resolved) and resolved.is_dir():
                files = sorted(p for p in resolved.iterdir()
                               if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and self._inside(p.resolve()))
                too_big = [p.name for p in files if p.stat().st_size > MAX_FILE_BYTES]
                if too_big:
                    raise ValidationError([FieldError("input_dir", f"{', '.join(too_big[:5])}: larger than "
                                                                   f"{MAX_FILE_BYTES // 2**20} MiB")])
                if not files:
                    raise ValidationError([FieldError("input_dir", f"{folder!r} holds no PNG, JPEG or WEBP images")])
                return files
        raise ValidationError([FieldError("input_dir", f"{folder!r} is not a folder inside {roots}")])

    def _inside(self, path: Path) -> bool:
        return any(path.is_relative_to(root.resolve()) for root in self.input_roots)

    def run_folder(self, request: ExtrasRequest, folder: str, owner: str | None = None) -> ExtrasResult:
        """Every image of ``folder``, :data:`MAX_BATCH` per job, in order."""
        files = self.folder_images(folder)
        outputs: list[ExtrasOutput] = []
        encoded: list[bytes] = []
        paths: list[Path | None] = []
        for start in range(0, len(files), MAX_BATCH):
            chunk = tuple(ExtrasImage(path.read_bytes(), path.name) for path in files[start:start + MAX_BATCH])
            result = self.run(replace(request, images=chunk), owner)
            outputs += result.outputs
            encoded += result.encoded
            paths += result.paths
            if result.interrupted:
                return ExtrasResult(tuple(outputs), tuple(encoded), tuple(paths), interrupted=True)
        return ExtrasResult(tuple(outputs), tuple(encoded), tuple(paths))

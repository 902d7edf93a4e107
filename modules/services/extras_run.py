"""The worker side of an Extras job: each image restored and upscaled as A1111's Extras does it.

Per image (:func:`process_image`): 1. face restoration (GFPGAN, then CodeFormer, each blended in
by its visibility) unless ``upscale_first``; 2. the upscale (by a factor, or to a size with an
optional centred crop; upscaler 2 upscales the same input and is blended in by its visibility);
3. face restoration here instead when ``upscale_first``. What was done is written as A1111's
postprocessing infotext (``Postprocess upscale by: 2, Postprocess upscaler: Lanczos``); the
image's own parameters are kept beside it. The worker hands back PNG; :func:`encode_as` turns a
result into ``samples_format`` (JPEG/WebP carry one text, in EXIF UserComment: :func:`exif_text`).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules.infotext import parse_infotext
from modules.services import image_format
from modules.services.extras_request import ExtrasRequest, ResizeMode
from modules.services.image_input import decode_image
from modules.services.image_upscale import image_upscaler, upscale_by
from modules.services.images import PARAMETERS_KEY, infotext_of
from modules.services.job_types import ExtrasJob, JobContext
from modules.services.upscaler_library import UpscalerLibrary

POSTPROCESSING_KEY = "postprocessing"  # A1111's PNG text chunk for what Extras did
EXTRAS_KEY = "extras"  # the section A1111's saver writes it under too


class FaceRestoring(Protocol):
    """What Extras needs of the face restorers (:class:`modules.services.face_restorers.FaceRestorers`)."""

    def restore(self, image: Image.Image, name: str, codeformer_weight: float = 0.5,
                device: object = "cpu") -> Image.Image: ...

    def require(self, name: str, field: str) -> None: ...


@dataclass(frozen=True)
class ExtrasOutput:
    """One processed image: PNG bytes carrying the source's parameters and the postprocessing text."""

    png: bytes
    infotext: str  # what Extras did, A1111's "postprocessing" text ("" when nothing was)
    source_parameters: str | None  # the input's own generation parameters, kept
    name: str  # the input's name (batch), "" for a single image


def format_value(value: object) -> str:
    """An infotext value as A1111 writes it: ``2`` for 2.0, quoted when it holds a comma or colon."""
    if isinstance(value, float):
        value = round(value, 3)
        text = f"{value:g}" if value != int(value) else str(int(value))
    else:
        text = str(value)
    return f'"{text}"' if any(c in text for c in ",:\n\"") else text


def infotext_of_steps(info: dict[str, object]) -> str:
    return ", ".join(f"{key}: {format_value(value)}" for key, value in info.items())


def _restore_faces(image: Image.Image, request: ExtrasRequest, faces: FaceRestoring | None, device: object,
                   info: dict[str, object]) -> Image.Image:
    """GFPGAN, then CodeFormer, each blended over the image by its visibility (A1111's order)."""
    for name, visibility in (("GFPGAN", request.gfpgan_visibility), ("CodeFormer", request.codeformer_visibility)):
        if visibility <= 0:
            continue
        assert faces is not None  # the front refuses face restoration when there is no restorer
        restored = faces.restore(image, name, codeformer_weight=request.codeformer_weight, device=device)
        image = restored if visibility >= 1.0 else Image.blend(image, restored.convert(image.mode), visibility)
        info[f"{name} visibility"] = visibility
        if name == "CodeFormer":
            info["CodeFormer weight"] = request.codeformer_weight
    return image


def _upscale_one(image: Image.Image, name: str, request: ExtrasRequest, library: UpscalerLibrary,
                 device: object, info: dict[str, object]) -> Image.Image:
    """One upscaler's result, as A1111's Extras "Upscale" step makes it."""
    spec = image_upscaler(name, library)
    if request.resize_mode is ResizeMode.SCALE_TO:
        width, height = request.upscaling_resize_w, request.upscaling_resize_h
        factor = max(width / image.width, height / image.height)
        info["Postprocess upscale to"] = f"{width}x{height}"
    else:
        factor = request.upscaling_resize
        info["Postprocess upscale by"] = factor
    result = upscale_by(image, spec, factor, library, device)
    if request.resize_mode is ResizeMode.SCALE_TO and request.upscaling_crop:
        cropped = Image.new("RGB", (width, height))
        cropped.paste(result, box=(width // 2 - result.width // 2, height // 2 - result.height // 2))
        result = cropped
        info["Postprocess crop to"] = f"{width}x{height}"
    return result


def _upscale(image: Image.Image, request: ExtrasRequest, library: UpscalerLibrary, device: object,
             info: dict[str, object]) -> Image.Image:
    if not request.upscales:
        return image
    upscaled = _upscale_one(image, request.upscaler_1, request, library, device, info)
    info["Postprocess upscaler"] = image_upscaler(request.upscaler_1, library).name
    if request.blends_second:
        second = _upscale_one(image, request.upscaler_2, request, library, device, info)
        upscaled = Image.blend(upscaled, second.convert(upscaled.mode), request.upscaler_2_visibility)
        info["Postprocess upscaler 2"] = image_upscaler(request.upscaler_2, library).name
    return upscaled


def process_image(image: Image.Image, request: ExtrasRequest, library: UpscalerLibrary,
                  faces: FaceRestoring | None, device: object = "cpu") -> tuple[Image.Image, str]:
    """``image`` (RGB) through the steps the request asks for; and A1111's postprocessing infotext."""
    info: dict[str, object] = {}
    if not request.upscale_first:
        image = _restore_faces(image, request, faces, device, info)
    image = _upscale(image, request, library, device, info)
    if request.upscale_first:
        image = _restore_faces(image, request, faces, device, info)
    return image, infotext_of_steps(info)


def encode_output(image: Image.Image, infotext: str, source_parameters: str | None) -> bytes:
    """PNG bytes with the source's ``parameters`` kept and what Extras did under ``postprocessing``
    (and ``extras``, the section A1111's saver writes)."""
    chunks = PngInfo()
    if source_parameters:
        chunks.add_text(PARAMETERS_KEY, source_parameters)
    if infotext:
        chunks.add_text(POSTPROCESSING_KEY, infotext)
        chunks.add_text(EXTRAS_KEY, infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=chunks)
    return buffer.getvalue()


def exif_text(infotext: str, source_parameters: str | None) -> str:
    """The one text a JPEG or WebP result carries. A1111 saves the postprocessing text alone, which
    loses the source's generation parameters; here those are kept, with what Extras did added to
    their parameters line (a new line when the source has none), so PNG Info reads both."""
    source = (source_parameters or "").rstrip()
    if not source.strip():
        return infotext
    if not infotext:
        return source
    joiner = ", " if parse_infotext(source).params else "\n"
    return f"{source}{joiner}{infotext}"


def encode_as(output: ExtrasOutput, fmt: str, quality: int) -> tuple[bytes, str]:
    """``output`` encoded as ``fmt`` (``samples_format``) at ``quality`` (``jpeg_quality``), and the
    format written: PNG keeps its ``parameters`` and ``postprocessing`` chunks; JPEG and WebP carry
    :func:`exif_text` in EXIF UserComment; an image too large for its format stays PNG, as in A1111."""
    with Image.open(io.BytesIO(output.png)) as image:
        image.load()
    text = exif_text(output.infotext, output.source_parameters)
    fmt = image_format.effective_format(fmt, image.size, text)
    if fmt == "png":
        return output.png, fmt
    return image_format.encode(image, text, fmt, quality), fmt


def run_extras(request: ExtrasRequest, library: UpscalerLibrary, faces: FaceRestoring | None, device: object,
               on_image: Callable[[int, int], bool]) -> list[ExtrasOutput]:
    """Every image of the request, in order; ``on_image(index, count)`` is told before each and
    answers False to stop (an interrupt): the images done so far are returned."""
    outputs: list[ExtrasOutput] = []
    for index, item in enumerate(request.images):
        if not on_image(index, len(request.images)):
            break
        source = decode_image(item.data, "image")
        parameters = infotext_of(source)
        image, text = process_image(source.convert("RGB"), request, library, faces, device)
        outputs.append(ExtrasOutput(encode_output(image, text, parameters), text, parameters, item.name))
    return outputs


@dataclass(frozen=True)
class ExtrasWorker:
    """Runs :class:`ExtrasJob` s on the worker that owns the device (in process, or the Ray front)."""

    upscalers: UpscalerLibrary
    faces: FaceRestoring | None
    device: Callable[[], object]  # where models run: the engine's device, known once it is built

    def __call__(self, job: ExtrasJob, context: JobContext) -> list[ExtrasOutput]:
        def next_image(index: int, count: int) -> bool:
            if context.interrupted:
                return False
            context.begin_batch(index, count, 1)
            return True

        return run_extras(job.request, self.upscalers, self.faces, self.device(), next_image)

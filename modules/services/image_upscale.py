"""Upscaling one image by a factor, as A1111's ``Upscaler.upscale`` does it (Extras, SD upscale).

The target is the image's size times the factor, rounded down to a multiple of 8. An image
upscaler resizes by the factor (Lanczos or Nearest; "None" leaves the image as it is), a model
upscaler runs its model until the image covers the target (at most three passes); either way the
result is then resized to the target exactly with Lanczos. Runs where it is called: the Extras job
runs it on the worker.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from modules.errors import AddonNotFoundError
from modules.services.image_prep import Resize, lanczos
from modules.services.upscaler_library import UpscalerLibrary
from modules.upscalers import UpscalerKind, UpscalerSpec, find_upscaler, upscaler_names

MULTIPLE = 8  # A1111 rounds an upscale's target size down to a multiple of 8
LANCZOS = Image.Resampling.LANCZOS


@dataclass(frozen=True)
class ScaleTarget:
    """Where an upscale by ``factor`` of a ``width`` x ``height`` image lands."""

    width: int
    height: int

    @classmethod
    def of(cls, width: int, height: int, factor: float) -> ScaleTarget:
        return cls(int((width * factor) // MULTIPLE * MULTIPLE), int((height * factor) // MULTIPLE * MULTIPLE))


def image_upscaler(name: str, library: UpscalerLibrary) -> UpscalerSpec:
    """The Extras/SD upscale upscaler called ``name``: an image upscaler (None, Lanczos, Nearest) or a
    model; latent modes work on latents and are not one. AddonNotFoundError listing the names."""
    models = library.names()
    spec = find_upscaler(name, models)
    if spec is None or spec.kind is UpscalerKind.LATENT:
        names = [n for n in upscaler_names(models) if find_upscaler(n, models).kind is not UpscalerKind.LATENT]  # type: ignore[union-attr]
        raise AddonNotFoundError("upscaler", name, names)
    return spec


def upscale_by(image: Image.Image, spec: UpscalerSpec, factor: float, library: UpscalerLibrary,
               device: object = "cpu") -> Image.Image:
    """``image`` upscaled by ``factor`` with the upscaler ``spec``, at :meth:`ScaleTarget.of`'s size."""
    target = ScaleTarget.of(image.width, image.height, factor)
    size = (target.width, target.height)
    if spec.kind is UpscalerKind.MODEL:
        return library.upscale(image, spec.name, size, device)  # passes, then Lanczos to the size
    if spec.mode != "NONE":  # one pass of A1111's resize by the factor
        resample = Image.Resampling[spec.mode]
        image = image.resize((int(image.width * factor), int(image.height * factor)), resample=resample)
    if image.size != size:
        image = image.resize(size, resample=LANCZOS)
    return image


def enlarging_resize(name: str | None, library: UpscalerLibrary | None, device: object = "cpu") -> Resize:
    """A1111's resize of an img2img init image: Lanczos; with an upscaler chosen
    (``upscaler_for_img2img``), an enlargement first runs it by the factor that covers the size."""
    if not name or name.strip().lower() == "none" or library is None:
        return lanczos
    spec = image_upscaler(name, library)

    def resize(image: Image.Image, width: int, height: int) -> Image.Image:
        factor = max(width / image.width, height / image.height)
        if factor > 1.0:
            image = upscale_by(image, spec, factor, library, device)
        return lanczos(image, width, height)

    return resize

"""The upscaler table for hires fix: latent modes and image resampling, by A1111's names.

Pure data (no torch): the UI, the API (``/sdapi/v1/upscalers``, ``/latent-upscale-modes``) and
request validation read names from here; the engine acts on ``kind`` and ``mode``. Latent modes
resize the latents between the two passes (fast, and the second pass must repaint the blur);
image upscalers decode, resize the pixels and encode again; model upscalers (files in the models
folders, found by :mod:`modules.services.upscaler_library`, whose names callers pass in) decode,
run the model, resize to the hires size and encode again.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass


class UpscalerKind(enum.Enum):
    LATENT = "latent"  # torch interpolation of the latents
    IMAGE = "image"  # PIL resampling of the decoded image
    MODEL = "model"  # an upscaler model file (ESRGAN, Real-ESRGAN, SwinIR, ...) on the decoded image


@dataclass(frozen=True)
class UpscalerSpec:
    name: str  # A1111's label, as the UI, the API and the infotext write it
    kind: UpscalerKind
    mode: str  # torch.nn.functional.interpolate mode, or a PIL resampling filter name
    antialias: bool = False


UPSCALERS: tuple[UpscalerSpec, ...] = (
    UpscalerSpec("Latent", UpscalerKind.LATENT, "bilinear"),
    UpscalerSpec("Latent (antialiased)", UpscalerKind.LATENT, "bilinear", antialias=True),
    UpscalerSpec("Latent (bicubic)", UpscalerKind.LATENT, "bicubic"),
    UpscalerSpec("Latent (bicubic antialiased)", UpscalerKind.LATENT, "bicubic", antialias=True),
    UpscalerSpec("Latent (nearest)", UpscalerKind.LATENT, "nearest"),
    UpscalerSpec("Latent (nearest-exact)", UpscalerKind.LATENT, "nearest-exact"),
    UpscalerSpec("None", UpscalerKind.IMAGE, "NONE"),  # A1111: the image is just resized to fit
    UpscalerSpec("Lanczos", UpscalerKind.IMAGE, "LANCZOS"),
    UpscalerSpec("Nearest", UpscalerKind.IMAGE, "NEAREST"),
)
DEFAULT_UPSCALER = "Latent"


def model_upscaler(name: str) -> UpscalerSpec:
    """The spec of the upscaler model called ``name`` (its file's stem)."""
    return UpscalerSpec(name, UpscalerKind.MODEL, "LANCZOS")


def find_upscaler(name: str, models: Sequence[str] = ()) -> UpscalerSpec | None:
    """The upscaler called ``name`` (case-insensitive, as clients send it), built in or one of the
    model names in ``models``; None when there is none."""
    wanted = name.strip().lower()
    for spec in UPSCALERS:
        if spec.name.lower() == wanted:
            return spec
    for model in models:
        if model.lower() == wanted:
            return model_upscaler(model)
    return None


def upscaler_names(models: Sequence[str] = ()) -> list[str]:
    """The built-in names, then the model names (A1111's order)."""
    return [spec.name for spec in UPSCALERS] + [m for m in models if find_upscaler(m) is None]

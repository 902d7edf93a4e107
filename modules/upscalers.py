"""The upscaler table for hires fix: latent modes and image resampling, by A1111's names.

Pure data (no torch): the UI, the API (``/sdapi/v1/upscalers``, ``/latent-upscale-modes``) and
request validation read names from here; the engine acts on ``kind`` and ``mode``. Latent modes
resize the latents between the two passes (fast, and the second pass must repaint the blur);
image upscalers decode, resize the pixels and encode again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class UpscalerKind(enum.Enum):
    LATENT = "latent"  # torch interpolation of the latents
    IMAGE = "image"  # PIL resampling of the decoded image


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


def find_upscaler(name: str) -> UpscalerSpec | None:
    """The upscaler called ``name`` (case-insensitive, as clients send it), or None."""
    wanted = name.strip().lower()
    for spec in UPSCALERS:
        if spec.name.lower() == wanted:
            return spec
    return None


def upscaler_names() -> list[str]:
    return [spec.name for spec in UPSCALERS]

"""What an Extras job is asked to do (A1111's Extras tab and ``/sdapi/v1/extra-*`` fields), and the
checks every value passes before any work: ranges stated, never clamped.

Pure values, no torch: the UI and the API build an :class:`ExtrasRequest`; the front
(:mod:`modules.services.extras`) checks names and sizes against what is installed; the worker
(:mod:`modules.services.extras_run`) runs it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from modules.errors import FieldError, ValidationError
from modules.params import FRACTION_RANGE

NO_UPSCALER = "None"  # A1111: upscaler 1 "None" switches the upscale off
MIN_FACTOR, MAX_FACTOR = 1.0, 8.0  # A1111's upscaling_resize bounds
MAX_BATCH = 64  # images in one Extras job


class ResizeMode(enum.IntEnum):
    """A1111's ``resize_mode``: 0 scales by a factor, 1 scales to a size (cropping to fit, if asked)."""

    SCALE_BY = 0
    SCALE_TO = 1


@dataclass(frozen=True)
class ExtrasImage:
    """One input: its encoded bytes (PNG, JPEG, WEBP) and, for a batch, the name it came with."""

    data: bytes
    name: str = ""


@dataclass(frozen=True)
class ExtrasRequest:
    """A1111's Extras parameters; defaults as its API has them."""

    images: tuple[ExtrasImage, ...]
    resize_mode: ResizeMode = ResizeMode.SCALE_BY
    upscaling_resize: float = 2.0  # the factor, SCALE_BY
    upscaling_resize_w: int = 512  # the size, SCALE_TO
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True  # SCALE_TO: crop to exactly that size, centred
    upscaler_1: str = NO_UPSCALER
    upscaler_2: str = NO_UPSCALER
    upscaler_2_visibility: float = 0.0  # how much of upscaler 2's result is blended in
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0  # CodeFormer's fidelity: 0 strongest effect, 1 closest to the input
    upscale_first: bool = False  # upscale, then restore faces (else faces first)
    save: bool = False  # write the results to outputs/extras-images (the UI does; A1111's API does not)

    @property
    def upscales(self) -> bool:
        return self.upscaler_1.strip().lower() != NO_UPSCALER.lower()

    @property
    def blends_second(self) -> bool:
        return self.upscales and self.upscaler_2.strip().lower() != NO_UPSCALER.lower() and self.upscaler_2_visibility > 0


def _fraction(errors: list[FieldError], field: str, value: float) -> None:
    low, high = FRACTION_RANGE
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
        errors.append(FieldError(field, f"must be between {low:g} and {high:g}, got {value!r}"))


def check_values(request: ExtrasRequest, max_size: int) -> None:
    """Every out-of-range value, reported together (field names as A1111's API has them)."""
    errors: list[FieldError] = []
    if not request.images:
        errors.append(FieldError("image", "is missing: send an image to process"))
    if len(request.images) > MAX_BATCH:
        errors.append(FieldError("imageList", f"has {len(request.images)} images; at most {MAX_BATCH} per request"))
    factor = request.upscaling_resize
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and MIN_FACTOR <= factor <= MAX_FACTOR):
        errors.append(FieldError("upscaling_resize", f"must be between {MIN_FACTOR:g} and {MAX_FACTOR:g}, got {factor!r}"))
    for field in ("upscaling_resize_w", "upscaling_resize_h"):
        side = getattr(request, field)
        if not (isinstance(side, int) and 1 <= side <= max_size):
            errors.append(FieldError(field, f"must be between 1 and {max_size} (max_image_size), got {side}"))
    for field in ("upscaler_2_visibility", "gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
        _fraction(errors, "extras_upscaler_2_visibility" if field == "upscaler_2_visibility" else field,
                  getattr(request, field))
    if not request.upscales and request.upscaler_2.strip().lower() != NO_UPSCALER.lower() \
            and request.upscaler_2_visibility > 0:
        errors.append(FieldError("upscaler_2", "is blended into upscaler 1's result: choose upscaler_1 too"))
    if errors:
        raise ValidationError(errors)


def output_size(request: ExtrasRequest, width: int, height: int) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` comes out at (A1111 rounds an upscale's target
    down to a multiple of 8; a crop makes exactly the size asked for)."""
    if not request.upscales:
        return width, height
    if request.resize_mode is ResizeMode.SCALE_TO:
        if request.upscaling_crop:
            return request.upscaling_resize_w, request.upscaling_resize_h
        factor = max(request.upscaling_resize_w / width, request.upscaling_resize_h / height)
    else:
        factor = request.upscaling_resize
    return int((width * factor) // 8 * 8), int((height * factor) // 8 * 8)

"""Turning what Gradio's image components hold into request bytes, with clear errors."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageChops

from modules.errors import FieldError, ValidationError


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def require_image(image: Image.Image | None, field: str, what: str) -> Image.Image:
    if image is None:
        raise ValidationError([FieldError(field, f"no image yet: {what}")])
    return image


def editor_background(value: dict[str, Any] | None) -> Image.Image | None:
    """The uploaded picture of an ImageEditor, without strokes."""
    return value.get("background") if value else None


def editor_composite(value: dict[str, Any] | None) -> Image.Image | None:
    """The picture with the painted strokes (sketch)."""
    return value.get("composite") if value else None


def editor_mask(value: dict[str, Any] | None) -> Image.Image | None:
    """White where any brush layer has paint: the union of the layers' alpha."""
    if not value or not value.get("layers"):
        return None
    mask: Image.Image | None = None
    for layer in value["layers"]:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        mask = alpha if mask is None else ImageChops.lighter(mask, alpha)
    return mask

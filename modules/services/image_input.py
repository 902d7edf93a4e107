"""Reading images that users upload, with limits, before any model work."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from modules.errors import FieldError, ValidationError

MAX_INPUT_PIXELS = 4096 * 4096  # larger uploads are refused rather than resized


def decode_image(data: bytes, field: str, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """The decoded image, or a ValidationError naming ``field`` and what is wrong with it."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only: the size is known before decoding
    except Image.DecompressionBombError as exc:
        # Pillow itself refuses a header over twice its own limit, before our size check can run.
        raise ValidationError([FieldError(field, f"is larger than the limit of {max_pixels:,} pixels")]) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValidationError([FieldError(field, "is not a readable image (PNG, JPEG or WEBP expected)")]) from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ValidationError([FieldError(field, f"is {width}x{height} pixels; the limit is {max_pixels:,} pixels")])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ValidationError([FieldError(field, f"cannot be decoded ({exc.__class__.__name__})")]) from exc
    return image

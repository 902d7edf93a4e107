"""Encoding an image in A1111's ``samples_format`` with its infotext inside.

PNG keeps the infotext in the text chunk ``parameters``. JPEG and WebP carry it as EXIF
UserComment, written as A1111 writes it with piexif (``UNICODE\\0`` then UTF-16 big-endian), here
with Pillow's own EXIF writer; :func:`modules.services.images.infotext_of` reads it back. Quality is
``jpeg_quality`` (A1111 passes it to every lossy format). Images too large for JPEG (65535 px) or
WebP (16383 px) are written as PNG, as A1111 does, and so are parameters too long for a JPEG's
EXIF segment (64 KiB).
"""

from __future__ import annotations

import io

from PIL import Image

from modules.extension_helpers import png_with_infotext

_PIL_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}  # config.IMAGE_FORMATS
_MAX_SIDE = {"jpg": 65535, "jpeg": 65535, "webp": 16383}
EXIF_IFD, USER_COMMENT = 0x8769, 0x9286
_JPEG_EXIF_LIMIT = 65533  # one APP1 segment


def user_comment(text: str) -> bytes:
    """An EXIF UserComment as piexif's ``UserComment.dump(text, encoding="unicode")`` makes it."""
    return b"UNICODE\x00" + text.encode("utf-16-be")


def exif_with(text: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment(text)
    return exif.tobytes()


def effective_format(fmt: str, size: tuple[int, int], infotext: str | None = None) -> str:
    """The format an image of ``size`` with ``infotext`` is written in when ``fmt`` is asked for: PNG
    when the image is too large for it, or the parameters too long for a JPEG's one EXIF segment (so
    they are never lost)."""
    fmt = fmt.lower()
    if max(size) > _MAX_SIDE.get(fmt, 1 << 30):
        return "png"
    if fmt in ("jpg", "jpeg") and infotext and len(exif_with(infotext)) > _JPEG_EXIF_LIMIT:
        return "png"
    return fmt


def encode(image: Image.Image, infotext: str | None, fmt: str, quality: int) -> bytes:
    """``image`` as ``fmt`` bytes carrying ``infotext`` (none when it is None or empty)."""
    fmt = effective_format(fmt, image.size, infotext)
    if fmt == "png":
        if infotext:
            return png_with_infotext(image, infotext)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    picture = image.convert("RGB") if image.mode not in ("RGB", "L") else image
    extra = {}
    if infotext:
        extra["exif"] = exif_with(infotext)
    buffer = io.BytesIO()
    picture.save(buffer, format=_PIL_FORMATS[fmt], quality=quality, **extra)
    return buffer.getvalue()


def reencode_png(png: bytes, infotext: str | None, fmt: str, quality: int) -> bytes:
    """A job's PNG bytes in ``fmt`` (unchanged when ``fmt`` is png)."""
    if fmt.lower() == "png":
        return png
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        return encode(image, infotext, fmt, quality)

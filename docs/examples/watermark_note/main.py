"""watermark_note: post-processing that records what it did in the image's own infotext.

AFTER_IMAGE draws a small dark band in the bottom-right corner; the INFOTEXT hook writes
``Watermark: "<text>"`` into the parameters every returned and saved image carries, and reading it
back (PNG Info, "Send to txt2img") turns the watermark on again with the same text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image, ImageDraw

from modules.extension_api import AfterImage, ExtensionSetup, Hook, InfotextFields, Param

KEY = "Watermark"


def setup(ext: ExtensionSetup) -> None:
    ext.add_params(Param.text("text", default="", label="Watermark text (empty: none)"))
    ext.on(Hook.AFTER_IMAGE, mark)
    ext.add_infotext(write_key, read_key)


def mark(ctx: AfterImage) -> Image.Image | None:
    if not ctx.params["text"]:
        return None
    image = ctx.image.convert("RGB")  # a copy: the image handed in is never changed in place
    width, height = image.size
    ImageDraw.Draw(image).rectangle((width * 3 // 4, height * 7 // 8, width - 1, height - 1), fill=(16, 16, 16))
    return image


def write_key(ctx: InfotextFields) -> Mapping[str, object] | None:
    return {KEY: ctx.params["text"]} if ctx.params["text"] else None


def read_key(fields: Mapping[str, str]) -> Mapping[str, Any] | None:
    return {"text": fields[KEY]} if KEY in fields else None

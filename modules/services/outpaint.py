"""Outpainting: extend the canvas on chosen sides, pre-fill the new area, and inpaint it."""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

from modules.errors import FieldError, ValidationError
from modules.params import GenerationRequest, MaskedContent
from modules.services.image_input import decode_image
from modules.services.image_prep import outpaint_canvas


@dataclass(frozen=True)
class OutpaintSides:
    """Pixels to add on each side of the init image."""

    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0

    def check(self, max_size: int) -> None:
        values = {"left": self.left, "right": self.right, "up": self.up, "down": self.down}
        errors = [FieldError(f"outpaint_{k}", f"must be between 0 and {max_size}") for k, v in values.items()
                  if not isinstance(v, int) or not 0 <= v <= max_size]
        if not errors and not any(values.values()):
            errors.append(FieldError("outpaint", "choose at least one side and a number of pixels to extend by"))
        if errors:
            raise ValidationError(errors)


def outpaint_request(request: GenerationRequest, sides: OutpaintSides, max_size: int) -> GenerationRequest:
    """``request`` (with an init image) turned into the inpainting request that extends it.

    The canvas keeps the image's own pixels and size (no resize); the new border is masked and
    pre-filled from the image's edges, so the model continues what is there.
    """
    sides.check(max_size)
    if request.init_image is None:
        raise ValidationError([FieldError("init_image", "outpainting needs an image to extend")])
    image = decode_image(request.init_image, "init_image").convert("RGB")
    canvas, mask = outpaint_canvas(image, sides.left, sides.right, sides.up, sides.down)
    if max(canvas.size) > max_size:
        raise ValidationError([FieldError("outpaint", f"the result would be {canvas.width}x{canvas.height}; "
                                                      f"the limit is {max_size} pixels a side")])
    return replace(request, init_image=_png(canvas), mask=_png(mask), width=canvas.width, height=canvas.height,
                   masked_content=MaskedContent.ORIGINAL, invert_mask=False, inpaint_only_masked=False)


def _png(image: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")  # type: ignore[attr-defined]
    return buffer.getvalue()

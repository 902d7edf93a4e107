"""A request's images, decoded and prepared once per job: what the engine sees (fitted, maybe
cropped around the mask and filled), and what the results are put back into (the whole picture,
for "only masked"). Unreadable, oversized or empty inputs fail here, before queuing.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageOps

from modules.engine.latents import blurred_mask, overlay_original
from modules.errors import FieldError, ValidationError
from modules.params import GenerationRequest, MaskedContent
from modules.services.image_input import decode_image
from modules.services.image_prep import Crop, Resize, fill_masked, fit_image, lanczos


@dataclass(frozen=True)
class JobInputs:
    """A request's images, decoded and prepared: what the engine sees, and what the result is
    put back into (the whole picture, for "only masked")."""

    init_image: Image.Image | None = None  # for the engine: fitted, maybe cropped and filled
    mask: Image.Image | None = None  # for the engine: blurred, white = repaint
    original: Image.Image | None = None  # the fitted init image
    full_mask: Image.Image | None = None  # the blurred mask at the original's size
    crop: Crop | None = None
    notes: tuple[str, ...] = ()

    @staticmethod
    def of(request: GenerationRequest, resize: Resize = lanczos) -> JobInputs:
        """``resize``: what enlarges the init image (the job's img2img upscaler, on the worker; the
        front checks the inputs with plain Lanczos)."""
        if request.init_image is None:
            return JobInputs()
        image = decode_image(request.init_image, "init_image").convert("RGB")
        if request.mask is None or not request.inpaint_only_masked:
            # "Only masked" keeps the picture's own size: only the crop is fitted to the output size.
            image = fit_image(image, request.width, request.height, request.resize_mode, resize)
        if request.mask is None:
            return JobInputs(init_image=image, original=image)
        raw = decode_image(request.mask, "mask").convert("L")
        notes = ()
        if raw.size != image.size:
            notes = (f"The mask was {raw.width}x{raw.height}; it was resized to {image.width}x{image.height} "
                     "to match the image.",)
            raw = raw.resize(image.size, Image.Resampling.LANCZOS)
        mask = ImageOps.invert(raw) if request.invert_mask else raw
        if mask.point(lambda v: 255 if v > 127 else 0).getbbox() is None:
            raise ValidationError([FieldError("mask", "is empty: nothing would change. Paint the area to repaint.")])
        blurred = blurred_mask(mask, request.mask_blur)
        crop = Crop.around(mask, request.only_masked_padding, request.width, request.height) \
            if request.inpaint_only_masked else None
        engine_image = crop.cut(image, request.width, request.height) if crop else image
        engine_mask = crop.cut(blurred, request.width, request.height) if crop else blurred
        if request.masked_content is MaskedContent.FILL:
            engine_image = fill_masked(engine_image, engine_mask)
        return JobInputs(engine_image, engine_mask, image, blurred, crop, notes)

    def finish(self, images: list[Image.Image]) -> list[Image.Image]:
        """Results put back: pasted into the whole picture for "only masked", original kept outside the mask."""
        if self.crop is None or self.original is None or self.full_mask is None:
            return images
        return [overlay_original(self.crop.paste(image, self.original), self.original, self.full_mask)
                for image in images]

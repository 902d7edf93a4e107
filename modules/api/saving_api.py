"""The API's side of A1111's saving options: images in a reply encoded as ``samples_format`` says
(as A1111's ``encode_pil_to_base64``: PNG with its ``parameters`` chunk, JPEG/WebP with the
infotext in EXIF UserComment), and ``override_settings`` keys no job can honour refused by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from modules.config import Settings
from modules.errors import FieldError, ValidationError
from modules.params import GeneratedImage
from modules.services import image_format

if TYPE_CHECKING:  # the server options import the model manager (torch)
    from modules.services.server_options import ServerOptions


def reply_image_bytes(settings: Settings) -> Callable[[GeneratedImage], bytes]:
    """How each image of a reply is encoded under ``settings``."""
    def encode(image: GeneratedImage) -> bytes:
        return image_format.reencode_png(image.png, image.infotext, settings.samples_format, settings.jpeg_quality)

    return encode


def refuse_unhonoured_overrides(overrides: dict[str, object], restore_afterwards: bool,
                                options: ServerOptions) -> None:
    """A job's ``override_settings`` keys that are no A1111 option Atelier knows are a 422 naming
    them, unless they are kept no-effect options (stored through POST /sdapi/v1/options) or the
    request keeps its overrides as the server's (they are then stored like that)."""
    if not restore_afterwards:
        return
    unknown = options.unhonoured_overrides(overrides)
    if unknown:
        raise ValidationError([FieldError(f"override_settings.{key}"[:140], "is not an option Atelier knows, so this "
                                          "job could not honour it; known options: GET /sdapi/v1/options")
                               for key in unknown[:20]])

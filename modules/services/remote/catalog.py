"""What each remote model can do: the built-in table of known models, and the plain description a
model gets when only a server's model list names it.

A remote model's title is ``<provider>/<model>`` (``openai/dall-e-3``, ``google/imagen-4.0-generate-001``):
what the checkpoint list, ``/sdapi/v1/sd-models``, ``sd_model_checkpoint`` and the infotext's
``Model`` say. The sizes, options and images per call come from the providers' documentation.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

Size = tuple[int, int]  # (width, height)


class Provider(enum.Enum):
    OPENAI = "openai"  # OpenAI's images API, or any server that answers it (OPENAI_BASE_URL)
    GOOGLE = "google"  # Google's Imagen, through the google-genai client

    @property
    def label(self) -> str:
        return {Provider.OPENAI: "OpenAI", Provider.GOOGLE: "Google"}[self]


@dataclass(frozen=True)
class RemoteModel:
    """One hosted model and what it supports; the first quality and style are its defaults."""

    provider: Provider
    model: str  # the provider's id: "dall-e-3"
    sizes: tuple[Size, ...]
    qualities: tuple[str, ...] = ()
    styles: tuple[str, ...] = ()
    max_images: int = 1  # images one call makes (the request's batch size)
    negative_prompt: bool = False
    edits: bool = False  # img2img: an init image the call changes
    masked_edits: bool = False  # inpainting: edits limited by a mask
    revised_prompt: bool = False  # the answer says how the provider rewrote the prompt
    known: bool = True  # from the built-in table; False: named by the server's model list only

    @property
    def title(self) -> str:
        return f"{self.provider.value}/{self.model}"

    def size_text(self) -> str:
        return ", ".join(f"{w}x{h}" for w, h in self.sizes)

    def supports_size(self, width: int, height: int) -> bool:
        return (width, height) in self.sizes


_DALLE3_SIZES: tuple[Size, ...] = ((1024, 1024), (1792, 1024), (1024, 1792))
_GPT_IMAGE_SIZES: tuple[Size, ...] = ((1024, 1024), (1536, 1024), (1024, 1536))
# Imagen's "1K" sizes by aspect ratio 1:1, 3:4, 4:3, 9:16 and 16:9 (the call sends the ratio).
IMAGEN_ASPECTS: dict[Size, str] = {(1024, 1024): "1:1", (896, 1280): "3:4", (1280, 896): "4:3",
                                   (768, 1408): "9:16", (1408, 768): "16:9"}
_IMAGEN_SIZES = tuple(IMAGEN_ASPECTS)
GPT_IMAGE_QUALITIES = ("auto", "low", "medium", "high")

KNOWN_MODELS: tuple[RemoteModel, ...] = (
    RemoteModel(Provider.OPENAI, "dall-e-2", ((256, 256), (512, 512), (1024, 1024)), max_images=10,
                edits=True, masked_edits=True),
    RemoteModel(Provider.OPENAI, "dall-e-3", _DALLE3_SIZES, qualities=("standard", "hd"),
                styles=("vivid", "natural"), revised_prompt=True),
    RemoteModel(Provider.OPENAI, "gpt-image-1", _GPT_IMAGE_SIZES, qualities=GPT_IMAGE_QUALITIES, max_images=10,
                edits=True, masked_edits=True),
    RemoteModel(Provider.OPENAI, "gpt-image-1-mini", _GPT_IMAGE_SIZES, qualities=GPT_IMAGE_QUALITIES,
                max_images=10, edits=True, masked_edits=True),
    RemoteModel(Provider.OPENAI, "gpt-image-1.5", _GPT_IMAGE_SIZES, qualities=GPT_IMAGE_QUALITIES, max_images=10,
                edits=True, masked_edits=True),
    RemoteModel(Provider.GOOGLE, "imagen-4.0-generate-001", _IMAGEN_SIZES, max_images=4, revised_prompt=True),
    RemoteModel(Provider.GOOGLE, "imagen-4.0-ultra-generate-001", _IMAGEN_SIZES, max_images=1,
                revised_prompt=True),
    RemoteModel(Provider.GOOGLE, "imagen-4.0-fast-generate-001", _IMAGEN_SIZES, max_images=4, revised_prompt=True),
    RemoteModel(Provider.GOOGLE, "imagen-3.0-generate-002", _IMAGEN_SIZES, max_images=4, revised_prompt=True),
    RemoteModel(Provider.GOOGLE, "imagen-3.0-generate-001", _IMAGEN_SIZES, max_images=4, negative_prompt=True,
                revised_prompt=True),
)

# A model only a server's list names (an OpenAI-compatible server's own): square sizes, one image per call.
_PLAIN_SIZES: tuple[Size, ...] = ((256, 256), (512, 512), (1024, 1024))


def listed_model(provider: Provider, model: str) -> RemoteModel:
    """The description of a model the provider's server lists but the table does not know."""
    sizes = _IMAGEN_SIZES if provider is Provider.GOOGLE else _PLAIN_SIZES
    return RemoteModel(provider, model, sizes, known=False)


def looks_like_image_model(provider: Provider, model: str) -> bool:
    """Whether a name in a server's model list is an image model (OpenAI's list has chat models too)."""
    name = model.lower()
    if provider is Provider.GOOGLE:
        return "imagen" in name
    return any(part in name for part in ("dall-e", "gpt-image", "image", "diffusion", "sdxl", "flux"))


def split_title(title: str) -> tuple[Provider, str] | None:
    """(provider, model) of a remote title; None for anything else (a local checkpoint's title)."""
    head, sep, model = title.strip().partition("/")
    if not sep or not model:
        return None
    try:
        return Provider(head.lower()), model
    except ValueError:
        return None

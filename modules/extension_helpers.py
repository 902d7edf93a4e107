"""Small helpers scripts share (X/Y/Z plot, prompt matrix, prompts from file), written once.

Part of the extension API: :mod:`modules.extension_api` re-exports every name here, and extensions
import them from there. Seeds follow A1111 (unsigned 32-bit, wrapping); sampler names accept
A1111's aliases and combined names; a grid's PNG carries its parameters text as saved images do.
"""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import PurePath

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from modules.params import MAX_SEED, GenerationRequest
from modules.samplers import resolve_sampler

_CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")


# --- seeds -------------------------------------------------------------------------------------


def random_seed(room: int = 0) -> int:
    """A random seed with ``room`` seeds after it (seed + i for i < ``room`` stays valid)."""
    return random.randint(0, MAX_SEED - room)


def fixed_seed(seed: int, room: int = 0) -> int:
    """``seed``, or a random one (see :func:`random_seed`) when it is -1."""
    return random_seed(room) if seed == -1 else seed


def offset_seed(seed: int, offset: int) -> int:
    """``seed + offset``, wrapping past :data:`MAX_SEED` as A1111's seeds do."""
    return (seed + offset) % (MAX_SEED + 1)


# --- request changes ----------------------------------------------------------------------------


def is_sampler(name: str) -> bool:
    """Whether ``name`` names a sampler (a name, an alias, or an A1111 combined name), in any case."""
    return resolve_sampler(name) is not None


def with_sampler(request: GenerationRequest, name: str) -> GenerationRequest:
    """``request`` with the sampler ``name``; A1111's combined names ("DPM++ 2M Karras") bring their
    schedule type. ValueError for an unknown name."""
    found = resolve_sampler(name)
    if found is None:
        raise ValueError(f"unknown sampler {name!r}")
    spec, implied = found
    return replace(request, sampler=spec.name, schedule=implied or request.schedule)


def with_denoising(request: GenerationRequest, strength: float) -> GenerationRequest:
    """``request`` with another denoising strength: the second pass's for txt2img with hires fix (as
    A1111's field means there), the image's own for img2img."""
    if request.hires is not None and not request.is_img2img:
        return replace(request, hires=replace(request.hires, denoising_strength=strength))
    return replace(request, denoising_strength=strength)


# --- checkpoints --------------------------------------------------------------------------------


def _checkpoint_forms(title: str) -> tuple[str, str, str]:
    """The forms of a checkpoint title a user may type: "name [hash]", the file name, and the name
    without its extension."""
    name = title.split(" [")[0]
    return title, name, PurePath(name).stem if PurePath(name).suffix in _CHECKPOINT_SUFFIXES else name


def find_checkpoint(value: str, titles: Sequence[str]) -> str | None:
    """The file name of the checkpoint that ``value`` names in any of its forms (case-insensitively),
    among ``titles`` (as :meth:`Host.checkpoints` lists them); None when none matches."""
    for title in titles:
        forms = _checkpoint_forms(title)
        if value.lower() in (form.lower() for form in forms):
            return forms[1]
    return None


# --- images -------------------------------------------------------------------------------------


def png_with_infotext(image: Image.Image, infotext: str) -> bytes:
    """``image`` as PNG bytes carrying ``infotext`` under ``parameters``, the key A1111 and every
    reader of its images look for."""
    info = PngInfo()
    info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def decode_png(data: bytes) -> Image.Image:
    """An image's bytes (a job's PNG) as an RGB image."""
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")

"""Textual inversion embeddings: reading A1111's embedding files and telling where one fits.

An embedding is a few learned token vectors, used by writing its name (the file stem) in a
prompt. This module owns the files and the :class:`Embedding` value; placing the vectors into a
prompt's tokens is :mod:`modules.engine.prompt_encoding`'s job.

Files read, as A1111 reads them:

* ``.pt`` / ``.bin`` pickles from A1111's trainer: ``{"string_to_param": {"*": tensor[n, w]},
  "name", "step", "sd_checkpoint", "sd_checkpoint_name", ...}``;
* single-entry tensor dicts, in a pickle or ``.safetensors``: ``{"emb_params": tensor[n, w]}``
  or a diffusers concept ``{"<token>": tensor[w]}``;
* SDXL embeddings: ``{"clip_l": tensor[n, 768], "clip_g": tensor[n, 1280]}``.

Pickles are loaded with ``weights_only=True`` (plain containers and tensors, never code).
Images with embedded embeddings are not read.
"""

from __future__ import annotations

import enum
import logging
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers import DiffusionPipeline
from safetensors import SafetensorError
from safetensors.torch import load_file

from modules.engine.checkpoint_files import SAFETENSORS_SUFFIXES, read_safetensors_index
from modules.engine.model_detect import ModelArch
from modules.errors import AddonLoadError, ModelLoadError
from modules.model_families import Feature

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")  # what A1111 reads (besides images)
MAX_VECTORS = 75  # an embedding never splits across a 75-token chunk, so no more can ever be placed
_MAX_FILE_BYTES = 64 * 1024 * 1024  # real embeddings are kilobytes; bigger is a checkpoint or LoRA
_KIND = "embedding"


class EncoderSlot(enum.StrEnum):
    """Which text encoder a set of vectors is for."""

    CLIP = "clip"  # SD1/SD2: the only text encoder
    CLIP_L = "clip_l"  # SDXL: text_encoder (768 wide in real models)
    CLIP_G = "clip_g"  # SDXL: text_encoder_2 (1280 wide in real models)


# eq=False: vectors are tensors, so identity is the only sensible equality (and keeps it hashable).
@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding file's vectors, keyed by :class:`EncoderSlot` (plain strings work as keys)."""

    name: str  # the file stem: what users write in the prompt
    vectors: Mapping[str, torch.Tensor]  # slot -> float32 CPU tensor [n_vectors, width]
    step: int | None = None  # training step, when the file says
    checkpoint_name: str | None = None  # sd_checkpoint_name, when the file says
    checkpoint_hash: str | None = None  # sd_checkpoint (a short hash), when the file says

    @property
    def vector_count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    @property
    def shape(self) -> int:
        """A1111's "shape": the vector width, summed over the encoders (2048 for SDXL embeddings)."""
        return sum(int(v.shape[-1]) for v in self.vectors.values())


def _refuse(path: Path, reason: str) -> AddonLoadError:
    return AddonLoadError(_KIND, str(path), reason)


def _check_file(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise _refuse(path, f"cannot read the file ({exc.strerror})") from exc
    if size == 0:
        raise _refuse(path, "the file is empty (0 bytes); the download or copy did not finish")
    if size > _MAX_FILE_BYTES:
        raise _refuse(path, f"{size // (1024 * 1024)} MB is far too large for an embedding "
                            "(is it a checkpoint or a LoRA?)")


def _read_safetensors(path: Path) -> dict[str, Any]:
    try:
        index = read_safetensors_index(path)  # validates the header before any data is read
    except ModelLoadError as exc:
        raise _refuse(path, exc.reason) from exc
    if len(index.shapes) > 2:  # one term, or SDXL's clip_l + clip_g
        raise _refuse(path, f"the file holds {len(index.shapes)} tensors; an embedding holds one "
                            "(or clip_l and clip_g): is it a checkpoint or a LoRA?")
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _refuse(path, f"unreadable safetensors file ({exc})") from exc


def _read_pickle(path: Path) -> Any:
    """A torch pickle with ``weights_only=True``: containers, numbers, strings and tensors only.

    The checkpoint reader keeps only top-level tensors, and A1111's files nest theirs in a dict."""
    if not zipfile.is_zipfile(path):
        raise _refuse(path, "not a PyTorch file (not a zip archive); the file may be truncated")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        if "ParameterDict" in str(exc):
            reason = ("refused: the vectors are stored in a torch ParameterDict (an old trainer's format) "
                      "that cannot be read without running code; convert it to .safetensors")
        else:
            reason = ("refused: the pickle asks to build objects other than tensors (possible code "
                      f"execution); use a .safetensors file from a trusted source. Detail: {detail}")
        raise _refuse(path, reason) from exc
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise _refuse(path, f"unreadable or truncated file ({exc.__class__.__name__}: {first})") from exc


def _as_matrix(path: Path, value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise _refuse(path, f"{what} is not a tensor of floating-point vectors")
    matrix = value.detach().to("cpu", torch.float32)
    if matrix.dim() == 1:  # diffusers concepts store a single vector
        matrix = matrix.unsqueeze(0)
    if matrix.dim() != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise _refuse(path, f"{what} has shape {tuple(value.shape)}; expected [vectors, width]")
    if matrix.shape[0] > MAX_VECTORS:
        raise _refuse(path, f"{what} has {matrix.shape[0]} vectors; at most {MAX_VECTORS} fit in a prompt chunk")
    if not bool(torch.isfinite(matrix).all()):
        raise _refuse(path, f"{what} contains NaN or infinite values")
    return matrix.contiguous()


def _single_term(path: Path, terms: Mapping[Any, Any], what: str) -> torch.Tensor:
    if len(terms) != 1:
        raise _refuse(path, f"{what} holds {len(terms)} terms; an embedding file must hold exactly one")
    return _as_matrix(path, next(iter(terms.values())), what)


def _vectors_of(path: Path, data: Any) -> dict[str, torch.Tensor]:
    """The per-encoder vectors of a loaded file, recognised the way A1111 recognises them."""
    if not isinstance(data, dict) or not data:
        raise _refuse(path, "the file does not hold a dictionary of embedding vectors")
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict):
            raise _refuse(path, "string_to_param is not a dictionary of tensors")
        return {EncoderSlot.CLIP: _single_term(path, params, "string_to_param")}
    if "clip_l" in data and "clip_g" in data:
        clip_l = _as_matrix(path, data["clip_l"], "clip_l")
        clip_g = _as_matrix(path, data["clip_g"], "clip_g")
        if clip_l.shape[0] != clip_g.shape[0]:
            raise _refuse(path, f"clip_l has {clip_l.shape[0]} vectors but clip_g has {clip_g.shape[0]}")
        return {EncoderSlot.CLIP_L: clip_l, EncoderSlot.CLIP_G: clip_g}
    if all(isinstance(v, torch.Tensor) for v in data.values()):
        return {EncoderSlot.CLIP: _single_term(path, data, "the file")}
    raise _refuse(path, "not a textual inversion embedding (no string_to_param, emb_params, "
                        "clip_l/clip_g or single token vector)")


def _optional(data: Any, key: str, kind: type) -> Any:
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def load_embedding(path: Path) -> Embedding:
    """Read one embedding file; raise :class:`AddonLoadError` naming the file and the reason."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_SUFFIXES:
        raise _refuse(path, f"unsupported file type {suffix or '(none)'}; expected one of "
                            f"{', '.join(EMBEDDING_SUFFIXES)}")
    _check_file(path)
    data = _read_safetensors(path) if suffix in SAFETENSORS_SUFFIXES else _read_pickle(path)
    vectors = _vectors_of(path, data)
    embedding = Embedding(
        name=path.stem,
        vectors=MappingProxyType(vectors),
        step=_optional(data, "step", int),
        checkpoint_name=_optional(data, "sd_checkpoint_name", str),
        checkpoint_hash=_optional(data, "sd_checkpoint", str),
    )
    log.debug("loaded embedding %s: %d vector(s), slots %s", embedding.name, embedding.vector_count,
              ", ".join(vectors))
    return embedding


def encoder_slots(pipe: DiffusionPipeline, arch: ModelArch) -> tuple[tuple[EncoderSlot, torch.nn.Module], ...]:
    """The model's text encoders with the slot each one reads (the SDXL refiner has only clip_g)."""
    if arch.is_sdxl:
        pairs = ((EncoderSlot.CLIP_L, getattr(pipe, "text_encoder", None)),
                 (EncoderSlot.CLIP_G, getattr(pipe, "text_encoder_2", None)))
        return tuple((slot, encoder) for slot, encoder in pairs if encoder is not None)
    return ((EncoderSlot.CLIP, pipe.text_encoder),)


def encoder_width(encoder: torch.nn.Module) -> int:
    """Width of an encoder's token embeddings, which an embedding's vectors must match."""
    return int(encoder.get_input_embeddings().weight.shape[-1])


def fits(embedding: Embedding, pipe: DiffusionPipeline, arch: ModelArch) -> bool:
    """Whether ``embedding`` has vectors of the right width for every text encoder of the model. The
    flow families take none: their prompts go through T5 / LLM encoders (a CLIP-L-wide SD 1.x
    embedding would fit FLUX's pooled CLIP alone), so their embeddings are skipped, as another
    family's are on SD, and the word stays plain text."""
    if not arch.family.supports(Feature.TEXTUAL_INVERSION):
        return False
    slots = encoder_slots(pipe, arch)
    return bool(slots) and all(
        slot in embedding.vectors and int(embedding.vectors[slot].shape[-1]) == encoder_width(encoder)
        for slot, encoder in slots
    )

"""Tiny random textual inversion embeddings for tests, in A1111's file formats.

The vector widths come from a checkpoint (its text encoders' token embeddings) or are given; the
vectors are seeded random ones with the norm of the model's token embeddings, so a prompt that
uses one visibly changes what is generated. Same arguments, same bytes.

Usage::

    python -m modules.devtools.tiny_embedding --checkpoint models/Stable-diffusion/tiny.safetensors \\
        --out embeddings/tinyemb.pt --vectors 2 --seed 0
"""

from __future__ import annotations

import argparse
import enum
import hashlib
import io
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from modules.devtools.tiny_model import TinyArch
from modules.engine.embeddings import EncoderSlot
from modules.engine.model_detect import SD1_CLIP, SD2_OPENCLIP, SDXL_CLIP, SDXL_OPENCLIP

log = logging.getLogger(__name__)


class EmbeddingFormat(enum.Enum):
    """File layouts A1111 reads; the value is the file suffix."""

    A1111_PT = ".pt"  # A1111's trainer: string_to_param, name, step, sd_checkpoint(_name)
    SAFETENSORS = ".safetensors"  # emb_params (SD1/SD2) or clip_l + clip_g (SDXL)
    DIFFUSERS_BIN = ".bin"  # a diffusers concept: {"<token>": vector}


# Token-embedding tensors in an A1111-style single file, by the slot their width is for.
_SINGLE_FILE_KEYS: tuple[tuple[str, EncoderSlot], ...] = (
    (SD1_CLIP + "embeddings.token_embedding.weight", EncoderSlot.CLIP),
    (SD2_OPENCLIP + "token_embedding.weight", EncoderSlot.CLIP),
    (SDXL_CLIP + "embeddings.token_embedding.weight", EncoderSlot.CLIP_L),
    (SDXL_OPENCLIP + "token_embedding.weight", EncoderSlot.CLIP_G),
)
# The same in a diffusers folder: (subfolder, slot); SDXL is the layout with a second encoder.
_FOLDER_ENCODERS = (("text_encoder", EncoderSlot.CLIP_L), ("text_encoder_2", EncoderSlot.CLIP_G))
_TINY_WIDTHS = {  # the tiny models' encoders (modules.devtools.tiny_model), when no checkpoint is given
    TinyArch.SD15: {EncoderSlot.CLIP: 32},
    TinyArch.SDXL: {EncoderSlot.CLIP_L: 32, EncoderSlot.CLIP_G: 64},
}
_INIT_STD = 0.02  # CLIP initialises token embeddings with this deviation
_TRAINING_STEP = 500  # a plausible step for the metadata A1111 shows


def _token_embeddings_of_file(path: Path) -> dict[EncoderSlot, torch.Tensor]:
    found: dict[EncoderSlot, torch.Tensor] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        keys = set(f.keys())
        for key, slot in _SINGLE_FILE_KEYS:
            if key in keys:
                found[slot] = f.get_tensor(key).float()
    return found


def _token_embeddings_of_folder(folder: Path) -> dict[EncoderSlot, torch.Tensor]:
    found: dict[EncoderSlot, torch.Tensor] = {}
    for sub, slot in _FOLDER_ENCODERS:
        for weights in sorted((folder / sub).glob("*.safetensors")):
            with safe_open(str(weights), framework="pt", device="cpu") as f:
                key = next((k for k in f.keys() if k.endswith("token_embedding.weight")), None)
                if key is not None:
                    found[slot] = f.get_tensor(key).float()
    if set(found) == {EncoderSlot.CLIP_L}:  # a single encoder: SD1/SD2
        found = {EncoderSlot.CLIP: found[EncoderSlot.CLIP_L]}
    return found


def token_embeddings(checkpoint: Path) -> dict[EncoderSlot, torch.Tensor]:
    """The token-embedding matrices of a checkpoint's text encoders, by slot."""
    checkpoint = Path(checkpoint)
    found = _token_embeddings_of_folder(checkpoint) if checkpoint.is_dir() else _token_embeddings_of_file(checkpoint)
    if not found:
        raise ValueError(f"{checkpoint} has no text encoder token embeddings Atelier recognises")
    return found


def _short_hash(path: Path) -> str | None:
    """A1111's short checkpoint hash (first 10 hex digits of the file's SHA-256); None for folders."""
    if path.is_dir():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def random_vectors(widths: Mapping[EncoderSlot, int], norms: Mapping[EncoderSlot, float], vectors: int,
                   seed: int) -> dict[EncoderSlot, torch.Tensor]:
    """Seeded random vectors of each width, each row scaled to the slot's norm."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for slot in sorted(widths):  # a fixed order, so the draws do not depend on the mapping's order
        rows = torch.randn(vectors, widths[slot], generator=generator)
        result[slot] = rows / rows.norm(dim=-1, keepdim=True) * norms[slot]
    return result


def _payload(fmt: EmbeddingFormat, name: str, vectors: Mapping[EncoderSlot, torch.Tensor],
             checkpoint: Path | None) -> dict[str, object]:
    if EncoderSlot.CLIP not in vectors:  # SDXL: both encoders' vectors, side by side in one dict
        return {str(slot): tensor for slot, tensor in vectors.items()}
    tensor = vectors[EncoderSlot.CLIP]
    if fmt is EmbeddingFormat.SAFETENSORS:
        return {"emb_params": tensor}
    if fmt is EmbeddingFormat.DIFFUSERS_BIN:
        return {f"<{name}>": tensor[0] if tensor.shape[0] == 1 else tensor}
    return {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": tensor},
        "name": name,
        "step": _TRAINING_STEP,
        "sd_checkpoint": _short_hash(checkpoint) if checkpoint else None,
        "sd_checkpoint_name": checkpoint.stem if checkpoint else None,
    }


def _write(out: Path, fmt: EmbeddingFormat, payload: dict[str, object]) -> None:
    """Write atomically, so a scanner never sees half a file."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        if fmt is EmbeddingFormat.SAFETENSORS:
            save_file({k: v.contiguous() for k, v in payload.items()}, str(tmp))  # type: ignore[union-attr]
        else:
            # Through a buffer: torch names the archive's root after the file, and the temporary
            # name would make the bytes differ from run to run.
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _widths_and_norms(arch: TinyArch | None, checkpoint: Path | None, widths: Mapping[str, int] | None
                      ) -> tuple[dict[EncoderSlot, int], dict[EncoderSlot, float]]:
    if checkpoint is not None:
        tables = token_embeddings(checkpoint)
        return ({slot: int(t.shape[-1]) for slot, t in tables.items()},
                {slot: float(t.norm(dim=-1).mean()) for slot, t in tables.items()})
    if widths is None:
        if arch not in _TINY_WIDTHS:
            raise ValueError("give a checkpoint, widths, or arch SD15/SDXL")
        widths = _TINY_WIDTHS[TinyArch(arch)]
    chosen = {EncoderSlot(slot): int(width) for slot, width in widths.items()}
    return chosen, {slot: _INIT_STD * width ** 0.5 for slot, width in chosen.items()}


def write_tiny_embedding(out: Path, *, arch: TinyArch | None = None, checkpoint: Path | None = None,
                         widths: Mapping[str, int] | None = None, vectors: int = 2, seed: int = 0,
                         fmt: EmbeddingFormat | None = None) -> Path:
    """Write a random embedding named after ``out``'s stem, for ``checkpoint`` (widths and norm read
    from it), else of the given slot ``widths``, else for the tiny model of ``arch``.

    ``fmt`` defaults to the one ``out``'s suffix names; SDXL embeddings are always clip_l + clip_g."""
    out = Path(out)
    fmt = fmt or EmbeddingFormat(out.suffix.lower() or ".pt")
    if out.suffix.lower() != fmt.value:
        raise ValueError(f"{out.name}: a {fmt.name} embedding needs the suffix {fmt.value}")
    if not 1 <= vectors <= 75:
        raise ValueError(f"vectors must be 1..75, got {vectors}")
    slot_widths, norms = _widths_and_norms(arch, checkpoint, widths)
    tensors = random_vectors(slot_widths, norms, vectors, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write(out, fmt, _payload(fmt, out.stem, tensors, Path(checkpoint) if checkpoint else None))
    log.info("wrote embedding %s (%d vector(s), %s) to %s", out.stem, vectors,
             ", ".join(f"{slot}={width}" for slot, width in slot_widths.items()), out)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: write one embedding and print its path."""
    parser = argparse.ArgumentParser(prog="python -m modules.devtools.tiny_embedding",
                                     description="Write a tiny random textual inversion embedding for tests.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="model file or diffusers folder to match")
    parser.add_argument("--out", required=True, type=Path, help="*.pt (A1111), *.safetensors or *.bin (diffusers)")
    parser.add_argument("--vectors", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(write_tiny_embedding(args.out, checkpoint=args.checkpoint, vectors=args.vectors, seed=args.seed))


if __name__ == "__main__":
    main()

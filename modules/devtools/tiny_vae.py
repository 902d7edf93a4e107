"""Tiny random-weight VAE files for tests of external VAE loading (A1111's ``models/VAE``).

A tiny VAE has the shapes of a tiny checkpoint's own VAE, read from the checkpoint, so it fits that
model. Its weights are drawn exactly as :mod:`modules.devtools.tiny_model` draws the checkpoint's VAE:
the checkpoint's own seed reproduces the checkpoint's VAE bit for bit, any other seed gives a VAE
that decodes differently.

Formats: an A1111-style ``.safetensors`` with bare LDM names (as VAE fine-tunes are shared), a
weights-only ``.pt`` pickle of ``{"state_dict": ...}`` with the GAN-loss tensor such files carry, or
a diffusers folder.

Usage::

    python -m modules.devtools.tiny_vae --checkpoint models/Stable-diffusion/tiny.safetensors \\
        --out models/VAE/tiny-vae.safetensors --seed 1
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from safetensors.torch import save_file

from modules.devtools.ldm_keys import VAE_PREFIX, merge_state_dicts, vae_to_ldm
from modules.devtools.tiny_model import _seeded
from modules.engine.checkpoint_files import index_of_state_dict, load_pickle_state_dict, read_safetensors_index
from modules.engine.model_detect import ModelArch, detect_arch, infer_vae
from modules.engine.vae import vae_config

log = logging.getLogger(__name__)

_VAE_COMPONENT = 1  # the component number tiny_model seeds its VAE with


class VaeFormat(enum.Enum):
    """How a tiny VAE is written."""

    LDM_SAFETENSORS = "ldm"
    PT = "pt"
    DIFFUSERS = "diffusers"


_SUFFIXES: dict[VaeFormat, tuple[str, ...]] = {
    VaeFormat.LDM_SAFETENSORS: (".safetensors",),
    VaeFormat.PT: (".pt", ".ckpt", ".bin"),
    VaeFormat.DIFFUSERS: ("",),
}


def checkpoint_vae_config(checkpoint: Path) -> dict[str, Any]:
    """The diffusers config of a tiny checkpoint's VAE: a folder's own, or one read off a file's shapes."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return json.loads((checkpoint / "vae" / "config.json").read_text(encoding="utf-8"))
    if checkpoint.suffix.lower() == ".safetensors":
        index = read_safetensors_index(checkpoint)
    else:
        index = index_of_state_dict(load_pickle_state_dict(checkpoint))
    arch: ModelArch = detect_arch(index)
    return vae_config(arch, infer_vae(index))


def build_tiny_vae(checkpoint: Path, seed: int = 1) -> AutoencoderKL:
    """A float32 CPU VAE shaped like ``checkpoint``'s, with weights drawn from ``seed``."""
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    config = {k: v for k, v in checkpoint_vae_config(checkpoint).items() if not k.startswith("_")}
    with _seeded(seed, _VAE_COMPONENT):
        return AutoencoderKL(**config)


def _bare_ldm_state(vae: AutoencoderKL) -> dict[str, torch.Tensor]:
    state = merge_state_dicts(vae_to_ldm(vae.state_dict(), vae.config))
    return {k.removeprefix(VAE_PREFIX): v for k, v in state.items()}


def _write_atomically(out: Path, write: Callable[[str], None]) -> None:
    """Write through a temporary name, so a reader never sees half a file."""
    tmp_name = str(out.with_name(f".{out.name}.{os.getpid()}.tmp"))
    try:
        write(tmp_name)
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def write_tiny_vae(checkpoint: Path, out: Path, *, seed: int = 1,
                   fmt: VaeFormat = VaeFormat.LDM_SAFETENSORS) -> Path:
    """Write a tiny VAE fitting ``checkpoint`` to ``out`` in ``fmt``; return ``out``."""
    fmt = VaeFormat(fmt)
    out = Path(out)
    if out.suffix.lower() not in _SUFFIXES[fmt]:
        wanted = " or ".join(s or "a folder name without a suffix" for s in _SUFFIXES[fmt])
        raise ValueError(f"{fmt.value} VAEs are written to {wanted}, not {out.name}")
    vae = build_tiny_vae(checkpoint, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt is VaeFormat.DIFFUSERS:
        vae.save_pretrained(out, safe_serialization=True)
    elif fmt is VaeFormat.LDM_SAFETENSORS:
        state = _bare_ldm_state(vae)
        _write_atomically(out, lambda name: save_file(state, name, metadata={"format": "pt"}))
    else:
        # Fine-tuned VAEs saved by the original training code keep the loss's learned log-variance.
        state = {**_bare_ldm_state(vae), "loss.logvar": torch.zeros(())}
        _write_atomically(out, lambda name: torch.save({"state_dict": state}, name))
    log.info("wrote tiny VAE (%s, seed %d) for %s to %s", fmt.value, seed, Path(checkpoint).name, out)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m modules.devtools.tiny_vae",
        description="Write a tiny random-weight VAE that fits a tiny checkpoint, for tests.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="the tiny model the VAE must fit")
    parser.add_argument("--out", required=True, type=Path,
                        help="*.safetensors (ldm), *.pt (pt) or a folder (diffusers)")
    parser.add_argument("--format", default=VaeFormat.LDM_SAFETENSORS.value, choices=[f.value for f in VaeFormat])
    parser.add_argument("--seed", type=int, default=1, help="the checkpoint's own seed reproduces its VAE")
    return parser


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: write one VAE and print its path."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        print(write_tiny_vae(args.checkpoint, args.out, seed=args.seed, fmt=VaeFormat(args.format)))
    except ValueError as exc:  # a wrong suffix or seed: a usage error, not a crash
        parser.error(str(exc))


if __name__ == "__main__":
    main()

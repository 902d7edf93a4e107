"""Tiny random tiny-autoencoder folders for tests of the TAESD live preview (A1111's ``models/VAE-taesd``).

A folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` of a diffusers
``AutoencoderTiny``, as ``madebyollin/taesd`` does, with a few channels instead of 64: the loader
reads it exactly as it reads the real one, and it decodes latents to pixels at 8x their size.
Seeded, so one seed always writes the same weights.

Usage::

    python -m modules.devtools.tiny_taesd --out models/VAE-taesd --variant taesd --seed 0
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from diffusers import AutoencoderTiny

from modules.devtools.tiny_model import _seeded
from modules.engine.taesd import TaesdVariant

_CHANNELS = (8, 8, 8, 8)  # four blocks: three x2 upsamplings, latents x8 as in the real one
_BLOCKS = (1, 1, 1, 1)
_COMPONENT = 7  # the component number the seed is mixed with (tiny_model's scheme)
# A random init decodes to near black (outputs around 0 of [0, 1]): the last layer is widened and
# lifted so that previews span the grey levels and show the latents' structure.
_LAST_GAIN, _LAST_LIFT = 3.0, 0.5


def write_tiny_taesd(root: Path, variant: TaesdVariant = TaesdVariant.SD, seed: int = 0) -> Path:
    """Write a random tiny autoencoder for ``variant`` under ``root`` (models/VAE-taesd); its folder."""
    with _seeded(seed, _COMPONENT):
        model = AutoencoderTiny(encoder_block_out_channels=_CHANNELS, decoder_block_out_channels=_CHANNELS,
                                num_encoder_blocks=_BLOCKS, num_decoder_blocks=_BLOCKS, latent_channels=4)
    last = model.decoder.layers[-1]
    with torch.no_grad():
        last.weight.mul_(_LAST_GAIN)
        last.bias.add_(_LAST_LIFT)
    folder = variant.folder(root)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: write one tiny autoencoder and print its folder."""
    parser = argparse.ArgumentParser(prog="python -m modules.devtools.tiny_taesd",
                                     description="Write a tiny random TAESD folder for tests.")
    parser.add_argument("--out", required=True, type=Path, help="the models/VAE-taesd folder")
    parser.add_argument("--variant", choices=[v.value for v in TaesdVariant], default=TaesdVariant.SD.value)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(write_tiny_taesd(args.out, TaesdVariant(args.variant), args.seed))


if __name__ == "__main__":
    main()

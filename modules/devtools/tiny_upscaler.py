"""Tiny random ESRGAN upscalers (2x and 4x) in the file layouts A1111 users have, for tests.

Layouts (:class:`UpscalerLayout`): ``plain`` is the bare state dict (ESRGAN's own releases);
``params-ema`` wraps it as Real-ESRGAN's training code saves it (``{"params_ema": {...}}``). Either
is written as ``.pth`` (a weights-only pickle) or ``.safetensors`` (plain only: safetensors holds
flat tensors).

Usage::

    python -m modules.devtools.tiny_upscaler --out models/ESRGAN/tiny-4x.pth --scale 4
"""

from __future__ import annotations

import argparse
import enum
from pathlib import Path

import torch


class UpscalerLayout(enum.Enum):
    PLAIN = "plain"
    PARAMS_EMA = "params-ema"


def tiny_esrgan_state_dict(scale: int = 4, seed: int = 0, filters: int = 8) -> dict[str, torch.Tensor]:
    """A random one-block RRDBNet's weights (ESRGAN's new-arch key names), seeded: the same seed
    gives the same model."""
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=filters, num_blocks=1, scale=scale)
    return {key: value.detach().clone().contiguous() for key, value in net.state_dict().items()}


def write_tiny_upscaler(path: Path, scale: int = 4, seed: int = 0,
                        layout: UpscalerLayout = UpscalerLayout.PLAIN) -> Path:
    """Write a tiny upscaler to ``path`` (.pth or .safetensors, by its suffix); returns the path."""
    state_dict = tiny_esrgan_state_dict(scale, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".safetensors":
        if layout is not UpscalerLayout.PLAIN:
            raise ValueError("safetensors holds a flat state dict: use the plain layout")
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save(state_dict if layout is UpscalerLayout.PLAIN else {"params_ema": state_dict}, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="file to write (.pth or .safetensors)")
    parser.add_argument("--scale", type=int, choices=(2, 4), default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=[layout.value for layout in UpscalerLayout], default="plain")
    args = parser.parse_args(argv)
    print(write_tiny_upscaler(args.out, args.scale, args.seed, UpscalerLayout(args.layout)))


if __name__ == "__main__":
    main()

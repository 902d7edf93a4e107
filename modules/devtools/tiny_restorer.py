"""Random face restorers (GFPGAN, CodeFormer) with spandrel's own architectures, for tests.

Seeded: the same seed writes the same weights. GFPGAN's sizes are fixed by spandrel's loader (a
full-size network, about 87 M parameters); CodeFormer's transformer sizes are read from the state
dict, so its transformer is small here (one layer, 64 wide, a 16-entry codebook), while its
convolutional encoder and decoder keep their fixed sizes. Written as ``.pth`` (a weights-only
pickle) or ``.safetensors``, by the file's suffix.

Usage::

    python -m modules.devtools.tiny_restorer --out models/GFPGAN/x.pth --kind gfpgan
"""

from __future__ import annotations

import argparse
import enum
from pathlib import Path

import torch


class RestorerKind(enum.Enum):
    GFPGAN = "gfpgan"
    CODEFORMER = "codeformer"


# CodeFormer's transformer, as small as spandrel's loader allows (it reads these from the state dict;
# the width must divide by its fixed 8 heads, and its 16 x 16 latent grid gives 256 positions).
CODEFORMER_DIM = 64
CODEFORMER_LAYERS = 1
CODEFORMER_CODEBOOK = 16
CODEFORMER_POSITIONS = 256


def _network(kind: RestorerKind) -> torch.nn.Module:
    if kind is RestorerKind.GFPGAN:
        from spandrel.architectures.GFPGAN import GFPGAN

        # The sizes spandrel's GFPGAN loader always builds (GFPGAN v1.3 / v1.4, "clean" architecture).
        return GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                      fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    return CodeFormer(dim_embd=CODEFORMER_DIM, n_head=8, n_layers=CODEFORMER_LAYERS,
                      codebook_size=CODEFORMER_CODEBOOK, latent_size=CODEFORMER_POSITIONS,
                      connect_list=["32", "64", "128", "256"])


def tiny_restorer_state_dict(kind: RestorerKind, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random restorer's weights, seeded."""
    torch.manual_seed(seed)
    net = _network(kind)
    return {key: value.detach().clone().contiguous() for key, value in net.state_dict().items()}


def write_tiny_restorer(path: Path, kind: RestorerKind, seed: int = 0) -> Path:
    """Write a random restorer to ``path`` (.pth or .safetensors, by its suffix); returns the path.
    The ``.pth`` wraps the weights in ``params_ema`` as the released models are saved."""
    state_dict = tiny_restorer_state_dict(kind, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import save_file

        save_file(state_dict, str(path))
    else:
        torch.save({"params_ema": state_dict}, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="file to write (.pth or .safetensors)")
    parser.add_argument("--kind", choices=[kind.value for kind in RestorerKind], required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_tiny_restorer(args.out, RestorerKind(args.kind), args.seed))


if __name__ == "__main__":
    main()

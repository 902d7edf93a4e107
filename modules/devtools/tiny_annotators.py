"""Tiny random ControlNet annotator weight files for tests, under the real file names.

Each file holds the state dict of a randomly initialised controlnet_aux network of the real
architecture (in float16, to halve the size), laid out as the published file is (PiDiNet's
``{"state_dict": {"module.…": …}}`` wrapper included), so the preprocessors' loading code runs on it
unchanged. Only annotators whose weights stay small are made (HED, PiDiNet, realistic lineart, M-LSD,
TEED); the others (OpenPose, MiDaS, LeReS, NormalBAE, anime lineart) are hundreds of MB even random.

Usage::

    python -m modules.devtools.tiny_annotators --out models/ControlNetAnnotators
"""

from __future__ import annotations

import argparse
import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path

import torch


def _half(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone().half() if value.is_floating_point() else value.detach().clone()
            for key, value in module.state_dict().items()}


def _hed() -> object:
    from controlnet_aux.hed import ControlNetHED_Apache2

    return _half(ControlNetHED_Apache2())


def _pidinet() -> object:
    from controlnet_aux.pidi.model import pidinet

    # the published checkpoint was saved from DataParallel: "module." prefixes under "state_dict"
    return {"state_dict": {f"module.{key}": value for key, value in _half(pidinet()).items()}}


def _lineart() -> object:
    from controlnet_aux.lineart import Generator

    return _half(Generator(3, 1, 3))


def _mlsd() -> object:
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    return _half(MobileV2_MLSD_Large())


def _teed() -> object:
    from controlnet_aux.teed.ted import TED

    return _half(TED())


BUILDERS: dict[str, Callable[[], object]] = {
    "ControlNetHED.pth": _hed,
    "table5_pidinet.pth": _pidinet,
    "sk_model.pth": _lineart,
    "sk_model2.pth": _lineart,
    "mlsd_large_512_fp32.pth": _mlsd,
    "7_model.pth": _teed,
}


def write_tiny_annotators(folder: Path, names: tuple[str, ...] = tuple(BUILDERS), seed: int = 0) -> dict[str, str]:
    """Write the tiny weight files ``names`` into ``folder``; returns {file name: sha256}. The same
    seed gives the same weights."""
    folder.mkdir(parents=True, exist_ok=True)
    checksums: dict[str, str] = {}
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # controlnet_aux's import warns about timm deprecations
        for index, name in enumerate(names):
            torch.manual_seed(seed + index)
            path = folder / name
            torch.save(BUILDERS[name](), path)
            checksums[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return checksums


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the files into")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, digest in write_tiny_annotators(args.out, seed=args.seed).items():
        print(f"{digest}  {args.out / name}")


if __name__ == "__main__":
    main()

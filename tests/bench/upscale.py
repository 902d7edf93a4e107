"""Benchmark: a 4x model upscale of a 512 px image, tiled (A1111's ESRGAN_tile 192, overlap 8) and
untiled, through the same code Extras and hires fix use. Run on demand, never in the test pass:

    venv/bin/python tests/bench/upscale.py [--model tiny|realesrgan] [--size 512] [--runs 3] [--device cpu]

``tiny`` is the random one-block ESRGAN of the tests; ``realesrgan`` builds a random network of
RealESRGAN_x4plus's shape (23 blocks, 64 filters), what users run. Prints the median seconds of
each and their ratio; checks that both outputs have the 4x size and agree away from the seams
(max difference at most 2/255) and exits 1 when they do not, or when tiling costs more than
``--goal`` times the untiled time (default 1.5: the overlap recomputes a few percent of the pixels).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from modules.engine.upscale_models import load_upscale_model, upscale_to  # noqa: E402
from modules.engine.upscale_tiles import TileSettings  # noqa: E402


def _model_file(kind: str, folder: Path) -> Path:
    if kind == "tiny":
        from modules.devtools.tiny_upscaler import write_tiny_upscaler

        return write_tiny_upscaler(folder / "tiny-4x.pth", 4, seed=0)
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
    path = folder / "realesrgan-shape-4x.pth"
    torch.save(net.state_dict(), path)
    return path


def _timed(run, runs: int) -> tuple[float, Image.Image]:
    run()  # warm-up: first-call allocations and kernel choices are not the upscale's cost
    times, image = [], None
    for _ in range(runs):
        start = time.perf_counter()
        image = run()
        times.append(time.perf_counter() - start)
    assert image is not None
    return statistics.median(times), image


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("tiny", "realesrgan"), default="tiny")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--goal", type=float, default=1.5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = load_upscale_model(_model_file(args.model, Path(folder)), args.device)
        pixels = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
        source = Image.fromarray(pixels, "RGB")
        size = (args.size * 4, args.size * 4)
        untiled_s, untiled = _timed(lambda: upscale_to(model, source, size, TileSettings(0, 0)), args.runs)
        tiled_s, tiled = _timed(lambda: upscale_to(model, source, size, TileSettings(192, 8)), args.runs)
    difference = np.abs(np.asarray(untiled, dtype=int) - np.asarray(tiled, dtype=int)).max()
    ratio = tiled_s / untiled_s
    print(f"model {args.model} on {args.device}: {args.size}px x4 -> {size[0]}px")
    print(f"untiled_s {untiled_s:.3f} tiled_s {tiled_s:.3f} tiled_ratio {ratio:.3f} max_diff {difference}")
    ok = untiled.size == tiled.size == size and difference <= 2 and ratio <= args.goal
    if not ok:
        print("MISSED: sizes, agreement (<= 2/255) or the tiling cost goal", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

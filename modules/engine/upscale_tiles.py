"""Tiled inference for upscaler models: an image too big for one pass, run as overlapping tiles.

A1111's settings: ``ESRGAN_tile`` (192 px; 0 runs the whole image at once) and
``ESRGAN_tile_overlap`` (8 px). Each tile is upscaled on its own; where tiles overlap, their
outputs are blended with weights that ramp from the tile's inner edge, so a pixel far enough from
every inner edge (further than the model looks around it) is exactly what the untiled pass makes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

TileFn = Callable[[torch.Tensor], torch.Tensor]  # (1, C, h, w) -> (1, C, h * scale, w * scale)


@dataclass(frozen=True)
class TileSettings:
    """``tile``: a tile's side in input pixels (0: no tiling); ``overlap``: pixels shared by neighbours."""

    tile: int = 192
    overlap: int = 8

    def __post_init__(self) -> None:
        if self.tile < 0 or self.overlap < 0:
            raise ValueError(f"tile and overlap must be 0 or more, got {self.tile} and {self.overlap}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where the tiles along one side begin: every ``tile - overlap`` pixels, the last one flush
    with the end. One tile when it covers the whole side."""
    if tile <= 0 or length <= tile:
        return [0]
    stride = max(1, tile - min(overlap, tile - 1))
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _ramp(length: int, fade: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Weights along one side of a tile's output: 1 inside, rising from near 0 over ``fade`` pixels
    at an edge that another tile overlaps (image borders stay at 1)."""
    weights = torch.ones(length)
    fade = min(fade, length)
    if fade > 0:
        rise = (torch.arange(fade, dtype=torch.float32) + 0.5) / fade
        if at_start:
            weights[:fade] = torch.minimum(weights[:fade], rise)
        if at_end:
            weights[length - fade:] = torch.minimum(weights[length - fade:], rise.flip(0))
    return weights


def tiled_forward(run: TileFn, pixels: torch.Tensor, scale: int, tiles: TileSettings) -> torch.Tensor:
    """``run`` over ``pixels`` (1, C, H, W) tile by tile, blended; the untiled call when one tile covers it."""
    # 1. The grid; one tile covering everything is just the model's pass.
    height, width = pixels.shape[-2:]
    rows = tile_starts(height, tiles.tile, tiles.overlap)
    cols = tile_starts(width, tiles.tile, tiles.overlap)
    if len(rows) == 1 and len(cols) == 1:
        return run(pixels)
    tile_h, tile_w = min(tiles.tile, height), min(tiles.tile, width)
    fade = tiles.overlap * scale
    total: torch.Tensor | None = None
    weight = torch.zeros((1, 1, height * scale, width * scale))
    # 2. Each tile, weighted by ramps on its inner edges, summed in float32 on the CPU.
    for top in rows:
        for left in cols:
            out = run(pixels[..., top:top + tile_h, left:left + tile_w]).float().cpu()
            if total is None:
                total = torch.zeros((1, out.shape[1], height * scale, width * scale))
            ramp_h = _ramp(out.shape[-2], fade, top > 0, top + tile_h < height)
            ramp_w = _ramp(out.shape[-1], fade, left > 0, left + tile_w < width)
            mask = (ramp_h[:, None] * ramp_w[None, :])[None, None]
            y, x = top * scale, left * scale
            total[..., y:y + out.shape[-2], x:x + out.shape[-1]] += out * mask
            weight[..., y:y + out.shape[-2], x:x + out.shape[-1]] += mask
    # 3. The weighted mean.
    assert total is not None
    return (total / weight.clamp_min(1e-8)).clamp_(0.0, 1.0)

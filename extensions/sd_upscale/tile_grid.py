"""SD upscale's tiles: where they lie on the upscaled image, and how they are put back together.

The geometry is A1111's (``split_grid`` / ``combine_grid``), so an image tiled here gets the same
tiles, and the same seams, as there:

- columns = ceil((width - overlap) / (tile width - overlap)), spread evenly: the step is
  (width - tile width) / (columns - 1), a tile's left edge the step times its column, truncated,
  and a tile that would reach the right edge is moved flush to it. Rows likewise.
- Within a row, each tile after the first is pasted over the one before with its first ``overlap``
  columns faded in by a ramp (0 to 255 over the overlap, never quite opaque), the rest pasted
  plainly; the rows are then stacked the same way with a vertical ramp.

Pure PIL: no model, nothing of Atelier's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class TileGrid:
    """The tiles of an ``image_width`` x ``image_height`` image: their left edges (``xs``, the same
    in every row) and top edges (``ys``); tiles are numbered row by row."""

    image_width: int
    image_height: int
    tile_width: int
    tile_height: int
    overlap: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.xs) * len(self.ys)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """Each tile's (left, top, right, bottom), row by row."""
        return [(x, y, x + self.tile_width, y + self.tile_height) for y in self.ys for x in self.xs]


def _edges(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """A1111's tile positions along one side of ``length`` pixels."""
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    edges = []
    for index in range(count):
        edge = int(index * step)
        if edge + tile >= length:
            edge = length - tile
        edges.append(edge)
    return tuple(edges)


def plan_grid(width: int, height: int, tile_width: int, tile_height: int, overlap: int) -> TileGrid:
    """The tiles covering a ``width`` x ``height`` image. ValueError when the image is smaller than
    a tile or the overlap is not smaller than the tile: A1111 would make nonsense tiles then."""
    if width < tile_width or height < tile_height:
        raise ValueError(f"the image ({width}x{height}) is smaller than a tile ({tile_width}x{tile_height})")
    if not 0 <= overlap < min(tile_width, tile_height):
        raise ValueError(f"the overlap ({overlap} px) must be smaller than a tile ({tile_width}x{tile_height})")
    return TileGrid(width, height, tile_width, tile_height, overlap,
                    _edges(width, tile_width, overlap), _edges(height, tile_height, overlap))


def split(image: Image.Image, grid: TileGrid) -> list[Image.Image]:
    """The tiles of ``image``, row by row."""
    return [image.crop(box) for box in grid.boxes()]


def _ramp(overlap: int, size: tuple[int, int], horizontal: bool) -> Image.Image:
    """A greyscale mask of ``size`` rising from 0 by 255/overlap per pixel across the overlap."""
    steps = [index * 255 // overlap for index in range(overlap)]
    line = Image.new("L", (overlap, 1) if horizontal else (1, overlap))
    line.putdata(steps)
    return line.resize(size, Image.Resampling.NEAREST)


def _lay(canvas: Image.Image, piece: Image.Image, at: int, overlap: int, ramp: Image.Image | None,
         horizontal: bool) -> None:
    """Paste ``piece`` into ``canvas`` at offset ``at`` along the axis: its first ``overlap`` pixels
    faded in by ``ramp``, the rest plainly (all of it plainly at offset 0 or without overlap)."""
    if at == 0 or ramp is None:
        canvas.paste(piece, (at, 0) if horizontal else (0, at))
        return
    width, height = piece.size
    if horizontal:
        canvas.paste(piece.crop((0, 0, overlap, height)), (at, 0), mask=ramp)
        canvas.paste(piece.crop((overlap, 0, width, height)), (at + overlap, 0))
    else:
        canvas.paste(piece.crop((0, 0, width, overlap)), (0, at), mask=ramp)
        canvas.paste(piece.crop((0, overlap, width, height)), (0, at + overlap))


def combine(grid: TileGrid, tiles: Sequence[Image.Image]) -> Image.Image:
    """The image made of ``tiles`` (row by row, each ``tile_width`` x ``tile_height``), blended
    over the overlaps."""
    if len(tiles) != grid.count:
        raise ValueError(f"the grid has {grid.count} tiles, got {len(tiles)}")
    overlap = grid.overlap
    across = _ramp(overlap, (overlap, grid.tile_height), horizontal=True) if overlap else None
    down = _ramp(overlap, (grid.image_width, overlap), horizontal=False) if overlap else None
    combined = Image.new("RGB", (grid.image_width, grid.image_height))
    columns = len(grid.xs)
    for row, y in enumerate(grid.ys):
        strip = Image.new("RGB", (grid.image_width, grid.tile_height))
        for column, x in enumerate(grid.xs):
            _lay(strip, tiles[row * columns + column].convert("RGB"), x, overlap, across, horizontal=True)
        _lay(combined, strip, y, overlap, down, horizontal=False)
    return combined

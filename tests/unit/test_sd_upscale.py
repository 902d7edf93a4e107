"""SD upscale's tile geometry against A1111's formula, and the two param kinds it brought to the
extension API (an upscaler by name or index, a note), read without running any model."""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from modules.extension_api import GenerationRequest, Param, find_upscaler_name

EXTENSION = Path(__file__).resolve().parents[2] / "extensions" / "sd_upscale"


def _import(folder: Path, name: str) -> ModuleType:
    # As the extension manager does: the extension's folder is on sys.path while its modules load,
    # and its modules leave the import cache after (another extension may have a "main" too).
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
        for key, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").parent == folder:
                del sys.modules[key]


tile_grid = _import(EXTENSION, "tile_grid")


def a1111_edges(length: int, tile: int, overlap: int) -> list[int]:
    """A1111's split_grid along one side, restated: ceil((length - overlap) / (tile - overlap))
    tiles, spread by (length - tile) / (count - 1), truncated, the last one flush with the edge."""
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [length - tile if int(i * step) + tile >= length else int(i * step) for i in range(count)]


@pytest.mark.parametrize(("width", "height", "tile_w", "tile_h", "overlap"), [
    (128, 128, 64, 64, 8), (1000, 700, 512, 512, 64), (96, 64, 64, 64, 0), (64, 64, 64, 64, 16),
    (129, 200, 64, 48, 16), (2048, 1536, 768, 512, 256), (1024, 1024, 512, 512, 64),
])
def test_tile_positions_follow_a1111s_formula(width: int, height: int, tile_w: int, tile_h: int,
                                              overlap: int) -> None:
    grid = tile_grid.plan_grid(width, height, tile_w, tile_h, overlap)
    assert list(grid.xs) == a1111_edges(width, tile_w, overlap)
    assert list(grid.ys) == a1111_edges(height, tile_h, overlap)
    assert grid.xs[0] == 0 and grid.xs[-1] == width - tile_w  # the image is covered edge to edge
    assert grid.ys[0] == 0 and grid.ys[-1] == height - tile_h
    assert all(b - a <= tile_w - overlap for a, b in zip(grid.xs, grid.xs[1:]))  # neighbours overlap enough


def test_known_grids() -> None:
    assert tile_grid.plan_grid(128, 128, 64, 64, 8).xs == (0, 32, 64)
    grid = tile_grid.plan_grid(1000, 700, 512, 512, 64)
    assert (grid.xs, grid.ys, grid.count) == ((0, 244, 488), (0, 188), 6)


@pytest.mark.parametrize(("size", "overlap", "words"), [
    ((63, 128), 8, "smaller than a tile"), ((128, 40), 8, "smaller than a tile"),
    ((128, 128), 64, "overlap (64 px) must be smaller"), ((128, 128), 80, "overlap"),
])
def test_impossible_grids_are_refused(size: tuple[int, int], overlap: int, words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        tile_grid.plan_grid(*size, 64, 64, overlap)


def test_tiles_of_a_constant_image_combine_into_that_image() -> None:
    grid = tile_grid.plan_grid(200, 150, 64, 48, 16)
    tiles = [Image.new("RGB", (64, 48), (12, 200, 77)) for _ in range(grid.count)]
    assert (np.asarray(tile_grid.combine(grid, tiles)) == (12, 200, 77)).all()


def _seams(grid: object, shape: tuple[int, int]) -> np.ndarray:
    """Where combine blends: the first ``overlap`` columns (rows) of every tile but the first."""
    mask = np.zeros(shape, dtype=bool)
    for x in grid.xs[1:]:  # type: ignore[attr-defined]
        mask[:, x:x + grid.overlap] = True  # type: ignore[attr-defined]
    for y in grid.ys[1:]:  # type: ignore[attr-defined]
        mask[y:y + grid.overlap, :] = True  # type: ignore[attr-defined]
    return mask


@pytest.mark.parametrize(("width", "height", "overlap"), [(200, 150, 16), (128, 128, 8), (129, 97, 0)])
def test_split_and_combined_unchanged_gives_the_image_back(width: int, height: int, overlap: int) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, 3), dtype=np.uint8)
    grid = tile_grid.plan_grid(width, height, 64, 48, overlap)
    combined = np.asarray(tile_grid.combine(grid, tile_grid.split(Image.fromarray(pixels), grid))).astype(int)
    seams = _seams(grid, (height, width))
    assert (combined[~seams] == pixels[~seams]).all()
    assert np.abs(combined[seams] - pixels[seams]).max(initial=0) <= 1


def test_seams_fade_in_over_the_overlap() -> None:
    """Two tiles side by side, black then white: across the overlap the white tile fades in by
    A1111's ramp (i * 255 / overlap, never quite opaque); after it, white."""
    grid = tile_grid.plan_grid(120, 64, 64, 64, 8)
    assert grid.xs == (0, 56)
    combined = np.asarray(tile_grid.combine(grid, [Image.new("RGB", (64, 64)), Image.new("RGB", (64, 64), "white")]))
    row = combined[10, :, 0].astype(int)
    assert (row[:56] == 0).all() and (row[64:] == 255).all()
    ramp = [i * 255 // 8 for i in range(8)]
    assert np.abs(row[56:64] - ramp).max() <= 1


def test_combine_wants_one_tile_per_place() -> None:
    grid = tile_grid.plan_grid(128, 64, 64, 64, 8)
    with pytest.raises(ValueError, match="3 tiles, got 2"):
        tile_grid.combine(grid, [Image.new("RGB", (64, 64))] * 2)


# --- the extension API's upscaler and note params ----------------------------------------------

NAMES = ["None", "Lanczos", "Nearest", "4x-tiny"]


@pytest.mark.parametrize(("sent", "name"), [
    ("Lanczos", "Lanczos"), (" lanczos ", "Lanczos"), (1, "Lanczos"), (3.0, "4x-tiny"), ("4X-TINY", "4x-tiny"),
    (None, "None"), (0, "None"),
])
def test_an_upscaler_param_takes_a_name_or_an_index(sent: object, name: str) -> None:
    param = Param.upscaler("upscaler")
    assert find_upscaler_name(param.coerce(sent), NAMES) == name


@pytest.mark.parametrize("sent", ["Bicubic", 4, "1"])
def test_an_upscaler_outside_the_list_is_none(sent: object) -> None:
    assert find_upscaler_name(Param.upscaler("upscaler").coerce(sent), NAMES) is None


@pytest.mark.parametrize("sent", [True, -1, 1.5, "", "  ", [1], {"name": "Lanczos"}])
def test_an_upscaler_param_refuses_what_is_neither_a_name_nor_an_index(sent: object) -> None:
    with pytest.raises(ValueError, match="upscaler's name or its index"):
        Param.upscaler("upscaler").coerce(sent)


@pytest.mark.parametrize("sent", ["", "anything", 42, None, {"a": 1}])
def test_a_note_takes_any_value_and_gives_its_text(sent: object) -> None:
    assert Param.note("info", "Read me").coerce(sent) == "Read me"


# --- the script's seeds and parameters text ------------------------------------------------------

script = _import(EXTENSION, "main")


def test_tile_seeds_follow_a1111s_batches() -> None:
    """Tile j of a batch at the batch's seed + j; each batch one past the batch before; iteration n
    from seed + n. Every tile is a job of one image that is not saved."""
    base = GenerationRequest(seed=100, batch_size=2, batch_count=2, init_image=b"form")
    jobs = [[script.tile_request(base, b"tile", n, index) for index in range(5)] for n in range(2)]
    assert [[job.seed for job in iteration] for iteration in jobs] == [[100, 101, 101, 102, 102],
                                                                       [101, 102, 102, 103, 103]]
    job = jobs[0][0]
    assert (job.init_image, job.batch_size, job.batch_count, job.save_images) == (b"tile", 1, 1, False)


def test_with_variations_the_seed_stays_within_a_batch_and_the_variation_seed_moves() -> None:
    base = GenerationRequest(seed=100, batch_size=2, variation_seed=500, variation_strength=0.3)
    jobs = [script.tile_request(base, b"tile", 0, index) for index in range(4)]
    assert [(job.seed, job.variation_seed) for job in jobs] == [(100, 500), (100, 501), (101, 500), (101, 501)]


def test_the_scripts_keys_go_before_version_and_are_quoted_when_needed() -> None:
    text = "a cat\nNegative prompt: dog\nSteps: 2, Seed: 7, Version: Atelier 1"
    added = script.with_params(text, {"SD upscale overlap": 8, "SD upscale upscaler": "4x, sharp"})
    assert added == ('a cat\nNegative prompt: dog\nSteps: 2, Seed: 7, SD upscale overlap: 8, '
                     'SD upscale upscaler: "4x, sharp", Version: Atelier 1')
    assert script.with_params("x\nSteps: 2", {"K": "v"}) == "x\nSteps: 2, K: v"

"""SD upscale (A1111's img2img script of that name): upscale the image, then repaint it tile by tile.

1. The job's first init image is upscaled by the scale factor with the chosen upscaler. "None"
   keeps it at its own size, as in A1111 (the tiles then repaint the image as it is).
2. It is cut into tiles of the job's width x height, overlapping by ``overlap`` px (``tile_grid``).
3. Every tile is an img2img job of its own, not saved. Seeds follow A1111's, so a seed repaints the
   same tiles there and here: a -1 seed is fixed once; iteration n (of the job's batch count)
   starts at seed + n; tiles go in batches of the job's batch size, tile j of a batch at the batch's
   seed + j, and each batch starts one past the seed of the batch before.
4. The repainted tiles are blended back into one image per iteration: the result, saved to
   img2img-images when the job saves images, with its first tile's parameters plus ``SD upscale
   overlap`` and ``SD upscale upscaler``.

Everything that can be refused (no image, a mask, an unknown upscaler, an image smaller than a
tile, an overlap as wide as a tile) is refused before the upscale and the first job.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image
from tile_grid import TileGrid, combine, plan_grid, split

from modules.extension_api import (
    ExtensionSetup,
    FieldError,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    Host,
    Param,
    Script,
    ScriptRun,
    ValidationError,
    decode_png,
    find_upscaler_name,
    fixed_seed,
    offset_seed,
    png_with_infotext,
)

TITLE = "SD upscale"
NO_UPSCALER = "None"
MULTIPLE = 8  # an upscale lands on a multiple of 8 px per side (Host.upscale)

# In A1111's order, so clients' positional script_args line up: [info, overlap, upscaler, scale factor].
# A1111's first slot is a label of its UI; it carries nothing, whatever a client sends there.
PARAMS = (
    Param.note("info", "Upscales the image by the scale factor, then repaints it in tiles of the width and "
                       "height set above."),
    Param.int("overlap", 64, "Tile overlap", minimum=0, maximum=256),  # A1111's slider: 0..256 by 16
    Param.upscaler("upscaler", NO_UPSCALER, "Upscaler"),  # a name, or its index (A1111's UI sends that)
    Param.float("scale_factor", 2.0, "Scale Factor", minimum=1.0, maximum=4.0),
)


@dataclass(frozen=True)
class UpscalePlan:
    """A checked run: the job every tile starts from (seeds fixed), the image and what to do to it."""

    base: GenerationRequest
    image: Image.Image
    upscaler: str
    scale_factor: float
    overlap: int
    tiles: int  # how many tiles the upscaled image makes

    def upscaled(self, host: Host) -> Image.Image:
        if self.upscaler == NO_UPSCALER:
            return self.image
        return host.upscale(self.image, self.upscaler, self.scale_factor)

    def upscaled_size(self) -> tuple[int, int]:
        """The size :meth:`upscaled` will have, known without upscaling."""
        width, height = self.image.size
        if self.upscaler == NO_UPSCALER:
            return width, height
        return self._scaled(width), self._scaled(height)

    def _scaled(self, side: int) -> int:
        return int(side * self.scale_factor) // MULTIPLE * MULTIPLE


def _image(request: GenerationRequest, errors: list[FieldError]) -> Image.Image:
    """The job's init image; a blank stand-in, with the error noted, when there is none to read."""
    if request.mask is not None:
        errors.append(FieldError("mask", "SD upscale repaints the whole image tile by tile; it takes no mask"))
    if request.init_image is None:
        errors.append(FieldError("init_images", "SD upscale needs an image to upscale"))
        return Image.new("RGB", (request.width, request.height))
    try:
        return decode_png(request.init_image)
    except OSError as exc:  # PIL's "cannot identify image file" and truncated files
        errors.append(FieldError("init_images", f"cannot be read as an image: {exc}"))
        return Image.new("RGB", (request.width, request.height))


def _upscaler(value: str | int, host: Host, errors: list[FieldError]) -> str:
    names = host.upscaler_names()
    found = find_upscaler_name(value, names)
    if found is None:
        errors.append(FieldError("script_args.upscaler", f"unknown upscaler {value!r}; available: {', '.join(names)}"))
        return NO_UPSCALER
    return found


def _check_tiles(plan: UpscalePlan, errors: list[FieldError]) -> UpscalePlan:
    """``plan`` with its tile count; the upscaled image must hold at least one tile."""
    width, height = plan.upscaled_size()
    tile = (plan.base.width, plan.base.height)
    try:
        return replace(plan, tiles=plan_grid(width, height, *tile, plan.overlap).count)
    except ValueError as exc:
        if width >= tile[0] and height >= tile[1]:
            errors.append(FieldError("script_args.overlap", f"{exc}: lower the overlap"))
        else:
            bigger = "choose an upscaler" if plan.upscaler == NO_UPSCALER else "raise the scale factor"
            errors.append(FieldError("script_args.scale_factor",
                                     f"{exc}: {bigger}, or lower the width and height (the tile size)"))
        return plan


def make_plan(run: ScriptRun) -> UpscalePlan:
    """The checked run; ValidationError (every problem at once) before any work."""
    errors: list[FieldError] = []
    image = _image(run.request, errors)
    upscaler = _upscaler(run.values["upscaler"], run.host, errors)
    if errors:
        raise ValidationError(errors)
    plan = UpscalePlan(run.request, image, upscaler, run.values["scale_factor"], run.values["overlap"], 0)
    plan = _check_tiles(plan, errors)
    if errors:
        raise ValidationError(errors)
    base = run.request
    room = base.batch_count + plan.tiles  # every seed a tile may take stays below the maximum
    base = replace(base, seed=fixed_seed(base.seed, room))
    if base.variation_strength > 0:
        base = replace(base, variation_seed=fixed_seed(base.variation_seed, base.batch_size))
    return replace(plan, base=base)


def tile_request(base: GenerationRequest, tile: bytes, iteration: int, index: int) -> GenerationRequest:
    """The job of tile ``index`` in ``iteration``: A1111's seed for it, one image, not saved."""
    batch, slot = divmod(index, base.batch_size)
    seed = offset_seed(base.seed, iteration + batch)  # each batch starts one past the batch before
    varied = base.variation_strength > 0  # A1111: with variations the seed stays, the variation seed moves
    return replace(base, init_image=tile, batch_size=1, batch_count=1, save_images=False,
                   seed=seed if varied else offset_seed(seed, slot),
                   variation_seed=offset_seed(base.variation_seed, slot) if varied else base.variation_seed)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _quoted(value: str) -> str:
    # The infotext reader splits on commas and colons; such values travel JSON-quoted, as A1111 writes them.
    plain = not any(c in value for c in ',:"\n') and value == value.strip()
    return value if plain else json.dumps(value, ensure_ascii=False)


def with_params(infotext: str, extra: Mapping[str, object]) -> str:
    """``infotext`` with ``extra`` keys after the job's own and before ``Version`` (where A1111 puts
    a script's parameters)."""
    added = ", ".join(f"{key}: {_quoted(str(value))}" for key, value in extra.items())
    head, newline, last = infotext.rpartition("\n")
    cut = last.rfind(", Version: ")
    last = f"{last[:cut]}, {added}{last[cut:]}" if cut >= 0 else f"{last}, {added}"
    return f"{head}{newline}{last}"


def _save(run: ScriptRun, image: Image.Image, infotext: str, seed: int, notes: list[str]) -> Path | None:
    """The saved file, when the job saves images; a failed save is a note (the image still goes
    back), as it is for a job's own images."""
    if not run.request.save_images:
        return None
    try:
        return run.host.save_image(image, infotext, seed, img2img=True)
    except OSError as exc:
        notes.append(f"Could not save the SD upscale image of seed {seed} ({exc.strerror or exc}); "
                     "it is shown here but not on disk.")
        return None


def _combined(run: ScriptRun, plan: UpscalePlan, grid: TileGrid, iteration: int,
              results: list[GenerationResult], notes: list[str]) -> GeneratedImage | None:
    """One iteration's image from its tiles' results (black where a tile has none: skipped, or
    after an interrupt), saved when the job saves images; None when no tile has an image."""
    done = [result for result in results if result.images]
    if not done:
        return None
    size = (grid.tile_width, grid.tile_height)
    tiles = [decode_png(r.images[0].png) if r.images else Image.new("RGB", size) for r in results]
    tiles += [Image.new("RGB", size)] * (grid.count - len(tiles))
    image = combine(grid, tiles)
    infotext = with_params(done[0].images[0].infotext,
                           {"SD upscale overlap": plan.overlap, "SD upscale upscaler": plan.upscaler})
    seed = offset_seed(plan.base.seed, iteration)
    path = _save(run, image, infotext, seed, notes)
    return GeneratedImage(path=path, seed=seed, infotext=infotext, index=iteration,
                          png=png_with_infotext(image, infotext))


def run_upscale(run: ScriptRun) -> GenerationResult:
    started = time.monotonic()
    # 1. Check everything, then upscale and cut the tiles once (every iteration repaints the same ones).
    plan = make_plan(run)
    upscaled = plan.upscaled(run.host)
    grid = plan_grid(upscaled.width, upscaled.height, plan.base.width, plan.base.height, plan.overlap)
    tiles = [_png(tile) for tile in split(upscaled, grid)]
    notes: list[str] = []
    if plan.upscaler == NO_UPSCALER and not math.isclose(plan.scale_factor, 1.0):
        notes.append("Upscaler None: the image kept its size (the scale factor applies only with an upscaler)")
    # 2. Per iteration, every tile through the queue, then the blended image; an interrupt stops both loops.
    images: list[GeneratedImage] = []
    every: list[GenerationResult] = []
    for iteration in range(plan.base.batch_count):
        results: list[GenerationResult] = []
        for index, tile in enumerate(tiles):
            results.append(run.host.generate(tile_request(plan.base, tile, iteration, index)))
            if results[-1].interrupted:
                break
        every += results
        notes += [note for result in results for note in result.warnings]
        combined = _combined(run, plan, grid, iteration, results, notes)
        images += [combined] if combined is not None else []
        if every[-1].interrupted:
            break
    # 3. One result: the blended images, described by the first tile's job.
    return replace(every[0], images=tuple(images), grid=None, interrupted=every[-1].interrupted,
                   elapsed_seconds=time.monotonic() - started, warnings=tuple(dict.fromkeys(notes)))


def setup(ext: ExtensionSetup) -> None:
    ext.add_script(Script(title=TITLE, run=run_upscale, params=PARAMS, tabs=frozenset({"img2img"})))

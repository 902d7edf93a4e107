"""X/Y/Z plot (A1111's script of that name): the job once per combination of up to three axes'
values, and a grid with the X values as column headers, the Y values as row labels and one such
grid per Z value, side by side under the Z values.

Everything is checked before the first image: every value of every axis is read and applied to the
job, and a job that would be refused is reported as a ValidationError naming the script argument.
A -1 seed is fixed once first (unless "Keep -1 for seeds"), so cells differ only by their axes.
Each cell is an ordinary job through the host (saved by the service with its own parameters); the
grid shows the first image of each cell and is saved as a grid when the job asks to save images.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import replace
from typing import Any

from PIL import Image
from xyz_axes import NOTHING, AxisInput, PlotAxis, axis_names, find_axis

from modules.extension_api import (
    ExtensionSetup,
    FieldError,
    GeneratedImage,
    GenerationRequest,
    GenerationResult,
    Label,
    Param,
    Script,
    ScriptRun,
    ValidationError,
    decode_png,
    fixed_seed,
    font_size_for,
    labelled_grid,
    png_with_infotext,
    validate_request,
)

TITLE = "X/Y/Z plot"
KEYS = ("x", "y", "z")
MAX_CELLS = 10_000  # beyond this a plot is a typo, not a plan; refused before any work

PARAMS = (
    Param.choice("x_type", axis_names(), "Seed", "X type"),
    Param.text("x_values", "", "X values"),
    Param.choice("y_type", axis_names(), "Nothing", "Y type"),
    Param.text("y_values", "", "Y values"),
    Param.choice("z_type", axis_names(), "Nothing", "Z type"),
    Param.text("z_values", "", "Z values"),
    Param.bool("draw_legend", True, "Draw legend"),
    Param.bool("include_sub_images", False, "Return every image of each cell (not only the one in the grid)"),
    Param.bool("no_fixed_seeds", False, "Keep -1 for seeds"),
)


def _fix_seeds(request: GenerationRequest) -> GenerationRequest:
    room = request.images_per_job  # for the batch's seed + i
    return replace(request, seed=fixed_seed(request.seed, room), variation_seed=fixed_seed(request.variation_seed, room))


def _read_axis(key: str, values: Any, given: AxisInput, fix_seeds: bool, errors: list[FieldError]) -> PlotAxis:
    axis, text = find_axis(values[f"{key}_type"]), values[f"{key}_values"]
    where = f"script_args.{key}_values"
    if axis is NOTHING:
        return PlotAxis(key, NOTHING, "", (None,))
    try:
        found = axis.read(text, given)
    except ValueError as exc:
        errors.append(FieldError(where, f"{axis.name}: {exc}"))
        return PlotAxis(key, NOTHING, "", (None,))
    if not found:
        errors.append(FieldError(where, f"{axis.name}: give at least one value"))
    if fix_seeds and axis.is_seed:
        found = [fixed_seed(value, room=given.request.images_per_job) for value in found]
    for value in found:  # each value on the job as it stands: what the service would refuse, refused now
        try:
            validate_request(axis.apply(given.request, value))
        except ValidationError as exc:
            errors += [FieldError(where, f"{axis.label(value)}: {error}") for error in exc.errors]
    return PlotAxis(key, axis, text, tuple(found))


def _check_shape(axes: tuple[PlotAxis, ...], errors: list[FieldError]) -> None:
    seen: dict[str, str] = {}
    for plot_axis in axes:
        name = plot_axis.axis.name
        # Two Prompt S/R axes are fine (two different search texts); any other axis twice is a mistake.
        if plot_axis.axis is not NOTHING and name != "Prompt S/R" and name in seen:
            errors.append(FieldError(f"script_args.{plot_axis.key}_type",
                                     f"{name} is already the {seen[name].upper()} axis"))
        seen.setdefault(name, plot_axis.key)
    cells = math.prod(len(plot_axis.values) for plot_axis in axes)
    if cells > MAX_CELLS:
        errors.append(FieldError("script_args", f"the plot has {cells} cells; at most {MAX_CELLS}"))


def plan(run: ScriptRun) -> tuple[GenerationRequest, tuple[PlotAxis, ...]]:
    """The job every cell starts from (seeds fixed) and the three axes, all checked."""
    fix_seeds = not run.values["no_fixed_seeds"]
    base = _fix_seeds(run.request) if fix_seeds else run.request
    given = AxisInput(base, tuple(run.host.checkpoints()))
    errors: list[FieldError] = []
    axes = tuple(_read_axis(key, run.values, given, fix_seeds, errors) for key in KEYS)
    _check_shape(axes, errors)
    if errors:
        raise ValidationError(errors)
    return base, axes


Position = tuple[int, int, int]  # (x, y, z) indices


def _run_order(axes: tuple[PlotAxis, ...]) -> list[Position]:
    """Every cell, the costliest axis (checkpoints: a model switch) in the outermost loop so it
    changes least often; otherwise Z outermost and X innermost."""
    nesting = sorted(range(len(axes)), key=lambda i: (-axes[i].axis.cost, -i))
    order = []
    for combination in itertools.product(*(range(len(axes[i].values)) for i in nesting)):
        position = [0, 0, 0]
        for axis_index, value_index in zip(nesting, combination, strict=True):
            position[axis_index] = value_index
        order.append((position[0], position[1], position[2]))
    return order


def _reading_order(axes: tuple[PlotAxis, ...]) -> list[Position]:
    """X fastest, then Y, then Z: the order of the grid and of the returned images (as A1111's)."""
    x, y, z = (len(plot_axis.values) for plot_axis in axes)
    return [(ix, iy, iz) for iz in range(z) for iy in range(y) for ix in range(x)]


def cell_request(base: GenerationRequest, axes: tuple[PlotAxis, ...], position: Position) -> GenerationRequest:
    request = base
    for plot_axis, index in zip(axes, position, strict=True):  # X, then Y, then Z, as A1111 applies them
        request = plot_axis.axis.apply(request, plot_axis.values[index])
    return request


def draw_plot(axes: tuple[PlotAxis, ...], cells: dict[Position, Image.Image], legend: bool) -> Image.Image:
    """One labelled grid per Z value, side by side under the Z labels; missing cells (skipped, or
    after an interrupt) stay black."""
    x, y, z = axes
    sample = next(iter(cells.values()))
    blank = Image.new("RGB", sample.size, "black")
    font_size = font_size_for(*sample.size)
    heads = [[Label(text)] for text in x.labels] if legend else []
    rows = [[Label(text)] for text in y.labels] if legend else []
    grids = []
    for iz in range(len(z.values)):
        images = [cells.get((ix, iy, iz), blank) for iy in range(len(y.values)) for ix in range(len(x.values))]
        grids.append(labelled_grid(images, len(x.values), heads, rows, font_size))
    if len(grids) == 1:
        return grids[0]
    titles = [[Label(text)] for text in z.labels] if legend else []
    return labelled_grid(grids, len(grids), titles, [], font_size, gap=font_size)


def _quoted(value: str) -> str:
    # The infotext reader splits on commas and colons; such values travel JSON-quoted, as A1111 writes them.
    plain = not any(c in value for c in ',:"\n') and value == value.strip()
    return value if plain else json.dumps(value, ensure_ascii=False)


def grid_infotext(first: str, axes: tuple[PlotAxis, ...], fixed_seeds: bool) -> str:
    """The first cell's parameters plus the plot's own keys (A1111's), before ``Version``."""
    extra = {"Script": TITLE}
    for plot_axis in axes:
        if plot_axis.axis is NOTHING:
            continue
        key = plot_axis.key.upper()
        extra[f"{key} Type"] = plot_axis.axis.name
        extra[f"{key} Values"] = plot_axis.text
        if plot_axis.axis.is_seed and fixed_seeds:
            extra[f"Fixed {key} Values"] = ", ".join(str(value) for value in plot_axis.values)
    added = ", ".join(f"{name}: {_quoted(value)}" for name, value in extra.items())
    head, newline, last = first.rpartition("\n")
    cut = last.rfind(", Version: ")
    last = f"{last[:cut]}, {added}{last[cut:]}" if cut >= 0 else f"{last}, {added}"
    return f"{head}{newline}{last}"


def _finish(run: ScriptRun, axes: tuple[PlotAxis, ...], results: dict[Position, GenerationResult],
            interrupted: bool, started: float) -> GenerationResult:
    ordered = [results[position] for position in _reading_order(axes) if position in results]
    if not ordered:
        return GenerationResult(request=run.request, images=(), interrupted=interrupted,
                                elapsed_seconds=time.monotonic() - started)
    first = ordered[0]
    keep = None if run.values["include_sub_images"] else 1
    images = tuple(image for result in ordered for image in result.images[:keep])
    picture = draw_plot(axes, {p: decode_png(r.images[0].png) for p, r in results.items()}, run.values["draw_legend"])
    infotext = grid_infotext(first.images[0].infotext, axes, not run.values["no_fixed_seeds"])
    path = run.host.save_grid(picture, infotext, img2img=run.request.is_img2img) if run.request.save_images else None
    grid = GeneratedImage(path=path, seed=first.images[0].seed, infotext=infotext, index=-1,
                          png=png_with_infotext(picture, infotext))
    warnings = tuple(dict.fromkeys(note for result in ordered for note in result.warnings))
    return GenerationResult(request=first.request, images=images, grid=grid, interrupted=interrupted,
                            model_title=first.model_title, elapsed_seconds=time.monotonic() - started,
                            warnings=warnings)


def run_plot(run: ScriptRun) -> GenerationResult:
    started = time.monotonic()
    base, axes = plan(run)
    results: dict[Position, GenerationResult] = {}
    interrupted = False
    for position in _run_order(axes):
        result = run.host.generate(cell_request(base, axes, position))
        if result.images:  # a skipped cell has none: it stays blank in the grid
            results[position] = result
        if result.interrupted:
            interrupted = True
            break
    return _finish(run, axes, results, interrupted, started)


def setup(ext: ExtensionSetup) -> None:
    ext.add_script(Script(title=TITLE, run=run_plot, params=PARAMS))

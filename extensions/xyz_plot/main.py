"""X/Y/Z plot (A1111's script of that name): the job once per combination of up to three axes'
values, and a grid with the X values as column headers, the Y values as row labels and one such
grid per Z value, side by side under the Z values.

Everything is checked before the first image: every value of every axis is read and applied to the
job, and a job that would be refused is reported as a ValidationError naming the field as the form
names it ("X values", "Y type"). The values take A1111's positional ``script_args`` order, axis
types their positions in A1111's lists (see xyz_a1111). Each cell's job carries its number in the
plot, so the progress shows "image k of n" (the API's ``state.job``: "k out of n", as A1111's).
A -1 seed is fixed once first (unless "Keep -1 for seeds"), so cells differ only by their axes.
Each cell is an ordinary job through the host (saved by the service with its own parameters); the
grid shows the first image of each cell and is saved as a grid when the job asks to save images.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import time
from dataclasses import replace
from typing import Any

from PIL import Image
from xyz_a1111 import WITH_CHOICES, axis_list
from xyz_axes import NOTHING, Axis, AxisInput, PlotAxis, axis_names, find_axis

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
TABS = ("txt2img", "img2img")


def params_for(tab: str) -> tuple[Param, ...]:
    """The script's values in A1111's positional order (its ``run`` arguments), so clients' lists of
    ``script_args`` line up; the axis types also take A1111's positions in ``tab``'s axis list.
    ``include_sub_images`` (every image of each cell) is Atelier's own, after A1111's."""
    def axis_params(key: str, default: str) -> tuple[Param, ...]:
        name = key.upper()
        return (Param.choice(f"{key}_type", axis_names(), default, f"{name} type", indexed=axis_list(tab)),
                Param.text(f"{key}_values", "", f"{name} values"),
                Param.texts(f"{key}_values_dropdown", f"{name} values, picked from a list (A1111's dropdown)"))

    return (
        *axis_params("x", "Seed"), *axis_params("y", "Nothing"), *axis_params("z", "Nothing"),
        Param.bool("draw_legend", True, "Draw legend"),
        # A1111's UI starts with this off (only the grid comes back); Atelier shows the cells too.
        Param.bool("include_lone_images", True, "Include Sub Images (the cells besides the grid)"),
        Param.bool("include_sub_grids", False, "Include Sub Grids (each Z value's grid as well)"),
        Param.bool("no_fixed_seeds", False, "Keep -1 for seeds"),
        Param.bool("vary_seeds_x", False, "Vary seeds for X"),
        Param.bool("vary_seeds_y", False, "Vary seeds for Y"),
        Param.bool("vary_seeds_z", False, "Vary seeds for Z"),
        Param.int("margin_size", 0, "Grid margins (px)", minimum=0, maximum=500),
        Param.bool("csv_mode", False, "Use text inputs instead of dropdowns"),
        Param.bool("include_sub_images", False, "Return every image of each cell (not only the one in the grid)"),
    )


def _fix_seeds(request: GenerationRequest) -> GenerationRequest:
    room = request.images_per_job  # for the batch's seed + i
    return replace(request, seed=fixed_seed(request.seed, room), variation_seed=fixed_seed(request.variation_seed, room))


def _axis_text(key: str, axis: Axis, values: Any) -> str:
    """What the axis reads: A1111 takes a list axis's values from its dropdown unless "Use text
    inputs" is on; an empty dropdown leaves the text (where A1111 would plot nothing)."""
    picked = values[f"{key}_values_dropdown"]
    if axis.name in WITH_CHOICES and not values["csv_mode"] and picked:
        with io.StringIO() as out:
            csv.writer(out).writerow(picked)
            return out.getvalue().strip()
    return values[f"{key}_values"]


def _read_axis(key: str, values: Any, given: AxisInput, fix_seeds: bool, errors: list[FieldError]) -> PlotAxis:
    where = f"{key.upper()} values"  # the user's words for the field, on the form and in A1111's UI
    chosen = values[f"{key}_type"]
    try:
        axis = find_axis(chosen)
    except KeyError:  # one of A1111's axes (sent by its position or name) that Atelier does not have
        errors.append(FieldError(f"{key.upper()} type", f"A1111's axis {chosen!r} is not available here; "
                                                        f"available: {', '.join(axis_names())}"))
        return PlotAxis(key, NOTHING, "", (None,))
    if axis is NOTHING:
        return PlotAxis(key, NOTHING, "", (None,))
    text = _axis_text(key, axis, values)
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
            errors.append(FieldError(f"{plot_axis.key.upper()} type",
                                     f"{name} is already the {seen[name].upper()} axis"))
        seen.setdefault(name, plot_axis.key)
    cells = math.prod(len(plot_axis.values) for plot_axis in axes)
    if cells > MAX_CELLS:
        errors.append(FieldError("X/Y/Z plot", f"the plot has {cells} cells; at most {MAX_CELLS}"))


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


def cell_request(base: GenerationRequest, axes: tuple[PlotAxis, ...], position: Position,
                 vary: tuple[bool, bool, bool] = (False, False, False)) -> GenerationRequest:
    """The cell's job: the axes' values applied, X, then Y, then Z, as A1111 applies them; with
    "Vary seeds" A1111's offsets (x, y * X count, z * X count * Y count; an axis not varied counts 1)."""
    request = base
    for plot_axis, index in zip(axes, position, strict=True):
        request = plot_axis.axis.apply(request, plot_axis.values[index])
    x_count = len(axes[0].values) if vary[0] else 1
    y_count = len(axes[1].values) if vary[1] else 1
    offset = (position[0] if vary[0] else 0) + (position[1] * x_count if vary[1] else 0) \
        + (position[2] * x_count * y_count if vary[2] else 0)
    if offset and request.seed >= 0:  # a random seed stays random
        request = replace(request, seed=request.seed + offset)
    return request


def z_grids(axes: tuple[PlotAxis, ...], cells: dict[Position, Image.Image], legend: bool,
            margin: int = 0) -> list[Image.Image]:
    """One labelled X/Y grid per Z value (``margin`` pixels between its cells); missing cells
    (skipped, or after an interrupt) stay black."""
    x, y, z = axes
    sample = next(iter(cells.values()))
    blank = Image.new("RGB", sample.size, "black")
    font_size = font_size_for(*sample.size)
    heads = [[Label(text)] for text in x.labels] if legend else []
    rows = [[Label(text)] for text in y.labels] if legend else []
    grids = []
    for iz in range(len(z.values)):
        images = [cells.get((ix, iy, iz), blank) for iy in range(len(y.values)) for ix in range(len(x.values))]
        grids.append(labelled_grid(images, len(x.values), heads, rows, font_size, gap=margin))
    return grids


def draw_plot(axes: tuple[PlotAxis, ...], cells: dict[Position, Image.Image], legend: bool,
              margin: int = 0, grids: list[Image.Image] | None = None) -> Image.Image:
    """The plot: the Z values' grids (:func:`z_grids`) side by side under the Z labels."""
    grids = grids if grids is not None else z_grids(axes, cells, legend, margin)
    if len(grids) == 1:
        return grids[0]
    font_size = font_size_for(*next(iter(cells.values())).size)
    titles = [[Label(text)] for text in axes[2].labels] if legend else []
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
    if not run.values["include_lone_images"] and not run.values["include_sub_images"]:
        images = ()  # A1111's "Include Sub Images" off: the grid alone
    cells = {p: decode_png(r.images[0].png) for p, r in results.items()}
    grids = z_grids(axes, cells, run.values["draw_legend"], run.values["margin_size"])
    infotext = grid_infotext(first.images[0].infotext, axes, not run.values["no_fixed_seeds"])
    grid = _grid_image(run, draw_plot(axes, cells, run.values["draw_legend"], grids=grids), infotext, first)
    if run.values["include_sub_grids"] and len(grids) > 1:  # A1111: each Z value's grid after the plot
        images = tuple(_grid_image(run, picture, infotext, first) for picture in grids) + images
    warnings = tuple(dict.fromkeys(note for result in ordered for note in result.warnings))
    return GenerationResult(request=replace(first.request, part_of=None), images=images, grid=grid,
                            interrupted=interrupted,
                            model_title=first.model_title, elapsed_seconds=time.monotonic() - started,
                            warnings=warnings)


def _grid_image(run: ScriptRun, picture: Image.Image, infotext: str, first: GenerationResult) -> GeneratedImage:
    """A grid of the plot as a returned image, saved with the grids when the job saves its images."""
    path = run.host.save_grid(picture, infotext, img2img=run.request.is_img2img) if run.request.save_images else None
    return GeneratedImage(path=path, seed=first.images[0].seed, infotext=infotext, index=-1,
                          png=png_with_infotext(picture, infotext))


def run_plot(run: ScriptRun) -> GenerationResult:
    started = time.monotonic()
    base, axes = plan(run)
    results: dict[Position, GenerationResult] = {}
    interrupted = False
    order = _run_order(axes)
    vary = (run.values["vary_seeds_x"], run.values["vary_seeds_y"], run.values["vary_seeds_z"])
    for number, position in enumerate(order, start=1):
        # Each cell is a job of its own; its progress says which of the plot's jobs it is.
        request = replace(cell_request(base, axes, position, vary), part_of=(number, len(order)))
        result = run.host.generate(request)
        if result.images:  # a skipped cell has none: it stays blank in the grid
            results[position] = result
        if result.interrupted:
            interrupted = True
            break
    return _finish(run, axes, results, interrupted, started)


def setup(ext: ExtensionSetup) -> None:
    for tab in TABS:  # A1111's axis positions differ between the tabs
        ext.add_script(Script(title=TITLE, run=run_plot, params=params_for(tab), tabs=frozenset({tab}),
                              remote=True))  # a remote cell's fixed seed is noted, not applied

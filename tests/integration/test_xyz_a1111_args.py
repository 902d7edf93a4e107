"""The X/Y/Z plot as A1111's API clients call it: positional ``script_args`` in A1111's order,
axis types as positions in A1111's per-tab axis lists, dropdown values, "Vary seeds", the
options it cannot honour refused by name, and each cell's job numbered for the progress."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.extension_api import ScriptRun
from modules.infotext import parse_infotext
from modules.params import GenerationRequest, GenerationResult
from modules.services.job_types import JobStatus, ProgressSnapshot
from modules.ui.common import progress_html

BASE = GenerationRequest(prompt="a red cube on a table", steps=2, width=64, height=64, seed=11, sampler="Euler",
                         checkpoint="tiny-sd15.safetensors", save_images=False)
TITLE = "X/Y/Z plot"


def a1111_args(x_type: Any, x_values: str, y_type: Any = 0, y_values: str = "", **changes: Any) -> list[Any]:
    """A1111's run() arguments after ``p``, with its UI's defaults."""
    args = {"x_type": x_type, "x_values": x_values, "x_values_dropdown": [], "y_type": y_type, "y_values": y_values,
            "y_values_dropdown": [], "z_type": 0, "z_values": "", "z_values_dropdown": [], "draw_legend": True,
            "include_lone_images": True, "include_sub_grids": False, "no_fixed_seeds": False, "vary_seeds_x": False,
            "vary_seeds_y": False, "vary_seeds_z": False, "margin_size": 0, "csv_mode": False}
    args.update(changes)
    return list(args.values())


def run(services: Any, args: list[Any], tab: str = "txt2img", request: GenerationRequest = BASE) -> GenerationResult:
    return services.generation.run_script(TITLE, tab, request, args)


def params(result: GenerationResult, key: str) -> list[str]:
    return [parse_infotext(image.infotext).params[key] for image in result.images]


def field_errors(excinfo: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {error.field: error.message for error in excinfo.value.errors}


def test_positional_args_with_a1111_axis_positions(services: Any) -> None:
    # txt2img: 4 is Steps, 6 is CFG Scale in A1111's list.
    result = run(services, a1111_args(4, "2-3", 6, "5, 7"))
    cells = list(zip(params(result, "Steps"), params(result, "CFG scale"), strict=True))
    assert cells == [("2", "5"), ("3", "5"), ("2", "7"), ("3", "7")]
    grid = parse_infotext(result.grid.infotext).params  # type: ignore[union-attr]
    assert (grid["X Type"], grid["Y Type"]) == ("Steps", "CFG Scale")


def test_axis_positions_follow_each_tabs_own_list(services: Any) -> None:
    positions = {}
    for tab in ("txt2img", "img2img"):
        _name, script = services.extensions.find_script(TITLE, tab)
        x_type = script.params[0]
        positions[tab] = {x_type.coerce(i): i for i in range(len(x_type.indexed))}
    assert positions["txt2img"]["Checkpoint name"] == 11 and positions["img2img"]["Checkpoint name"] == 10
    assert positions["txt2img"]["Sampler"] == positions["img2img"]["Sampler"] == 9
    assert positions["txt2img"]["Prompt S/R"] == positions["img2img"]["Prompt S/R"] == 7
    assert "Hires steps" not in positions["img2img"] and "Image CFG Scale" not in positions["txt2img"]
    assert positions["txt2img"]["Size"] == 41 and positions["img2img"]["Size"] == 40


def test_an_a1111_axis_atelier_lacks_is_refused_by_name(services: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, a1111_args(4, "2", 13, "0.5"))  # txt2img 13: "Sigma Churn"
    errors = field_errors(excinfo)
    assert "Y type" in errors and "Sigma Churn" in errors["Y type"], errors
    with pytest.raises(ValidationError) as excinfo:
        run(services, a1111_args(99, "2"))
    assert "0 to 43" in field_errors(excinfo)["script_args.x_type"]  # A1111's 42 axes, then Distilled CFG and Shift


def test_list_axes_read_the_dropdown_unless_text_inputs_are_on(services: Any) -> None:
    picked = run(services, a1111_args(9, "", x_values_dropdown=["Euler", "Euler a"]))
    assert params(picked, "Sampler") == ["Euler", "Euler a"]
    typed = run(services, a1111_args(9, "Euler a, Euler", x_values_dropdown=["Euler"], csv_mode=True))
    assert params(typed, "Sampler") == ["Euler a", "Euler"]


def test_vary_seeds_gives_each_cell_a1111s_offset(services: Any) -> None:
    result = run(services, a1111_args(6, "5, 7", 4, "2, 3", vary_seeds_x=True, vary_seeds_y=True))
    # X fastest: seed + ix + iy * (X count)
    assert params(result, "Seed") == ["11", "12", "13", "14"]
    plain = run(services, a1111_args(6, "5, 7", 4, "2, 3", vary_seeds_y=True))
    assert params(plain, "Seed") == ["11", "11", "12", "12"]


def test_lone_images_off_returns_the_grid_alone(services: Any) -> None:
    result = run(services, a1111_args(4, "2, 3", include_lone_images=False))
    assert result.images == () and result.grid is not None


def test_sub_grids_give_each_z_values_grid_after_the_plot(services: Any) -> None:
    # X steps 2, 3 and Z CFG 5, 7: the plot holds both Z grids side by side; with sub grids (A1111)
    # each Z value's 2 x 1 grid comes back too, before the cells; without them only the cells.
    plain = run(services, a1111_args(4, "2, 3", z_type=6, z_values="5, 7"))
    with_subs = run(services, a1111_args(4, "2, 3", z_type=6, z_values="5, 7", include_sub_grids=True))
    cells = plain.images
    assert len(cells) == 4 and len(with_subs.images) == 6
    subs = [Image.open(io.BytesIO(image.png)) for image in with_subs.images[:2]]
    cell = Image.open(io.BytesIO(cells[0].png))
    plot = Image.open(io.BytesIO(with_subs.grid.png))
    assert all(sub.height >= cell.height and sub.width >= 2 * cell.width for sub in subs)
    assert plot.width >= 2 * subs[0].width  # the plot puts both Z grids side by side
    assert [i.png for i in with_subs.images[2:]] == [i.png for i in cells]


def test_each_cell_is_numbered_for_the_progress(services: Any) -> None:
    name, script = services.extensions.find_script(TITLE, "txt2img")
    host = services.extensions.host(name)
    seen: list[tuple[int, int] | None] = []

    class Recording:
        def __getattr__(self, attribute: str) -> Any:
            return getattr(host, attribute)

        def generate(self, request: GenerationRequest) -> GenerationResult:
            seen.append(request.part_of)
            return host.generate(request)

    values = services.extensions.script_values(script, a1111_args(4, "2, 3", 6, "5, 7"))
    result = script.run(ScriptRun(services.generation._with_server_defaults(BASE), values, Recording()))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.request.part_of is None
    text = progress_html(ProgressSnapshot(job_id="j", status=JobStatus.RUNNING, step=1, total_steps=2,
                                          batch_count=1, part_of=(3, 4)))
    assert "image 3 of 4" in text


def test_ranges_that_a1111_leaves_empty_name_the_field(services: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, a1111_args(4, "5-1"))
    message = field_errors(excinfo)["X values"]
    assert "gives no values" in message and "10-1 (-3)" in message


def test_a_positional_list_lines_up_with_named_values(services: Any) -> None:
    by_name = run(services, {"x_type": "Steps", "x_values": "2, 3"})
    by_position = run(services, a1111_args(4, "2, 3"))
    assert [i.png for i in by_name.images] == [i.png for i in by_position.images]

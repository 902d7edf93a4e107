"""The built-in scripts (X/Y/Z plot, Prompt matrix, Prompts from file or textbox) on tiny models,
through the same path the UI and the API's ``script_name`` take."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from modules.errors import ValidationError
from modules.infotext import parse_infotext
from modules.params import GenerationRequest, GenerationResult
from tests.conftest import TinyModels, make_services

BASE = GenerationRequest(prompt="a red cube on a table", steps=2, width=64, height=64, sampler="Euler",
                         checkpoint="tiny-sd15.safetensors", seed=11, save_images=False)
XYZ = "x/y/z plot"  # as A1111 clients send it: titles match case-insensitively


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scripts-data")


@pytest.fixture(scope="module")
def services(tiny_models: TinyModels, data_dir: Path) -> Iterator[Any]:
    svc = make_services(data_dir, tiny_models.folder)
    yield svc
    svc.close()


def run(services: Any, title: str, values: dict[str, Any], request: GenerationRequest = BASE) -> GenerationResult:
    return services.generation.run_script(title, "txt2img", request, values)


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def params(result: GenerationResult, key: str) -> list[str]:
    return [parse_infotext(image.infotext).params[key] for image in result.images]


def field_errors(excinfo: pytest.ExceptionInfo[ValidationError]) -> dict[str, str]:
    return {error.field: error.message for error in excinfo.value.errors}


def test_the_three_scripts_are_loaded_for_both_tabs(services: Any) -> None:
    for tab in ("txt2img", "img2img"):
        titles = {script.title for _name, script in services.extensions.scripts(tab)}
        assert {"X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox"} <= titles
    failed = [(r.name, r.error) for r in services.extensions.records() if r.error]
    assert failed == []


# --- X/Y/Z plot --------------------------------------------------------------------------------


def test_xyz_seed_by_cfg_gives_a_labelled_grid_of_the_cells(services: Any, data_dir: Path) -> None:
    result = run(services, XYZ, {"x_type": "CFG Scale", "x_values": "5, 7.5", "y_type": "Seed", "y_values": "1-2"},
                 replace(BASE, save_images=True))
    # X fastest, then Y: each cell is an ordinary image with its own parameters
    cells = list(zip(params(result, "CFG scale"), params(result, "Seed"), strict=True))
    assert cells == [("5", "1"), ("7.5", "1"), ("5", "2"), ("7.5", "2")]
    assert all(image.path is not None and image.path.is_file() for image in result.images)
    assert result.grid is not None and result.grid.index == -1
    grid = pixels(result.grid.png)
    height, width = grid.shape[:2]
    left, top = width - 2 * 64, height - 2 * 64  # cells flush right and bottom, labels in the margins
    assert left > 0 and top > 0
    for n, image in enumerate(result.images):
        x, y = left + (n % 2) * 64, top + (n // 2) * 64
        assert np.array_equal(grid[y:y + 64, x:x + 64], pixels(image.png)), f"cell {n} is not in its place"
    # Column headers above the cells and row labels left of them hold dark text; the corner is empty.
    assert grid[:top, left:].min() < 80 and grid[top:, :left].min() < 80
    assert (grid[:top, :left] == 255).all()
    # The grid is saved as a grid, with the first cell's parameters and the plot's own keys.
    assert result.grid.path is not None and result.grid.path.is_file()
    assert result.grid.path.is_relative_to(data_dir / "outputs" / "txt2img-grids")
    with Image.open(result.grid.path) as saved:
        assert saved.info["parameters"] == result.grid.infotext
    grid_params = parse_infotext(result.grid.infotext).params
    assert (grid_params["Seed"], grid_params["CFG scale"]) == ("1", "5")
    assert grid_params["Script"] == "X/Y/Z plot"
    assert (grid_params["X Type"], grid_params["X Values"]) == ("CFG Scale", "5, 7.5")
    assert (grid_params["Y Type"], grid_params["Y Values"], grid_params["Fixed Y Values"]) == ("Seed", "1-2", "1, 2")


def test_xyz_fixes_a_random_seed_once_unless_told_not_to(services: Any) -> None:
    random_seed = replace(BASE, seed=-1)
    fixed = run(services, XYZ, {"x_type": "Steps", "x_values": "2, 3"}, random_seed)
    assert params(fixed, "Steps") == ["2", "3"]
    assert len(set(params(fixed, "Seed"))) == 1
    loose = run(services, XYZ, {"x_type": "Steps", "x_values": "2, 3", "no_fixed_seeds": True}, random_seed)
    assert len(set(params(loose, "Seed"))) == 2


def test_xyz_prompt_search_and_replace_without_legend(services: Any) -> None:
    request = replace(BASE, negative_prompt="red haze")
    result = run(services, XYZ, {"x_type": "Prompt S/R", "x_values": 'red, "blue, shiny", green',
                                 "draw_legend": False}, request)
    parsed = [parse_infotext(image.infotext) for image in result.images]
    assert [p.prompt for p in parsed] == ["a red cube on a table", "a blue, shiny cube on a table",
                                          "a green cube on a table"]
    assert [p.negative_prompt for p in parsed] == ["red haze", "blue, shiny haze", "green haze"]
    assert result.grid is not None and result.grid.path is None  # save_images=False: nothing written
    assert pixels(result.grid.png).shape[:2] == (64, 3 * 64)  # no legend, no margins


def test_xyz_checkpoint_axis_on_z_switches_models(services: Any) -> None:
    result = run(services, XYZ, {"x_type": "Steps", "x_values": "2-3", "z_type": "Checkpoint name",
                                 "z_values": "tiny-sd15.safetensors, tiny-sd15-b"})
    assert params(result, "Model") == ["tiny-sd15", "tiny-sd15", "tiny-sd15-b", "tiny-sd15-b"]
    assert params(result, "Steps") == ["2", "3", "2", "3"]
    assert not np.array_equal(pixels(result.images[0].png), pixels(result.images[2].png))
    grid = pixels(result.grid.png)  # type: ignore[union-attr]
    assert grid.shape[1] > 4 * 64 and grid.shape[0] > 64  # two labelled sub-grids side by side


@pytest.mark.parametrize(("values", "field", "words"), [
    ({"x_type": "Sampler", "x_values": "Euler, Nope"}, "X values", "Nope"),
    ({"y_type": "Checkpoint name", "y_values": "tiny-sd15, missing-model"}, "Y values", "missing-model"),
    ({"x_type": "Steps", "x_values": "2, two"}, "X values", "'two'"),
    ({"z_type": "Steps", "z_values": "2, 500"}, "Z values", "steps"),
    ({"x_type": "Prompt S/R", "x_values": "purple, blue"}, "X values", "purple"),
    ({"x_type": "Denoising", "x_values": "0.5"}, "X values", "hires"),
    ({"x_type": "Seed", "x_values": ""}, "X values", "at least one"),
    ({"x_type": "Steps", "x_values": "2", "y_type": "Steps", "y_values": "3"}, "Y type", "already"),
    ({"x_type": "Colour"}, "script_args.x_type", "Colour"),
], ids=["sampler", "checkpoint", "not-a-number", "past-the-limit", "search-missing", "denoising-txt2img",
        "no-values", "axis-twice", "unknown-axis"])
def test_xyz_refuses_bad_values_before_any_work(services: Any, values: dict[str, Any], field: str,
                                                words: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, XYZ, values)
    errors = field_errors(excinfo)
    assert field in errors and words in errors[field], errors


# --- Prompt matrix -----------------------------------------------------------------------------


def test_prompt_matrix_makes_every_combination_in_a_labelled_grid(services: Any) -> None:
    request = replace(BASE, prompt="a cat | wearing a hat | in the snow", seed=5)
    result = run(services, "Prompt matrix", {}, request)
    assert [parse_infotext(image.infotext).prompt for image in result.images] == [
        "a cat", "a cat, wearing a hat", "a cat, in the snow", "a cat, wearing a hat, in the snow"]
    assert params(result, "Seed") == ["5"] * 4
    assert result.grid is not None
    grid = pixels(result.grid.png)
    left, top = grid.shape[1] - 2 * 64, grid.shape[0] - 2 * 64
    assert left > 0 and top > 0
    assert grid[:top, left:].min() < 80 and grid[top:, :left].min() < 80
    assert np.array_equal(grid[top + 64:, left + 64:], pixels(result.images[3].png))


def test_prompt_matrix_on_the_negative_prompt_with_seeds_and_parts_first(services: Any) -> None:
    request = replace(BASE, prompt="a cat", negative_prompt="blurry | lowres", seed=5)
    result = run(services, "Prompt matrix", {"put_at_start": True, "different_seeds": True,
                                             "prompt_type": "negative", "variations_delimiter": "space"}, request)
    parsed = [parse_infotext(image.infotext) for image in result.images]
    assert [(p.prompt, p.negative_prompt) for p in parsed] == [("a cat", "blurry"), ("a cat", "lowres blurry")]
    assert params(result, "Seed") == ["5", "6"]


def test_prompt_matrix_needs_a_bar_in_the_prompt(services: Any) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, "Prompt matrix", {})
    assert "prompt" in field_errors(excinfo)


# --- Prompts from file or textbox --------------------------------------------------------------


def test_prompts_from_lines_and_options(services: Any) -> None:
    text = ("a lighthouse at dusk\n\n"
            '--prompt "a red barn" in fog --negative_prompt "people" --steps 3 --seed 42 --cfg_scale 6.5 '
            '--sampler_name "Euler a" --width 64 --height 64 --batch_size 1 --tiling true\n')
    result = run(services, "Prompts from file or textbox", {"prompt_txt": text}, replace(BASE, prompt=""))
    parsed = [parse_infotext(image.infotext) for image in result.images]
    assert [(p.prompt, p.negative_prompt) for p in parsed] == [("a lighthouse at dusk", ""),
                                                               ("a red barn in fog", "people")]
    assert [p.params["Steps"] for p in parsed] == ["2", "3"]
    assert parsed[0].params["Seed"] == "11" and parsed[1].params["Seed"] == "42"
    assert (parsed[1].params["CFG scale"], parsed[1].params["Sampler"]) == ("6.5", "Euler a")
    assert result.grid is None
    # --tiling is honoured now (A1111's boolean option), not ignored with a warning.
    assert parsed[1].params.get("Tiling") == "True" and "Tiling" not in parsed[0].params
    assert not any("--tiling" in note for note in result.warnings)


def test_prompts_from_lines_join_the_form_prompt_and_iterate_the_seed(services: Any) -> None:
    values = {"prompt_txt": "a cat\na dog", "iterate_seed": True, "prompt_position": "end"}
    result = run(services, "Prompts from file or textbox", values, replace(BASE, prompt="masterpiece", seed=100))
    assert [parse_infotext(image.infotext).prompt for image in result.images] == ["masterpiece a cat",
                                                                                  "masterpiece a dog"]
    assert params(result, "Seed") == ["100", "101"]


@pytest.mark.parametrize(("text", "words"), [
    ("a cat\n--steps abc", "line 2: --steps: 'abc' is not a whole number"),
    ("a cat\n\n--prompt dog --colour red", "line 3: unknown option --colour"),
    ('--prompt "unclosed', "line 1: cannot split"),
    ("--steps 999", "line 1: steps"),
    ("--sampler_name Nope", "line 1: --sampler_name: unknown sampler"),
    ("--sd_model missing-model", "line 1: unknown checkpoint"),
    ("--seed", "line 1: --seed needs a value"),
    ("  \n ", "is empty"),
], ids=["not-a-number", "unknown-option", "quotes", "past-the-limit", "sampler", "checkpoint", "no-value", "empty"])
def test_prompts_from_lines_refuse_bad_lines_by_number(services: Any, text: str, words: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        run(services, "Prompts from file or textbox", {"prompt_txt": text})
    message = field_errors(excinfo).get("script_args.prompt_txt", "")
    assert words in message, field_errors(excinfo)

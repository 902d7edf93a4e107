"""The X/Y/Z plot's value lists and axes, read without running any model."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

from modules.params import GenerationRequest
from modules.samplers import ScheduleType

EXTENSIONS = Path(__file__).resolve().parents[2] / "extensions"


def _import(folder: Path, name: str) -> ModuleType:
    # As the extension manager does: the extension's folder is on sys.path while its modules load.
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


values = _import(EXTENSIONS / "xyz_plot", "xyz_values")
axes = _import(EXTENSIONS / "xyz_plot", "xyz_axes")


def ints(text: str) -> list[int]:
    return values.int_values(values.split_values(text))


def floats(text: str) -> list[float]:
    return values.float_values(values.split_values(text))


@pytest.mark.parametrize(("text", "expected"), [
    ("1, 2, 3", [1, 2, 3]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-10 (+2)", [1, 3, 5, 7, 9]),
    ("1-10 [3]", [1, 5, 10]),  # spread values are truncated, as A1111 does
    ("10-1 (-3)", [10, 7, 4]),  # A1111's range(10, 1 + 1, -3)
    ("5-1 (-1)", [5, 4, 3]),
    ("-1, 7", [-1, 7]),
    ("-5--3", [-5, -4, -3]),
    (" 1 - 3 , 8", [1, 2, 3, 8]),
    ("1-3 [1]", [1]),
    ("3,\n4", [3, 4]),
    ("2,,3,", [2, 3]),
])
def test_whole_numbers_and_ranges(text: str, expected: list[int]) -> None:
    assert ints(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("5, 7.5", [5.0, 7.5]),
    ("1-2 (+0.5)", [1.0, 1.5, 2.0]),
    ("0.1-0.3 (+0.1)", [0.1, 0.2, 0.3]),  # A1111 overshoots to 0.4 here; values past the end are left out
    ("0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("3-1 (-1)", [3.0, 2.0, 1.0]),
    (".5, 1e-2", [0.5, 0.01]),
])
def test_numbers_and_decimal_ranges(text: str, expected: list[float]) -> None:
    assert floats(text) == pytest.approx(expected)


@pytest.mark.parametrize(("text", "words"), [
    ("1, two", "'two' is not a whole number"),
    ("1.5", "not a whole number"),
    ("1-10 (-1)", "gives no values"),
    ("5-1", "gives no values"),
    ("1-5 (+0)", "must not be 0"),
    ("1-5 [0]", "at least 1"),
    ("1-100000", "at most"),
])
def test_bad_whole_numbers_say_why(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ints(text)


def test_bad_numbers_say_why() -> None:
    with pytest.raises(ValueError, match="'x' is not a number"):
        floats("1, x")
    with pytest.raises(ValueError, match="finite"):
        floats("inf")


def test_quoted_values_keep_their_commas_and_blanks_are_dropped_unless_asked() -> None:
    assert values.split_values('a, "b, c", d') == ["a", "b, c", "d"]
    assert values.split_values('"Euler a",DPM++ 2M\nLMS') == ["Euler a", "DPM++ 2M", "LMS"]
    assert values.split_values("a, , b") == ["a", "b"]
    assert values.split_values("a, , b", keep_blank=True) == ["a", "", "b"]


def test_labels_show_names_and_numbers_as_a1111_does() -> None:
    assert axes.find_axis("CFG Scale").label(5.0) == "CFG Scale: 5"
    assert axes.find_axis("cfg scale").label(7.5) == "CFG Scale: 7.5"
    assert axes.find_axis("Seed").label(1) == "Seed: 1"
    assert axes.find_axis("Sampler").label("Euler a") == "Euler a"
    assert axes.find_axis("Size").label((512, 768)) == "Size: 512x768"
    assert axes.find_axis("Nothing").label(None) == ""
    assert axes.axis_names()[0] == "Nothing"


PLAIN = GenerationRequest()


def read(axis: str, text: str, request: GenerationRequest = PLAIN, checkpoints: tuple[str, ...] = ()) -> list:
    return axes.find_axis(axis).read(text, axes.AxisInput(request, checkpoints))


def test_prompt_search_and_replace_needs_the_search_text() -> None:
    request = GenerationRequest(prompt="a red cube", negative_prompt="red haze")
    found = read("Prompt S/R", "red, blue", request)
    assert found == [("red", "red"), ("red", "blue")]
    changed = axes.find_axis("Prompt S/R").apply(request, found[1])
    assert (changed.prompt, changed.negative_prompt) == ("a blue cube", "blue haze")
    with pytest.raises(ValueError, match="'green' is in neither"):
        read("Prompt S/R", "green, blue", request)


def test_samplers_schedules_and_sizes() -> None:
    sampler = axes.find_axis("Sampler")
    combined = sampler.apply(GenerationRequest(), read("Sampler", "DPM++ 2M Karras")[0])
    assert (combined.sampler, combined.schedule) == ("DPM++ 2M", ScheduleType.KARRAS)
    with pytest.raises(ValueError, match="unknown sampler 'Nope'"):
        read("Sampler", "Euler, Nope")
    assert read("Schedule type", "karras, SGM Uniform") == [ScheduleType.KARRAS, ScheduleType.SGM_UNIFORM]
    assert read("Size", "512x768, 64 x 64") == [(512, 768), (64, 64)]
    with pytest.raises(ValueError, match="not a size"):
        read("Size", "512")


def test_checkpoints_match_by_title_file_name_or_bare_name() -> None:
    titles = ("tiny-sd15.safetensors [0123456789]", "sub/other.ckpt")
    found = read("Checkpoint name", "tiny-sd15, TINY-SD15.SAFETENSORS, other, sub/other.ckpt", checkpoints=titles)
    assert [name for _typed, name in found] == ["tiny-sd15.safetensors", "tiny-sd15.safetensors",
                                                "sub/other.ckpt", "sub/other.ckpt"]
    with pytest.raises(ValueError, match="unknown checkpoint 'missing'"):
        read("Checkpoint name", "missing", checkpoints=titles)


def test_hires_only_axes_say_so_without_hires() -> None:
    with pytest.raises(ValueError, match="hires fix"):
        read("Hires steps", "5")
    with pytest.raises(ValueError, match="hires fix"):
        read("Denoising", "0.5")


def test_labelled_grid_draws_labels_and_cells() -> None:
    from PIL import Image

    from modules.extension_api import Label, labelled_grid

    cells = [Image.new("RGB", (32, 32), colour) for colour in ("red", "green", "blue", "white")]
    grid = labelled_grid(cells, 2, [[Label("CFG Scale: 5")], [Label("CFG Scale: 9")]],
                         [[Label("Seed: 1")], [Label("Seed: 2")]])
    assert grid.width > 64 and grid.height > 64  # cells plus label margins
    assert grid.convert("L").crop((0, 0, grid.width, grid.height - 64)).getextrema()[0] < 100  # dark text

"""A1111's saving options as a user notices them: the saved file's name, folder and format, the
parameters inside it, the .txt beside it, the grid's rows, and folders that cannot leave outputs/."""

from __future__ import annotations

import io
import math
import re
from dataclasses import replace
from datetime import date, datetime
from pathlib import Path

import pytest
from PIL import Image

from modules.a1111_extra import extras_problem
from modules.config import Settings, load_settings, save_settings, setting_problem
from modules.errors import ConfigError
from modules.services.filename_pattern import NameContext, apply_pattern, file_stem, sanitize_part
from modules.services.images import ImageSaver, OutputKind, grid_rows, make_grid, read_infotext

DAY = date(2026, 1, 2)
TEXT = "a red cube, ü 猫\nNegative prompt: blur\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 8x8"
WHEN = datetime(2026, 1, 2, 3, 4, 5)


def saver(tmp_path: Path, **changes: object) -> ImageSaver:
    settings = replace(Settings(), **changes)
    return ImageSaver(tmp_path / "outputs", today=lambda: DAY, settings=lambda: settings, data_dir=tmp_path)


def red() -> Image.Image:
    return Image.new("RGB", (8, 8), "red")


# --- names -------------------------------------------------------------------------------------


def a1111_sanitize(text: str, replace_spaces: bool = True) -> str:
    """A1111's sanitize_filename_part, restated: spaces to _, forbidden characters to _, leading
    spaces off, at most 128 characters, trailing spaces and dots off."""
    if replace_spaces:
        text = text.replace(" ", "_")
    for char in '#<>:"/\\|?*\n\r\t':
        text = text.replace(char, "_")
    return text.lstrip(" ")[:128].rstrip(" .")


def test_tags_become_what_the_image_was_made_with() -> None:
    ctx = NameContext(seed=5, prompt="a red: cube/x ", steps=20, cfg=7.5, width=64, height=32, sampler="DPM++ 2M",
                      model_name="tiny-sd15", model_hash="abcdef1234", now=WHEN, job_timestamp=WHEN)
    assert apply_pattern("[seed]-[prompt_spaces]", ctx) == "5-" + a1111_sanitize("a red: cube/x ", False)
    assert apply_pattern("[prompt]", ctx) == a1111_sanitize("a red: cube/x ")
    assert apply_pattern("[prompt_words]", ctx) == "a red cube x"
    assert apply_pattern("[steps]_[cfg]_[width]x[height]_[sampler]", ctx) == "20_7.5_64x32_DPM++ 2M"
    assert apply_pattern("[model_name]-[model_hash]", ctx) == "tiny-sd15-abcdef1234"
    assert apply_pattern("[date] [datetime] [datetime<%H-%M>] [job_timestamp]", ctx) == (
        "2026-01-02 20260102030405 03-04 20260102030405")
    assert apply_pattern("[SEED]", ctx) == "5"  # tags in any case
    # Unknown tags stay as written (without arguments); a tag that takes none, given one, too.
    assert apply_pattern("x[foo]y[bar<1>]z[seed<3>]", ctx) == "x[foo]y[bar]z[seed]"
    # "Nothing here" drops the text before the tag: one image, no [seed_last].
    assert apply_pattern("[seed]-[seed_last]", ctx) == "5"
    batch = replace(ctx, batch_size=2, first_seed=5, last_seed=8)  # two batches of two
    assert apply_pattern("[seed]-[seed_last]", batch) == "5-8"


def test_values_are_cut_and_stripped_of_forbidden_characters() -> None:
    long = "word " * 60
    assert sanitize_part(long) == a1111_sanitize(long) and len(sanitize_part(long)) <= 128
    hostile = ' ..\\..//etc/passwd#<>:"|?*\n.'
    assert sanitize_part(hostile) == a1111_sanitize(hostile)
    # The whole file name never holds a folder separator, whatever the pattern's own text says.
    assert "/" not in file_stem("../../[prompt]/x", NameContext(seed=1, prompt="../up"))


def test_pattern_number_and_folder_options_name_the_file(tmp_path: Path) -> None:
    named = saver(tmp_path, samples_filename_pattern="[seed]-[prompt_words]")
    path = named.save(red(), TEXT, OutputKind.TXT2IMG, 5,
                      ctx=NameContext(seed=5, prompt="a red cube", now=WHEN)).path
    assert path == tmp_path / "outputs" / "txt2img-images" / "2026-01-02" / "00000-5-a red cube.png"
    # No number: the name is just the pattern; a second save replaces it (A1111's default action)...
    bare = saver(tmp_path, samples_filename_pattern="[seed]", save_images_add_number=False, save_to_dirs=False)
    first = bare.save(red(), TEXT, OutputKind.TXT2IMG, 9).path
    assert first == tmp_path / "outputs" / "txt2img-images" / "9.png"
    assert bare.save(red(), TEXT, OutputKind.TXT2IMG, 9).path == first
    # ...or gets "-1" with "Add number suffix".
    kept = saver(tmp_path, samples_filename_pattern="[seed]", save_images_add_number=False, save_to_dirs=False,
                 save_images_replace_action="Add number suffix")
    assert kept.save(red(), TEXT, OutputKind.TXT2IMG, 9).path.name == "9-1.png"
    # Another folder (under outputs/) and a sub-folder pattern.
    moved = saver(tmp_path, outdir_txt2img_samples="outputs/mine", directories_filename_pattern="[seed]/x")
    assert moved.save(red(), TEXT, OutputKind.TXT2IMG, 3).path == tmp_path / "outputs" / "mine" / "3" / "x" / "00000-3.png"
    shared = saver(tmp_path, outdir_samples="outputs/all", outdir_grids="outputs/grids", grid_save_to_dirs=False)
    assert shared.save(red(), TEXT, OutputKind.IMG2IMG, 3).path.parent.parent == tmp_path / "outputs" / "all"
    assert shared.save(red(), TEXT, OutputKind.TXT2IMG_GRID).path == tmp_path / "outputs" / "grids" / "grid-0000.png"


@pytest.mark.parametrize("fmt, magic", [("jpg", b"\xff\xd8\xff"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")])
def test_jpeg_and_webp_carry_the_parameters_in_exif(tmp_path: Path, fmt: str, magic: bytes) -> None:
    path = saver(tmp_path, samples_format=fmt, jpeg_quality=90).save(red(), TEXT, OutputKind.TXT2IMG, 5).path
    assert path.suffix == f".{fmt}" and path.read_bytes().startswith(magic)
    assert read_infotext(path) == TEXT
    with Image.open(path) as image:  # as A1111 writes it with piexif: "UNICODE\0", then UTF-16 big-endian
        assert image.getexif().get_ifd(0x8769)[0x9286] == b"UNICODE\x00" + TEXT.encode("utf-16-be")
    from modules.ui.png_info import read  # the PNG Info tab

    assert read(str(path))[0] == TEXT


def test_parameters_too_long_for_a_jpegs_exif_are_saved_as_png_not_lost(tmp_path: Path) -> None:
    long_text = "a cube, " * 5000 + "\nSteps: 2, Seed: 5"  # 40,000 characters: 80 kB of UTF-16, over JPEG's 64 KiB
    path = saver(tmp_path, samples_format="jpg").save(red(), long_text, OutputKind.TXT2IMG, 5).path
    assert path.suffix == ".png" and read_infotext(path) == long_text
    webp = saver(tmp_path / "w", samples_format="webp").save(red(), long_text, OutputKind.TXT2IMG, 5).path
    assert webp.suffix == ".webp" and read_infotext(webp) == long_text


def test_quality_changes_the_jpeg(tmp_path: Path) -> None:
    noisy = Image.effect_noise((64, 64), 80).convert("RGB")
    low = saver(tmp_path / "a", samples_format="jpg", jpeg_quality=5).save(noisy, TEXT, OutputKind.TXT2IMG, 1).path
    high = saver(tmp_path / "b", samples_format="jpg", jpeg_quality=100).save(noisy, TEXT, OutputKind.TXT2IMG, 1).path
    assert low.stat().st_size < high.stat().st_size


def test_save_txt_writes_the_infotext_beside_the_image(tmp_path: Path) -> None:
    path = saver(tmp_path, save_txt=True, samples_format="webp").save(red(), TEXT, OutputKind.TXT2IMG, 5).path
    assert path.with_suffix(".txt").read_text(encoding="utf-8") == TEXT + "\n"
    plain = saver(tmp_path / "other").save(red(), TEXT, OutputKind.TXT2IMG, 5).path
    assert not plain.with_suffix(".txt").exists()


def test_grid_format_is_separate(tmp_path: Path) -> None:
    s = saver(tmp_path, samples_format="jpg", grid_format="webp")
    assert s.save(red(), TEXT, OutputKind.TXT2IMG, 5).path.suffix == ".jpg"
    assert s.save(red(), TEXT, OutputKind.TXT2IMG_GRID).path.name == "grid-0000.webp"


# --- grids -------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", range(1, 21))
def test_grid_rows_follow_a1111(count: int) -> None:
    assert grid_rows(count) == min(count, round(math.sqrt(count)))  # n_rows -1: about square
    assert grid_rows(count, 0, batch_size=2) == min(count, 2)  # 0: the batch size
    assert grid_rows(count, 3) == min(count, 3)
    tiles = [Image.new("RGB", (4, 6)) for _ in range(count)]
    rows = grid_rows(count)
    assert make_grid(tiles, rows).size == (4 * math.ceil(count / rows), 6 * rows)


# --- folders that must stay inside ----------------------------------------------------------------


HOSTILE = ["/etc", "/tmp/x", "../x", "outputs/../../x", "outputs/../models", "outputs\\..\\x", "C:/x", "models/x",
           "outputs/./x", "cache", "", " outputs/x", "outputs/x\x00", "extensions/evil"]


@pytest.mark.parametrize("value", HOSTILE)
def test_output_folders_outside_outputs_are_refused(value: str) -> None:
    problem = setting_problem("outdir_txt2img_samples", value)
    assert problem is not None and "outputs/" in problem


def test_config_refuses_a_folder_outside_and_keeps_one_inside(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("outdir_samples: /etc\n")
    with pytest.raises(ConfigError, match="outdir_samples"):
        load_settings(config)
    config.write_text("outdir_samples: outputs/all\nsamples_format: webp\n")
    assert (load_settings(config).outdir_samples, load_settings(config).samples_format) == ("outputs/all", "webp")


def test_a_link_out_of_outputs_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError):
        saver(tmp_path, outdir_txt2img_samples="outputs/link").save(red(), TEXT, OutputKind.TXT2IMG, 1)
    assert list(outside.iterdir()) == []


# --- kept A1111 options -----------------------------------------------------------------------------


def test_kept_options_survive_a_restart(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    kept = {"live_previews_enable": True, "font": "", "ui_reorder_list": ["a", "b"], "nested": {"x": [1, 2.5, None]}}
    save_settings(config, replace(Settings(), a1111_extra=kept))
    assert load_settings(config).a1111_extra == kept


def test_a1111s_whole_options_object_is_kept() -> None:
    # About 500 options, as a client that read A1111's GET /options sends them back.
    whole = {f"option_{i}": [True, 0.5, "text", ["a", "b"], {"x": 1}][i % 5] for i in range(520)}
    assert extras_problem(whole) is None


@pytest.mark.parametrize("value", [
    {"deep": [[[[[1]]]]]}, {"huge": "x" * 5000}, {f"k{i}": 1 for i in range(1100)}, {"x" * 101: 1},
    {"nan": float("nan")}, {"obj": object()}, {"big": [{"a": "y" * 4000}] * 80},
])
def test_hostile_kept_options_are_refused(value: dict) -> None:
    assert setting_problem("a1111_extra", value) is not None


def test_file_names_read_back_as_numbered(tmp_path: Path) -> None:
    s = saver(tmp_path, samples_filename_pattern="[seed]-[prompt_spaces]")
    names = [s.save(red(), TEXT, OutputKind.TXT2IMG, seed, ctx=NameContext(seed=seed, prompt="cat", now=WHEN)).path.name
             for seed in (7, 8)]
    assert names == ["00000-7-cat.png", "00001-8-cat.png"]
    assert all(re.fullmatch(r"\d{5}-\d-cat\.png", n) for n in names)
    with Image.open(io.BytesIO((s.outputs_dir / "txt2img-images" / "2026-01-02" / names[0]).read_bytes())) as image:
        assert image.format == "PNG" and image.info["parameters"] == TEXT

"""Saving: A1111's names and numbering, the parameters chunk, and no partial file on failure."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from PIL import Image

from modules import atomic
from modules.services.images import ImageSaver, OutputKind, make_grid, read_infotext

DAY = date(2026, 1, 2)


def saver(tmp_path: Path) -> ImageSaver:
    return ImageSaver(tmp_path / "outputs", today=lambda: DAY)


def test_names_number_up_per_folder_and_carry_the_seed(tmp_path: Path) -> None:
    s = saver(tmp_path)
    image = Image.new("RGB", (8, 8), "red")
    first = s.save(image, "p\nSteps: 1, Seed: 5, Size: 8x8", OutputKind.TXT2IMG, seed=5).path
    second = s.save(image, "x", OutputKind.TXT2IMG, seed=6).path
    assert first == tmp_path / "outputs" / "txt2img-images" / "2026-01-02" / "00000-5.png"
    assert second.name == "00001-6.png"
    (first.parent / "00041-9.png").write_bytes(b"")  # numbering continues after the highest present
    assert s.save(image, "x", OutputKind.TXT2IMG, seed=7).path.name == "00042-7.png"
    grid = s.save(image, "g", OutputKind.TXT2IMG_GRID).path
    assert grid == tmp_path / "outputs" / "txt2img-grids" / "2026-01-02" / "grid-0000.png"
    assert s.save(image, "g", OutputKind.TXT2IMG_GRID).path.name == "grid-0001.png"


def test_parameters_chunk_round_trips_non_ascii(tmp_path: Path) -> None:
    text = "ein Bär, 猫 — «quotes»\nSteps: 20, Seed: 1, Size: 8x8"
    path = saver(tmp_path).save(Image.new("RGB", (8, 8)), text, OutputKind.TXT2IMG, seed=1).path
    assert read_infotext(path) == text


def test_a_failing_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full_disk)
    s = saver(tmp_path)
    with pytest.raises(OSError, match="No space"):
        s.save(Image.new("RGB", (8, 8)), "x", OutputKind.TXT2IMG, seed=1)
    folder = s.folder(OutputKind.TXT2IMG)
    assert list(folder.iterdir()) == []


def test_grid_is_near_square() -> None:
    tiles = [Image.new("RGB", (10, 20), c) for c in ("red", "green", "blue")]
    grid = make_grid(tiles)
    assert grid.size == (20, 40)
    assert grid.getpixel((15, 5)) == (0, 128, 0) and grid.getpixel((5, 25)) == (0, 0, 255)

"""Saving generated images where A1111 users expect them, with their parameters inside.

``outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png`` (``img2img-images`` for img2img and inpainting):
a 5-digit running number per folder, then the seed. Grids go to ``txt2img-grids/YYYY-MM-DD/grid-NNNN.png``. The infotext is the PNG text chunk
``parameters``. Every file is written atomically, so a failure leaves no partial image.
"""

from __future__ import annotations

import enum
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from PIL import Image

from modules.atomic import write_atomic
from modules.extension_helpers import png_with_infotext as png_bytes  # the one PNG encoder, shared with extensions

PARAMETERS_KEY = "parameters"
_NUMBERED = re.compile(r"^(\d+)-")
_GRID_NUMBERED = re.compile(r"^grid-(\d+)")
_EXTRAS_NUMBERED = re.compile(r"^(\d+)[-.]")
_SAFE_NAME = re.compile(r"[^\w\-. ]+")
EXTRAS_FOLDER = "extras-images"  # A1111's outdir_extras_samples, undated as A1111 keeps it


class OutputKind(enum.Enum):
    """Output folders, named as in A1111."""

    TXT2IMG = "txt2img-images"
    TXT2IMG_GRID = "txt2img-grids"
    IMG2IMG = "img2img-images"
    IMG2IMG_GRID = "img2img-grids"

    @property
    def is_grid(self) -> bool:
        return self in (OutputKind.TXT2IMG_GRID, OutputKind.IMG2IMG_GRID)


@dataclass(frozen=True)
class SavedImage:
    path: Path
    infotext: str


_EXIF_IFD, _USER_COMMENT = 0x8769, 0x9286


def decode_user_comment(raw: object) -> str:
    """An EXIF UserComment as text; A1111 (via piexif) writes ``UNICODE\\0`` + UTF-16 big-endian."""
    if isinstance(raw, str):
        return raw.rstrip("\x00")
    if not isinstance(raw, bytes) or not raw:
        return ""
    head, body = raw[:8], raw[8:]
    if head == b"UNICODE\x00":  # a byte-order mark, when present, decides; big-endian otherwise
        encoding = "utf-16" if body[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-16-be"
    elif head in (b"ASCII\x00\x00\x00", b"\x00" * 8):  # "undefined": other tools write UTF-8 there
        encoding = "utf-8"
    else:
        body, encoding = raw, "utf-8"
    return body.decode(encoding, errors="replace").rstrip("\x00")


def infotext_of(image: Image.Image) -> str | None:
    """The generation parameters an image carries: PNG text ``parameters``, else EXIF UserComment."""
    value = image.info.get(PARAMETERS_KEY)
    if isinstance(value, str) and value.strip():
        return value
    if image.format == "PNG":  # A1111 keeps a PNG's text in its chunk, never in EXIF: skip the EXIF read
        return None
    comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    text = decode_user_comment(comment)
    return text if text.strip() else None


def read_infotext(path: Path) -> str | None:
    """The parameters text of a saved image file, or None."""
    with Image.open(path) as image:
        return infotext_of(image)


def next_number(folder: Path, pattern: re.Pattern[str] = _NUMBERED) -> int:
    """One more than the highest running number already in ``folder`` (A1111's numbering)."""
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def make_grid(images: Sequence[Image.Image]) -> Image.Image:
    """Images side by side in a near-square grid, row by row, as A1111 lays them out."""
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * width, (i // cols) * height))
    return grid


class ImageSaver:
    """Writes images under the outputs folder; one lock keeps running numbers unique."""

    def __init__(self, outputs_dir: Path, today: Callable[[], date] = date.today) -> None:
        self.outputs_dir = outputs_dir
        self._today = today
        self._lock = threading.Lock()

    def folder(self, kind: OutputKind) -> Path:
        return self.outputs_dir / kind.value / self._today().isoformat()

    def save(self, image: Image.Image, infotext: str, kind: OutputKind, seed: int | None = None) -> SavedImage:
        return SavedImage(path=self.save_png(png_bytes(image, infotext), kind, seed), infotext=infotext)

    def save_png(self, data: bytes, kind: OutputKind, seed: int | None = None) -> Path:
        """Write encoded PNG bytes under the next running number; returns the path."""
        folder = self.folder(kind)
        with self._lock:
            if kind.is_grid:
                name = f"grid-{next_number(folder, _GRID_NUMBERED):04d}.png"
            else:
                name = f"{next_number(folder):05d}-{seed}.png"
            path = folder / name
            write_atomic(path, lambda fh: fh.write(data))
        return path

    def save_extras(self, data: bytes, name: str = "") -> Path:
        """Write an Extras result as ``extras-images/NNNNN.png`` (``NNNNN-name.png`` for a batch
        image, after its original file name, reduced to safe characters: a name is never a path)."""
        folder = self.outputs_dir / EXTRAS_FOLDER
        stem = _SAFE_NAME.sub("_", Path(name.replace("\\", "/")).stem).strip(" .")[:80] if name else ""
        with self._lock:
            number = next_number(folder, _EXTRAS_NUMBERED)
            path = folder / (f"{number:05d}-{stem}.png" if stem else f"{number:05d}.png")
            write_atomic(path, lambda fh: fh.write(data))
        return path

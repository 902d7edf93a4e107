"""Saving generated images where A1111 users expect them, with their parameters inside.

``outputs/txt2img-images/YYYY-MM-DD/NNNNN-SEED.png`` (``img2img-images`` for img2img and inpainting):
a 5-digit running number per folder, then the seed. Grids go to ``txt2img-grids/YYYY-MM-DD/grid-NNNN.png``.
A1111's saving options change this (see docs/options.md): the folders (``outdir_*``), the dated
sub-folder (``save_to_dirs``, ``directories_filename_pattern``), the name after the number
(``samples_filename_pattern``), the number itself (``save_images_add_number``), the format
(``samples_format``, ``grid_format``, ``jpeg_quality``) and a ``.txt`` beside each image (``save_txt``).
With ``outputs_per_user`` a signed-in user's job saves under ``outputs/<user>/`` (the same folders
inside it). The infotext is the PNG text chunk ``parameters``, or EXIF UserComment in JPEG and WebP.
Every file is written atomically, so a failure leaves no partial image.
"""

from __future__ import annotations

import enum
import math
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from PIL import Image

from modules.atomic import write_atomic, write_text_atomic
from modules.config import Settings
from modules.output_dirs import is_within, resolve_outdir
from modules.services import image_format
from modules.services.filename_pattern import NameContext, file_stem, folder_parts

PARAMETERS_KEY = "parameters"
_NUMBERED = re.compile(r"^(\d+)-")
_GRID_NUMBERED = re.compile(r"^grid-(\d+)")
_EXTRAS_NUMBERED = re.compile(r"^(\d+)[-.]")
_SAFE_NAME = re.compile(r"[^\w\-. ]+")
EXTRAS_FOLDER = "extras-images"  # A1111's outdir_extras_samples, undated as A1111 keeps it
_NOT_IN_FOLDER_NAME = re.compile(r"[/\\\x00-\x1f\x7f]")


def user_folder(owner: str) -> str:
    """The folder under outputs/ of ``owner``'s images when outputs go per user: the account name
    (account names are folder-safe), with anything that could leave one folder replaced."""
    name = _NOT_IN_FOLDER_NAME.sub("_", owner)
    return "_" if name in ("", ".", "..") else name


class OutputKind(enum.Enum):
    """Output folders, named as in A1111."""

    TXT2IMG = "txt2img-images"
    TXT2IMG_GRID = "txt2img-grids"
    IMG2IMG = "img2img-images"
    IMG2IMG_GRID = "img2img-grids"

    @property
    def is_grid(self) -> bool:
        return self in (OutputKind.TXT2IMG_GRID, OutputKind.IMG2IMG_GRID)

    @property
    def options(self) -> tuple[str, str]:
        """The A1111 options naming its folder: the shared one (used when set), then its own."""
        return {OutputKind.TXT2IMG: ("outdir_samples", "outdir_txt2img_samples"),
                OutputKind.IMG2IMG: ("outdir_samples", "outdir_img2img_samples"),
                OutputKind.TXT2IMG_GRID: ("outdir_grids", "outdir_txt2img_grids"),
                OutputKind.IMG2IMG_GRID: ("outdir_grids", "outdir_img2img_grids")}[self]


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
    """One more than the highest running number already in ``folder`` matching ``pattern``."""
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            match = pattern.match(entry.name)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def next_sequence_number(folder: Path, basename: str = "") -> int:
    """A1111's ``get_next_sequence_number``: one more than the highest number that starts a name
    in ``folder`` (after ``basename-``), whatever follows it."""
    prefix = f"{basename}-" if basename else ""
    highest = -1
    if folder.is_dir():
        for entry in folder.iterdir():
            if entry.name.startswith(prefix):
                first = os.path.splitext(entry.name[len(prefix):])[0].split("-")[0]
                if first.isdigit():
                    highest = max(highest, int(first))
    return highest + 1


def grid_rows(count: int, n_rows: int = -1, batch_size: int = 1) -> int:
    """A1111's ``image_grid`` rows: ``n_rows`` when above 0, the batch size for 0, else round(sqrt(count)); never more than ``count``."""
    rows = n_rows if n_rows > 0 else batch_size if n_rows == 0 else round(math.sqrt(count))
    return max(1, min(rows, count))


def make_grid(images: Sequence[Image.Image], rows: int | None = None) -> Image.Image:
    """Images row by row, ``rows`` rows (A1111's automatic count when None) and as many columns as needed."""
    rows = grid_rows(len(images)) if rows is None else max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height), "black")
    for i, image in enumerate(images):
        grid.paste(image, ((i % cols) * width, (i // cols) * height))
    return grid


def _name_limit(folder: Path, extension: str) -> int:
    """The longest file stem the folder's file system takes with ``.extension`` (A1111's rule)."""
    try:
        longest = os.statvfs(folder).f_namemax
    except (AttributeError, OSError):
        longest = 255
    return longest - max(4, len(extension) + 1)


class ImageSaver:
    """Writes images under the outputs folder as the saving settings say; one lock keeps names unique."""

    def __init__(self, outputs_dir: Path, today: Callable[[], date] = date.today,
                 settings: Callable[[], Settings] = Settings, data_dir: Path | None = None) -> None:
        self.outputs_dir = outputs_dir
        self.data_dir = data_dir if data_dir is not None else outputs_dir.parent
        self.settings = settings
        self._today = today
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return datetime.combine(self._today(), datetime.now().time())

    def base_folder(self, kind: OutputKind, settings: Settings | None = None, owner: str | None = None) -> Path:
        """The folder ``outdir_*`` names for ``kind`` (inside ``owner``'s folder when outputs go per
        user); ValueError when it leaves its root."""
        settings = settings or self.settings()
        shared, own = kind.options
        outputs = self.outputs_dir
        if owner and settings.outputs_per_user:
            outputs = self.outputs_dir / user_folder(owner)
            if not is_within(outputs, self.outputs_dir):  # a link in the way: never write elsewhere
                raise ValueError(f"{outputs} leads outside {self.outputs_dir}")
        return resolve_outdir(getattr(settings, shared) or getattr(settings, own), outputs, self.data_dir)

    def folder(self, kind: OutputKind, ctx: NameContext | None = None) -> Path:
        """Where the next image of ``kind`` goes: its folder, then the sub-folder the pattern names."""
        settings = self.settings()
        base = self.base_folder(kind, settings, ctx.owner if ctx is not None else None)
        if not (settings.grid_save_to_dirs if kind.is_grid else settings.save_to_dirs):
            return base
        ctx = ctx or NameContext(seed=None, now=self.now(), grid=kind.is_grid)
        parts = folder_parts(settings.directories_filename_pattern or "[prompt_words]", ctx)
        folder = base.joinpath(*parts)
        if not is_within(folder, base):  # a link in the way: never write elsewhere
            raise ValueError(f"{folder} leads outside {base}")
        return folder

    def save(self, image: Image.Image, infotext: str, kind: OutputKind, seed: int | None = None,
             ctx: NameContext | None = None) -> SavedImage:
        """Write ``image`` in the format the settings ask for, under its next name."""
        settings = self.settings()
        fmt = image_format.effective_format(settings.grid_format if kind.is_grid else settings.samples_format,
                                            image.size, infotext)
        data = image_format.encode(image, infotext, fmt, settings.jpeg_quality)
        ctx = ctx or NameContext(seed=seed, width=image.width, height=image.height, now=self.now(), grid=kind.is_grid)
        return SavedImage(path=self.save_encoded(data, fmt, infotext, kind, ctx), infotext=infotext)

    def save_png(self, data: bytes, kind: OutputKind, seed: int | None = None) -> Path:
        """Write encoded PNG bytes under the next name (``samples_format`` is the caller's to apply)."""
        return self.save_encoded(data, "png", None, kind, NameContext(seed=seed, now=self.now(), grid=kind.is_grid))

    def save_encoded(self, data: bytes, fmt: str, infotext: str | None, kind: OutputKind, ctx: NameContext) -> Path:
        """1. the folder, 2. the name (A1111's numbering, pattern and replace rules), 3. the file and
        its ``.txt`` (``save_txt``) written atomically."""
        settings = self.settings()
        folder = self.folder(kind, ctx)
        with self._lock:
            path = self._free_name(folder, kind, ctx, fmt, settings)
            write_atomic(path, lambda fh: fh.write(data))
            if settings.save_txt and infotext is not None:
                write_text_atomic(path.with_suffix(".txt"), f"{infotext}\n")
        return path

    def _free_name(self, folder: Path, kind: OutputKind, ctx: NameContext, fmt: str, settings: Settings) -> Path:
        decoration = "" if kind.is_grid else file_stem(settings.samples_filename_pattern or "[seed]", ctx)
        add_number = settings.save_images_add_number or decoration == ""
        basename = "grid" if kind.is_grid else ""
        limit = _name_limit(folder if folder.is_dir() else self.outputs_dir, fmt)
        if not add_number:
            stem = decoration[:limit]
        else:
            decoration = f"-{decoration}" if decoration else ""
            start = next_sequence_number(folder, basename)
            for number in range(start, start + 500):
                stem = (f"{number:05}" if not basename else f"{basename}-{number:04}") + decoration
                stem = stem[:limit]
                if not (folder / f"{stem}.{fmt}").exists():
                    break
        path = folder / f"{stem}.{fmt}"
        if settings.save_images_replace_action != "Replace":
            suffix = 0
            while path.exists():
                suffix += 1
                path = folder / f"{stem}-{suffix}.{fmt}"
        return path

    def save_extras(self, data: bytes, name: str = "", fmt: str = "png") -> Path:
        """Write an Extras result (bytes already encoded as ``fmt``) as ``extras-images/NNNNN.fmt``
        (``NNNNN-name.fmt`` for a batch image, after its original file name, reduced to safe
        characters: a name is never a path)."""
        settings = self.settings()
        folder = resolve_outdir(settings.outdir_samples or settings.outdir_extras_samples, self.outputs_dir,
                                self.data_dir)
        stem = _SAFE_NAME.sub("_", Path(name.replace("\\", "/")).stem).strip(" .")[:80] if name else ""
        with self._lock:
            number = next_number(folder, _EXTRAS_NUMBERED)
            path = folder / (f"{number:05d}-{stem}.{fmt}" if stem else f"{number:05d}.{fmt}")
            write_atomic(path, lambda fh: fh.write(data))
        return path

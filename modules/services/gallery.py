"""The gallery's back end: the images under the outputs folder, indexed, paged, searched, thumbnailed.

Files sit in A1111's layout, ``outputs/<kind>/YYYY-MM-DD/<name>.png`` (also .jpg, .jpeg, .webp). This
module owns the index (SQLite, ``cache_dir/gallery.sqlite3``, one row per image with its parsed
infotext; a cache, safe to delete), reading infotext from image files (PNG chunk ``parameters``,
or A1111's EXIF UserComment in JPEG/WEBP), thumbnails (``cache_dir/thumbnails``, one per file
version), and path safety: :meth:`Gallery.resolve` is the only way from a client's relative path to
a file, and nothing it returns lies outside the outputs folder.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from PIL import Image, features

from modules.atomic import write_atomic
from modules.errors import GalleryPathError
from modules.infotext import parse_infotext
from modules.services.images import infotext_of
from modules.services.output_source import source_tab

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
THUMBNAIL_MAX_SIDE = 256
INDEX_FILE = "gallery.sqlite3"
THUMBNAIL_DIR = "thumbnails"

# Bump when the table changes: an index with another version is dropped and rebuilt (it is a cache).
_SCHEMA_VERSION = 1
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_SIZE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")
_COLUMNS = ("relative", "folder", "date", "size", "mtime_ns", "infotext", "prompt", "negative_prompt",
            "search", "model", "sampler", "seed", "width", "height")
_ITEM_COLUMNS = ", ".join(c for c in _COLUMNS if c not in ("size", "search"))
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS images (relative TEXT PRIMARY KEY, folder TEXT NOT NULL, date TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, infotext TEXT NOT NULL, prompt TEXT NOT NULL,
    negative_prompt TEXT NOT NULL, search TEXT NOT NULL, model TEXT NOT NULL, sampler TEXT NOT NULL,
    seed INTEGER, width INTEGER, height INTEGER);
CREATE INDEX IF NOT EXISTS images_newest ON images (mtime_ns DESC, relative DESC);
PRAGMA user_version = {_SCHEMA_VERSION};
"""
# Errors a broken or half-written image file can raise while its metadata is read.
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class GalleryItem:
    path: Path  # absolute, inside the outputs folder
    relative: str  # posix path relative to the outputs folder
    folder: str  # first component, e.g. "txt2img-images"
    date: str  # second component when it looks like YYYY-MM-DD, else ""
    mtime: float
    infotext: str  # "" when the file has none
    prompt: str
    negative_prompt: str
    model: str
    sampler: str
    seed: int | None
    width: int | None
    height: int | None


    @property
    def tab(self) -> str:
        """Which tab made the image: "txt2img", "img2img" or "extras" ("" when nothing says)."""
        return source_tab(self.folder, self.infotext)

    @property
    def caption(self) -> str:
        """The thumbnail's caption: the tab that made it, and the file name."""
        name = self.relative.rsplit("/", 1)[-1]
        return f"{self.tab} \u00b7 {name}" if self.tab else name


@dataclass(frozen=True)
class GalleryQuery:
    text: str = ""  # case-insensitive substring of the prompt or negative prompt
    folder: str = ""  # "" = all folders
    date: str = ""  # "" = all dates
    model: str = ""  # case-insensitive exact match on the infotext's Model value
    sampler: str = ""  # case-insensitive exact match
    seed: int | None = None
    size: str = ""  # "WxH"; text that is not a size matches nothing
    within: str = ""  # only this first folder (a user's own, when outputs go per user); "" = everything


@dataclass(frozen=True)
class GalleryPage:
    items: tuple[GalleryItem, ...]
    page: int  # 1-based, clamped to 1..pages
    pages: int  # at least 1, even when empty
    total: int  # images matching the query


def is_inside(root: Path, candidate: Path) -> bool:
    """True when ``candidate``, with every symlink and ``..`` resolved, lies within ``root``."""
    try:
        return candidate.resolve().is_relative_to(root.resolve())
    except (OSError, ValueError, RuntimeError):  # NUL bytes, symlink loops: not a usable path
        return False


def _check_relative(relative: str) -> PurePosixPath:
    """The syntactic checks, before the file system is touched."""
    if not isinstance(relative, str) or not relative.strip():
        raise GalleryPathError("No image path given.")
    if "\x00" in relative or "\\" in relative:
        raise GalleryPathError(f"Invalid characters in image path {relative!r}.")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or ".." in pure.parts:
        raise GalleryPathError(f"Image path {relative!r} must stay inside the outputs folder.")
    if pure.suffix.lower() not in IMAGE_SUFFIXES:
        raise GalleryPathError(f"{relative!r} is not an image ({', '.join(sorted(IMAGE_SUFFIXES))}).")
    return pure


def _thumbnail_key(relative: str) -> str:
    return hashlib.sha256(relative.encode("utf-8")).hexdigest()[:32]


def read_file_infotext(path: Path) -> str:
    """The infotext stored in an image file, or "" when it has none. Decodes no pixels."""
    with Image.open(path) as image:
        return infotext_of(image) or ""


def _to_int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _row_for(outputs: Path, relative: str, state: tuple[int, int]) -> tuple[object, ...] | None:
    """The index row of one file; None when the file vanished before it could be read."""
    try:
        infotext = read_file_infotext(outputs / relative)
    except FileNotFoundError:
        return None
    except _UNREADABLE as exc:
        # A broken file still belongs in the gallery (its user may want to delete it), without parameters.
        log.warning("Gallery: cannot read parameters of %s: %s", relative, exc)
        infotext = ""
    parsed = parse_infotext(infotext)
    parts = relative.split("/")
    folder = parts[0] if len(parts) > 1 else ""
    date = parts[1] if len(parts) > 2 and _DATE.fullmatch(parts[1]) else ""
    params = parsed.params
    search = f"{parsed.prompt}\n{parsed.negative_prompt}".casefold()
    return (relative, folder, date, *state, infotext, parsed.prompt,
            parsed.negative_prompt, search, params.get("Model", ""), params.get("Sampler", ""),
            _to_int(params.get("Seed")), _to_int(params.get("Size-1")), _to_int(params.get("Size-2")))


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False)
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
            db.execute("DROP TABLE IF EXISTS images")
        db.executescript(_SCHEMA)
        db.execute("PRAGMA synchronous = NORMAL")  # a write lost to a power cut only costs a rescan
    except sqlite3.DatabaseError:
        db.close()
        raise
    return db


def _open_index(path: Path) -> sqlite3.Connection:
    """The index database; one that is unreadable or of another schema is rebuilt (it is a cache)."""
    try:
        return _connect(path)
    except sqlite3.DatabaseError as exc:
        log.warning("Gallery index %s is unreadable (%s); rebuilding it.", path, exc)
        path.unlink(missing_ok=True)
        return _connect(path)


def _scan(root: Path, skip: Path) -> Iterator[tuple[str, tuple[int, int]]]:
    """Every image file under ``root`` (relative posix path, state); symlinks and dot-files skipped."""
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue  # removed while we walked
        for entry in entries:
            # Dot-names: write_atomic's temporary files and hidden folders. Symlinks: a link may
            # point anywhere, and resolve() refuses those outside anyway.
            if entry.name.startswith(".") or entry.is_symlink():
                continue
            relative = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if Path(entry.path) != skip:
                    stack.append((Path(entry.path), relative + "/"))
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield relative, (stat.st_size, stat.st_mtime_ns)


def _where(query: GalleryQuery) -> tuple[str, list[object]]:
    """SQL condition and arguments for a query."""
    clauses: list[str] = []
    args: list[object] = []
    if query.text.strip():
        # instr on a casefolded copy instead of LIKE: case-insensitive beyond ASCII, and a user's
        # "%" or "_" stays a literal character.
        clauses.append("instr(search, ?) > 0")
        args.append(query.text.strip().casefold())
    for column in ("folder", "date", "model", "sampler", "within"):
        if value := getattr(query, column).strip():
            clauses.append(f"{column} = ? COLLATE NOCASE" if column in ("model", "sampler") else
                           f"{'folder' if column == 'within' else column} = ?")
            args.append(value)
    if query.seed is not None:
        clauses.append("seed = ?")
        args.append(query.seed)
    if query.size.strip():
        size = _SIZE.fullmatch(query.size)
        clauses.append("width = ? AND height = ?" if size else "0")
        args.extend((int(size.group(1)), int(size.group(2))) if size else ())
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


class Gallery:
    """The outputs folder as a searchable, paged list. Safe to call from several threads."""

    def __init__(self, outputs_dir: Path, cache_dir: Path, page_size: int = 48) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        # Resolved once, so item paths and containment checks agree even when the folder is a symlink.
        self.outputs_dir = Path(outputs_dir).resolve()
        self.cache_dir = Path(cache_dir).resolve()
        self.page_size = page_size
        self._thumbnails = self.cache_dir / THUMBNAIL_DIR
        self._thumbnail_format = "WEBP" if features.check("webp") else "JPEG"
        self._lock = threading.Lock()  # guards the connection (Gradio calls from several threads)
        self._refresh_lock = threading.Lock()  # one rescan at a time; page() stays served meanwhile
        self._refreshed = False
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._db = _open_index(self.cache_dir / INDEX_FILE)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def refresh(self) -> int:
        """Rescan the outputs folder; returns the number of images. Reads only new or changed files."""
        with self._refresh_lock:
            # 1. What is on disk now, and what the index knows.
            on_disk = dict(_scan(self.outputs_dir, self._thumbnails)) if self.outputs_dir.is_dir() else {}
            with self._lock:
                known = {r: (s, m) for r, s, m in
                         self._db.execute("SELECT relative, size, mtime_ns FROM images")}
            # 2. Read the new and changed files, outside the connection lock (this is the slow part).
            changed = [r for r, state in on_disk.items() if known.get(r) != state]
            rows = [row for r in changed if (row := _row_for(self.outputs_dir, r, on_disk[r])) is not None]
            gone = [r for r in known if r not in on_disk]
            # 3. One transaction for all changes.
            with self._lock, self._db:
                self._db.executemany(
                    f"INSERT OR REPLACE INTO images ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                    rows)
                self._db.executemany("DELETE FROM images WHERE relative = ?", ((r,) for r in gone))
                count = self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            self._drop_thumbnails(gone)
            self._refreshed = True
            if changed or gone:
                log.info("Gallery: %d images (%d read, %d gone)", count, len(rows), len(gone))
            return int(count)

    def _ensure_index(self) -> None:
        if not self._refreshed:
            self.refresh()

    def _item(self, row: tuple) -> GalleryItem:
        relative, folder, date, mtime_ns, infotext, prompt, negative, model, sampler, seed, width, height = row
        return GalleryItem(path=self.outputs_dir / relative, relative=relative, folder=folder, date=date,
                           mtime=mtime_ns / 1e9, infotext=infotext, prompt=prompt, negative_prompt=negative,
                           model=model, sampler=sampler, seed=seed, width=width, height=height)

    def page(self, query: GalleryQuery = GalleryQuery(), page: int = 1) -> GalleryPage:
        """One page of matching images, newest first (mtime, then relative path). Does not rescan."""
        self._ensure_index()
        where, args = _where(query)
        with self._lock:
            total = int(self._db.execute(f"SELECT COUNT(*) FROM images{where}", args).fetchone()[0])
            pages = max(1, math.ceil(total / self.page_size))
            page = min(max(1, page), pages)
            rows = self._db.execute(
                f"SELECT {_ITEM_COLUMNS} FROM images{where} ORDER BY mtime_ns DESC, relative DESC LIMIT ? OFFSET ?",
                [*args, self.page_size, (page - 1) * self.page_size],
            ).fetchall()
        return GalleryPage(items=tuple(self._item(r) for r in rows), page=page, pages=pages, total=total)

    def folders(self, within: str = "") -> list[str]:
        """Folders holding images, sorted by name (``within``: only that one, if it holds any)."""
        self._ensure_index()
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT folder FROM images WHERE folder != ''"
                                    + (" AND folder = ?" if within else "") + " ORDER BY folder", [within][:bool(within)])
            return [r[0] for r in rows]

    def dates(self, folder: str = "") -> list[str]:
        """Date folders (of one folder, or of all), newest first."""
        self._ensure_index()
        sql = "SELECT DISTINCT date FROM images WHERE date != ''"
        args = [folder] if folder else []
        with self._lock:
            rows = self._db.execute(sql + (" AND folder = ?" if folder else "") + " ORDER BY date DESC", args)
            return [r[0] for r in rows]

    def resolve(self, relative: str) -> Path:
        """The absolute path of an existing image named by its path relative to the outputs folder.

        Raises GalleryPathError for anything else: empty, absolute, ``..``, backslashes, NUL, a
        suffix that is not an image's, a symlink (at any level) leading outside, a missing file.
        """
        pure = _check_relative(relative)
        candidate = self.outputs_dir.joinpath(*pure.parts)
        if not is_inside(self.outputs_dir, candidate):
            raise GalleryPathError(f"Image path {relative!r} leads outside the outputs folder.")
        if is_inside(self._thumbnails, candidate):
            raise GalleryPathError(f"{relative!r} is a gallery thumbnail, not an image.")
        try:
            found = candidate.is_file()
        except OSError:  # a name too long for the file system, say: no such image either
            found = False
        if not found:
            raise GalleryPathError(f"No image {relative!r} in the outputs folder.")
        return candidate

    def thumbnail(self, item: GalleryItem) -> Path:
        """A small copy (longest side at most 256 px) of the image, made once per file version."""
        path = self.resolve(item.relative)
        stat = path.stat()
        key = _thumbnail_key(item.relative)
        suffix = ".webp" if self._thumbnail_format == "WEBP" else ".jpg"
        target = self._thumbnails / f"{key}-{stat.st_size}-{stat.st_mtime_ns}{suffix}"
        if target.is_file():
            return target
        with Image.open(path) as image:
            image.draft("RGB", (THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE))  # JPEG: decode at reduced scale
            image.thumbnail((THUMBNAIL_MAX_SIDE, THUMBNAIL_MAX_SIDE))
            keep_alpha = self._thumbnail_format == "WEBP" and image.mode in ("RGBA", "LA", "PA", "P")
            small = image.convert("RGBA" if keep_alpha else "RGB")
        # WEBP's fastest method: 5x quicker than the default, and the size gain is moot at 256 px.
        write_atomic(target, lambda fh: small.save(fh, format=self._thumbnail_format, quality=80, method=0))
        for old in self._thumbnails.glob(f"{key}-*"):  # thumbnails of earlier versions of the file
            if old != target and not old.name.startswith("."):
                old.unlink(missing_ok=True)
        return target

    def thumbnails(self, items: Sequence[GalleryItem]) -> list[Path]:
        """:meth:`thumbnail` for a page of items, in parallel (Pillow releases the GIL to decode)."""
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            return list(pool.map(self.thumbnail, items))

    def delete(self, relative: str) -> None:
        """Delete an image file, its thumbnails and its index entry."""
        path = self.resolve(relative)
        key = _check_relative(relative).as_posix()  # the index's spelling: "./a//b.png" -> "a/b.png"
        path.unlink()
        self._drop_thumbnails([key])
        with self._lock, self._db:
            self._db.execute("DELETE FROM images WHERE relative = ?", (key,))

    def _drop_thumbnails(self, relatives: list[str]) -> None:
        if not relatives or not self._thumbnails.is_dir():
            return
        keys = {_thumbnail_key(r) for r in relatives}
        # One listing for the whole batch: a glob per file would be quadratic after a mass delete.
        for entry in os.scandir(self._thumbnails):
            if entry.name.split("-", 1)[0] in keys:
                Path(entry.path).unlink(missing_ok=True)

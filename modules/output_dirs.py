"""Where A1111's ``outdir_*`` options may point, and the folder each one stands for.

An output folder is written relative to the data dir, as A1111's defaults are
(``outputs/txt2img-images``), and must lie under one of the allowed roots: ``outputs/`` (what the
gallery shows) or ``log/`` (A1111's folder for logs and saved-by-button images). Absolute paths, ``..``, backslashes and
anything else that could name a folder elsewhere are refused when the option is set; a folder that
a symbolic link carries outside its root is refused again when an image is written
(:func:`resolve_outdir`). Pure paths, no I/O beyond resolving links.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

ALLOWED_ROOTS = ("outputs", "log")
MAX_OUTDIR_CHARS = 200
# A1111's defaults, by option (and Atelier's setting) name; "" = "use the folders below" for the first of each group.
OUTDIR_DEFAULTS = {
    "outdir_samples": "", "outdir_txt2img_samples": "outputs/txt2img-images",
    "outdir_img2img_samples": "outputs/img2img-images", "outdir_extras_samples": "outputs/extras-images",
    "outdir_grids": "", "outdir_txt2img_grids": "outputs/txt2img-grids", "outdir_img2img_grids": "outputs/img2img-grids",
}
MAY_BE_BLANK = frozenset({"outdir_samples", "outdir_grids"})


def outdir_problem(key: str, value: object) -> str | None:
    """Why ``value`` cannot be the folder option ``key`` (saying what is allowed); None when it can."""
    allowed = f"a folder under {' or '.join(r + '/' for r in ALLOWED_ROOTS)} of the data dir, written relative to it"
    if not isinstance(value, str):
        return f"must be {allowed}, got {value!r}"
    if value == "" and key in MAY_BE_BLANK:
        return None
    if len(value) > MAX_OUTDIR_CHARS or not value.isprintable() or "\\" in value or ":" in value:
        return f"must be {allowed} (at most {MAX_OUTDIR_CHARS} printable characters, '/' between folders), got {value[:60]!r}"
    parts = value.strip("/").split("/") if not value.startswith("/") else []
    if not parts or parts[0] not in ALLOWED_ROOTS or any(p in ("", ".", "..") or p != p.strip() for p in parts):
        return f"must be {allowed} (such as outputs/txt2img-images), got {value!r}"
    return None


def resolve_outdir(value: str, outputs_dir: Path, data_dir: Path) -> Path:
    """The folder an accepted ``outdir_*`` value names: ``outputs/...`` under ``outputs_dir``,
    ``log/...`` under ``data_dir``. ValueError when it (through links) leaves its root."""
    parts = PurePosixPath(value.strip("/")).parts
    roots = {"outputs": outputs_dir, "log": data_dir / "log"}
    if not parts or parts[0] not in roots or any(p in (".", "..") for p in parts):
        raise ValueError(f"{value!r} is not a folder under {' or '.join(ALLOWED_ROOTS)}")
    root = roots[parts[0]]
    folder = root.joinpath(*parts[1:])
    if not is_within(folder, root):
        raise ValueError(f"{value!r} leads outside {root}")
    return folder


def is_within(path: Path, root: Path) -> bool:
    """Whether ``path`` stays inside ``root`` once symbolic links are followed."""
    resolved, base = path.resolve(), root.resolve()
    return resolved == base or base in resolved.parents

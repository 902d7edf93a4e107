"""What the extra-network cards show about a LoRA or an embedding file, read from the files beside it
the way A1111 reads them. Pure file reading, no torch.

- The preview: ``name.png`` or ``name.preview.png`` beside the model file, also ``.jpg``, ``.jpeg``,
  ``.webp`` and ``.gif`` (A1111's preview extensions; it tries them in set order, we in this order),
  only when the file, with every symlink resolved, lies inside one of the model folders.
- The user metadata A1111's card editor writes: ``name.json`` with "description", "activation text",
  "preferred weight", "notes" and "sd version".
- The description: the JSON's, else ``name.txt`` / ``name.description.txt`` (A1111), else the file's
  own ``modelspec.description``.
- A safetensors file's ``__metadata__`` header (kohya's ``ss_*`` keys), read without its tensors.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = ("png", "jpg", "jpeg", "webp", "gif")
MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit on a header
MAX_SIDE_FILE_BYTES = 1024 * 1024  # a name.json or description larger than this is not one
DEFAULT_WEIGHT = 1.0  # A1111's extra_networks_default_multiplier


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a ``.safetensors`` file ({} for other files, or a header that is not
    one: a card must still show for a file the loader would refuse with its own message)."""
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        with path.open("rb") as handle:
            raw = handle.read(8)
            if len(raw) != 8:
                return {}
            (length,) = struct.unpack("<Q", raw)
            if length > MAX_HEADER_BYTES:
                return {}
            header = json.loads(handle.read(length))
    except (OSError, ValueError) as exc:
        log.debug("no metadata in %s: %s", path, exc)
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def _base(path: Path) -> Path:
    """The model's path without its suffix (a diffusers folder keeps its name)."""
    return path.with_suffix("") if path.suffix else path


def _small_text(path: Path) -> str | None:
    try:
        if not path.is_file() or path.stat().st_size > MAX_SIDE_FILE_BYTES:
            return None
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def inside(candidate: Path, roots: tuple[Path, ...]) -> bool:
    """Whether ``candidate``, every symlink and ``..`` resolved, lies within one of ``roots``."""
    try:
        resolved = candidate.resolve()
        return any(resolved.is_relative_to(root.resolve()) for root in roots)
    except (OSError, ValueError, RuntimeError):
        return False


def find_preview(model: Path, roots: tuple[Path, ...]) -> Path | None:
    """The first preview image beside ``model`` (see the module notes), only inside ``roots``."""
    base = _base(model)
    for suffix in PREVIEW_SUFFIXES:
        for candidate in (base.with_name(f"{base.name}.{suffix}"), base.with_name(f"{base.name}.preview.{suffix}")):
            if candidate.is_file() and inside(candidate, roots):
                return candidate
    return None


@dataclass(frozen=True)
class UserMetadata:
    """A1111's per-file user metadata (``name.json``); absent keys are empty."""

    description: str = ""
    activation_text: str = ""
    preferred_weight: float = 0.0  # 0: the default multiplier
    notes: str = ""
    sd_version: str = ""

    @property
    def weight(self) -> float:
        return self.preferred_weight or DEFAULT_WEIGHT


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def read_user_metadata(model: Path) -> UserMetadata:
    """``name.json`` beside ``model``; a missing or unreadable file is no metadata."""
    text = _small_text(_base(model).with_name(_base(model).name + ".json"))
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        log.warning("ignoring %s.json: not JSON", _base(model))
        data = {}
    if not isinstance(data, dict):
        return UserMetadata()

    def text_of(key: str) -> str:
        value = data.get(key)
        return value.strip() if isinstance(value, str) else ""

    return UserMetadata(description=text_of("description"), activation_text=text_of("activation text"),
                        preferred_weight=_number(data.get("preferred weight")), notes=text_of("notes"),
                        sd_version=text_of("sd version"))


def find_description(model: Path, user: UserMetadata, file_metadata: dict[str, str]) -> str:
    """The JSON's description, else ``name.txt`` / ``name.description.txt``, else the file's own."""
    if user.description:
        return user.description
    base = _base(model)
    for candidate in (base.with_name(base.name + ".txt"), base.with_name(base.name + ".description.txt")):
        text = _small_text(candidate)
        if text and text.strip():
            return text.strip()
    return file_metadata.get("modelspec.description", "").strip()

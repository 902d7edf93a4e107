"""The cards of the extra-networks browser: one per LoRA or embedding file, with what A1111's card
shows (preview, description, activation text, preferred weight), searched and sorted.

Previews travel inside the card as small ``data:`` images made here from a file that
:func:`~modules.services.network_metadata.find_preview` vetted, so no route serves model-folder files
and no path ever comes from the browser: a click names a card by its file's place in the listing.
"""

from __future__ import annotations

import base64
import enum
import io
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modules.services.addons import AddonFile, AddonKind, AddonRegistry
from modules.services.network_metadata import (
    find_description,
    find_preview,
    read_safetensors_metadata,
    read_user_metadata,
)

log = logging.getLogger(__name__)

PREVIEW_SIDE = 256  # card thumbnails, in pixels
MAX_PREVIEW_BYTES = 32 * 1024 * 1024
_UNREADABLE = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class CardSort(enum.Enum):
    NAME = "Name"
    DATE_MODIFIED = "Date modified"
    PATH = "Path"


@dataclass(frozen=True)
class NetworkCard:
    key: str  # the file's path inside its folder: what a click sends back
    name: str  # shown on the card (the file stem)
    tag_name: str  # what the inserted tag names: the LoRA's alias, or the embedding's name
    kind: AddonKind
    relative: str
    mtime: float
    description: str = ""
    activation_text: str = ""
    weight: float = 1.0  # the preferred weight, else A1111's default multiplier
    preview: str = ""  # a data: URL, "" without a preview

    def matches(self, query: str) -> bool:
        """A case-insensitive substring of the name, path, description or activation text."""
        wanted = query.strip().lower()
        return not wanted or any(wanted in text.lower() for text in
                                 (self.name, self.relative, self.description, self.activation_text))


def sort_cards(cards: Iterable[NetworkCard], by: CardSort, descending: bool = False) -> list[NetworkCard]:
    """Cards by name (case-insensitive), modification time or path; ties by path."""
    keys = {CardSort.NAME: lambda c: (c.name.lower(), c.relative.lower()),
            CardSort.DATE_MODIFIED: lambda c: (c.mtime, c.relative.lower()),
            CardSort.PATH: lambda c: (c.relative.lower(), c.name.lower())}
    return sorted(cards, key=keys[by], reverse=descending)


def _thumbnail_url(path: Path) -> str:
    """A small JPEG (PNG when it has transparency) of the image at ``path`` as a data: URL."""
    if path.stat().st_size > MAX_PREVIEW_BYTES:
        raise ValueError("preview file too large")
    with Image.open(path) as image:
        image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        transparent = image.mode in ("RGBA", "LA", "P")
        out = io.BytesIO()
        if transparent:
            image.convert("RGBA").save(out, format="PNG")
        else:
            image.convert("RGB").save(out, format="JPEG", quality=85)
    mime = "image/png" if transparent else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(out.getvalue()).decode('ascii')}"


class NetworkCards:
    """Cards for a registry's files; previews made once per file version and kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._previews: dict[tuple[str, int], str] = {}

    def _preview(self, item: AddonFile, roots: tuple[Path, ...]) -> str:
        path = find_preview(item.path, roots)
        if path is None:
            return ""
        try:
            stamp = (str(path), path.stat().st_mtime_ns)
            with self._lock:
                cached = self._previews.get(stamp)
            if cached is None:
                cached = _thumbnail_url(path)
                with self._lock:
                    self._previews[stamp] = cached
            return cached
        except _UNREADABLE as exc:
            log.warning("cannot show the preview %s: %s", path, exc)
            return ""

    def card(self, registry: AddonRegistry, item: AddonFile, by_file_name: bool = False) -> NetworkCard:
        """``item``'s card; a LoRA's tag names it by its alias (A1111's lora_preferred_name "Alias from
        file"), or by its file name with ``by_file_name`` ("Filename")."""
        file_metadata = registry.metadata(item) if item.kind is AddonKind.LORA else read_safetensors_metadata(item.path)
        user = read_user_metadata(item.path)
        try:
            mtime = item.path.stat().st_mtime
        except OSError:
            mtime = 0.0
        lora = item.kind is AddonKind.LORA and not by_file_name
        tag_name = registry.preferred_name(item) if lora else item.name
        return NetworkCard(key=item.relative, name=item.name, tag_name=tag_name, kind=item.kind,
                           relative=item.relative, mtime=mtime,
                           description=find_description(item.path, user, file_metadata),
                           activation_text=user.activation_text, weight=user.weight,
                           preview=self._preview(item, registry.folders))

    def cards(self, registry: AddonRegistry, query: str = "", by: CardSort = CardSort.NAME,
              descending: bool = False, by_file_name: bool = False) -> list[NetworkCard]:
        """The registry's cards that match ``query``, sorted."""
        found = [self.card(registry, item, by_file_name) for item in registry.all()]
        return sort_cards([c for c in found if c.matches(query)], by, descending)

    def find(self, registry: AddonRegistry, key: str, by_file_name: bool = False) -> NetworkCard | None:
        """The card of the listed file at ``key`` (its path inside its folder), if still listed."""
        item = next((i for i in registry.all() if i.relative == key), None)
        return None if item is None else self.card(registry, item, by_file_name)

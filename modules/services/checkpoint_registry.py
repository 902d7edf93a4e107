"""Checkpoint files: discovering them in the checkpoint folders and naming them as A1111 does.

Names follow A1111 so that API clients and saved infotexts keep working: ``name`` is the path
relative to its checkpoint folder, ``title`` is ``name [shorthash]``, ``model_name`` is the stem.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from modules.engine.checkpoint_files import CHECKPOINT_SUFFIXES
from modules.errors import ModelNotFoundError
from modules.services.hashing import SHORT_HASH_LENGTH, HashCache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    """A checkpoint on disk, by A1111's naming."""

    path: Path
    name: str
    model_name: str
    sha256: str | None = None

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:SHORT_HASH_LENGTH] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    def matches(self, query: str) -> bool:
        q = query.strip()
        if q in (self.title, self.name, self.model_name, str(self.path)):
            return True
        if q.split(" [")[0] == self.name:  # a title whose hash we have not computed yet
            return True
        return bool(self.sha256 and len(q) >= 8 and self.sha256.startswith(q.lower()))


def _is_diffusers_folder(path: Path) -> bool:
    # a UNet family's folder, or a flow family's (its network is a transformer)
    return (path / "model_index.json").is_file() and ((path / "unet").is_dir() or (path / "transformer").is_dir())


def _scan_dir(root: Path) -> list[Path]:
    found: list[Path] = []
    if not root.is_dir():
        return found
    pending = [root]
    while pending:
        folder = pending.pop()
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                (found if _is_diffusers_folder(entry) else pending).append(entry)
            elif entry.suffix.lower() in CHECKPOINT_SUFFIXES:
                found.append(entry)
    return found


class CheckpointRegistry:
    """The checkpoints found in the configured folders; rescanned on :meth:`refresh`."""

    def __init__(self, folders: tuple[Path, ...], hashes: HashCache) -> None:
        self._folders = folders
        self._hashes = hashes
        self._lock = threading.Lock()
        self._items: tuple[CheckpointInfo, ...] | None = None

    @property
    def folders(self) -> tuple[Path, ...]:
        return self._folders

    def refresh(self) -> tuple[CheckpointInfo, ...]:
        items = []
        for root in self._folders:
            for path in _scan_dir(root):
                name = path.relative_to(root).as_posix()
                stem = path.name if path.is_dir() else path.stem
                items.append(CheckpointInfo(path=path, name=name, model_name=stem, sha256=self._hashes.cached(path)))
        items.sort(key=lambda i: i.name.lower())
        with self._lock:
            self._items = tuple(items)
        log.info("Found %d checkpoint(s) in %s", len(items), ", ".join(str(f) for f in self._folders))
        return self._items

    def all(self) -> tuple[CheckpointInfo, ...]:
        with self._lock:
            items = self._items
        return items if items is not None else self.refresh()

    def find(self, query: str) -> CheckpointInfo | None:
        for info in self.all():
            if info.matches(query):
                return info
        return None

    def require(self, query: str) -> CheckpointInfo:
        info = self.find(query)
        if info is None:
            raise ModelNotFoundError(query, [i.title for i in self.all()])
        return info

    def hashed(self, info: CheckpointInfo) -> CheckpointInfo:
        """``info`` with its sha256, computing it once; the registry's entry is updated too."""
        if info.sha256:
            return info
        full = replace(info, sha256=self._hashes.sha256(info.path))
        with self._lock:
            if self._items is not None:
                self._items = tuple(full if i.path == info.path else i for i in self._items)
        return full

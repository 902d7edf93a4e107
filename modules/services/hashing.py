"""SHA-256 of model files, computed once and cached by path, size and modification time.

A1111 identifies models by the first 10 hex digits of the file's sha256 ("Model hash"), and
LoRA .safetensors files by the "addnet" hash: the sha256 of the bytes after the safetensors
header, so editing the metadata keeps the hash (what civitai and "Lora hashes" use). Hashing a
multi-GB file takes seconds, so results persist in ``cache/hashes.json``, written atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path

from modules.atomic import write_text_atomic

log = logging.getLogger(__name__)
_BLOCK = 1024 * 1024
SHORT_HASH_LENGTH = 10


def _weight_files(path: Path) -> list[Path]:
    """The files whose bytes identify a model: the file itself, or a folder's weights in order."""
    if path.is_file():
        return [path]
    found = [p for p in path.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".ckpt")]
    return sorted(found, key=lambda p: p.relative_to(path).as_posix())


def _signature(files: list[Path]) -> str:
    parts = []
    for f in files:
        st = f.stat()
        parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _key(path: Path, addnet: bool) -> str:
    return f"addnet:{path}" if addnet else str(path)


class HashCache:
    """Thread-safe sha256 lookup backed by a JSON file."""

    def __init__(self, cache_file: Path) -> None:
        self._file = cache_file
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, str]] | None = None

    def _load(self) -> dict[str, dict[str, str]]:
        if self._entries is None:
            try:
                data = json.loads(self._file.read_text(encoding="utf-8"))
                self._entries = data if isinstance(data, dict) else {}
            except FileNotFoundError:
                self._entries = {}
            except (OSError, json.JSONDecodeError) as exc:
                log.warning("Ignoring unreadable hash cache %s (%s); hashes will be recomputed", self._file, exc)
                self._entries = {}
        return self._entries

    def cached(self, path: Path, addnet: bool = False) -> str | None:
        """The sha256 if known for the file as it is now; never hashes."""
        files = _weight_files(path)
        with self._lock:
            entry = self._load().get(_key(path, addnet))
        if entry and files and entry.get("signature") == _signature(files):
            return entry.get("sha256")
        return None

    def sha256(self, path: Path, addnet: bool = False) -> str:
        """The sha256 of a model file (or of a diffusers folder's weights, in order); with
        ``addnet``, of a .safetensors file's tensor bytes only."""
        known = self.cached(path, addnet)
        if known:
            return known
        files = _weight_files(path)
        digest = hashlib.sha256()
        for f in files:
            with f.open("rb") as fh:
                if addnet:
                    fh.seek(8 + int.from_bytes(fh.read(8), "little"))
                while block := fh.read(_BLOCK):
                    digest.update(block)
        value = digest.hexdigest()
        with self._lock:
            entries = self._load()
            entries[_key(path, addnet)] = {"signature": _signature(files), "sha256": value}
            write_text_atomic(self._file, json.dumps(entries, indent=1, sort_keys=True))
        return value

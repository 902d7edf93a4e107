"""Model files for extensions (:meth:`Host.model_dirs`, :meth:`Host.download`, :meth:`Host.sha256`):
A1111's folders under the models folder, the ones flags add, downloads with progress and a checked
hash, and cached file hashes. The front and each Ray worker have their own, over their own folders.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from modules.errors import ExtensionError
from modules.paths import AppPaths
from modules.services.hashing import HashCache
from modules.services.model_downloads import KnownModel, ModelFetcher

_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class ExtensionFiles:
    """The model folders, downloads and hashes one process offers its extensions."""

    def __init__(self, paths: AppPaths, hashes: HashCache) -> None:
        self._paths = paths
        self._hashes = hashes
        self._lock = threading.Lock()
        self._fetchers: dict[str, ModelFetcher] = {}  # one per target file: one download of it at a time

    def model_dirs(self, kind: str) -> tuple[Path, ...]:
        if not _KIND.match(kind):
            raise ExtensionError(f"{kind!r} is not a models folder name (letters, digits, '_', '-', '.')")
        return self._paths.model_dirs(kind)

    def download(self, url: str, kind: str, file_name: str, sha256: str) -> Path:
        """The file in ``model_dirs(kind)[0]``, fetched first when missing (see Host.download)."""
        if not _KIND.match(file_name) or file_name in (".", ".."):
            raise ExtensionError(f"{file_name!r} is not a plain file name")
        if not _HEX.match(sha256.lower()):
            raise ExtensionError(f"{sha256!r} is not a SHA-256 in hex")
        if not url.startswith("https://"):
            raise ExtensionError(f"{url!r}: models are only downloaded over https")
        folder = self.model_dirs(kind)[0]
        model = KnownModel(file_name, file_name, kind, url, sha256.lower(), None, kind)
        key = str(folder / file_name)
        with self._lock:
            fetcher = self._fetchers.setdefault(key, ModelFetcher(self._paths.models_dir, (model,)))
        return fetcher.download(file_name)

    def sha256(self, path: Path) -> str:
        return self._hashes.sha256(path)

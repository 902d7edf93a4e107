"""Provider keys and base URLs an admin saves in the UI: ``remote_engines.json`` in the data dir,
written atomically and readable by the owner alone (mode 0600). What it holds is never shown back,
logged or echoed: the UI only says whether a key is set and where it comes from.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from modules.atomic import write_atomic
from modules.services.remote.catalog import Provider

log = logging.getLogger(__name__)

FILE_NAME = "remote_engines.json"
_FIELDS = ("api_key", "base_url")


class AccessFile:
    """The saved keys and base URLs, by provider: {"openai": {"api_key": ..., "base_url": ...}}."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int], dict[Provider, dict[str, str]]] | None = None  # by (mtime, size)

    def read(self) -> dict[Provider, dict[str, str]]:
        """What is saved; an unreadable file is logged (without its contents) and read as empty."""
        with self._lock:
            return self._read()

    def save(self, provider: Provider, api_key: str | None = None, base_url: str | None = None,
             clear_key: bool = False) -> None:
        """Set ``provider``'s key (when given), base URL (when given; "" removes it), or remove its key."""
        with self._lock:
            saved = self._read()
            entry = saved.setdefault(provider, {})
            if clear_key:
                entry.pop("api_key", None)
            elif api_key:
                entry["api_key"] = api_key
            if base_url is not None:
                if base_url:
                    entry["base_url"] = base_url
                else:
                    entry.pop("base_url", None)
            data = {p.value: values for p, values in saved.items() if values}
            write_atomic(self.path, lambda fh: fh.write(json.dumps(data, indent=1).encode("utf-8")))
            os.chmod(self.path, 0o600)  # the temporary file is 0600 already; a copied-in file may not be

    def _read(self) -> dict[Provider, dict[str, str]]:
        """The file's contents, parsed again only when it changed (every job and page asks)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if self._cached is None or self._cached[0] != stamp:
            self._cached = (stamp, self._parse())
        return {provider: dict(values) for provider, values in self._cached[1].items()}

    def _parse(self) -> dict[Provider, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            log.error("%s cannot be read; the keys saved in the UI are not used until an admin saves them again.",
                      self.path)
            return {}
        found: dict[Provider, dict[str, str]] = {}
        for provider in Provider:
            entry = data.get(provider.value) if isinstance(data, dict) else None
            if isinstance(entry, dict):
                found[provider] = {k: v for k, v in entry.items() if k in _FIELDS and isinstance(v, str) and v}
        return found

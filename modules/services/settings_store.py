"""The settings in force, changeable at run time (API options now, a settings tab later).

Changes are validated like config.yaml itself, written back atomically, then swapped in; readers
always see one consistent :class:`Settings` value.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modules.config import Settings, check_setting, save_settings


class SettingsStore:
    def __init__(self, path: Path, settings: Settings) -> None:
        self._path = path
        self._settings = settings
        self._lock = threading.Lock()

    def get(self) -> Settings:
        with self._lock:
            return self._settings

    def update(self, changes: Mapping[str, Any]) -> Settings:
        """Apply ``changes`` (setting name -> value); ConfigError names the first bad one."""
        for key, value in changes.items():
            check_setting("settings", key, value)
        with self._lock:
            updated = dataclasses.replace(self._settings, **changes)
            if updated != self._settings:
                save_settings(self._path, updated)
                self._settings = updated
            return self._settings

"""The settings in force, changeable at run time (API options, the UI's quicksettings).

Changes are validated like config.yaml itself (type and range, every bad one named, nothing
clamped), and clip skip against the loaded model's text encoder too; then written back atomically
and swapped in. Readers always see one consistent :class:`Settings` value.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.config import Settings, save_settings, setting_problem
from modules.errors import FieldError, ValidationError

if TYPE_CHECKING:
    from modules.engine.loader import LoadedModel


def clip_skip_max_of(model: LoadedModel | None) -> int | None:
    """The loaded model's limit for ``clip_skip`` (its text encoders' fewest layers); None without one
    (a scale-out front: the workers hold the models, and their engine checks it per job)."""
    if model is None:
        return None
    from modules.engine.prompt_encoding import (
        clip_skip_limit,  # imports torch: a loaded model has it already
    )

    return clip_skip_limit(model.pipeline, model.arch)


def clip_skip_problem(value: object, maximum: int | None, model: str = "the loaded model") -> str | None:
    """Why ``value`` cannot be the clip skip of a model whose text encoder allows ``maximum`` (None: no
    model known, only the setting's own range applies)."""
    if maximum is None or isinstance(value, bool) or not isinstance(value, int) or value <= maximum:
        return None
    return (f"must be at most {maximum} (allowed: 1 to {maximum}): {model}'s text encoder has {maximum} layers, "
            f"got {value}")


def settings_errors(changes: Mapping[str, Any], clip_skip_max: int | None = None) -> list[FieldError]:
    """One :class:`FieldError` per bad change (the field is the setting's name), in ``changes``' order."""
    errors = []
    for key, value in changes.items():
        problem = setting_problem(key, value)
        if problem is None and key == "clip_skip":
            problem = clip_skip_problem(value, clip_skip_max)
        if problem is not None:
            errors.append(FieldError(key, problem))
    return errors


class SettingsStore:
    def __init__(self, path: Path, settings: Settings) -> None:
        self._path = path
        self._settings = settings
        self._lock = threading.Lock()

    def get(self) -> Settings:
        with self._lock:
            return self._settings

    def check(self, changes: Mapping[str, Any], model: LoadedModel | None = None) -> None:
        """Raise ValidationError naming every bad change and what it allows (``clip_skip`` also against
        ``model``, the loaded one, when there is one); nothing is applied."""
        errors = settings_errors(changes, clip_skip_max_of(model))
        if errors:
            raise ValidationError(errors)

    def update(self, changes: Mapping[str, Any], model: LoadedModel | None = None) -> Settings:
        """Apply ``changes`` (setting name -> value), all or none, after :meth:`check`."""
        self.check(changes, model)
        with self._lock:
            updated = dataclasses.replace(self._settings, **changes)
            if updated != self._settings:
                save_settings(self._path, updated)
                self._settings = updated
            return self._settings

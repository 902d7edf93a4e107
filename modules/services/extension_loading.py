"""Finding extensions and loading one: its manifest read and checked, its code imported in isolation.

Each extension is read from its manifest first; only an enabled one whose ``api_version`` range
holds a version this Atelier runs is imported. Any problem (an unreadable manifest, a version none
supported, an import error, a setup that raises) is recorded on the extension's record with the
reason and logged; nothing here raises for an extension's fault.
"""

from __future__ import annotations

import enum
import importlib.util
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modules.errors import ExtensionError
from modules.extension_api import SUPPORTED_API_VERSIONS, ExtensionSetup
from modules.services.extension_manifest import Manifest, read_manifest

log = logging.getLogger(__name__)


class ExtensionState(enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"  # by the user (applies at the next start)
    FAILED = "failed"  # see ``error``


@dataclass(frozen=True)
class ExtensionRecord:
    """One extension as the Extensions tab and the API list it."""

    name: str
    folder: Path
    manifest: Manifest | None  # None when the manifest itself is unreadable
    state: ExtensionState
    error: str | None = None
    setup: ExtensionSetup | None = None  # what its code registered, when loaded

    @property
    def version(self) -> str:
        return self.manifest.version if self.manifest else ""

    @property
    def builtin(self) -> bool:
        return bool(self.manifest and self.manifest.builtin)


def _forget_helpers(folder: Path, names: set[str]) -> None:
    """Drop an extension's own helper modules from the import cache once it has imported them, so
    that another extension's ``helpers.py`` is not mistaken for this one's (the importing module
    keeps its references; helpers must be imported at the top of the entry file)."""
    root = folder.resolve()
    for name in names:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and Path(file).resolve().is_relative_to(root):
            del sys.modules[name]


def _folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))),
                  key=lambda p: p.name.lower())


def discover(builtin_dir: Path, user_dir: Path) -> Iterator[tuple[Path, bool]]:
    """(folder, built in?) of every extension folder: the built-ins first, then users'."""
    yield from ((folder, True) for folder in _folders(builtin_dir))
    if user_dir.resolve() != builtin_dir.resolve():
        yield from ((folder, False) for folder in _folders(user_dir))


def load_one(folder: Path, builtin: bool, disabled: set[str], enabled: bool = True) -> ExtensionRecord:
    """The extension in ``folder`` read, checked and (when enabled) loaded; failures recorded, never raised."""
    try:
        manifest = read_manifest(folder, builtin)
    except ExtensionError as exc:
        log.error("Extension in %s: %s", folder, exc)
        return ExtensionRecord(folder.name, folder, None, ExtensionState.FAILED, str(exc))
    if not enabled or manifest.name in disabled:
        return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.DISABLED)
    if manifest.api_version not in SUPPORTED_API_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_API_VERSIONS)
        reason = (f"written for extension API {manifest.api_range}; this Atelier runs API {supported}. "
                  "Update the extension (or Atelier).")
        log.error("Extension %s not loaded: %s", manifest.name, reason)
        return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.FAILED, reason)
    try:
        setup = run_setup(manifest)
    except Exception as exc:  # its code: any error at all only fails this extension
        log.exception("Extension %s failed to load", manifest.name)
        return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.FAILED,
                               f"{type(exc).__name__}: {exc}")
    return ExtensionRecord(manifest.name, folder, manifest, ExtensionState.ENABLED, setup=setup)


def run_setup(manifest: Manifest) -> ExtensionSetup:
    """Import the extension's entry file and call its setup function."""
    module_name = f"atelier_extensions.{manifest.name.replace('-', '_').replace('.', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, manifest.entry_file,
                                                  submodule_search_locations=None)
    if spec is None or spec.loader is None:
        raise ExtensionError(f"cannot import {manifest.entry_file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
    before = set(sys.modules)
    sys.path.insert(0, str(manifest.folder))  # so the extension can import its own helper modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    finally:
        sys.path.remove(str(manifest.folder))
        _forget_helpers(manifest.folder, set(sys.modules) - before)
    setup_function = getattr(module, manifest.entry_function, None)
    if not callable(setup_function):
        raise ExtensionError(f"{manifest.entry_file.name} has no function {manifest.entry_function}(ext)")
    setup = ExtensionSetup(manifest.name, api_version=manifest.api_version)
    setup_function(setup)
    return setup

"""Reading an extension's ``extension.yaml`` without importing any of its code.

The manager lists, enables and disables extensions from their manifests alone, so a broken
extension can still be shown (and switched off) without running it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from modules.errors import ExtensionError
from modules.extension_api import SUPPORTED_API_VERSIONS

MANIFEST = "extension.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_VERSION = re.compile(r"^\d+\.\d+(\.\d+)?([-+][0-9A-Za-z.-]+)?$")


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str  # semver: "1.2.0"
    api_version: int  # the API version it runs as: the highest supported one its range allows (else as stated)
    entry: str  # "main.py" (function setup) or "main.py:function"
    description: str
    requirements: tuple[str, ...]  # pip requirement lines, installed only when the user confirms
    folder: Path
    builtin: bool
    api_range: str = ""  # as the manifest states it: "2" or ">=1,<3"

    @property
    def entry_file(self) -> Path:
        return self.folder / self.entry.split(":", 1)[0]

    @property
    def entry_function(self) -> str:
        return self.entry.split(":", 1)[1] if ":" in self.entry else "setup"


def _text(data: dict, key: str, folder: Path, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ExtensionError(f"{folder / MANIFEST}: '{key}' must be text")
    return value.strip()


def _entry(data: dict, folder: Path) -> str:
    entry = _text(data, "entry", folder, "main.py")
    file, _, function = entry.partition(":")
    path = (folder / file).resolve()
    if not file.endswith(".py") or not path.is_relative_to(folder.resolve()):
        raise ExtensionError(f"{folder / MANIFEST}: entry {entry!r} must be a .py file inside the extension")
    if function and not function.isidentifier():
        raise ExtensionError(f"{folder / MANIFEST}: entry function {function!r} is not a Python name")
    return entry


def _api_version(value: object, path: Path) -> tuple[int, str]:
    """(the version to run the extension as, the range as written) from ``api_version``: a whole
    number, or a version range such as ">=1,<3" (PEP 440 specifiers over whole numbers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, str(value)
    if not isinstance(value, str) or not value.strip():
        raise ExtensionError(f"{path}: api_version must be a whole number or a range such as \">=1,<3\"")
    text = value.strip()
    if text.isdigit():
        return int(text), text
    try:
        spec = SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise ExtensionError(f"{path}: api_version {text!r} is not a version range such as \">=1,<3\"") from exc
    allowed = [v for v in SUPPORTED_API_VERSIONS if spec.contains(str(v))]
    if allowed:
        return max(allowed), text
    lowest = next((v for v in range(1, 100) if spec.contains(str(v))), 0)
    return lowest, text  # refused when loading, with the range in the message


def read_manifest(folder: Path, builtin: bool = False) -> Manifest:
    """The manifest of the extension in ``folder``; ExtensionError naming what is wrong."""
    path = folder / MANIFEST
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExtensionError(f"{folder}: no {MANIFEST}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ExtensionError(f"{path}: cannot read it ({exc})") from exc
    if not isinstance(data, dict):
        raise ExtensionError(f"{path}: expected name, version, api_version and entry")
    name = _text(data, "name", folder)
    if not _NAME.match(name):
        raise ExtensionError(f"{path}: name {name!r} may use letters, digits, '_', '-' and '.'")
    version = str(data.get("version", "")).strip()
    if not _VERSION.match(version):
        raise ExtensionError(f"{path}: version {version!r} is not a semantic version such as 1.0.0")
    api_version, api_range = _api_version(data.get("api_version"), path)
    requirements = data.get("requirements") or []
    if not isinstance(requirements, list) or not all(isinstance(r, str) and r.strip() for r in requirements):
        raise ExtensionError(f"{path}: requirements must be a list of pip requirement lines")
    return Manifest(name=name, version=version, api_version=api_version, entry=_entry(data, folder),
                    description=str(data.get("description") or "").strip(),
                    requirements=tuple(r.strip() for r in requirements), folder=folder, builtin=builtin,
                    api_range=api_range)

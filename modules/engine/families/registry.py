"""The families Atelier knows, and which one a checkpoint belongs to."""

from __future__ import annotations

import json
from pathlib import Path

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import flux, flux2, sd1, sd2, sd3, sdxl, zimage
from modules.engine.families.base import EngineFamily
from modules.engine.model_detect import ModelArch, UnknownArchitecture
from modules.errors import ModelLoadError

# Tried in order: the first family that recognises a checkpoint loads it.
FAMILIES: tuple[EngineFamily, ...] = (flux.FAMILY, flux.FILL_FAMILY,
                                      zimage.FAMILY, flux2.FAMILY, sd3.FAMILY, sd1.FAMILY, sd2.FAMILY, sdxl.FAMILY)


def family_for(arch: ModelArch) -> EngineFamily:
    for family in FAMILIES:
        if arch in family.archs:
            return family
    raise KeyError(f"no family module for {arch.value}")


def detect_file(index: TensorIndex) -> tuple[EngineFamily, ModelArch]:
    """The family and architecture of a single-file checkpoint; UnknownArchitecture if none."""
    for family in FAMILIES:
        arch = family.detect_file(index)
        if arch is not None:
            return family, arch
    raise UnknownArchitecture(_unknown_reason(index))


def _unknown_reason(index: TensorIndex) -> str:
    """Why no family took the file: the Stable Diffusion detector's own words when it has a UNet."""
    from modules.engine.model_detect import detect_arch

    try:
        detect_arch(index)
    except UnknownArchitecture as exc:
        return str(exc)
    return "its tensors match no model family Atelier knows"


def detect_folder(folder: Path) -> tuple[EngineFamily, ModelArch]:
    """The family and architecture of a diffusers folder; ModelLoadError if none."""
    try:
        model_index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(folder), f"not a diffusers model folder ({exc})") from exc
    for family in FAMILIES:
        arch = family.detect_folder(folder, model_index)
        if arch is not None:
            return family, arch
    raise ModelLoadError(str(folder), f"a {model_index.get('_class_name', 'diffusers')} folder, which is not a "
                                      "model family Atelier knows")

"""What the Stable Diffusion UNet families (SD 1.x, SD 2.x, SDXL) share.

Their A1111-style single files are recognised by LDM key names and shapes
(:mod:`modules.engine.model_detect`) and loaded with diffusers' ``from_single_file`` against a
config folder written to match the weights (:mod:`modules.engine.config_folders`); their diffusers
folders by the pipeline class in ``model_index.json`` and the UNet config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from diffusers import DiffusionPipeline

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.config_folders import prepare_config_folder
from modules.engine.families.base import FileLoad, FolderLoad
from modules.engine.model_detect import UNET, CheckpointDims, ModelArch, UnknownArchitecture, detect_arch, infer_dims
from modules.errors import ModelLoadError

OPENCLIP_WIDTH = 1024  # SD 2.x's text width (OpenCLIP ViT-H); SD 1.x has CLIP-L's 768


def ldm_arch(index: TensorIndex, archs: tuple[ModelArch, ...]) -> ModelArch | None:
    """The architecture of an LDM-layout file when it is one of ``archs``; None otherwise."""
    if not index.has_prefix(UNET):
        return None
    try:
        arch = detect_arch(index)
    except UnknownArchitecture:
        return None
    return arch if arch in archs else None


def checkpoint_dims(load: FileLoad) -> CheckpointDims:
    try:
        return infer_dims(load.index)
    except UnknownArchitecture as exc:
        raise ModelLoadError(str(load.path), f"not a Stable Diffusion checkpoint Atelier knows: {exc}") from exc


def load_ldm_file(load: FileLoad, dims: CheckpointDims, pipeline_class: type[DiffusionPipeline]) -> DiffusionPipeline:
    """A single file through diffusers' converter, against the config folder of ``dims.arch``."""
    folder = prepare_config_folder(dims, load.config_cache)
    return pipeline_class.from_single_file(str(load.path), config=str(folder), local_files_only=True,
                                           dtype=load.device.dtype)


def is_sd_unet_folder(model_index: Mapping[str, Any]) -> bool:
    """A Stable Diffusion 1/2/XL pipeline (SD3's pipeline classes belong to another family)."""
    name = str(model_index.get("_class_name", ""))
    return name.startswith("StableDiffusion") and "3" not in name


def folder_config(folder: Path, component: str, name: str = "config.json") -> dict[str, Any]:
    """One component's JSON config from a diffusers folder; ModelLoadError if unreadable."""
    try:
        return json.loads((folder / component / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(folder), f"not a diffusers model folder ({exc})") from exc


def has_open_clip(folder: Path, unet: Mapping[str, Any]) -> bool:
    """Whether a non-XL folder is SD 2.x: its UNet attends to OpenCLIP ViT-H's 1024-wide states, or
    (pruned and tiny models) its text encoder is OpenCLIP's, which uses gelu where OpenAI's CLIP-L
    (SD 1.x) uses quick_gelu."""
    if unet.get("cross_attention_dim") == OPENCLIP_WIDTH:
        return True
    return folder_config(folder, "text_encoder").get("hidden_act") == "gelu"


def load_diffusers_folder(load: FolderLoad, pipeline_class: type[DiffusionPipeline],
                          **extra: Any) -> DiffusionPipeline:
    return pipeline_class.from_pretrained(str(load.path), local_files_only=True, dtype=load.device.dtype, **extra)


# SD1/SD2 pipelines ask for a safety checker; Atelier ships none.
NO_SAFETY_CHECKER: Mapping[str, Any] = MappingProxyType({"safety_checker": None, "requires_safety_checker": False})

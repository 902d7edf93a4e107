"""The Stable Diffusion UNet families: SD 1.x (and inpainting), SD 2.x, SDXL (and refiner).

A1111-style single files are recognised by their LDM key names and shapes and loaded against a
generated config folder; diffusers folders by their pipeline class and UNet config.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers import (
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.config_folders import prepare_config_folder
from modules.engine.families.base import EngineFamily, FileLoad, FolderLoad
from modules.engine.model_detect import UNET, ModelArch, UnknownArchitecture, infer_dims
from modules.errors import ModelLoadError

PIPELINE_CLASSES: dict[ModelArch, type[DiffusionPipeline]] = {
    ModelArch.SD1: StableDiffusionPipeline,
    ModelArch.SD1_INPAINT: StableDiffusionInpaintPipeline,
    ModelArch.SD2_V: StableDiffusionPipeline,
    ModelArch.SDXL: StableDiffusionXLPipeline,
    ModelArch.SDXL_REFINER: StableDiffusionXLImg2ImgPipeline,
}


def detect_file(index: TensorIndex) -> ModelArch | None:
    if not index.has_prefix(UNET):
        return None
    try:
        return infer_dims(index).arch
    except UnknownArchitecture:
        return None


def detect_folder(folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    name = str(model_index.get("_class_name", ""))
    if not name.startswith("StableDiffusion") or "3" in name:
        return None
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(folder), f"not a diffusers model folder ({exc})") from exc
    if "XL" in name:
        return ModelArch.SDXL_REFINER if model_index.get("text_encoder", [None])[0] is None else ModelArch.SDXL
    if unet.get("in_channels") == 9:
        return ModelArch.SD1_INPAINT
    if unet.get("cross_attention_dim") == 1024:
        return ModelArch.SD2_V
    return ModelArch.SD1


def load_file(load: FileLoad) -> DiffusionPipeline:
    try:
        dims = infer_dims(load.index)
    except UnknownArchitecture as exc:
        raise ModelLoadError(str(load.path), f"not a Stable Diffusion checkpoint Atelier knows: {exc}") from exc
    folder = prepare_config_folder(dims, load.config_cache)
    return PIPELINE_CLASSES[dims.arch].from_single_file(str(load.path), config=str(folder), local_files_only=True,
                                                        dtype=load.device.dtype)


def load_folder(load: FolderLoad) -> DiffusionPipeline:
    # SD1/SD2 pipelines ask for a safety checker; Atelier ships none.
    extra = {} if load.arch.is_sdxl else {"safety_checker": None, "requires_safety_checker": False}
    return PIPELINE_CLASSES[load.arch].from_pretrained(str(load.path), local_files_only=True,
                                                       dtype=load.device.dtype, **extra)


FAMILY = EngineFamily(
    name="Stable Diffusion",
    archs=tuple(PIPELINE_CLASSES),
    detect_file=detect_file,
    detect_folder=detect_folder,
    load_file=load_file,
    load_folder=load_folder,
)

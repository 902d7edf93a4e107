"""The SDXL family: SDXL base (CLIP-L + OpenCLIP bigG) and the SDXL refiner (bigG alone)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import sd_common
from modules.engine.families.base import EngineFamily, FileLoad, FolderLoad
from modules.engine.model_detect import ModelArch

PIPELINE_CLASSES: Mapping[ModelArch, type[DiffusionPipeline]] = {
    ModelArch.SDXL: StableDiffusionXLPipeline,
    ModelArch.SDXL_REFINER: StableDiffusionXLImg2ImgPipeline,
}
ARCHS = tuple(PIPELINE_CLASSES)


def detect_file(index: TensorIndex) -> ModelArch | None:
    return sd_common.ldm_arch(index, ARCHS)


def detect_folder(folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    if not sd_common.is_sd_unet_folder(model_index):
        return None
    sd_common.folder_config(folder, "unet")  # refuse a folder without a readable UNet, as the others do
    if "XL" not in str(model_index.get("_class_name", "")):
        return None
    # The refiner has no first (CLIP-L) text encoder.
    return ModelArch.SDXL_REFINER if model_index.get("text_encoder", [None])[0] is None else ModelArch.SDXL


def load_file(load: FileLoad) -> DiffusionPipeline:
    dims = sd_common.checkpoint_dims(load)
    return sd_common.load_ldm_file(load, dims, PIPELINE_CLASSES[dims.arch])


def load_folder(load: FolderLoad) -> DiffusionPipeline:
    return sd_common.load_diffusers_folder(load, PIPELINE_CLASSES[load.arch])


FAMILY = EngineFamily(
    name="SDXL",
    archs=ARCHS,
    detect_file=detect_file,
    detect_folder=detect_folder,
    load_file=load_file,
    load_folder=load_folder,
)

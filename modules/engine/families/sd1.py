"""The SD 1.x family: SD 1.x checkpoints and their 9-channel inpainting variants."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import sd_common
from modules.engine.families.base import EngineFamily, FileLoad, FolderLoad
from modules.engine.model_detect import ModelArch

PIPELINE_CLASSES: Mapping[ModelArch, type[DiffusionPipeline]] = {
    ModelArch.SD1: StableDiffusionPipeline,
    ModelArch.SD1_INPAINT: StableDiffusionInpaintPipeline,
}
ARCHS = tuple(PIPELINE_CLASSES)


def detect_file(index: TensorIndex) -> ModelArch | None:
    return sd_common.ldm_arch(index, ARCHS)


def detect_folder(folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    if not sd_common.is_sd_unet_folder(model_index):
        return None
    unet = sd_common.folder_config(folder, "unet")
    if "XL" in str(model_index.get("_class_name", "")):
        return None
    if unet.get("in_channels") == 9:  # inpainting UNets of either generation load through this pipeline
        return ModelArch.SD1_INPAINT
    return None if sd_common.has_open_clip(folder, unet) else ModelArch.SD1


def load_file(load: FileLoad) -> DiffusionPipeline:
    dims = sd_common.checkpoint_dims(load)
    return sd_common.load_ldm_file(load, dims, PIPELINE_CLASSES[dims.arch])


def load_folder(load: FolderLoad) -> DiffusionPipeline:
    return sd_common.load_diffusers_folder(load, PIPELINE_CLASSES[load.arch], **sd_common.NO_SAFETY_CHECKER)


FAMILY = EngineFamily(
    name="Stable Diffusion 1.x",
    archs=ARCHS,
    detect_file=detect_file,
    detect_folder=detect_folder,
    load_file=load_file,
    load_folder=load_folder,
)

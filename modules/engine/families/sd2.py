"""The SD 2.x family: OpenCLIP ViT-H UNets, predicting eps (the 512 base) or v (the 768 models).

The two kinds have the same tensors. A single file's kind comes from a marker
(:func:`modules.engine.model_detect.sidecar_arch`: A1111's ``.yaml`` beside it, else
:func:`~modules.engine.model_detect.sd2_arch_from_metadata`: the header, else v); it picks the
shipped config folder (``model_configs/sd2`` or ``sd2_v``), whose scheduler config carries the
``prediction_type`` the denoiser follows. A diffusers folder says it in its own scheduler config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline, StableDiffusionPipeline

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import sd_common
from modules.engine.families.base import EngineFamily, FileLoad, FolderLoad
from modules.engine.model_detect import SD2_ARCHS, ModelArch, sidecar_arch


def detect_file(index: TensorIndex) -> ModelArch | None:
    """SD 2.x by its OpenCLIP encoder; eps or v as the header says (v when it says nothing)."""
    return sd_common.ldm_arch(index, SD2_ARCHS)


def detect_folder(folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    if not sd_common.is_sd_unet_folder(model_index) or "XL" in str(model_index.get("_class_name", "")):
        return None
    unet = sd_common.folder_config(folder, "unet")
    if unet.get("in_channels") == 9 or not sd_common.has_open_clip(folder, unet):
        return None
    scheduler = sd_common.folder_config(folder, "scheduler", "scheduler_config.json")
    # diffusers' schedulers default to "epsilon" when the key is absent, and so does the loaded model.
    return ModelArch.SD2_V if scheduler.get("prediction_type") == "v_prediction" else ModelArch.SD2


def load_file(load: FileLoad) -> DiffusionPipeline:
    dims = sd_common.checkpoint_dims(load)
    # The .yaml beside the file is read here as well, so the model predicts what it says even where
    # the caller recognised the file from its tensors alone.
    dims = replace(dims, arch=sidecar_arch(load.path, dims.arch))
    return sd_common.load_ldm_file(load, dims, StableDiffusionPipeline)


def load_folder(load: FolderLoad) -> DiffusionPipeline:
    return sd_common.load_diffusers_folder(load, StableDiffusionPipeline, **sd_common.NO_SAFETY_CHECKER)


FAMILY = EngineFamily(
    name="Stable Diffusion 2.x",
    archs=SD2_ARCHS,
    detect_file=detect_file,
    detect_folder=detect_folder,
    load_file=load_file,
    load_folder=load_folder,
)

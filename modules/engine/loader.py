"""Loading a checkpoint (single file or diffusers folder) into a ready pipeline, offline.

Every failure becomes a :class:`ModelLoadError` naming the file, so the caller can keep serving
with the model it already has. Nothing here touches the network: single files load against a
local config folder, diffusers folders with ``local_files_only``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers import (
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from modules.engine.checkpoint_files import (
    index_of_state_dict,
    load_pickle_state_dict,
    read_safetensors_index,
)
from modules.engine.config_folders import prepare_config_folder
from modules.engine.devices import DeviceInfo
from modules.engine.model_detect import ModelArch, UnknownArchitecture, infer_dims
from modules.engine.placement import execution_device, place
from modules.engine.sampling.schedules import ModelSigmas
from modules.errors import ModelLoadError

log = logging.getLogger(__name__)

PIPELINE_CLASSES: dict[ModelArch, type[DiffusionPipeline]] = {
    ModelArch.SD1: StableDiffusionPipeline,
    ModelArch.SD1_INPAINT: StableDiffusionInpaintPipeline,
    ModelArch.SD2_V: StableDiffusionPipeline,
    ModelArch.SDXL: StableDiffusionXLPipeline,
    ModelArch.SDXL_REFINER: StableDiffusionXLImg2ImgPipeline,
}


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline on its device, with what the rest of the engine needs to know about it."""

    path: Path
    arch: ModelArch
    pipeline: DiffusionPipeline
    device: DeviceInfo
    load_seconds: float
    base_scheduler_config: Mapping[str, Any]  # the noise schedule the model was trained with
    sigmas: ModelSigmas  # its discrete noise levels, which every sampling schedule derives from

    @property
    def execution_device(self) -> torch.device:
        """Where the models compute: the GPU even when offloading keeps their weights in RAM."""
        return execution_device(self.pipeline)

    @property
    def v_prediction(self) -> bool:
        return self.base_scheduler_config.get("prediction_type") == "v_prediction"


def _dtype_kwargs(device: DeviceInfo) -> dict[str, torch.dtype]:
    # Always explicit: without it a component may take the dtype its config names (real SDXL
    # text encoder configs say float16), even on the CPU.
    return {"dtype": device.dtype}


def _arch_of_folder(folder: Path) -> ModelArch:
    try:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(folder), f"not a diffusers model folder ({exc})") from exc
    name = index.get("_class_name", "")
    if "XL" in name:
        return ModelArch.SDXL_REFINER if index.get("text_encoder", [None])[0] is None else ModelArch.SDXL
    if unet.get("in_channels") == 9:
        return ModelArch.SD1_INPAINT
    if unet.get("cross_attention_dim") == 1024:
        return ModelArch.SD2_V
    return ModelArch.SD1


def _load_single_file(path: Path, device: DeviceInfo, config_cache: Path) -> tuple[ModelArch, DiffusionPipeline]:
    if path.suffix.lower() == ".safetensors":
        index = read_safetensors_index(path)
    else:
        index = index_of_state_dict(load_pickle_state_dict(path))  # refuses anything but tensors
    try:
        dims = infer_dims(index)
    except UnknownArchitecture as exc:
        raise ModelLoadError(str(path), f"not a Stable Diffusion checkpoint Atelier knows: {exc}") from exc
    folder = prepare_config_folder(dims, config_cache)
    pipeline_class = PIPELINE_CLASSES[dims.arch]
    pipe = pipeline_class.from_single_file(str(path), config=str(folder), local_files_only=True,
                                           **_dtype_kwargs(device))
    return dims.arch, pipe


def _check_materialised(path: Path, pipe: DiffusionPipeline) -> None:
    """Weights the file did not provide stay on the meta device; refuse such a half-loaded model."""
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for param_name, param in module.named_parameters():
                if param.is_meta:
                    raise ModelLoadError(str(path), f"the file has no weights for {name}.{param_name}")


def load_model(path: Path, device: DeviceInfo, config_cache: Path, placed: bool = True) -> LoadedModel:
    """Load ``path`` onto ``device`` (``placed=False``: into RAM only, for the caller to place with
    :func:`modules.engine.placement.place` once the device has room); raise :class:`ModelLoadError`
    if it cannot be used."""
    started = time.perf_counter()
    try:
        if path.is_dir():
            arch = _arch_of_folder(path)
            # SD1/SD2 pipelines ask for a safety checker; Atelier ships none.
            extra = {} if arch.is_sdxl else {"safety_checker": None, "requires_safety_checker": False}
            pipe = PIPELINE_CLASSES[arch].from_pretrained(
                str(path), local_files_only=True, **_dtype_kwargs(device), **extra
            )
        else:
            arch, pipe = _load_single_file(path, device, config_cache)
        _check_materialised(path, pipe)
        if placed:
            place(pipe, arch, device)
    except ModelLoadError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError) as exc:
        # diffusers reports shape mismatches, missing files and bad configs with these.
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise ModelLoadError(str(path), f"{exc.__class__.__name__}: {first_line}") from exc
    pipe.set_progress_bar_config(disable=True)
    elapsed = time.perf_counter() - started
    log.info("Loaded %s (%s) in %.1f s", path.name, arch.label, elapsed)
    base = MappingProxyType(dict(pipe.scheduler.config))
    sigmas = ModelSigmas(DDPMScheduler.from_config(dict(base)).alphas_cumprod)
    return LoadedModel(path=path, arch=arch, pipeline=pipe, device=device, load_seconds=elapsed,
                       base_scheduler_config=base, sigmas=sigmas)

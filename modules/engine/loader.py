"""Loading a checkpoint (single file or diffusers folder) into a ready pipeline, offline.

Every failure becomes a :class:`ModelLoadError` naming the file, so the caller can keep serving
with the model it already has. Nothing here touches the network: single files load against a
local config folder, diffusers folders with ``local_files_only``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from types import MappingProxyType

import torch
from diffusers import DDPMScheduler, DiffusionPipeline

from modules.engine.checkpoint_files import (
    index_of_state_dict,
    load_pickle_state_dict,
    read_safetensors_index,
)
from modules.engine.devices import DeviceInfo
from modules.engine.families import registry
from modules.engine.families.base import ComponentDirs, EngineFamily, FileLoad, FolderLoad
from modules.engine.loaded_model import LoadedModel
from modules.engine.model_detect import ModelArch, UnknownArchitecture, sidecar_arch
from modules.engine.placement import place
from modules.engine.quantized import is_gguf, read_gguf_index
from modules.engine.sampling.schedules import ModelSigmas
from modules.errors import ModelLoadError

__all__ = ["LoadedModel", "load_model"]

log = logging.getLogger(__name__)


def _load_single_file(path: Path, device: DeviceInfo, config_cache: Path,
                      components: ComponentDirs) -> tuple[EngineFamily, ModelArch, DiffusionPipeline]:
    if path.suffix.lower() == ".safetensors":
        index = read_safetensors_index(path)
    elif is_gguf(path):  # a quantized transformer alone; the family loads it (modules.engine.quantized)
        index = read_gguf_index(path)
    else:
        index = index_of_state_dict(load_pickle_state_dict(path))  # refuses anything but tensors
    try:
        family, arch = registry.detect_file(index)
        arch = sidecar_arch(path, arch)  # A1111's .yaml beside an SD 2.x file names eps or v
    except UnknownArchitecture as exc:
        raise ModelLoadError(str(path), f"not a Stable Diffusion checkpoint Atelier knows: {exc}") from exc
    pipe = family.load_file(FileLoad(path, index, arch, _device_for(arch, device), config_cache, components))
    return family, arch, pipe


def _load_folder(path: Path, device: DeviceInfo,
                 components: ComponentDirs) -> tuple[EngineFamily, ModelArch, DiffusionPipeline]:
    family, arch = registry.detect_folder(path)
    model_index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    return family, arch, family.load_folder(FolderLoad(path, model_index, arch, _device_for(arch, device),
                                                       components))


def _device_for(arch: ModelArch, device: DeviceInfo) -> DeviceInfo:
    return device.for_flow_family() if arch.is_flow else device


def _check_materialised(path: Path, pipe: DiffusionPipeline) -> None:
    """Weights the file did not provide stay on the meta device; refuse such a half-loaded model."""
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for param_name, param in module.named_parameters():
                if param.is_meta:
                    raise ModelLoadError(str(path), f"the file has no weights for {name}.{param_name}")


def load_model(path: Path, device: DeviceInfo, config_cache: Path, placed: bool = True,
               components: ComponentDirs | None = None) -> LoadedModel:
    """Load ``path`` onto ``device`` (``placed=False``: into RAM only, for the caller to place with
    :func:`modules.engine.placement.place` once the device has room); raise :class:`ModelLoadError`
    if it cannot be used."""
    started = time.perf_counter()
    try:
        components = components or ComponentDirs()
        if path.is_dir():
            family, arch, pipe = _load_folder(path, device, components)
        else:
            family, arch, pipe = _load_single_file(path, device, config_cache, components)
        device = _device_for(arch, device)  # flow families: bf16 rather than fp16 where the card has it
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
    if family.default_sigmas is not None:
        sigmas = family.default_sigmas(pipe)
    else:
        sigmas = ModelSigmas(DDPMScheduler.from_config(dict(base)).alphas_cumprod)
    return LoadedModel(path=path, arch=arch, pipeline=pipe, device=device, load_seconds=elapsed,
                       base_scheduler_config=base, sigmas=sigmas, latent_format=family.latent_format(pipe))

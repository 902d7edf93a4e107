"""What a family module provides to the engine.

A family module defines one :class:`EngineFamily`: how to recognise its checkpoints (single files
by their tensors, diffusers folders by ``model_index.json``), how to load them into a diffusers
pipeline, and, for flow families, the parts the sampling loop needs (:class:`FlowParts`). Adding a
family means adding its module and configs and listing it in :mod:`.registry`; nothing in the faces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.devices import DeviceInfo
from modules.engine.latent_format import LatentFormat
from modules.engine.model_detect import ModelArch

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from PIL import Image

    from modules.engine.loaded_model import LoadedModel
    from modules.engine.sampling.denoiser import Embeds
    from modules.engine.sampling.flow import FlowNetwork
    from modules.engine.sampling.schedules import ModelSigmas


@dataclass(frozen=True)
class ComponentDirs:
    """Where the parts a checkpoint may not bundle are looked for (A1111/Forge folder names)."""

    text_encoders: tuple[Path, ...] = ()  # models/text_encoder: clip_l, clip_g, t5xxl, LLM encoders
    vaes: tuple[Path, ...] = ()  # models/VAE
    tokenizers: Path | None = None  # downloaded T5/LLM tokenizers live here, one folder per repository


@dataclass(frozen=True)
class FileLoad:
    """A single-file checkpoint to load, already recognised as ``arch``."""

    path: Path
    index: TensorIndex
    arch: ModelArch
    device: DeviceInfo
    config_cache: Path  # a folder for generated config folders
    components: ComponentDirs = field(default_factory=ComponentDirs)


@dataclass(frozen=True)
class FolderLoad:
    """A diffusers model folder to load, already recognised as ``arch``."""

    path: Path
    model_index: Mapping[str, Any]
    arch: ModelArch
    device: DeviceInfo
    components: ComponentDirs = field(default_factory=ComponentDirs)


@dataclass(frozen=True)
class FlowJob:
    """What a flow family needs to know about a batch to set its network and noise levels up."""

    width: int
    height: int
    steps: int
    batch: int
    distilled_cfg_scale: float | None = None  # None: the family's default (families with distilled CFG)
    shift: float | None = None  # None: the family's own rule


@dataclass(frozen=True)
class FlowParts:
    """How the loop runs a flow family."""

    # (model, distinct texts, emphasis mode) -> each text's embeddings, all with the same token count
    encode: Callable[[LoadedModel, Sequence[str], str], dict[str, Embeds]]
    network: Callable[[LoadedModel, FlowJob], FlowNetwork]
    sigmas: Callable[[LoadedModel, FlowJob], ModelSigmas]  # the job's noise levels (its shift)
    # Fill models: (model, init image, mask, job) -> the extra channels the network sees
    inpaint_concat: Callable[[LoadedModel, Image.Image | None, Image.Image | None, FlowJob], torch.Tensor] | None = None


@dataclass(frozen=True)
class EngineFamily:
    name: str
    archs: tuple[ModelArch, ...]
    detect_file: Callable[[TensorIndex], ModelArch | None]  # None: not this family's file
    detect_folder: Callable[[Path, Mapping[str, Any]], ModelArch | None]  # (folder, model_index.json)
    load_file: Callable[[FileLoad], DiffusionPipeline]
    load_folder: Callable[[FolderLoad], DiffusionPipeline]
    flow: FlowParts | None = None  # None: a UNet family, on the Karras (eps / v) path
    # the pipeline's noise levels at load (None: the DDPM table of its scheduler config)
    default_sigmas: Callable[[DiffusionPipeline], ModelSigmas] | None = None
    latent_format: Callable[[DiffusionPipeline], LatentFormat] = lambda _pipe: LatentFormat()

"""A checkpoint loaded into a ready pipeline, with what the rest of the engine needs to know."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from modules.engine.devices import DeviceInfo
from modules.engine.latent_format import LatentFormat
from modules.engine.model_detect import ModelArch
from modules.engine.placement import execution_device
from modules.engine.sampling.schedules import ModelSigmas


@dataclass(frozen=True)
class LoadedModel:
    """A pipeline on its device, with what the rest of the engine needs to know about it."""

    path: Path
    arch: ModelArch
    pipeline: DiffusionPipeline
    device: DeviceInfo
    load_seconds: float
    base_scheduler_config: Mapping[str, Any]  # the noise schedule the model was trained with
    # Its discrete noise levels, which every sampling schedule derives from (flow families: at their
    # default size and shift; a job computes its own from the family).
    sigmas: ModelSigmas
    latent_format: LatentFormat = field(default_factory=LatentFormat)

    @property
    def execution_device(self) -> torch.device:
        """Where the models compute: the GPU even when offloading keeps their weights in RAM."""
        return execution_device(self.pipeline)

    @property
    def v_prediction(self) -> bool:
        return self.base_scheduler_config.get("prediction_type") == "v_prediction"

    @property
    def denoiser_network(self) -> torch.nn.Module:
        """The network the sampler calls: the UNet, or a flow family's transformer."""
        pipe = self.pipeline
        return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer

"""What the flow-family tests share: the CPU device, a silent step observer, an Euler task, pixels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from modules.engine.devices import DeviceInfo
from modules.engine.generate import ImageTask
from modules.engine.sampling.loop import NoisePlan
from modules.samplers import ScheduleType, resolve_sampler

CPU = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")


class Quiet:
    """A step observer that reports nothing and never stops the job."""

    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def euler_task(prompt: str, negative_prompt: str = "", cfg_scale: float = 1.0, steps: int = 3,
               **changes: Any) -> ImageTask:
    """A 64x64 Euler / Simple task on seed 7 (a flow family's defaults), with ``changes``."""
    sampler = resolve_sampler("Euler")
    assert sampler is not None
    values: dict[str, Any] = {"prompt": prompt, "negative_prompt": negative_prompt, "sampler": sampler[0],
                              "schedule": ScheduleType.SIMPLE, "steps": steps, "cfg_scale": cfg_scale, "width": 64,
                              "height": 64, "clip_skip": 1, "noise": NoisePlan(seeds=(7,))}
    return ImageTask(**{**values, **changes})


def pixels(images: list[Image.Image]) -> np.ndarray:
    """(images, H, W, 3) ints, so differences do not wrap around."""
    return np.stack([np.asarray(image.convert("RGB")).astype(int) for image in images])

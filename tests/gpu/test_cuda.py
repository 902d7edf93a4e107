"""On a CUDA machine: fp16 by default, images that are not flat, same seed same pixels. Skipped without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.config import Settings
from modules.engine.devices import DevicePolicy, choose_device
from modules.params import GenerationRequest
from modules.paths import resolve_paths
from modules.services.container import build_services

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_cuda_half_precision_generates_reproducible_images(tiny_models, tmp_path) -> None:
    device = choose_device(DevicePolicy())
    assert device.device.type == "cuda" and device.dtype == torch.float16
    services = build_services(resolve_paths(data_dir=tmp_path, ckpt_dir=tiny_models.folder), Settings(), device)
    try:
        for checkpoint in ("tiny-sd15.safetensors", "tiny-sdxl"):
            request = GenerationRequest(prompt="a lamp", steps=6, width=64, height=64, seed=9, checkpoint=checkpoint,
                                        sampler="DPM++ 2M SDE")
            first, second = (services.generation.generate(request).images[0] for _ in range(2))
            a, b = (np.asarray(Image.open(img.path)) for img in (first, second))
            # uint8 pixels are always finite: a NaN decode shows as a flat (black) image instead.
            assert a.std() > 1.0 and a.max() > 0 and np.array_equal(a, b)
    finally:
        services.close()

"""On a CUDA machine: TAESD and Full live previews drawn by a reader thread while the worker samples
in half precision, leaving the VAE as it was. Skipped without CUDA."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from PIL import Image

from modules.config import Settings
from modules.devtools.tiny_taesd import write_tiny_taesd
from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.taesd import TaesdVariant
from modules.params import GenerationRequest, PreviewMethod
from modules.paths import resolve_paths
from modules.services.container import build_services

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _blocky(image: Image.Image) -> bool:
    small = image.resize((image.width // 8, image.height // 8), Image.Resampling.NEAREST)
    return np.array_equal(np.asarray(small.resize(image.size, Image.Resampling.NEAREST)), np.asarray(image))


def _watch(job: object, seen: list[Image.Image]) -> None:
    """A page asking for the preview while the job runs."""
    while not job.future.done():  # type: ignore[attr-defined]
        image = job.context.preview()  # type: ignore[attr-defined]
        if image is not None:
            seen.append(image)


@pytest.mark.parametrize("method", [PreviewMethod.TAESD, PreviewMethod.FULL])
def test_previews_drawn_beside_the_worker_on_cuda(tiny_models, tmp_path, method: PreviewMethod) -> None:
    paths = resolve_paths(data_dir=tmp_path, ckpt_dir=tiny_models.folder)
    for variant in TaesdVariant:
        write_tiny_taesd(paths.taesd_dir, variant)
    services = build_services(paths, Settings(), choose_device(DevicePolicy()))
    try:
        for checkpoint in ("tiny-sd15.safetensors", "tiny-sdxl"):
            request = GenerationRequest(prompt="a lamp", steps=60, width=64, height=64, seed=9, checkpoint=checkpoint,
                                        sampler="Euler", preview_method=method, preview_every=1)
            job = services.generation.submit(request)
            seen: list[Image.Image] = []
            reader = threading.Thread(target=_watch, args=(job, seen))
            reader.start()
            result = job.future.result(300)
            reader.join(60)
            model = services.models.loaded_model()
            assert model is not None
            vae_dtype = model.pipeline.vae.dtype
            assert seen and all(image.size == (64, 64) for image in seen)
            # Drawn by a decoder (a step caught mid-decode by the worker may fall back to the cheap one).
            assert any(not _blocky(image) for image in seen)
            assert np.asarray(Image.open(result.images[0].path)).std() > 1.0
            assert services.generation.generate(request).images  # the next job runs, the VAE as it was
            assert model.pipeline.vae.dtype == vae_dtype
    finally:
        services.close()

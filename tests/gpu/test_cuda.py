"""On a CUDA machine: half precision by default (the VAE in bf16 where the card has it), images that
are not flat, the same image in every memory mode, an out-of-memory error that gives its memory back,
and checkpoint switches that never hold two models on the GPU at once. Skipped without CUDA."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.config import Settings
from modules.engine.devices import DevicePolicy, MemoryMode, choose_device
from modules.engine.loader import LoadedModel
from modules.engine.memory import on_device_bytes, weights_bytes
from modules.errors import OutOfMemoryError
from modules.params import GenerationRequest, GenerationResult
from modules.paths import resolve_paths
from modules.services.container import Services, build_services

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

CHECKPOINTS = ("tiny-sd15.safetensors", "tiny-sdxl")
MIN_PIXEL_STD = 1.0  # uint8 pixels are always finite: a NaN decode shows as a flat (black) image instead
SAME_IMAGE_MAX_DIFF = 1.0  # mean absolute difference in uint8 levels: fp16 rounding, nothing more
MIB = 1024**2


def _request(checkpoint: str, **fields: object) -> GenerationRequest:
    values: dict[str, object] = {"prompt": "a lamp", "steps": 6, "width": 64, "height": 64, "seed": 9,
                                 "sampler": "Euler", "checkpoint": checkpoint, **fields}
    return GenerationRequest(**values)  # type: ignore[arg-type]


def _pixels(result: GenerationResult) -> np.ndarray:
    path = result.images[0].path
    assert path is not None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.float32)


def _parameter_bytes(model: LoadedModel, device_type: str | None = None) -> int:
    """Bytes of the pipeline's parameters (on ``device_type`` only, when given). Buffers are left out:
    sequential offload keeps the small ones (position ids) on the GPU for good."""
    modules = [m for m in model.pipeline.components.values() if isinstance(m, torch.nn.Module)]
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters()
               if device_type is None or p.device.type == device_type)


@contextmanager
def _services(folder: Path, data_dir: Path, policy: DevicePolicy = DevicePolicy(),
              **settings: object) -> Iterator[Services]:
    services = build_services(resolve_paths(data_dir=data_dir, ckpt_dir=folder), Settings(**settings),  # type: ignore[arg-type]
                              choose_device(policy))
    try:
        yield services
    finally:
        services.models.unload()
        services.close()


def test_cuda_half_precision_generates_reproducible_images(tiny_models, tmp_path) -> None:
    device = choose_device(DevicePolicy())
    assert device.device.type == "cuda" and device.dtype == torch.float16
    with _services(tiny_models.folder, tmp_path) as services:
        for checkpoint in CHECKPOINTS:
            request = _request(checkpoint, sampler="DPM++ 2M SDE")
            first, second = (_pixels(services.generation.generate(request)) for _ in range(2))
            assert first.std() > MIN_PIXEL_STD and np.array_equal(first, second)


def test_the_vae_decodes_in_half_precision_by_default(tiny_models, tmp_path, monkeypatch) -> None:
    half = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert choose_device(DevicePolicy()).vae == half
    assert choose_device(DevicePolicy(no_half_vae=True)).vae == torch.float32
    with _services(tiny_models.folder, tmp_path) as services:
        for checkpoint in CHECKPOINTS:
            request = _request(checkpoint)
            services.generation.generate(request)  # loaded
            vae = services.models.loaded_model().pipeline.vae
            seen: list[torch.dtype] = []
            real_decode = vae.decode

            def decode(latents: torch.Tensor, *args: object, real=real_decode, **kwargs: object) -> object:
                seen.append(latents.dtype)
                return real(latents, *args, **kwargs)

            monkeypatch.setattr(vae, "decode", decode)
            image = _pixels(services.generation.generate(request))
            monkeypatch.setattr(vae, "decode", real_decode)
            # One decode, in half precision (no fp32 retry after NaNs), and the image is a real one.
            assert seen == [half] and vae.dtype == half
            assert image.std() > MIN_PIXEL_STD


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_every_memory_mode_gives_the_full_mode_image(tiny_models, tmp_path, checkpoint: str) -> None:
    images: dict[MemoryMode, np.ndarray] = {}
    for mode in (MemoryMode.FULL, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM):
        with _services(tiny_models.folder, tmp_path / mode.value, DevicePolicy(memory=mode)) as services:
            images[mode] = _pixels(services.generation.generate(_request(checkpoint)))
            model = services.models.loaded_model()
            on_gpu = _parameter_bytes(model, "cuda")
            # Full keeps every weight on the GPU; both offload modes leave none there between jobs.
            assert on_gpu == (_parameter_bytes(model) if mode is MemoryMode.FULL else 0), mode
    full = images[MemoryMode.FULL]
    for mode, image in images.items():
        assert image.std() > MIN_PIXEL_STD, mode
        assert float(np.abs(image - full).mean()) <= SAME_IMAGE_MAX_DIFF, mode


def test_out_of_memory_mid_sampling_is_reported_and_gives_its_memory_back(tiny_models, tmp_path,
                                                                         monkeypatch) -> None:
    request = _request("tiny-sd15.safetensors")
    with _services(tiny_models.folder, tmp_path) as services:
        services.generation.generate(request)  # loaded and warmed up
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        model = services.models.loaded_model()
        unet, device = model.pipeline.unet, model.execution_device
        real_forward = unet.forward
        calls = {"n": 0}

        def forward(*args: object, **kwargs: object) -> object:
            calls["n"] += 1
            if calls["n"] == 3:  # mid-sampling, holding memory as a real failure would
                ballast = torch.empty(256 * MIB, dtype=torch.uint8, device=device)
                raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 4.00 GiB ({ballast.numel()})")
            return real_forward(*args, **kwargs)

        monkeypatch.setattr(unet, "forward", forward)
        with pytest.raises(OutOfMemoryError, match="Out of GPU memory"):
            services.generation.generate(request)
        monkeypatch.setattr(unet, "forward", real_forward)
        torch.cuda.synchronize()
        assert calls["n"] == 3
        assert torch.cuda.memory_allocated() <= before + 8 * MIB  # the ballast and the job's tensors are gone
        assert _pixels(services.generation.generate(request)).std() > MIN_PIXEL_STD  # the next job runs


def _switch_peak(services: Services, checkpoint: str, base: int) -> int:
    """Bytes allocated at the highest point of a switch to ``checkpoint``, above ``base``."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    services.generation.switch_model(checkpoint).future.result(120)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_a_checkpoint_switch_never_holds_two_models_on_the_gpu(tiny_models, tmp_path, monkeypatch) -> None:
    # As on a card without room for two models (an H100 has plenty): the one switched away from is parked in RAM.
    monkeypatch.setattr("modules.services.models.free_device_bytes", lambda device: 0)
    first_name, second_name = "tiny-sd15.safetensors", "tiny-sd15-b.safetensors"
    with _services(tiny_models.folder, tmp_path, checkpoint_cache=1) as services:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        services.generation.switch_model(first_name).future.result(120)
        first = services.models.loaded_model()
        assert on_device_bytes(first) == weights_bytes(first) > 0
        # 1. To a checkpoint read from disk.
        peak = _switch_peak(services, second_name, base)
        second = services.models.loaded_model()
        both = weights_bytes(first) + weights_bytes(second)
        assert second is not first and peak < both
        assert on_device_bytes(first) == 0 and services.models.cached_titles()[0].startswith(first_name)
        # 2. Back, from the RAM cache.
        peak = _switch_peak(services, first_name, base)
        assert services.models.last_switch is not None and services.models.last_switch.from_cache
        assert services.models.loaded_model() is first and peak < both
        assert on_device_bytes(second) == 0 and on_device_bytes(first) == weights_bytes(first)
        assert _pixels(services.generation.generate(_request(first_name))).std() > MIN_PIXEL_STD

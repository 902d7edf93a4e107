"""Precision flags, memory modes, the checkpoint RAM cache and out-of-memory recovery, on the CPU."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.cmd_args import parse_flags
from modules.config import Settings
from modules.engine.devices import DevicePolicy, MemoryMode, choose_device
from modules.errors import ConfigError, OutOfMemoryError
from modules.params import GenerationRequest
from modules.paths import resolve_paths
from modules.precision import Precision
from modules.services.container import build_services
from modules.services.device_flags import device_policy

SMALL = GenerationRequest(prompt="a red cube", steps=3, width=64, height=64, seed=5, sampler="Euler",
                          checkpoint="tiny-sd15.safetensors", save_images=False)


def services_with(tmp_path: Path, tiny_models, policy: DevicePolicy, **settings: object):
    paths = resolve_paths(data_dir=tmp_path, ckpt_dir=tiny_models.folder)
    return build_services(paths, Settings(**settings), choose_device(policy))  # type: ignore[arg-type]


def pixels(result) -> np.ndarray:
    with Image.open(io.BytesIO(result.images[0].png)) as image:
        return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("args", [["--medvram"], ["--lowvram"], ["--medvram-sdxl"], ["--xformers"]],
                         ids=["medvram", "lowvram", "medvram-sdxl", "xformers"])
def test_gpu_only_modes_are_refused_on_the_cpu_with_a_reason(args: list[str]) -> None:
    policy = device_policy(parse_flags([*args, "--use-cpu", "all"], {}))
    with pytest.raises(ConfigError, match="CUDA") as raised:
        choose_device(policy)
    assert args[0].lstrip("-") in str(raised.value) or "xformers" in str(raised.value)


def test_memory_flags_are_exclusive_and_parsed() -> None:
    assert device_policy(parse_flags(["--medvram-sdxl"], {})).memory is MemoryMode.MEDVRAM_SDXL
    assert device_policy(parse_flags([], {})).memory is None
    with pytest.raises(SystemExit):
        parse_flags(["--medvram", "--lowvram"], {})
    assert MemoryMode.MEDVRAM_SDXL.offload_for(is_sdxl=False) is MemoryMode.FULL
    assert MemoryMode.MEDVRAM_SDXL.offload_for(is_sdxl=True) is MemoryMode.MEDVRAM


@pytest.mark.parametrize(("policy", "dtype", "vae_dtype"), [
    (DevicePolicy(use_cpu=True), torch.float32, torch.float32),
    (DevicePolicy(use_cpu=True, precision=Precision.HALF), torch.float32, torch.float32),  # CPU: fp32
    (DevicePolicy(use_cpu=True, no_half=True, upcast_sampling=True), torch.float32, torch.float32),
    (DevicePolicy(use_cpu=True, precision=Precision.BF16), torch.bfloat16, torch.bfloat16),
    (DevicePolicy(use_cpu=True, precision=Precision.BF16, no_half_vae=True), torch.bfloat16, torch.float32),
], ids=["default", "half-on-cpu", "no-half-upcast", "bf16", "bf16-no-half-vae"])
def test_each_precision_makes_an_image(tmp_path: Path, tiny_models, policy: DevicePolicy, dtype: torch.dtype,
                                       vae_dtype: torch.dtype) -> None:
    services = services_with(tmp_path, tiny_models, policy)
    try:
        result = services.generation.generate(SMALL)
        model = services.models.loaded_model()
        assert model.pipeline.unet.dtype == dtype and model.pipeline.vae.dtype == vae_dtype
        image = pixels(result)
        assert image.shape == (64, 64, 3) and image.std() > 0  # a real picture, not a flat NaN-black one
    finally:
        services.close()


def test_out_of_memory_is_reported_memory_released_and_the_next_job_runs(services, monkeypatch) -> None:
    services.generation.generate(SMALL)  # loaded
    unet = services.models.loaded_model().pipeline.unet
    calls = {"n": 0}
    real_forward = unet.forward

    def failing_forward(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # in the middle of sampling
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(unet, "forward", failing_forward)
    released = []
    monkeypatch.setattr(services.models, "release", lambda: released.append(True))
    with pytest.raises(OutOfMemoryError, match="--medvram") as raised:
        services.generation.generate(SMALL)
    assert "64x64" in str(raised.value) and released == [True]
    monkeypatch.setattr(unet, "forward", real_forward)
    assert len(services.generation.generate(SMALL).images) == 1  # the queue and model still work


def test_switching_back_uses_the_ram_cache(tmp_path: Path, tiny_models) -> None:
    services = services_with(tmp_path, tiny_models, DevicePolicy(use_cpu=True), checkpoint_cache=1)
    try:
        first = pixels(services.generation.generate(SMALL))
        services.generation.switch_model("tiny-sd15-b.safetensors").future.result()
        assert services.models.last_switch.from_cache is False
        assert services.models.cached_titles()[0].startswith("tiny-sd15.safetensors")
        services.generation.switch_model("tiny-sd15.safetensors").future.result()
        report = services.models.last_switch
        assert report.from_cache is True and report.seconds < 1.0
        # The cached model gives the same pixels as before it was parked.
        assert np.array_equal(first, pixels(services.generation.generate(SMALL)))
    finally:
        services.close()


def test_no_cache_loads_again(tmp_path: Path, tiny_models) -> None:
    services = services_with(tmp_path, tiny_models, DevicePolicy(use_cpu=True), checkpoint_cache=0)
    try:
        services.generation.switch_model("tiny-sd15.safetensors").future.result()
        services.generation.switch_model("tiny-sd15-b.safetensors").future.result()
        services.generation.switch_model("tiny-sd15.safetensors").future.result()
        assert services.models.last_switch.from_cache is False and services.models.cached_titles() == []
    finally:
        services.close()


def test_fast_path_setting_still_makes_the_same_picture(tmp_path: Path, tiny_models) -> None:
    plain = services_with(tmp_path / "a", tiny_models, DevicePolicy(use_cpu=True))
    fast = services_with(tmp_path / "b", tiny_models, DevicePolicy(use_cpu=True), fast_path=True)
    try:
        a, b = pixels(plain.generation.generate(SMALL)), pixels(fast.generation.generate(SMALL))
        unet = fast.models.loaded_model().pipeline.unet
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2  # layout only: the same image
    finally:
        plain.close()
        fast.close()


def test_large_decodes_are_tiled(services) -> None:
    from modules.engine.latents import _use_tiling

    services.generation.generate(SMALL)
    model = services.models.loaded_model()
    _use_tiling(model, torch.zeros(1, 4, 256, 256))  # 2048 px
    assert model.pipeline.vae.use_tiling
    _use_tiling(model, torch.zeros(1, 4, 8, 8))
    assert not model.pipeline.vae.use_tiling
    assert replace(SMALL).output_size == (64, 64)

"""Offload modes through accelerate's real hooks, with the CPU standing in for the GPU.

``--medvram`` (model-level offload) and ``--lowvram`` (sequential offload: parameters on ``meta``
between layers) run here with a CPU execution device, so every tensor the engine makes must go to
the pipeline's execution device rather than to ``module.device``: a wrong device shows up as
``meta`` errors. Each mode must make the same image as the full mode, external VAEs join the offload
scheme, and a checkpoint switch moves the old model off the device before the new one goes on.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.config import Settings
from modules.devtools.tiny_vae import VaeFormat, write_tiny_vae
from modules.engine.devices import DeviceInfo, MemoryMode
from modules.errors import ModelLoadError
from modules.params import GenerationRequest
from modules.paths import resolve_paths
from modules.services.container import build_services

TXT2IMG = GenerationRequest(prompt="a red cube", negative_prompt="blur", steps=3, width=64, height=64, seed=5,
                            sampler="Euler a", save_images=False)


def cpu_info(memory: MemoryMode = MemoryMode.FULL, dtype: torch.dtype = torch.float32,
             vae_dtype: torch.dtype | None = None) -> DeviceInfo:
    return DeviceInfo(device=torch.device("cpu"), dtype=dtype, reason="test", vae_dtype=vae_dtype, memory=memory)


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def vae_dir(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vae")
    write_tiny_vae(tiny_models.sd15_file, folder / "other.safetensors", fmt=VaeFormat.LDM_SAFETENSORS, seed=7)
    return folder


@pytest.fixture(scope="module")
def modes(tiny_models, vae_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One Services per memory mode, all on the CPU."""
    made = {}
    for mode in (MemoryMode.FULL, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM):
        paths = resolve_paths(data_dir=tmp_path_factory.mktemp(mode.value), ckpt_dir=tiny_models.folder,
                              vae_dir=vae_dir)
        made[mode] = build_services(paths, Settings(), cpu_info(mode))
    yield made
    for services in made.values():
        services.close()


def image_of(services, request: GenerationRequest) -> np.ndarray:
    return pixels(services.generation.generate(request).images[0].png)


@pytest.mark.parametrize("checkpoint", ["tiny-sd15.safetensors", "tiny-sdxl.safetensors"])
@pytest.mark.parametrize("mode", [MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_offload_modes_make_the_full_modes_image(modes, mode: MemoryMode, checkpoint: str) -> None:
    request = replace(TXT2IMG, checkpoint=checkpoint)
    full = image_of(modes[MemoryMode.FULL], request)
    offloaded = image_of(modes[mode], request)
    assert full.std() > 0 and np.abs(full - offloaded).max() <= 1
    model = modes[mode].models.loaded_model()
    assert hasattr(model.pipeline.unet, "_hf_hook")  # the offload hooks really ran the job
    if mode is MemoryMode.LOWVRAM:
        assert model.pipeline.vae.device.type == "meta"  # what vae.device says there: not a place to send inputs


@pytest.mark.parametrize("mode", [MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_img2img_encodes_on_the_execution_device_under_offload(modes, mode: MemoryMode) -> None:
    init = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    init.save(buffer, format="PNG")
    request = replace(TXT2IMG, checkpoint="tiny-sd15.safetensors", init_image=buffer.getvalue(),
                      denoising_strength=0.6)
    assert np.abs(image_of(modes[MemoryMode.FULL], request) - image_of(modes[mode], request)).max() <= 1


@pytest.mark.parametrize("mode", [MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_an_external_vae_joins_the_offload_scheme(modes, mode: MemoryMode) -> None:
    request = replace(TXT2IMG, checkpoint="tiny-sd15.safetensors", vae="other.safetensors")
    own = image_of(modes[MemoryMode.FULL], replace(request, vae="None"))
    full = image_of(modes[MemoryMode.FULL], request)
    offloaded = image_of(modes[mode], request)
    assert np.abs(full - own).max() > 5  # the other VAE really decodes differently
    assert np.abs(full - offloaded).max() <= 1
    assert hasattr(modes[mode].models.loaded_model().pipeline.vae, "_hf_hook")


def test_no_half_vae_holds_for_an_external_vae(tiny_models, vae_dir: Path, tmp_path: Path) -> None:
    paths = resolve_paths(data_dir=tmp_path, ckpt_dir=tiny_models.folder, vae_dir=vae_dir)
    services = build_services(paths, Settings(), cpu_info(dtype=torch.bfloat16, vae_dtype=torch.float32))
    try:
        image = image_of(services, replace(TXT2IMG, checkpoint="tiny-sd15.safetensors", vae="other.safetensors"))
        pipe = services.models.loaded_model().pipeline
        assert image.std() > 0 and pipe.vae.dtype == torch.float32 and pipe.unet.dtype == torch.bfloat16
    finally:
        services.close()


def test_a_switch_parks_the_old_model_before_placing_the_new(modes, monkeypatch) -> None:
    from modules.services import models as models_module

    services = modes[MemoryMode.FULL]
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    order: list[str] = []
    real_park, real_place = models_module.park, models_module.place
    monkeypatch.setattr(models_module, "park", lambda model: (order.append(f"park {model.path.name}"),
                                                              real_park(model))[1])
    monkeypatch.setattr(models_module, "place", lambda pipe, arch, device: (order.append("place"),
                                                                            real_place(pipe, arch, device))[1])
    services.generation.switch_model("tiny-sd15-b.safetensors").future.result()
    assert order == ["park tiny-sd15.safetensors", "place"]


def test_a_model_that_cannot_be_placed_leaves_the_previous_one_serving(modes, monkeypatch) -> None:
    from modules.services import models as models_module

    services = modes[MemoryMode.FULL]
    services.generation.switch_model("tiny-sd15.safetensors").future.result()
    before = image_of(services, replace(TXT2IMG, checkpoint=None))

    def out_of_memory(pipe, arch, device) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")

    monkeypatch.setattr(models_module, "place", out_of_memory)
    with pytest.raises(ModelLoadError, match="could not be placed"):
        services.generation.switch_model("tiny-sdxl.safetensors").future.result()
    monkeypatch.undo()
    assert services.models.current().name == "tiny-sd15.safetensors"
    assert np.array_equal(image_of(services, replace(TXT2IMG, checkpoint=None)), before)


def _choice(mode: MemoryMode, budget: int | None = 8 * 1024**3):
    from modules.engine.vram_choice import ModeChoice

    return lambda model, request, forced: ModeChoice(mode, None, f"{mode.value} chosen (test)", budget)  # type: ignore[arg-type]


def test_a_job_runs_in_the_mode_its_memory_plan_picks(tiny_models, tmp_path: Path, monkeypatch) -> None:
    """On CUDA the plan picks the mode per job (simulated here: the choice is given); the model is
    placed again in that mode, makes the same image, and stays there for the next job."""
    from modules.services import renderer as renderer_module

    services = build_services(resolve_paths(data_dir=tmp_path, ckpt_dir=tiny_models.folder), Settings(), cpu_info())
    try:
        request = replace(TXT2IMG, checkpoint="tiny-sd15.safetensors")
        full = image_of(services, request)
        assert not hasattr(services.models.loaded_model().pipeline.unet, "_hf_hook")
        monkeypatch.setattr(renderer_module, "budget_bytes", lambda model: 8 * 1024**3)  # as on a GPU
        monkeypatch.setattr(renderer_module, "choose_for_request", _choice(MemoryMode.MEDVRAM))
        offloaded = image_of(services, request)
        model = services.models.loaded_model()
        assert model.device.memory is MemoryMode.MEDVRAM and hasattr(model.pipeline.unet, "_hf_hook")
        assert np.abs(full - offloaded).max() <= 1
        monkeypatch.setattr(renderer_module, "choose_for_request", _choice(MemoryMode.FULL))
        assert np.abs(image_of(services, request) - full).max() <= 1
        assert not hasattr(services.models.loaded_model().pipeline.unet, "_hf_hook")
    finally:
        services.close()


def test_a_job_that_cannot_fit_is_refused_before_work_and_the_server_keeps_serving(modes, monkeypatch) -> None:
    from modules.errors import NotEnoughMemoryError
    from modules.services import renderer as renderer_module

    services = modes[MemoryMode.FULL]
    image_of(services, replace(TXT2IMG, checkpoint="tiny-sd15.safetensors"))
    made_room = []
    monkeypatch.setattr(services.models, "make_room", lambda: made_room.append(True))
    monkeypatch.setattr(renderer_module, "budget_bytes", lambda model: 6 * 1024**3)  # as on a GPU

    def refuse(model, request, forced):
        raise NotEnoughMemoryError("This job needs about 9.00 GiB at its peak, and 6.00 GiB is available. "
                                   "Try a batch size of 2 or less.", 9 * 1024**3, 6 * 1024**3)

    monkeypatch.setattr(renderer_module, "choose_for_request", refuse)
    with pytest.raises(NotEnoughMemoryError, match="batch size"):
        services.generation.generate(replace(TXT2IMG, checkpoint="tiny-sd15.safetensors", batch_size=4))
    assert made_room == [True]  # cached models were asked to leave the GPU before refusing
    monkeypatch.undo()
    assert image_of(services, replace(TXT2IMG, checkpoint="tiny-sd15.safetensors")).std() > 0

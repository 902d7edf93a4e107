"""Atelier's loader: single files and diffusers folders, offline, identical weights, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.loader import load_model
from modules.engine.model_detect import ModelArch
from modules.errors import ModelLoadError

CPU = choose_device(DevicePolicy(use_cpu=True))


def assert_same_weights(a, b) -> None:
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        left, right = getattr(a.pipeline, name, None), getattr(b.pipeline, name, None)
        if left is None:
            assert right is None
            continue
        sa, sb = left.state_dict(), right.state_dict()
        assert {t.dtype for t in sa.values() if t.is_floating_point()} == {CPU.dtype}, name
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"


@pytest.mark.parametrize("arch, single, folder", [
    (ModelArch.SD1, "sd15_file", "sd15_dir"), (ModelArch.SDXL, "sdxl_file", "sdxl_dir")])
def test_single_file_loads_bit_identical_to_the_folder(tiny_models, tmp_path: Path, arch, single, folder) -> None:
    from_file = load_model(getattr(tiny_models, single), CPU, tmp_path / "configs")
    from_dir = load_model(getattr(tiny_models, folder), CPU, tmp_path / "configs")
    assert from_file.arch is arch and from_dir.arch is arch
    assert_same_weights(from_file, from_dir)
    # The config written for the tiny file matches its shapes, not the real-size defaults.
    assert from_file.pipeline.unet.config.block_out_channels == from_dir.pipeline.unet.config.block_out_channels


def test_weights_only_ckpt_loads_like_the_safetensors(tiny_models, tmp_path: Path) -> None:
    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(tiny_models.sd15_file)), "global_step": 1}, ckpt)
    assert_same_weights(load_model(ckpt, CPU, tmp_path / "c"), load_model(tiny_models.sd15_file, CPU, tmp_path / "c"))


@pytest.mark.parametrize("make, reason", [
    (lambda p, src: p.write_bytes(b""), "empty"),
    (lambda p, src: p.write_bytes(src.read_bytes()[:1000]), "truncated|impossible"),
    (lambda p, src: p.write_bytes(b"version https://git-lfs.github.com/spec/v1\n"), "git-LFS"),
])
def test_broken_files_are_refused_naming_the_file(tiny_models, tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "model.safetensors"
    make(path, tiny_models.sd15_file)
    with pytest.raises(ModelLoadError, match=reason) as err:
        load_model(path, CPU, tmp_path / "c")
    assert "model.safetensors" in str(err.value)


def test_a_foreign_safetensors_is_refused(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.alpha": torch.ones(1)}, str(path))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        load_model(path, CPU, tmp_path / "c")


def test_missing_tensors_are_refused(tiny_models, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    weights = load_file(str(tiny_models.sd15_file))
    dropped = next(k for k in weights if k.startswith("first_stage_model.decoder.conv_out"))
    del weights[dropped]
    path = tmp_path / "incomplete.safetensors"
    save_file(weights, str(path))
    with pytest.raises(ModelLoadError, match="incomplete.safetensors"):
        load_model(path, CPU, tmp_path / "c")

"""External VAEs: every accepted file form loads, fits, swaps in and out exactly; broken ones are refused;
a VAE that produces NaN in half precision is retried in float32 and kept there."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from modules.devtools.ldm_keys import merge_state_dicts, vae_to_ldm
from modules.devtools.tiny_vae import VaeFormat, main, write_tiny_vae
from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.latents import decode_latents
from modules.engine.loader import LoadedModel, load_model
from modules.engine.model_detect import ModelArch
from modules.engine.vae import load_vae, swap_vae
from modules.errors import AddonLoadError

CPU = choose_device(DevicePolicy(use_cpu=True))


@dataclass(frozen=True)
class VaeFiles:
    own: Path  # seed 0, as the tiny SD1.5 checkpoint's own VAE
    ldm: Path  # seed 1 from here on: one other VAE in each format
    pt: Path
    diffusers: Path
    sdxl: Path  # seed 1, shaped after the tiny SDXL checkpoint


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("configs")


@pytest.fixture(scope="module")
def sd15(tiny_models, cache: Path) -> LoadedModel:
    return load_model(tiny_models.sd15_file, CPU, cache)


@pytest.fixture(scope="module")
def vae_files(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> VaeFiles:
    folder = tmp_path_factory.mktemp("VAE")
    ckpt = tiny_models.sd15_file
    return VaeFiles(
        own=write_tiny_vae(ckpt, folder / "own.safetensors", seed=0),
        ldm=write_tiny_vae(ckpt, folder / "other.safetensors", seed=1),
        pt=write_tiny_vae(ckpt, folder / "other.pt", seed=1, fmt=VaeFormat.PT),
        diffusers=write_tiny_vae(tiny_models.sd15_dir, folder / "other-diffusers", seed=1, fmt=VaeFormat.DIFFUSERS),
        sdxl=write_tiny_vae(tiny_models.sdxl_file, folder / "other-xl.safetensors", seed=1),
    )


@pytest.fixture(scope="module")
def latents() -> torch.Tensor:
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7))


def pixels(model: LoadedModel, latents: torch.Tensor) -> np.ndarray:
    return np.stack([np.asarray(image) for image in decode_latents(model, latents)])


@torch.inference_mode()
def raw_decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


def same_weights(a: AutoencoderKL, b: AutoencoderKL) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_format_loads_the_same_vae_for_sd15(sd15: LoadedModel, vae_files: VaeFiles, cache: Path) -> None:
    loaded = [load_vae(p, ModelArch.SD1, CPU, cache) for p in (vae_files.ldm, vae_files.pt, vae_files.diffusers)]
    for vae in loaded:
        assert vae.dtype == CPU.dtype and vae.device.type == "cpu"
        assert vae.config.scaling_factor == pytest.approx(0.18215)
        assert vae.config.block_out_channels == sd15.pipeline.vae.config.block_out_channels
        assert same_weights(vae, loaded[0])
    assert not same_weights(loaded[0], sd15.pipeline.vae)


def test_sdxl_single_file_takes_the_sdxl_latent_scale(vae_files: VaeFiles, cache: Path, latents) -> None:
    vae = load_vae(vae_files.sdxl, ModelArch.SDXL, CPU, cache)
    assert vae.config.scaling_factor == pytest.approx(0.13025) and vae.config.force_upcast
    assert raw_decode(vae, latents[:1]).shape == (1, 3, 64, 64)


def test_the_checkpoints_own_vae_decodes_identically(sd15: LoadedModel, vae_files: VaeFiles, cache, latents) -> None:
    reference_raw, reference = raw_decode(sd15.pipeline.vae, latents), pixels(sd15, latents)
    own = load_vae(vae_files.own, ModelArch.SD1, CPU, cache)
    original = swap_vae(sd15.pipeline, own)
    try:
        assert sd15.pipeline.vae is own and sd15.pipeline.config.vae == ("diffusers", "AutoencoderKL")
        assert torch.equal(raw_decode(own, latents), reference_raw)
        assert np.array_equal(pixels(sd15, latents), reference)
    finally:
        assert swap_vae(sd15.pipeline, original) is own


def test_another_vae_changes_the_images_and_swapping_back_restores_them(sd15: LoadedModel, vae_files: VaeFiles,
                                                                        cache: Path, latents) -> None:
    reference = pixels(sd15, latents)
    original = swap_vae(sd15.pipeline, load_vae(vae_files.ldm, ModelArch.SD1, CPU, cache))
    try:
        assert not np.array_equal(pixels(sd15, latents), reference)
    finally:
        swap_vae(sd15.pipeline, original)
    assert sd15.pipeline.vae is original
    assert np.array_equal(pixels(sd15, latents), reference)


def test_prefixed_and_diffusers_named_single_files(tiny_models, sd15: LoadedModel, vae_files: VaeFiles,
                                                   tmp_path: Path, cache: Path) -> None:
    # A whole checkpoint holds its VAE under first_stage_model.; a .ckpt wraps it in state_dict.
    whole = tmp_path / "whole.ckpt"
    torch.save({"state_dict": load_file(str(tiny_models.sd15_file))}, whole)
    assert same_weights(load_vae(whole, ModelArch.SD1, CPU, cache), sd15.pipeline.vae)
    other = load_vae(vae_files.ldm, ModelArch.SD1, CPU, cache)
    named = tmp_path / "diffusers-named.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(named))
    assert same_weights(load_vae(named, ModelArch.SD1, CPU, cache), other)
    # diffusers before 0.14 named the mid-block attention query/key/value/proj_attn.
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    legacy = {}
    for key, tensor in other.state_dict().items():
        for new, old in old_names.items():
            key = key.replace(f"attentions.0.{new}.", f"attentions.0.{old}.")
        legacy[key] = tensor.contiguous()
    assert any(".query." in k for k in legacy)
    save_file(legacy, str(named))
    assert same_weights(load_vae(named, ModelArch.SD1, CPU, cache), other)
    save_file({**legacy, "encoder.extra.weight": torch.zeros(1)}, str(named))
    with pytest.raises(AddonLoadError, match="encoder.extra.weight has no place"):
        load_vae(named, ModelArch.SD1, CPU, cache)


def _write_latent16(path: Path) -> None:
    foreign = AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, layers_per_block=1)
    state = merge_state_dicts(vae_to_ldm(foreign.state_dict(), foreign.config))
    save_file({k.removeprefix("first_stage_model."): v for k, v in state.items()}, str(path))


def _without(key: str):
    def make(path: Path, src: Path) -> None:
        state = load_file(str(src))
        del state[key]
        save_file(state, str(path))
    return make


@pytest.mark.parametrize("name, make, reason", [
    ("empty.safetensors", lambda p, src: p.write_bytes(b""), "empty"),
    ("cut.safetensors", lambda p, src: p.write_bytes(src.read_bytes()[:5000]), "truncated|impossible"),
    ("junk.safetensors", lambda p, src: p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!"), "JSON"),
    ("lfs.safetensors", lambda p, src: p.write_bytes(b"version https://git-lfs.github.com/spec/v1\n"), "git-LFS"),
    ("junk.pt", lambda p, src: p.write_bytes(b"PK not really a zip"), "not a PyTorch checkpoint"),
    ("lora.safetensors", lambda p, src: save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(p)),
     "no VAE"),
    ("partial.safetensors", _without("decoder.conv_out.weight"), "no weights for decoder.conv_out.weight"),
    ("flux.safetensors", lambda p, src: _write_latent16(p), "16 latent channels"),
    ("unsafe.pt", lambda p, src: torch.save({"state_dict": {}, "args": argparse.Namespace()}, p), "refused"),
    ("vae.onnx", lambda p, src: p.write_bytes(b"onnx"), "unsupported file type"),
])
def test_broken_or_foreign_files_are_refused_naming_the_file(vae_files: VaeFiles, tmp_path: Path, cache: Path,
                                                              name: str, make, reason: str) -> None:
    path = tmp_path / name
    make(path, vae_files.ldm)
    with pytest.raises(AddonLoadError, match=reason) as err:
        load_vae(path, ModelArch.SD1, CPU, cache)
    assert err.value.kind == "VAE" and name in str(err.value)


def rounded_reference(model: LoadedModel, path: Path, cache: Path, half: torch.dtype, latents) -> np.ndarray:
    """What a VAE whose weights were stored in ``half`` decodes to in float32."""
    original = swap_vae(model.pipeline, load_vae(path, ModelArch.SD1, CPU, cache).to(half).to(torch.float32))
    try:
        return pixels(model, latents)
    finally:
        swap_vae(model.pipeline, original)


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_nan_in_half_precision_is_retried_in_float32_and_stays_there(
        sd15: LoadedModel, vae_files: VaeFiles, cache: Path, latents, half: torch.dtype,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    reference = rounded_reference(sd15, vae_files.own, cache, half, latents)
    vae = load_vae(vae_files.own, ModelArch.SD1, CPU, cache).to(half)
    real_decode = vae.decode

    def overflowing_decode(z: torch.Tensor, *args, **kwargs):
        if vae.dtype != torch.float32:  # what an fp16-unsafe VAE does on a GPU
            return (torch.full((z.shape[0], 3, z.shape[2] * 8, z.shape[3] * 8), float("nan"), dtype=vae.dtype),)
        return real_decode(z, *args, **kwargs)

    monkeypatch.setattr(vae, "decode", overflowing_decode)
    original = swap_vae(sd15.pipeline, vae)
    try:
        with caplog.at_level(logging.WARNING, logger="modules.engine.latents"):
            assert np.array_equal(pixels(sd15, latents), reference)
            assert vae.dtype == torch.float32
            assert np.array_equal(pixels(sd15, latents), reference)
    finally:
        swap_vae(sd15.pipeline, original)
    warnings = [r for r in caplog.records if "NaN" in r.getMessage()]
    assert len(warnings) == 1 and "32-bit" in warnings[0].getMessage()


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_a_half_precision_vae_decodes_in_half_precision_despite_force_upcast(
        sd15: LoadedModel, vae_files: VaeFiles, cache: Path, latents, half: torch.dtype,
        caplog: pytest.LogCaptureFixture) -> None:
    """An SD1.5 VAE config has no force_upcast, and diffusers reads that as True: obeying it made every
    decode fp32 (slower, twice the memory). The VAE runs in its own precision; only a NaN upcasts it."""
    vae = load_vae(vae_files.own, ModelArch.SD1, CPU, cache).to(half)
    assert vae.config.force_upcast
    seen: list[torch.dtype] = []
    vae.decoder.register_forward_pre_hook(lambda _module, args: seen.append(args[0].dtype))
    reference = rounded_reference(sd15, vae_files.own, cache, half, latents)
    original = swap_vae(sd15.pipeline, vae)
    try:
        with caplog.at_level(logging.WARNING, logger="modules.engine.latents"):
            decoded = pixels(sd15, latents)
    finally:
        swap_vae(sd15.pipeline, original)
    assert seen == [half] and vae.dtype == half and not [r for r in caplog.records if "NaN" in r.getMessage()]
    assert decoded.std() > 0 and np.abs(decoded.astype(int) - reference.astype(int)).max() <= 8  # half's rounding


def test_cli_writes_a_loadable_vae(tiny_models, tmp_path: Path, cache: Path, capsys) -> None:
    out = tmp_path / "cli.pt"
    main(["--checkpoint", str(tiny_models.sd15_file), "--out", str(out), "--format", "pt", "--seed", "3"])
    assert capsys.readouterr().out.strip() == str(out)
    assert load_vae(out, ModelArch.SD1, CPU, cache).config.latent_channels == 4
    with pytest.raises(ValueError, match="safetensors"):
        write_tiny_vae(tiny_models.sd15_file, tmp_path / "wrong.pt", fmt=VaeFormat.LDM_SAFETENSORS)

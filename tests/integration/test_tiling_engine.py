"""Seamless tiling on the tiny SD1 model: with circular padding the UNet and the VAE treat the
latent as a torus, so moving the starting latent sideways moves the picture by as many pixels
(8 per latent column) and nothing else; with the usual zero padding the edges change the picture.
The padding modes come back after the block, also when it fails, and LoRA layers are covered."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modules.devtools.tiny_lora import write_tiny_lora
from modules.engine import latents as lat
from modules.engine.devices import DeviceInfo
from modules.engine.loader import LoadedModel, load_model
from modules.engine.lora import LoraUse, apply_loras
from modules.engine.tiling import circular_padding, seamless_tiling, tiled_parts

CPU = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")
SHIFT = 2  # latent columns; a multiple of the tiny UNet's downsampling (2), so the roll commutes with it
TIMESTEPS = (900, 500, 100)  # a few denoising steps, as a sampler takes them


@pytest.fixture(scope="module")
def model(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return load_model(tiny_models.sd15_file, CPU, tmp_path_factory.mktemp("configs"))


def modes(loaded: LoadedModel) -> list[str]:
    return [m.padding_mode for part in tiled_parts(loaded) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]


def denoise_and_decode(loaded: LoadedModel, latent: torch.Tensor) -> np.ndarray:
    """A few denoising steps of the UNet from ``latent``, then the VAE: the image, as integers."""
    pipe = loaded.pipeline
    context = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(7))
    scheduler_alphas = pipe.scheduler.alphas_cumprod
    x = latent
    with torch.inference_mode():
        for t in TIMESTEPS:
            eps = pipe.unet(x, t, encoder_hidden_states=context).sample
            alpha = scheduler_alphas[t]
            x = (x - (1 - alpha).sqrt() * eps) / alpha.sqrt() * 0.5 + x * 0.5  # a partial step toward x0
        image = lat.decode_latents(loaded, x)[0]
    return np.asarray(image.convert("RGB")).astype(np.int16)


def roll_error(loaded: LoadedModel) -> float:
    """How far the image of a latent rolled by SHIFT columns is from the first image rolled 8*SHIFT pixels."""
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    plain = denoise_and_decode(loaded, latent)
    rolled = denoise_and_decode(loaded, torch.roll(latent, SHIFT, dims=3))
    return float(np.abs(np.roll(plain, SHIFT * lat.LATENT_SCALE, axis=1) - rolled).max())


def test_with_tiling_a_rolled_latent_gives_the_same_image_rolled_and_without_it_does_not(model) -> None:
    with seamless_tiling(True, model) as count:
        assert count > 0
        tiled = roll_error(model)
    assert tiled <= 1  # the same pixels, up to float rounding to 8 bits
    assert roll_error(model) > 20  # zero padding: the edges show
    with seamless_tiling(False, model) as count:
        assert count == 0 and roll_error(model) > 20


def test_padding_modes_come_back_after_the_block_and_after_an_error(model) -> None:
    before = modes(model)
    assert set(before) == {"zeros"}
    with seamless_tiling(True, model):
        assert set(modes(model)) == {"circular"}
    assert modes(model) == before
    with pytest.raises(RuntimeError, match="sampling failed"), seamless_tiling(True, model):
        raise RuntimeError("sampling failed")
    assert modes(model) == before


def test_each_layer_gets_its_own_mode_back() -> None:
    layers = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect"),
                                 torch.nn.Conv2d(1, 1, 3, padding=1))
    shared = torch.nn.Sequential(layers[1])  # one layer under two parts: set and restored once
    with circular_padding([layers, shared]) as count:
        assert count == 2 and [m.padding_mode for m in layers] == ["circular", "circular"]
    assert [m.padding_mode for m in layers] == ["reflect", "zeros"]


def test_lora_wrapped_convolutions_tile_too(tiny_models, tmp_path: Path) -> None:
    loaded = load_model(tiny_models.sd15_file, CPU, tmp_path / "configs")
    locon = write_tiny_lora(tiny_models.sd15_file, tmp_path / "locon.safetensors", seed=3, scale=4.0, conv=True)
    apply_loras(loaded.pipeline, [LoraUse(name="locon", path=locon, unet_weight=1.0, te_weight=1.0)])
    wrapped = [m for m in loaded.pipeline.unet.modules() if hasattr(m, "base_layer")
               and isinstance(m.base_layer, torch.nn.Conv2d)]
    assert wrapped  # peft wraps the resnets' 3x3 convolutions
    with seamless_tiling(True, loaded):
        assert all(m.base_layer.padding_mode == "circular" for m in wrapped)
        assert roll_error(loaded) <= 1
    assert all(m.base_layer.padding_mode == "zeros" for m in wrapped)

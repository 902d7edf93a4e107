"""Upscaler models through spandrel: loading each file format, refusing bad files, tiling, hires fix."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.devtools.tiny_upscaler import UpscalerLayout, write_tiny_upscaler
from modules.engine.upscale_models import (
    _to_tensor,
    load_upscale_model,
    upscale_tensor,
    upscale_to,
)
from modules.engine.upscale_tiles import TileSettings
from modules.errors import AddonLoadError, ValidationError
from modules.infotext import parse_infotext
from modules.params import GenerationRequest, HiresFix
from modules.services.upscaler_library import UpscalerLibrary


def _noise_image(size: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (size, size, 3), dtype=np.uint8))


@pytest.mark.parametrize(("filename", "scale", "layout"), [
    ("esrgan-4x.pth", 4, UpscalerLayout.PLAIN),
    ("esrgan-2x.safetensors", 2, UpscalerLayout.PLAIN),
    ("realesrgan-4x.pth", 4, UpscalerLayout.PARAMS_EMA),
    ("esrgan-2x.pt", 2, UpscalerLayout.PLAIN),
])
def test_each_format_loads_and_upscales_to_the_size_asked(tmp_path: Path, filename: str, scale: int,
                                                          layout: UpscalerLayout) -> None:
    model = load_upscale_model(write_tiny_upscaler(tmp_path / filename, scale, seed=1, layout=layout))
    assert (model.scale, model.architecture) == (scale, "ESRGAN")
    image = _noise_image()
    native = upscale_to(model, image, (64 * scale, 64 * scale))
    assert native.size == (64 * scale, 64 * scale)
    odd = upscale_to(model, image, (300, 200))  # 2x needs three passes to cover 300 (then Lanczos down)
    assert odd.size == (300, 200)
    # Not a plain resize: the random model's output differs from Lanczos.
    lanczos = np.asarray(image.resize(native.size, Image.Resampling.LANCZOS), dtype=np.int16)
    assert np.abs(np.asarray(native, dtype=np.int16) - lanczos).mean() > 5


def test_tiled_matches_untiled_away_from_the_seams(tmp_path: Path) -> None:
    model = load_upscale_model(write_tiny_upscaler(tmp_path / "t.pth", 4, seed=2))
    pixels = _to_tensor(_noise_image(seed=3))
    whole = upscale_tensor(model, pixels, TileSettings(tile=0, overlap=0))
    tiled = upscale_tensor(model, pixels, TileSettings(tile=48, overlap=16))  # tiles at 0 and 16 on each side
    assert tiled.shape == whole.shape == (1, 3, 256, 256)
    diff = (tiled - whole).abs()
    # Input columns 0-15 and 48-63 are each in one tile, 32+ px from that tile's inner edge.
    away = torch.cat([torch.arange(0, 64), torch.arange(192, 256)])
    assert diff[..., away[:, None], away[None, :]].max() < 1e-3
    assert diff.mean() < 1e-3  # the blended seams stay close too
    # The default tile (192 px) covers a 64 px image: one pass, identical.
    assert torch.equal(upscale_tensor(model, pixels), whole)


class _RunsCode:
    def __reduce__(self) -> tuple[object, ...]:
        return (print, ("this ran",))


@pytest.mark.parametrize("kind", ["corrupt", "code", "lora", "truncated-safetensors"])
def test_bad_files_are_refused_naming_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("bad.safetensors" if kind == "truncated-safetensors" else "bad.pth")
    if kind == "corrupt":
        path.write_bytes(b"not a model at all" * 10)
    elif kind == "code":
        torch.save({"weight": torch.zeros(2), "x": _RunsCode()}, path)
    elif kind == "lora":
        torch.save({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4)}, path)
    else:
        good = write_tiny_upscaler(tmp_path / "good.safetensors", 2)
        path.write_bytes(good.read_bytes()[:200])
    with pytest.raises(AddonLoadError) as caught:
        load_upscale_model(path)
    assert str(path) in str(caught.value) and "upscaler" in str(caught.value)


def test_library_names_files_by_stem_and_caches_one_model(tmp_path: Path) -> None:
    esrgan, real = tmp_path / "ESRGAN", tmp_path / "RealESRGAN"
    write_tiny_upscaler(esrgan / "My-4x.pth", 4)
    write_tiny_upscaler(real / "Real 2x.safetensors", 2)
    (esrgan / "notes.txt").write_text("not a model")
    library = UpscalerLibrary([esrgan, real])
    assert library.names() == ["My-4x", "Real 2x"]
    assert library.find("my-4x").name == "My-4x"
    assert [library.scale_of(f) for f in library.files()] == [4, 2]
    assert library.model("My-4x") is library.model("My-4x")
    assert library.upscale(_noise_image(), "Real 2x", (100, 72)).size == (100, 72)


@pytest.fixture(scope="module")
def model_services(services):
    write_tiny_upscaler(services.paths.upscaler_dirs[0] / "tiny-esrgan-4x.pth", 4, seed=4)
    return services


def test_hires_fix_with_a_model_upscaler(model_services) -> None:
    request = GenerationRequest(prompt="a red cube", steps=2, width=64, height=64, seed=5,
                                checkpoint="tiny-sd15.safetensors",
                                hires=HiresFix(scale=2.0, upscaler="tiny-esrgan-4x", steps=1, denoising_strength=0.5))
    result = model_services.generation.generate(request, timeout=300)
    image = Image.open(io.BytesIO(result.images[0].png))
    assert image.size == (128, 128)
    params = parse_infotext(result.images[0].infotext).params
    assert params["Hires upscaler"] == "tiny-esrgan-4x"


def test_unknown_hires_upscaler_lists_the_models(model_services) -> None:
    request = GenerationRequest(prompt="x", steps=2, width=64, height=64,
                                hires=HiresFix(scale=2.0, upscaler="4x-missing"))
    with pytest.raises(ValidationError) as caught:
        model_services.generation.prepare(request)
    message = str(caught.value)
    assert "hr_upscaler" in message and "4x-missing" in message
    assert "tiny-esrgan-4x" in message and "Lanczos" in message


def test_an_extra_architecture_loads_only_when_the_setting_allows_it(tmp_path: Path) -> None:
    from spandrel_extra_arches.architectures.SRFormer import SRFormer

    torch.manual_seed(0)
    net = SRFormer(embed_dim=12, depths=(1,), num_heads=(2,), window_size=4, upscale=2, img_size=16,
                   upsampler="pixelshuffledirect")
    path = tmp_path / "ESRGAN" / "srformer-2x.pth"
    path.parent.mkdir()
    torch.save(net.state_dict(), path)
    with pytest.raises(AddonLoadError, match="SRFormer.*upscaler_extra_architectures") as refused:
        load_upscale_model(path)
    assert str(path) in str(refused.value)
    allowed = {"extra": False}
    library = UpscalerLibrary([path.parent], extra_architectures=lambda: allowed["extra"])
    with pytest.raises(AddonLoadError):
        library.model("srformer-2x")
    allowed["extra"] = True
    image = library.upscale(Image.new("RGB", (16, 16), "gray"), "srformer-2x", (32, 32))
    assert image.size == (32, 32)

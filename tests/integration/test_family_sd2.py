"""SD 2.x: eps (512 base) and v-prediction (768) checkpoints, told apart by their markers.

The tiny files share weights for a seed, so what changes between them is only what the model is
said to predict: the A1111 ``.yaml`` beside the file, the safetensors header, or nothing (v).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.devtools.tiny_model import TinyArch, write_tiny_model
from modules.devtools.tiny_sd2 import Sd2Marker, write_tiny
from modules.engine.model_detect import ModelArch, sd2_arch_from_metadata, sidecar_arch, yaml_parameterization
from modules.params import GenerationRequest, HiresFix
from tests.conftest import make_services


@dataclass(frozen=True)
class Sd2Files:
    folder: Path
    eps: Path  # header says epsilon
    v: Path  # header says v
    yaml_eps: Path  # A1111 .yaml without parameterization beside it, no header marker
    plain: Path  # no marker at all
    eps_dir: Path  # diffusers folders
    v_dir: Path


@pytest.fixture(scope="module")
def sd2_files(tmp_path_factory: pytest.TempPathFactory) -> Sd2Files:
    folder = tmp_path_factory.mktemp("sd2-checkpoints")
    return Sd2Files(
        folder=folder,
        eps=write_tiny_model(TinyArch.SD2, folder / "sd2-eps.safetensors"),
        v=write_tiny_model(TinyArch.SD2_V, folder / "sd2-v.safetensors"),
        yaml_eps=write_tiny(TinyArch.SD2, folder / "sd2-yaml.safetensors", marker=Sd2Marker.YAML),
        plain=write_tiny(TinyArch.SD2, folder / "sd2-plain.safetensors", marker=Sd2Marker.NONE),
        eps_dir=write_tiny_model(TinyArch.SD2, folder / "sd2-eps-diffusers"),
        v_dir=write_tiny_model(TinyArch.SD2_V, folder / "sd2-v-diffusers"),
    )


@pytest.fixture(scope="module")
def sd2_services(sd2_files: Sd2Files, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    services = make_services(tmp_path_factory.mktemp("sd2-data"), sd2_files.folder)
    yield services
    services.close()


def _load(path: Path, tmp_path: Path):
    from modules.engine.devices import DevicePolicy, choose_device
    from modules.engine.loader import load_model

    return load_model(path, choose_device(DevicePolicy(use_cpu=True)), tmp_path / "configs")


@pytest.mark.parametrize(("name", "arch", "label"), [
    ("eps", ModelArch.SD2, "SD 2.x"),
    ("v", ModelArch.SD2_V, "SD 2.x (v-prediction)"),
    ("plain", ModelArch.SD2_V, "SD 2.x (v-prediction)"),  # no marker: the common 768 v model
    ("eps_dir", ModelArch.SD2, "SD 2.x"),
    ("v_dir", ModelArch.SD2_V, "SD 2.x (v-prediction)"),
])
def test_each_format_and_marker_loads_as_its_kind(sd2_files: Sd2Files, tmp_path: Path, name: str,
                                                  arch: ModelArch, label: str) -> None:
    model = _load(getattr(sd2_files, name), tmp_path)
    assert (model.arch, model.arch.label) == (arch, label)
    assert model.v_prediction is (arch is ModelArch.SD2_V)
    assert model.pipeline.text_encoder.config.hidden_act == "gelu"  # OpenCLIP, not SD 1.x's CLIP-L


def test_a1111_yaml_beside_the_file_makes_it_eps(sd2_files: Sd2Files, tmp_path: Path) -> None:
    assert sd2_files.yaml_eps.with_suffix(".yaml").is_file()
    model = _load(sd2_files.yaml_eps, tmp_path)
    assert model.v_prediction is False and model.arch is ModelArch.SD2 and model.arch.label == "SD 2.x"
    assert sidecar_arch(sd2_files.yaml_eps, ModelArch.SD2_V) is ModelArch.SD2


def test_the_yaml_wins_over_the_header(tmp_path: Path) -> None:
    path = write_tiny(TinyArch.SD2_V, tmp_path / "mixed.safetensors")  # header: v
    assert _load(path, tmp_path).v_prediction is True
    path.with_suffix(".yaml").write_text("model:\n  params:\n    timesteps: 1000\n", encoding="utf-8")
    assert _load(path, tmp_path).v_prediction is False


def test_yaml_reader_finds_the_one_key(tmp_path: Path) -> None:
    config = tmp_path / "v2-inference-v.yaml"
    config.write_text("# A1111 config\nmodel:\n  base_learning_rate: 1.0e-4\n  params:\n"
                      "    parameterization: \"v\"  # v-prediction\n    linear_start: 0.00085\n"
                      "    unet_config:\n      params:\n        parameterization: eps\n", encoding="utf-8")
    assert yaml_parameterization(config) == "v"
    config.write_text("model:\n  params:\n    unet_config:\n      params:\n        parameterization: v\n")
    assert yaml_parameterization(config) == "eps"  # only model.params counts; LDM's default is eps
    config.write_text("data:\n  parameterization: v\n")
    assert yaml_parameterization(config) is None  # not an LDM model config
    assert yaml_parameterization(tmp_path / "missing.yaml") is None


def test_header_metadata_keys() -> None:
    assert sd2_arch_from_metadata({"modelspec.prediction_type": "v"}) is ModelArch.SD2_V
    assert sd2_arch_from_metadata({"modelspec.prediction_type": "epsilon"}) is ModelArch.SD2
    assert sd2_arch_from_metadata({"modelspec.architecture": "stable-diffusion-v2-512"}) is ModelArch.SD2
    assert sd2_arch_from_metadata({"modelspec.architecture": "stable-diffusion-v2-768-v"}) is ModelArch.SD2_V
    assert sd2_arch_from_metadata({"format": "pt"}) is None


BASE = GenerationRequest(prompt="a red barn in snow", negative_prompt="blurry", steps=3, width=64, height=64,
                         seed=1234, cfg_scale=5.0, sampler="DPM++ 2M", save_images=False)


def _pixels(services, request: GenerationRequest) -> np.ndarray:
    result = services.generation.generate(request)
    with Image.open(io.BytesIO(result.images[0].png)) as image:
        return np.asarray(image.convert("RGB")).astype(np.int16)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_eps_and_v_denoise_differently_from_the_same_weights(sd2_services) -> None:
    eps = _pixels(sd2_services, replace(BASE, checkpoint="sd2-eps.safetensors"))
    assert eps.shape == (64, 64, 3)
    assert np.array_equal(eps, _pixels(sd2_services, replace(BASE, checkpoint="sd2-eps.safetensors")))  # seeds hold
    yaml_eps = _pixels(sd2_services, replace(BASE, checkpoint="sd2-yaml.safetensors"))
    v = _pixels(sd2_services, replace(BASE, checkpoint="sd2-v.safetensors"))
    plain = _pixels(sd2_services, replace(BASE, checkpoint="sd2-plain.safetensors"))
    assert np.array_equal(eps, yaml_eps)  # either marker: the same eps model
    assert np.array_equal(v, plain)  # no marker: v
    assert np.abs(eps - v).mean() > 1.0  # the denoiser differs, so the image does


def test_img2img_on_both_kinds(sd2_services) -> None:
    init = Image.new("RGB", (64, 64), (200, 60, 40))
    for checkpoint in ("sd2-eps.safetensors", "sd2-v-diffusers"):
        request = replace(BASE, checkpoint=checkpoint, init_image=_png(init), denoising_strength=0.6)
        result = sd2_services.generation.generate(request)
        assert result.images and "Denoising strength: 0.6" in result.images[0].infotext
        assert f"Model: {Path(checkpoint).stem}," in result.images[0].infotext


def test_inpaint_and_hires_fix_on_both_kinds(sd2_services) -> None:
    init = Image.new("RGB", (64, 64), (200, 60, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    for checkpoint in ("sd2-eps.safetensors", "sd2-v.safetensors"):
        painted = _pixels(sd2_services, replace(BASE, checkpoint=checkpoint, init_image=_png(init), mask=_png(mask),
                                                mask_blur=0, denoising_strength=0.9))
        assert np.array_equal(painted[:8, :8], np.full((8, 8, 3), (200, 60, 40)))  # outside the mask: kept
        assert np.abs(painted[24:40, 24:40] - np.array((200, 60, 40))).mean() > 5  # inside: repainted
        hires = sd2_services.generation.generate(replace(BASE, checkpoint=checkpoint, hires=HiresFix(
            scale=1.5, steps=2, denoising_strength=0.5, upscaler="Latent")))
        with Image.open(io.BytesIO(hires.images[0].png)) as image:
            assert image.size == (96, 96)
        assert "Hires upscale: 1.5" in hires.images[0].infotext


def test_the_model_list_names_the_family_the_marker_gives(sd2_files: Sd2Files, tmp_path: Path) -> None:
    from modules.services.model_families_found import FamilyFinder

    finder = FamilyFinder(lambda _path: None)  # nothing loaded: read from the files
    assert finder.family_of(sd2_files.yaml_eps) == "sd2"  # the .yaml beside it, as the loader reads it
    gguf = write_tiny_model(TinyArch.FLUX_SCHNELL, tmp_path / "flux1-schnell-Q8_0.gguf", seed=1, gguf="Q8_0")
    assert finder.family_of(gguf) == "flux_schnell"

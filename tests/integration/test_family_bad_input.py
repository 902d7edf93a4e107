"""Hostile and mistaken files for the flow families: refused naming the file, the loaded model kept.

A truncated FLUX.1 file, an encoder made for another model sitting where FLUX.1's T5 is looked
for, and a GGUF file cut short each fail to load with a message naming the file (and for the
encoder, why it was not taken); the model that was loaded stays loaded and keeps generating.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import T5Config, T5EncoderModel

from modules.devtools import tiny_flux
from modules.devtools.tiny_model import TinyArch, write_tiny_model
from modules.engine.model_detect import ModelArch
from modules.errors import MissingComponentError, ModelLoadError
from modules.params import GenerationRequest
from tests.conftest import make_services


def _foreign_t5(path: Path) -> Path:
    """A T5 encoder of another width than the tiny FLUX.1's (as SD 3.5's or a smaller model's would be)."""
    torch.manual_seed(0)
    encoder = T5EncoderModel(T5Config(vocab_size=64, d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=3))
    save_file({k: v.clone().contiguous() for k, v in encoder.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-flux")
    parts = tiny_flux.write_tiny_parts(TinyArch.FLUX_DEV, root / "parts", seed=1)
    ckpt = root / "Stable-diffusion"
    write_tiny_model(TinyArch.SD15, ckpt / "tiny-sd15.safetensors", seed=0)
    (ckpt / "flux1-dev.safetensors").write_bytes(parts["transformer"].read_bytes())
    whole = parts["transformer"].read_bytes()
    (ckpt / "flux1-cut.safetensors").write_bytes(whole[: len(whole) // 2])
    write_tiny_model(TinyArch.FLUX_DEV, ckpt / "flux1-cut-Q8_0.gguf", seed=1, gguf="Q8_0")
    gguf = (ckpt / "flux1-cut-Q8_0.gguf").read_bytes()
    (ckpt / "flux1-cut-Q8_0.gguf").write_bytes(gguf[: len(gguf) * 2 // 3])
    encoders = root / "data" / "models" / "text_encoder"
    encoders.mkdir(parents=True)
    parts["clip_l"].rename(encoders / "clip_l.safetensors")
    _foreign_t5(encoders / "t5xxl_fp16.safetensors")  # the wrong T5, under the right name
    vaes = root / "data" / "models" / "VAE"
    vaes.mkdir(parents=True)
    parts["vae"].rename(vaes / "ae.safetensors")
    tokenizers = encoders / "tokenizers"
    tokenizers.mkdir()
    parts["tokenizer"].rename(tokenizers / parts["tokenizer"].name)
    return {"root": root, "ckpt": ckpt, "data": root / "data"}


def test_bad_files_are_refused_by_name_and_the_loaded_model_keeps_working(folders: dict[str, Path]) -> None:
    services = make_services(folders["data"], folders["ckpt"])
    try:
        services.models.load("tiny-sd15")
        with pytest.raises(MissingComponentError) as caught:  # only another model's T5 is there
            services.models.load("flux1-dev")
        assert "t5xxl_fp16.safetensors is there but made for another model" in str(caught.value)
        assert caught.value.unusable == ("t5xxl_fp16.safetensors",)
        for name in ("flux1-cut", "flux1-cut-Q8_0"):
            with pytest.raises(ModelLoadError, match=name):
                services.models.load(name)
        kept = services.models.loaded_model()
        assert kept is not None and kept.arch is ModelArch.SD1
        result = services.generation.generate(GenerationRequest(prompt="still here", steps=2, width=64, height=64,
                                                                seed=5, save_images=False))
        assert len(result.images) == 1
    finally:
        services.close()

"""VAEs and embeddings on a FLUX.1 model. A VAE chosen from models/VAE: FLUX's own `ae.safetensors`
decodes as the bundled one does; an SD VAE (4 latent channels) is refused naming the file, and the
model keeps its own. An SD embedding named in the prompt is skipped (as another family's is on SD):
the word stays text, and the infotext claims no TI hash."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.devtools import tiny_flux
from modules.devtools.tiny_embedding import write_tiny_embedding
from modules.devtools.tiny_model import TinyArch, write_tiny_model
from modules.devtools.tiny_vae import write_tiny_vae
from modules.errors import AtelierError, ValidationError
from modules.params import GenerationRequest
from tests.conftest import make_services


def _request(vae: str) -> GenerationRequest:
    return GenerationRequest(prompt="a boat", steps=2, width=64, height=64, cfg_scale=1.0, sampler="Euler",
                             seed=3, vae=vae, save_images=False)


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("flux-vae")
    ckpt = root / "Stable-diffusion"
    tiny_flux.write_tiny(TinyArch.FLUX_DEV, ckpt / "flux1-dev.safetensors", seed=2)
    sd = write_tiny_model(TinyArch.SD15, root / "sd15.safetensors", seed=0)
    vaes = root / "data" / "models" / "VAE"
    write_tiny_vae(sd, vaes / "sd-vae.safetensors")
    write_tiny_embedding(root / "data" / "embeddings" / "lighthouse.safetensors", arch=TinyArch.SD15)
    parts = tiny_flux.write_tiny_parts(TinyArch.FLUX_DEV, root / "parts", seed=2)
    Path(parts["vae"]).rename(vaes / "ae.safetensors")  # the same weights as the bundled VAE (same seed)
    made = make_services(root / "data", ckpt)
    made.models.load("flux1-dev")
    yield made
    made.close()


def _pixels(services, vae: str) -> np.ndarray:
    result = services.generation.generate(_request(vae))
    return np.asarray(Image.open(io.BytesIO(result.images[0].png)).convert("RGB")).astype(int)


def test_flux_ae_from_the_vae_folder_decodes_like_the_bundled_one(services) -> None:
    assert np.array_equal(_pixels(services, "ae.safetensors"), _pixels(services, "None"))


def test_an_sd_vae_is_refused_by_name_and_the_model_keeps_working(services) -> None:
    with pytest.raises(AtelierError, match="sd-vae.safetensors") as refused:
        services.generation.generate(_request("sd-vae.safetensors"))
    assert "4 latent channels" in str(refused.value) and "16" in str(refused.value)
    assert _pixels(services, "None").std() > 1


def test_an_sd_embedding_in_the_prompt_is_skipped_on_flux(services) -> None:
    request = _request("None")
    plain = services.generation.generate(request)
    named = services.generation.generate(GenerationRequest(**{**request.__dict__, "prompt": "a boat, lighthouse"}))
    assert "TI hashes" not in named.images[0].infotext and "lighthouse" in named.images[0].infotext
    assert named.images[0].png != plain.images[0].png  # the word is read as text


def test_the_servers_sd_settings_yield_to_flux_but_a_requests_own_values_do_not(services) -> None:
    """A server set up for SD models (clip skip 2, an SD VAE chosen) still runs FLUX jobs: those
    settings do not fit the family, so the job uses clip skip 1 and the model's own VAE, and says so.
    The same values sent by the request itself are refused, naming the field."""
    services.options.update({"clip_skip": 2, "sd_vae": "sd-vae.safetensors"})
    try:
        request = GenerationRequest(prompt="a boat", steps=2, width=64, height=64, cfg_scale=1.0, sampler="Euler",
                                    seed=3, save_images=False)
        result = services.generation.generate(request)
        text = result.images[0].infotext
        assert "Clip skip" not in text and "VAE:" not in text
        assert any("sd-vae.safetensors" in warning for warning in result.warnings)
        assert result.images[0].png == services.generation.generate(_request("None")).images[0].png
        with pytest.raises(ValidationError, match="clip_skip"):
            services.generation.generate(GenerationRequest(**{**request.__dict__, "clip_skip": 2}))
        with pytest.raises(AtelierError, match="sd-vae.safetensors"):
            services.generation.generate(_request("sd-vae.safetensors"))
    finally:
        services.options.update({"clip_skip": 1, "sd_vae": "Automatic"})


def test_controlnet_units_on_flux_are_refused_naming_the_model(services) -> None:
    picture = io.BytesIO()
    Image.new("RGB", (64, 64), (90, 120, 30)).save(picture, format="PNG")
    unit = {"enabled": True, "module": "none", "model": "None", "image": base64.b64encode(picture.getvalue()).decode()}
    request = GenerationRequest(**{**_request("None").__dict__, "extension_params": {"controlnet": {"unit_0": unit}}})
    with pytest.raises(ValidationError, match="FLUX.1 dev") as refused:
        services.generation.generate(request)
    assert [e.field for e in refused.value.errors] == ["alwayson_scripts.controlnet"]
    assert _pixels(services, "None").std() > 1  # the next job runs

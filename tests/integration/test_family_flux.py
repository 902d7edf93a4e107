"""FLUX.1 dev, schnell and Fill through Atelier's own loop, on tiny random models built here.

Every file layout users have loads to the same model (ComfyUI's all-in-one file, BFL's transformer
alone with clip_l / t5xxl / ae in their folders, a diffusers folder), and a missing part is named
with where to put it. The loop's Euler matches diffusers' FluxPipeline with its
FlowMatchEulerDiscreteScheduler on the same sigmas and start noise (float32, CPU: max abs latent
difference <= 1e-4); txt2img, img2img, inpaint (Fill's own channels, the latent mask on dev) and
hires fix work, and seeds reproduce.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from PIL import Image

from modules.devtools import tiny_flux
from modules.devtools.tiny_model import TinyArch, write_tiny_model
from modules.engine.families import flux_flow
from modules.engine.families.base import ComponentDirs
from modules.engine.generate import ImageTask, run_task, sample_task, task_sigmas
from modules.engine.hires import HiresPlan, run_hires
from modules.engine.loader import LoadedModel, load_model
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.flow import dynamic_shift
from modules.engine.sampling.loop import NoisePlan, SamplingPlan, sampler_sigmas
from modules.engine.sampling.noise import ImageNoise
from modules.errors import MissingComponentError
from modules.upscalers import find_upscaler
from tests.family_run import CPU, euler_task
from tests.family_run import Quiet as _Quiet
from tests.family_run import pixels as _pixels

PARITY_ATOL = 1e-4  # float32 on the CPU; the two paths differ only in rounding



def _task(**changes: Any) -> ImageTask:
    return euler_task(**{"prompt": "a red house in a forest", "negative_prompt": "", "cfg_scale": 1.0, "steps": 4, **changes})



def _make(model: LoadedModel, **changes: Any) -> np.ndarray:
    images = run_task(model, _task(**changes), _Quiet())
    assert images is not None
    return _pixels(images)


def _init_image() -> Image.Image:
    gradient = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(gradient, (64, 1)), np.tile(gradient[:, None], (1, 64)),
                                     np.full((64, 64), 90, np.uint8)], axis=-1))


def _square_mask() -> Image.Image:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    return Image.fromarray(mask)


class Files:
    """One arch's files in every layout, seed 3."""

    def __init__(self, root: Path, arch: TinyArch) -> None:
        self.root = root
        self.single = tiny_flux.write_tiny(arch, root / f"tiny-{arch.value}.safetensors", seed=3)
        self.folder = tiny_flux.write_tiny(arch, root / f"tiny-{arch.value}-diffusers", seed=3)
        parts = tiny_flux.write_tiny_parts(arch, root / "split", seed=3)
        self.transformer = parts["transformer"]
        (root / "text_encoder").mkdir()
        (root / "vae").mkdir()
        (root / "tokenizers").mkdir()
        for name in ("clip_l", "t5xxl"):
            parts[name].rename(root / "text_encoder" / parts[name].name)
        parts["vae"].rename(root / "vae" / parts["vae"].name)
        parts["tokenizer"].rename(root / "tokenizers" / parts["tokenizer"].name)
        self.components = ComponentDirs(text_encoders=(root / "text_encoder",), vaes=(root / "vae",),
                                        tokenizers=root / "tokenizers")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("flux-dev"), TinyArch.FLUX_DEV)


@pytest.fixture(scope="module")
def model(dev: Files) -> LoadedModel:
    return load_model(dev.single, CPU, dev.root / "cache")


@pytest.fixture(scope="module")
def schnell(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("flux-schnell")
    return load_model(tiny_flux.write_tiny(TinyArch.FLUX_SCHNELL, root / "s.safetensors", seed=4), CPU, root / "c")


@pytest.fixture(scope="module")
def fill(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("flux-fill")
    return load_model(tiny_flux.write_tiny(TinyArch.FLUX_FILL, root / "f.safetensors", seed=5), CPU, root / "c")


def test_every_layout_loads_the_same_model_and_image(dev: Files, model: LoadedModel) -> None:
    assert model.arch is ModelArch.FLUX_DEV and model.latent_format.scale == 8
    reference = _make(model)
    for other in (load_model(dev.folder, CPU, dev.root / "cache"),
                  load_model(dev.transformer, CPU, dev.root / "cache", components=dev.components)):
        assert other.arch is ModelArch.FLUX_DEV
        assert np.array_equal(_make(other), reference), other.path.name
    assert reference.shape == (1, 64, 64, 3) and reference.std() > 1  # an image, not a flat field


def test_schnell_and_fill_are_told_apart(schnell: LoadedModel, fill: LoadedModel) -> None:
    assert schnell.arch is ModelArch.FLUX_SCHNELL and not schnell.pipeline.transformer.config.guidance_embeds
    assert fill.arch is ModelArch.FLUX_FILL and fill.pipeline.transformer.config.in_channels == 384


def test_gguf_transformers_load_quantised_and_stay_close(dev: Files, model: LoadedModel) -> None:
    """A GGUF transformer (city96's layout: BFL names) with the encoders and VAE in their folders: the
    weights stay quantised, and the denoiser stays near the float model's, Q8_0 nearer than Q4_0."""
    from diffusers.quantizers.gguf.utils import GGUFParameter

    reference = torch.from_numpy(_make(model)).float()
    errors = {}
    for quant in ("Q8_0", "Q4_0"):
        path = write_tiny_model(TinyArch.FLUX_DEV, dev.root / f"flux1-dev-{quant}.gguf", seed=3, gguf=quant)
        quantised = load_model(path, CPU, dev.root / "cache", components=dev.components)
        assert quantised.arch is ModelArch.FLUX_DEV
        assert any(isinstance(p, GGUFParameter) for p in quantised.pipeline.transformer.parameters())
        errors[quant] = float((torch.from_numpy(_make(quantised)).float() - reference).abs().mean())
    assert errors["Q8_0"] < 2.0 and errors["Q8_0"] <= errors["Q4_0"], errors  # mean pixel levels of 255


def test_a_missing_part_is_named_with_where_to_put_it(dev: Files) -> None:
    bare = replace(dev.components, text_encoders=(dev.root / "nothing",))
    with pytest.raises(MissingComponentError) as caught:
        load_model(dev.transformer, CPU, dev.root / "cache", components=bare)
    assert "t5xxl" in caught.value.file_hint and caught.value.folder == str(dev.root / "nothing")
    assert "t5xxl" in str(caught.value) and str(dev.root / "nothing") in str(caught.value)
    with pytest.raises(MissingComponentError) as caught:
        load_model(dev.transformer, CPU, dev.root / "cache", components=replace(dev.components, vaes=()))
    assert caught.value.file_hint == "ae.safetensors"
    with pytest.raises(MissingComponentError) as caught:
        load_model(dev.transformer, CPU, dev.root / "cache",
                   components=replace(dev.components, tokenizers=dev.root / "nothing"))
    assert caught.value.component == "tokenizer:t5xxl" and caught.value.folder.endswith("t5-v1_1-xxl")
    assert "tokenizer_2" in (caught.value.url or "")  # where the download offer fetches it from


def test_services_keep_the_previous_model_when_t5_is_missing(dev: Files, tmp_path: Path) -> None:
    from tests.conftest import make_services

    ckpt = tmp_path / "Stable-diffusion"
    write_tiny_model(TinyArch.SD15, ckpt / "tiny-sd15.safetensors", seed=0)
    (ckpt / "flux1-dev-bare.safetensors").write_bytes(dev.transformer.read_bytes())
    (ckpt / "flux1-dev-aio.safetensors").write_bytes(dev.single.read_bytes())
    services = make_services(tmp_path / "data", ckpt)
    try:
        services.models.load("tiny-sd15")
        with pytest.raises(MissingComponentError, match="t5xxl"):
            services.models.load("flux1-dev-bare")
        kept = services.models.loaded_model()
        assert kept is not None and kept.arch is ModelArch.SD1
        services.models.load("flux1-dev-aio")
        loaded = services.models.loaded_model()
        assert loaded is not None and loaded.arch is ModelArch.FLUX_DEV
        assert _make(loaded).std() > 1
    finally:
        services.close()


def _diffusers_latents(model: LoadedModel, task: ImageTask, sigmas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    pipe = model.pipeline
    saved = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)  # sigmas as given
    try:
        # diffusers' true_cfg_scale is A1111's CFG (neg + s * (pos - neg)); guidance_scale the distilled one.
        out = pipe(prompt=task.prompt, negative_prompt=task.negative_prompt or None, height=task.height,
                   width=task.width, sigmas=sigmas[:-1].tolist(), guidance_scale=task.distilled_cfg_scale or 3.5,
                   true_cfg_scale=task.cfg_scale, latents=flux_flow.pack(noise.clone()), output_type="latent",
                   return_dict=False)[0]
    finally:
        pipe.scheduler = saved
    return flux_flow.unpack(out, noise.shape[-2], noise.shape[-1])


@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_euler_matches_diffusers_pipeline_on_the_same_sigmas(model: LoadedModel, cfg_scale: float) -> None:
    task = _task(cfg_scale=cfg_scale, negative_prompt="blurry, watermark" if cfg_scale != 1.0 else "",
                 steps=5, width=64, height=48, distilled_cfg_scale=4.0)
    plan = SamplingPlan(sampler=task.sampler, schedule=task.schedule, steps=task.steps, noise=task.noise,
                        latent_shape=(16, 6, 8), flow=True)
    sigmas = sampler_sigmas(plan, task_sigmas(model, task))
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and len(sigmas) == task.steps + 1
    noise = ImageNoise((16, 6, 8), task.noise.seeds, torch.device("cpu"), task.noise.source).first()
    ours = sample_task(model, task, _Quiet())
    theirs = _diffusers_latents(model, task, sigmas, noise)
    assert ours is not None and ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= PARITY_ATOL
    assert (ours - noise).abs().mean() > 0.1  # the model did move the latent


def test_shift_follows_the_scheduler_and_a_job_shift_overrides_it(model: LoadedModel, schnell: LoadedModel) -> None:
    # dev: mu from the image's token count (FluxPipeline's calculate_shift); 64x64 is 16 tokens.
    shift = dynamic_shift(16, 256, 4096, 0.5, 1.15)
    t = 0.5
    expected = shift * t / (1 + (shift - 1) * t)
    assert abs(float(task_sigmas(model, _task()).sigmas[499]) - expected) < 1e-6
    assert abs(float(task_sigmas(schnell, _task()).sigmas[499]) - 0.5) < 1e-6  # schnell: static shift 1
    assert not np.array_equal(_make(model, shift=3.0), _make(model))


def test_distilled_cfg_changes_dev_and_defaults_to_the_family_value(model: LoadedModel) -> None:
    assert np.array_equal(_make(model, distilled_cfg_scale=3.5), _make(model))  # the family's default
    assert not np.array_equal(_make(model, distilled_cfg_scale=8.0), _make(model))


def test_seeds_reproduce_and_differ(model: LoadedModel, schnell: LoadedModel) -> None:
    first = _make(model, noise=NoisePlan(seeds=(11, 12)))
    assert np.array_equal(first, _make(model, noise=NoisePlan(seeds=(11, 12))))
    assert not np.array_equal(first[0], first[1])
    # batch-independent, up to the CPU's rounding of batched matrix products
    assert np.abs(first[1] - _make(model, noise=NoisePlan(seeds=(12,)))[0]).max() <= 1
    assert not np.array_equal(_make(schnell), _make(schnell, noise=NoisePlan(seeds=(8,))))


def test_emphasis_weights_the_t5_tokens(model: LoadedModel) -> None:
    plain = _make(model, prompt="a red house")
    assert np.array_equal(_make(model, prompt="a (red:1.0) house"), plain)
    assert not np.array_equal(_make(model, prompt="a (red:1.6) house"), plain)


def test_img2img_keeps_more_of_the_image_at_lower_strength(model: LoadedModel) -> None:
    from modules.engine import latents as lat

    init = _init_image()
    # compared as latents: a random VAE's decoder does not give the image back
    source = lat.encode_image(model, lat.image_to_tensor(init, torch.device("cpu")))
    light = sample_task(model, _task(init_image=init, denoising_strength=0.3), _Quiet())
    strong = sample_task(model, _task(init_image=init, denoising_strength=0.9), _Quiet())
    assert light is not None and strong is not None
    assert (light - source).abs().mean() < (strong - source).abs().mean()


def test_latent_mask_inpaint_on_dev_repaints_only_the_masked_area(model: LoadedModel) -> None:
    init, mask = _init_image(), _square_mask()
    out = _make(model, init_image=init, mask=mask, denoising_strength=1.0)[0]
    source = np.asarray(init).astype(int)
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], source[keep])
    assert np.abs(out[24:40, 24:40] - source[24:40, 24:40]).mean() > 5


def test_fill_sees_the_masked_image(fill: LoadedModel) -> None:
    init, mask = _init_image(), _square_mask()
    out = _make(fill, init_image=init, mask=mask, denoising_strength=1.0)[0]
    source = np.asarray(init).astype(int)
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], source[keep])  # the original pasted back outside the mask
    assert np.abs(out[24:40, 24:40] - source[24:40, 24:40]).mean() > 5
    # The network sees the image around the hole: another image there changes what fills it.
    other = Image.fromarray(255 - np.asarray(init))
    changed = _make(fill, init_image=other, mask=mask, denoising_strength=1.0)[0]
    assert not np.array_equal(changed[24:40, 24:40], out[24:40, 24:40])


def test_hires_fix_makes_the_larger_image(model: LoadedModel) -> None:
    first = _task()
    second = _task(width=96, height=96, denoising_strength=0.6, steps=3)
    found = find_upscaler("Latent")
    assert found is not None
    images = run_hires(model, first, HiresPlan(task=second, upscaler=found, upscale_size=(96, 96)), _Quiet())
    assert images is not None and images[0].size == (96, 96) and _pixels(images).std() > 1


def test_variation_seeds_blend_towards_the_variation_noise(model: LoadedModel) -> None:
    """A1111's variation seed on a flow model: strength 0 is the seed's image, a small strength a
    nearby one, strength 1 the variation seed's own image; each reproduces."""
    def noise(strength: float) -> NoisePlan:
        return NoisePlan(seeds=(7,), variation_seeds=(99,), variation_strength=strength)

    base, near, full = (_make(model, noise=noise(s)) for s in (0.0, 0.2, 1.0))
    assert np.array_equal(base, _make(model))
    assert np.array_equal(full, _make(model, noise=NoisePlan(seeds=(99,))))
    assert np.array_equal(near, _make(model, noise=noise(0.2)))
    assert 0 < np.abs(near - base).mean() < np.abs(full - base).mean()

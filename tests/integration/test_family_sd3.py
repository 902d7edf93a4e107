"""SD 3.5 Large and Medium through Atelier's own loop, on tiny random models.

Loading from each format users have (an all-in-one single file, a transformer-only file with its
encoders and VAE in the component folders, a diffusers folder), the clear error for a missing
part, txt2img / img2img / inpaint / hires fix, seeds, and Euler parity with diffusers'
``StableDiffusion3Pipeline`` and ``FlowMatchEulerDiscreteScheduler`` on the same sigmas and noise.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from modules.devtools.ldm_keys import vae_to_ldm
from modules.devtools.tiny_model import TinyArch
from modules.devtools.tiny_sd3 import build_tiny_sd3_pipeline, t5_tokenizer_json, transformer_to_sai, write_tiny
from modules.engine.families.base import ComponentDirs
from modules.engine.generate import ImageTask, run_task, sample_task, task_sigmas
from modules.engine.hires import HiresPlan, run_hires
from modules.engine.loader import load_model
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.loop import NoisePlan, SamplingPlan, sampler_sigmas
from modules.engine.sampling.noise import ImageNoise
from modules.errors import MissingComponentError
from modules.upscalers import find_upscaler
from tests.family_run import CPU, euler_task
from tests.family_run import Quiet as _Quiet
from tests.family_run import pixels as _pixels

# fp32 on the CPU: the same math in another order (batched CFG, our Euler step); measured ~1e-6.
PARITY_ATOL = 1e-4



def _task(**changes: Any) -> ImageTask:
    return euler_task(**{"prompt": "a red lighthouse", "negative_prompt": "blurry", "cfg_scale": 4.5, "steps": 3, **changes})



def _split_files(root: Path) -> tuple[Path, ComponentDirs]:
    """A transformer-only checkpoint, its encoders in transformers' names and its VAE in LDM names
    in the component folders, and the T5 tokenizer as a downloaded copy."""
    pipe = build_tiny_sd3_pipeline(TinyArch.SD35, seed=0)
    models, encoders, vaes, tokenizers = (root / n for n in ("Stable-diffusion", "text_encoder", "VAE", "tokenizers"))
    for folder in (models, encoders, vaes, tokenizers / "t5-v1_1-xxl"):
        folder.mkdir(parents=True)

    def save(state: dict[str, torch.Tensor], path: Path) -> None:
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(path))

    save({"model.diffusion_model." + k: v
          for k, v in transformer_to_sai(pipe.transformer.state_dict(), pipe.transformer.config).items()},
         models / "sd3.5_large.safetensors")
    save({k: v for k, v in pipe.text_encoder.state_dict().items() if "position_ids" not in k},
         encoders / "clip_l.safetensors")
    save({k: v for k, v in pipe.text_encoder_2.state_dict().items() if "position_ids" not in k},
         encoders / "clip_g.safetensors")
    save({k: v for k, v in pipe.text_encoder_3.state_dict().items() if k != "encoder.embed_tokens.weight"},
         encoders / "t5xxl_fp16.safetensors")
    save({k.removeprefix("first_stage_model."): v for k, v in vae_to_ldm(pipe.vae.state_dict(),
                                                                         pipe.vae.config).items()},
         vaes / "sd3.5_vae.safetensors")
    (tokenizers / "t5-v1_1-xxl" / "tokenizer.json").write_text(t5_tokenizer_json(), encoding="utf-8")
    return models / "sd3.5_large.safetensors", ComponentDirs(text_encoders=(encoders,), vaes=(vaes,),
                                                            tokenizers=tokenizers)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sd3")
    split, components = _split_files(root / "split")
    return {"large": write_tiny(TinyArch.SD35, root / "large.safetensors", 0),
            "medium": write_tiny(TinyArch.SD35_MEDIUM, root / "medium.safetensors", 0),
            "folder": write_tiny(TinyArch.SD35, root / "large-diffusers", 0),
            "split": split, "components": components, "cache": root / "cache"}


@pytest.fixture(scope="module")
def large(files: dict[str, Any]) -> Any:
    return load_model(files["large"], CPU, files["cache"])


def test_large_and_medium_layouts_are_told_apart(files: dict[str, Any], large: Any) -> None:
    medium = load_model(files["medium"], CPU, files["cache"])
    assert large.arch is ModelArch.SD35_LARGE and not large.pipeline.transformer.config.dual_attention_layers
    assert medium.arch is ModelArch.SD35_MEDIUM
    assert list(medium.pipeline.transformer.config.dual_attention_layers) == [0, 1]  # MMDiT-X's attn2 blocks
    images = run_task(medium, _task(), _Quiet())
    assert images is not None and images[0].size == (64, 64)


def test_every_format_makes_the_same_image(files: dict[str, Any], large: Any) -> None:
    reference = _pixels(run_task(large, _task(), _Quiet()))
    split = load_model(files["split"], CPU, files["cache"], components=files["components"])
    folder = load_model(files["folder"], CPU, files["cache"])
    assert split.arch is folder.arch is ModelArch.SD35_LARGE
    for model in (split, folder):
        assert np.abs(_pixels(run_task(model, _task(), _Quiet())) - reference).max() <= 1


def test_a_missing_encoder_or_tokenizer_names_what_to_put_where(files: dict[str, Any], tmp_path: Path) -> None:
    components: ComponentDirs = files["components"]
    encoders = tmp_path / "text_encoder"
    encoders.mkdir()
    (encoders / "clip_l.safetensors").write_bytes((components.text_encoders[0] / "clip_l.safetensors").read_bytes())
    with pytest.raises(MissingComponentError) as missing:
        load_model(files["split"], CPU, files["cache"], components=replace(components, text_encoders=(encoders,)))
    assert missing.value.component == "CLIP-G text encoder" and "clip_g" in missing.value.file_hint
    assert missing.value.folder == str(encoders)
    with pytest.raises(MissingComponentError) as no_tokenizer:
        load_model(files["split"], CPU, files["cache"], components=replace(components, tokenizers=tmp_path))
    assert no_tokenizer.value.component == "tokenizer:t5xxl" and "t5-v1_1-xxl" in no_tokenizer.value.folder


def test_a_checkpoint_without_t5_runs_on_zeros_as_diffusers_does(files: dict[str, Any], tmp_path: Path) -> None:
    components: ComponentDirs = files["components"]
    encoders = tmp_path / "text_encoder"
    encoders.mkdir()
    for name in ("clip_l.safetensors", "clip_g.safetensors"):
        (encoders / name).write_bytes((components.text_encoders[0] / name).read_bytes())
    model = load_model(files["split"], CPU, files["cache"], components=replace(components, text_encoders=(encoders,)))
    assert model.pipeline.text_encoder_3 is None
    assert run_task(model, _task(), _Quiet()) is not None


def test_cfg_negative_prompt_and_seeds(large: Any) -> None:
    first = _pixels(run_task(large, _task(), _Quiet()))
    assert np.array_equal(first, _pixels(run_task(large, _task(), _Quiet())))  # seeds reproduce
    batch = _pixels(run_task(large, _task(noise=NoisePlan(seeds=(7, 8))), _Quiet()))
    assert np.abs(batch[0] - first[0]).max() <= 1  # a batch image is its seed's single image
    assert np.abs(batch[1] - first[0]).max() > 5  # another seed, another image
    assert np.abs(first - _pixels(run_task(large, _task(negative_prompt="a dog"), _Quiet()))).max() > 0


def test_img2img_and_inpaint_keep_what_they_should(large: Any) -> None:
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    img2img = _pixels(run_task(large, _task(init_image=init, denoising_strength=0.5), _Quiet()))
    assert img2img.shape == (1, 64, 64, 3)
    painted = _pixels(run_task(large, _task(init_image=init, mask=mask, denoising_strength=0.9), _Quiet()))[0]
    original = np.asarray(init).astype(int)
    assert np.array_equal(painted[:8], original[:8])  # outside the mask: the original pixels
    assert np.abs(painted[24:40, 24:40] - original[24:40, 24:40]).max() > 5  # inside: repainted


def test_hires_fix_doubles_the_size(large: Any) -> None:
    upscaler = find_upscaler("Latent")
    assert upscaler is not None
    plan = HiresPlan(task=_task(width=128, height=128, denoising_strength=0.6), upscaler=upscaler,
                     upscale_size=(128, 128))
    images = run_hires(large, _task(), plan, _Quiet())
    assert images is not None and images[0].size == (128, 128)


def test_euler_matches_diffusers_on_the_same_sigmas_and_noise(large: Any) -> None:
    task = _task(steps=4)
    latents = sample_task(large, task, _Quiet())
    plan = SamplingPlan(sampler=task.sampler, schedule=task.schedule, steps=task.steps, noise=task.noise,
                        latent_shape=(16, 8, 8), flow=True)
    sigmas = sampler_sigmas(plan, task_sigmas(large, task))
    assert sigmas[0] == pytest.approx(1.0) and sigmas[-1] == 0
    noise = ImageNoise((16, 8, 8), task.noise.seeds, torch.device("cpu"), task.noise.source).first()
    # shift 1: the scheduler takes our (already shifted) sigmas as they are; it appends the final 0.
    pipe = StableDiffusion3Pipeline(**{**large.pipeline.components,
                                       "scheduler": FlowMatchEulerDiscreteScheduler(shift=1.0)})
    theirs = pipe(prompt=task.prompt, negative_prompt=task.negative_prompt, guidance_scale=task.cfg_scale,
                  sigmas=sigmas[:-1].tolist(), latents=noise, height=64, width=64, output_type="latent").images
    assert latents is not None
    assert torch.allclose(latents, theirs, atol=PARITY_ATOL), (latents - theirs).abs().max()
    assert (latents - noise).abs().max() > 0.1  # the comparison is not between two untouched inputs


def test_a_gguf_transformer_loads_with_its_parts_from_the_folders(files: dict[str, Any], tmp_path: Path) -> None:
    path = write_tiny(TinyArch.SD35_MEDIUM, tmp_path / "sd3.5_medium-Q8_0.gguf", 0, "Q8_0")
    model = load_model(path, CPU, files["cache"], components=files["components"])
    assert model.arch is ModelArch.SD35_MEDIUM
    images = run_task(model, _task(), _Quiet())
    assert images is not None and images[0].size == (64, 64)

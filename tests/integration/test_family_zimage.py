"""Z-Image (Turbo) through Atelier's own loop, on tiny random models built here.

Every file layout users have loads to the same model (the all-in-one single file, a diffusers
folder, the transformer alone in the original or the diffusers key layout with the encoder, VAE and
tokenizer in their folders, a GGUF Q8_0 transformer), and a missing part is named. The loop matches
diffusers' ZImagePipeline with its FlowMatchEulerDiscreteScheduler on the same sigmas and start
noise (float32, CPU: max abs latent difference <= 1e-4); txt2img, img2img, inpaint and hires fix
work; prompts of different lengths batched in one job give what each gives alone.
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

from modules.devtools import tiny_zimage
from modules.engine import latents as lat
from modules.engine.families import zimage_files as files
from modules.engine.families.base import ComponentDirs
from modules.engine.generate import ImageTask, run_task, sample_task, task_sigmas
from modules.engine.hires import HiresPlan, run_hires
from modules.engine.loader import LoadedModel, load_model
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.loop import NoisePlan, SamplingPlan, sampler_sigmas
from modules.engine.sampling.noise import ImageNoise
from modules.errors import MissingComponentError
from modules.upscalers import find_upscaler
from tests.family_run import CPU, euler_task
from tests.family_run import Quiet as _Quiet
from tests.family_run import pixels as _pixels

PARITY_ATOL = 1e-4



def _task(**changes: Any) -> ImageTask:
    return euler_task(**{"prompt": "a red fox in snow", "negative_prompt": "", "cfg_scale": 1.0, "steps": 3, **changes})



def _make(model: LoadedModel, **changes: Any) -> np.ndarray:
    images = run_task(model, _task(**changes), _Quiet())
    assert images is not None
    return _pixels(images)


class Files:
    def __init__(self, root: Path) -> None:
        self.root = root
        pipe = tiny_zimage.build_tiny_pipeline(seed=3)
        self.single = tiny_zimage.write_tiny("zimage", root / "tiny-zimage.safetensors", seed=3)
        self.folder = tiny_zimage.write_tiny("zimage", root / "tiny-zimage-folder", seed=3)
        transformer = pipe.transformer.state_dict()
        self.original = tiny_zimage.save_atomically(tiny_zimage.transformer_to_original(transformer),
                                                    root / "split" / "z_image_original.safetensors")
        self.diffusers_keys = tiny_zimage.save_atomically({k: v.contiguous() for k, v in transformer.items()},
                                                          root / "split" / "z_image_diffusers.safetensors")
        encoder = {"model." + k: v.contiguous() for k, v in pipe.text_encoder.state_dict().items()}
        tiny_zimage.save_atomically(encoder, root / "text_encoder" / "qwen_3_4b.safetensors")
        vae = tiny_zimage.single_file_state(pipe)
        vae = {k[len(files.VAE_PREFIX):]: v for k, v in vae.items() if k.startswith(files.VAE_PREFIX)}
        tiny_zimage.save_atomically(vae, root / "vae" / "ae.safetensors")
        pipe.tokenizer.save_pretrained(str(root / "tokenizers" / files.TOKENIZER_FOLDER / "tokenizer"))
        self.gguf = tiny_zimage.write_tiny("zimage", root / "split" / "z_image-Q8_0.gguf", seed=3, gguf="Q8_0")
        self.components = ComponentDirs(text_encoders=(root / "text_encoder",), vaes=(root / "vae",),
                                        tokenizers=root / "tokenizers")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Files:
    return Files(tmp_path_factory.mktemp("zimage"))


@pytest.fixture(scope="module")
def model(tiny: Files) -> LoadedModel:
    return load_model(tiny.single, CPU, tiny.root / "cache")


def _weights(model: LoadedModel) -> dict[str, torch.Tensor]:
    pipe = model.pipeline
    return {f"{name}.{key}": value for name in ("transformer", "text_encoder", "vae")
            for key, value in getattr(pipe, name).state_dict().items()}


def test_every_layout_loads_the_same_model_and_image(tiny: Files, model: LoadedModel) -> None:
    assert model.arch is ModelArch.ZIMAGE and model.latent_format.scale == 8
    reference = _weights(model)
    others = [load_model(tiny.folder, CPU, tiny.root / "cache"),
              load_model(tiny.original, CPU, tiny.root / "cache", components=tiny.components),
              load_model(tiny.diffusers_keys, CPU, tiny.root / "cache", components=tiny.components)]
    for other in others:
        weights = _weights(other)
        assert other.arch is ModelArch.ZIMAGE and weights.keys() == reference.keys()
        assert all(torch.equal(weights[k], reference[k]) for k in reference), other.path.name
    image = _make(model)
    assert image.shape == (1, 64, 64, 3) and image.std() > 1  # an image, not a flat field
    assert np.array_equal(_make(others[0]), image)  # the folder's own tokenizer and scheduler agree


def test_a_gguf_transformer_loads_with_its_parts_from_the_folders(tiny: Files, model: LoadedModel) -> None:
    quantized = load_model(tiny.gguf, CPU, tiny.root / "cache", components=tiny.components)
    assert quantized.arch is ModelArch.ZIMAGE
    difference = np.abs(_make(quantized) - _make(model))
    assert difference.mean() < 2 and difference.max() < 32  # Q8_0: close to the full weights


def test_a_missing_part_is_named_with_where_to_put_it(tiny: Files) -> None:
    bare = ComponentDirs(text_encoders=(tiny.root / "nothing",), vaes=(tiny.root / "vae",),
                         tokenizers=tiny.root / "tokenizers")
    with pytest.raises(MissingComponentError) as caught:
        load_model(tiny.original, CPU, tiny.root / "cache", components=bare)
    assert caught.value.file_hint == "qwen_3_4b.safetensors" and caught.value.folder == str(tiny.root / "nothing")
    with pytest.raises(MissingComponentError) as caught:
        load_model(tiny.original, CPU, tiny.root / "cache", components=replace(tiny.components, vaes=()))
    assert caught.value.file_hint == "ae.safetensors"
    with pytest.raises(MissingComponentError) as caught:
        load_model(tiny.original, CPU, tiny.root / "cache",
                   components=replace(tiny.components, tokenizers=tiny.root / "nothing"))
    assert "tokenizer.json" in caught.value.file_hint and caught.value.component == "tokenizer:qwen3"


def _diffusers_latents(model: LoadedModel, task: ImageTask, sigmas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    pipe = model.pipeline
    saved = pipe.scheduler
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)  # sigmas as given
    try:
        # diffusers' guidance_scale w: pos + w (pos - neg); A1111's CFG s: neg + s (pos - neg), so w = s - 1.
        out = pipe(prompt=task.prompt, negative_prompt=task.negative_prompt, height=task.height, width=task.width,
                   sigmas=sigmas[:-1].tolist(), guidance_scale=task.cfg_scale - 1, latents=noise.clone(),
                   output_type="latent", return_dict=False)[0]
    finally:
        pipe.scheduler = saved
    return out


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_euler_matches_diffusers_pipeline_on_the_same_sigmas(model: LoadedModel, cfg_scale: float) -> None:
    # A negative prompt much longer than the prompt: the two captions batch padded and unpadded per row.
    task = _task(cfg_scale=cfg_scale, negative_prompt="blurry, low quality, watermark, text, extra fingers",
                 steps=5, width=64, height=48)
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


def test_scheduler_shift_is_the_default_and_a_job_shift_overrides_it(model: LoadedModel) -> None:
    default = task_sigmas(model, _task())
    # Z-Image Turbo's scheduler: static shift 3, sigma = 3t / (1 + 2t); at t = 0.5 that is 0.75.
    assert abs(float(default.sigmas[499]) - 0.75) < 1e-6
    assert not np.array_equal(_make(model, shift=6.0), _make(model))


def test_seeds_reproduce_and_differ(model: LoadedModel) -> None:
    first = _make(model, noise=NoisePlan(seeds=(11, 12)))
    assert np.array_equal(first, _make(model, noise=NoisePlan(seeds=(11, 12))))
    assert not np.array_equal(first[0], first[1])
    # Batch-independent (up to the last bit of a batched matmul's rounding).
    assert np.abs(first[1] - _make(model, noise=NoisePlan(seeds=(12,)))[0]).max() <= 1


def test_prompts_of_different_lengths_in_one_job_give_what_each_gives_alone(model: LoadedModel) -> None:
    long = "a lighthouse on a cliff at dusk, waves, gulls, dramatic clouds, oil painting"
    alone = _make(model, prompt="cat")
    # AND with a zero weight: the long prompt is batched beside "cat " (AND keeps the space, which a
    # Qwen tokenizer reads) but contributes nothing; a batched matmul may round the last bit otherwise.
    assert np.abs(_make(model, prompt=f"cat AND {long} :0") - _make(model, prompt="cat ")).max() <= 1
    # Prompt editing that never switches: "cat" padded to the long prompt's length all along.
    assert np.array_equal(_make(model, prompt=f"[cat:{long}:99]"), alone)
    switched = _make(model, prompt=f"[cat:{long}:1]")
    assert not np.array_equal(switched, alone) and not np.array_equal(switched, _make(model, prompt=long))


def test_emphasis_weights_the_prompt_tokens(model: LoadedModel) -> None:
    plain = _make(model, prompt="a red fox")
    assert not np.array_equal(_make(model, prompt="a (red:1.6) fox"), plain)
    assert np.array_equal(_make(model, prompt="a (red:1.6) fox", emphasis="Ignore"), _make(model, prompt="a red fox"))


def _init_image() -> Image.Image:
    gradient = np.linspace(0, 255, 64, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(gradient, (64, 1)), np.tile(gradient[:, None], (1, 64)),
                                     np.full((64, 64), 90, np.uint8)], axis=-1))


def test_img2img_keeps_more_of_the_image_at_lower_strength(model: LoadedModel) -> None:
    # Judged on the latents: a random tiny VAE decodes any latent to much the same colours.
    init = _init_image()
    source = lat.encode_image(model, lat.image_to_tensor(init, torch.device("cpu")))
    moved = []
    for strength in (0.2, 0.5, 0.9):
        out = sample_task(model, _task(init_image=init, denoising_strength=strength), _Quiet())
        assert out is not None
        moved.append(float((out - source).abs().mean()))
    txt2img = sample_task(model, _task(), _Quiet())
    assert txt2img is not None
    assert moved[0] < moved[1] < moved[2] <= float((txt2img - source).abs().mean()) + 1e-3


def test_inpaint_repaints_only_the_masked_area(model: LoadedModel) -> None:
    init = _init_image()
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    out = _make(model, init_image=init, mask=Image.fromarray(mask), denoising_strength=1.0)[0]
    source = np.asarray(init).astype(int)
    assert np.array_equal(out[mask == 0], source[mask == 0])
    assert np.abs(out[24:40, 24:40] - source[24:40, 24:40]).mean() > 5


def test_hires_fix_makes_the_larger_image(model: LoadedModel) -> None:
    first = _task()
    second = _task(width=96, height=96, denoising_strength=0.6, steps=3)
    upscaler = find_upscaler("Latent")
    assert upscaler is not None
    images = run_hires(model, first, HiresPlan(task=second, upscaler=upscaler, upscale_size=(96, 96)), _Quiet())
    assert images is not None and images[0].size == (96, 96)
    again = run_hires(model, first, HiresPlan(task=second, upscaler=upscaler, upscale_size=(96, 96)), _Quiet())
    assert again is not None and np.array_equal(_pixels(images), _pixels(again))

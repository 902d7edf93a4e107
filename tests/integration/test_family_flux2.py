"""FLUX.2 [klein] through Atelier's own loop, on a tiny random model built at test time.

Loads each format (self-contained single file, BFL-layout transformer with the encoder and VAE
found in their folders, diffusers folder), generates txt2img / img2img / inpaint / hires fix,
and checks Atelier's Euler against diffusers' ``Flux2KleinPipeline`` with its own
``FlowMatchEulerDiscreteScheduler`` on the same sigmas and start noise.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.devtools import tiny_flux2
from modules.engine.devices import DeviceInfo
from modules.engine.families import flux2, flux2_flow
from modules.engine.families.base import ComponentDirs
from modules.engine.generate import ImageTask, run_task, sample_task, task_sigmas
from modules.engine.hires import HiresPlan, run_hires
from modules.engine.loader import load_model
from modules.engine.model_detect import ModelArch
from modules.engine.sampling.loop import NoisePlan, SamplingPlan, sampler_sigmas
from modules.engine.sampling.noise import ImageNoise
from modules.errors import MissingComponentError, ModelLoadError
from modules.samplers import ScheduleType, resolve_sampler
from modules.upscalers import find_upscaler

CPU = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")
# Atelier's Euler and the scheduler's step are the same arithmetic (x + (s_next - s) * v) on the
# same network calls; the only difference is float32 rounding of sigma (the scheduler passes
# (sigma * 1000) / 1000 as the timestep), so the latents agree to a few float32 ulps.
PARITY_ATOL = 1e-4


class _Quiet:
    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        pass

    def should_stop(self) -> bool:
        return False


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """Toy-sized matrices run fastest on one thread (and do not fight other test processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("flux2")
    single = tiny_flux2.write_tiny("flux2-klein", root / "ckpt" / "tiny-klein.safetensors", seed=0)
    folder = tiny_flux2.write_tiny("flux2-klein", root / "ckpt" / "tiny-klein-diffusers", seed=0)
    # A BFL-layout transformer alone, and the encoder / VAE as ComfyUI users keep them.
    pipe = tiny_flux2.build_tiny_pipeline(seed=0)
    state = tiny_flux2.single_file_state(pipe)
    parts = {"bare": {}, "te": {}, "vae": {}}
    for key, tensor in state.items():
        if key.startswith("model.diffusion_model."):
            parts["bare"][key.removeprefix("model.diffusion_model.")] = tensor
        elif key.startswith("text_encoders."):
            parts["te"][key.split(".", 2)[2]] = tensor
        else:
            parts["vae"][key.removeprefix("vae.")] = tensor
    for name in ("text_encoder", "vae", "bare"):
        (root / name).mkdir(exist_ok=True)
    save_file(parts["bare"], str(root / "bare" / "flux-2-klein-4b.safetensors"))
    save_file(parts["te"], str(root / "text_encoder" / "qwen_3_4b.safetensors"))
    save_file(parts["vae"], str(root / "vae" / "flux2-vae.safetensors"))
    tokenizers = root / "tokenizers" / flux2.QWEN3_TOKENIZER.folder_name
    pipe.tokenizer.save_pretrained(str(tokenizers))
    return {"single": single, "folder": folder, "bare": root / "bare" / "flux-2-klein-4b.safetensors",
            "te_dir": root / "text_encoder", "vae_dir": root / "vae", "tok_dir": root / "tokenizers",
            "cache": root / "cache"}


@pytest.fixture(scope="module")
def model(files: dict[str, Path]) -> Any:
    return load_model(files["single"], CPU, files["cache"])


def _task(**changes: Any) -> ImageTask:
    task = ImageTask(prompt="a red fox in the snow", negative_prompt="", sampler=resolve_sampler("Euler")[0],  # type: ignore[index]
                     schedule=ScheduleType.SIMPLE, steps=3, cfg_scale=1.0, width=64, height=64, clip_skip=1,
                     noise=NoisePlan(seeds=(7,)))
    return replace(task, **changes)


def _pixels(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(image.convert("RGB")).astype(int) for image in images])


def test_each_format_loads_as_klein_and_gives_the_same_image(files: dict[str, Path], model: Any) -> None:
    components = ComponentDirs(text_encoders=(files["te_dir"],), vaes=(files["vae_dir"],), tokenizers=files["tok_dir"])
    bare = load_model(files["bare"], CPU, files["cache"], components=components)
    folder = load_model(files["folder"], CPU, files["cache"])
    reference = _pixels(run_task(model, _task(), _Quiet()))
    for other in (bare, folder):
        assert other.arch is ModelArch.FLUX2_KLEIN
        assert other.latent_format.scale == 16
        assert np.abs(_pixels(run_task(other, _task(), _Quiet())) - reference).max() <= 1


def test_a_bare_transformer_names_what_is_missing(files: dict[str, Path]) -> None:
    with pytest.raises(MissingComponentError) as tokenizer:
        load_model(files["bare"], CPU, files["cache"], components=ComponentDirs(text_encoders=(files["te_dir"],)))
    assert "tokenizer" in str(tokenizer.value) and "Qwen/Qwen3-4B" in str(tokenizer.value)
    with pytest.raises(MissingComponentError) as encoder:
        load_model(files["bare"], CPU, files["cache"], components=ComponentDirs(tokenizers=files["tok_dir"]))
    assert "text encoder" in str(encoder.value) and "qwen_3_4b" in str(encoder.value)
    with pytest.raises(ModelLoadError, match="VAE"):
        load_model(files["bare"], CPU, files["cache"],
                   components=ComponentDirs(text_encoders=(files["te_dir"],), tokenizers=files["tok_dir"]))


def test_txt2img_seeds_reproduce_and_differ(model: Any) -> None:
    first = _pixels(run_task(model, _task(), _Quiet()))
    again = _pixels(run_task(model, _task(), _Quiet()))
    other = _pixels(run_task(model, _task(noise=NoisePlan(seeds=(8,))), _Quiet()))
    prompt = _pixels(run_task(model, _task(prompt="a lighthouse at dusk"), _Quiet()))
    assert first.shape == (1, 64, 64, 3)
    assert np.array_equal(first, again)
    assert np.abs(first - other).mean() > 1 and np.abs(first - prompt).mean() > 0.1


def test_img2img_low_strength_stays_near_the_init_image(model: Any) -> None:
    rng = np.random.default_rng(0)
    init = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).resize((64, 64))
    base = _pixels(run_task(model, _task(init_image=init, denoising_strength=0.0), _Quiet()))
    low = _pixels(run_task(model, _task(init_image=init, denoising_strength=0.2), _Quiet()))
    high = _pixels(run_task(model, _task(init_image=init, denoising_strength=0.9), _Quiet()))
    assert np.abs(low - base).mean() < np.abs(high - base).mean()


def test_inpaint_keeps_the_unmasked_half(model: Any) -> None:
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    out = _pixels(run_task(model, _task(init_image=init, mask=mask, denoising_strength=1.0), _Quiet()))[0]
    assert np.array_equal(out[:, 40:], np.asarray(init)[:, 40:].astype(int))
    assert np.abs(out[:, :24] - np.asarray(init)[:, :24].astype(int)).mean() > 5


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_fix_gives_the_final_size(model: Any, upscaler: str) -> None:
    spec = find_upscaler(upscaler)
    assert spec is not None
    plan = HiresPlan(task=_task(width=96, height=96, steps=2, denoising_strength=0.5), upscaler=spec,
                     upscale_size=(96, 96))
    images = run_hires(model, _task(), plan, _Quiet())
    assert images is not None and images[0].size == (96, 96)


def test_shift_follows_the_pipeline_rule_and_the_override(model: Any) -> None:
    from modules.engine.families.base import FlowJob

    small, large = (flux2_flow.shift_for(s, s, 4) for s in (512, 1024))
    assert 1 < small < large  # more image tokens, more shift (compute_empirical_mu)
    table = flux2_flow.sigmas(model, FlowJob(width=64, height=64, steps=4, batch=1, shift=1.0))
    assert torch.allclose(table.sigmas[-10:], torch.arange(991, 1001) / 1000)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_euler_matches_diffusers_pipeline(model: Any, cfg: float) -> None:
    """Atelier's whole path (Simple schedule from the family's shift, seeded noise, Euler, CFG with
    "" as the negative) against the pipeline given the same start noise. With 4 steps the Simple
    schedule is exactly the pipeline's sigmas (linspace(1, 1/4, 4) through exp(mu)); checked too."""
    pipe, steps, size = model.pipeline, 4, 64
    task = _task(prompt="a red fox", steps=steps, cfg_scale=cfg, width=size, height=size)
    noise = ImageNoise((128, size // 16, size // 16), task.noise.seeds, torch.device("cpu")).first()
    pipe.register_to_config(is_distilled=cfg == 1.0)  # the base model guides, with "" as its negative
    try:
        reference = pipe(prompt="a red fox", height=size, width=size, num_inference_steps=steps, guidance_scale=cfg,
                         latents=noise.clone(), output_type="latent").images
    finally:
        pipe.register_to_config(is_distilled=True)
    ours_sigmas = sampler_sigmas(SamplingPlan(sampler=task.sampler, schedule=task.schedule, steps=steps,
                                              noise=task.noise, latent_shape=(128, 4, 4), flow=True),
                                 task_sigmas(model, task))
    assert torch.allclose(ours_sigmas, pipe.scheduler.sigmas.float(), atol=1e-6)
    samples = sample_task(model, task, _Quiet())
    assert samples is not None and (samples - noise).abs().mean() > 0.1  # the model did move the latent
    ours = model.latent_format.to_vae(pipe.vae, samples)
    assert torch.allclose(ours, reference, atol=PARITY_ATOL), (ours - reference).abs().max()


def test_gguf_transformer_loads_with_its_parts_from_their_folders(files: dict[str, Path], model: Any,
                                                                   tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    path = tiny_flux2.write_tiny("flux2-klein", tmp_path / "tiny-klein-Q8_0.gguf", seed=0, gguf="Q8_0")
    components = ComponentDirs(text_encoders=(files["te_dir"],), vaes=(files["vae_dir"],), tokenizers=files["tok_dir"])
    quantized = load_model(path, CPU, files["cache"], components=components)
    assert quantized.arch is ModelArch.FLUX2_KLEIN
    ours = _pixels(run_task(quantized, _task(), _Quiet())).astype(float)
    reference = _pixels(run_task(model, _task(), _Quiet())).astype(float)
    assert np.abs(ours - reference).mean() < 8  # Q8_0 rounding, same model


def test_emphasis_weights_the_prompt_tokens(model: Any) -> None:
    encode = flux2_flow.FLOW.encode
    plain = encode(model, ["a red fox"], "Original")["a red fox"].tokens
    weighted = encode(model, ["a (red:1.5) fox"], "Original")["a (red:1.5) fox"].tokens
    ignored = encode(model, ["a (red:1.5) fox"], "Ignore")["a (red:1.5) fox"].tokens
    literal = encode(model, ["a (red:1.5) fox"], "None")["a (red:1.5) fox"].tokens
    assert plain.shape == weighted.shape == (1, flux2_flow.MAX_SEQUENCE_LENGTH, 96)
    assert torch.equal(ignored, plain)  # brackets dropped, no weight: the plain prompt's tokens
    assert not torch.allclose(weighted, plain) and not torch.allclose(literal, plain)


def test_latent_format_round_trips_through_the_vae_layout(model: Any) -> None:
    fmt, vae = model.latent_format, model.pipeline.vae
    vae_latents = torch.randn(2, 32, 8, 12, generator=torch.Generator().manual_seed(0))
    sampler = fmt.from_vae(vae, vae_latents)
    assert sampler.shape == (2, 128, 4, 6)
    assert torch.allclose(fmt.to_vae(vae, sampler), vae_latents, atol=1e-5)

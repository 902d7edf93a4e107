"""The memory planner against what the real engine allocates, and its predictions at real sizes.

On the CPU, torch's profiler records every allocation and free of the allocator (its ``[memory]``
events); their running sum from the start of a job is the memory the job's tensors held at each
moment. The model's weights were allocated before the profile started, so the job's peak is the
exact weight bytes plus the largest running sum. The planner's full-mode prediction must come
within 25% of that, for the job as a whole and for its activations alone (the part the planner
derives from the architecture rather than reads).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from modules.engine.devices import DevicePolicy, MemoryMode, choose_device
from modules.engine.generate import ImageTask, run_task, sample_task
from modules.engine.hires import HiresPlan, run_hires
from modules.engine.loader import LoadedModel, load_model
from modules.engine.sampling.loop import NoisePlan
from modules.engine.vram_plan import HiresShape, Phase, plan_job, size_text
from modules.engine.vram_weights import pipeline_weights
from modules.samplers import ScheduleType, resolve_sampler
from modules.upscalers import find_upscaler

TOLERANCE = 0.25
CONFIGS = Path(__file__).resolve().parents[2] / "modules" / "engine" / "model_configs"


class _Quiet:
    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _task(width: int, height: int, batch: int) -> ImageTask:
    sampler = resolve_sampler("Euler")
    assert sampler is not None
    return ImageTask(prompt="a red cube on a table", negative_prompt="blurry", sampler=sampler[0],
                     schedule=ScheduleType.AUTOMATIC, steps=2, cfg_scale=7.0, width=width, height=height,
                     clip_skip=1, noise=NoisePlan(seeds=tuple(range(batch))))


def _profiled_activation_peak(job) -> int:
    """The largest running sum of the allocator's allocations and frees while ``job`` runs."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        job()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    alive = peak = 0
    for event in events:
        alive += event.nbytes()  # negative for a free
        peak = max(peak, alive)
    return peak


@pytest.fixture(scope="module")
def loaded(tiny_models, tmp_path_factory) -> dict[str, LoadedModel]:
    device = choose_device(DevicePolicy(use_cpu=True))
    cache = tmp_path_factory.mktemp("config-cache")
    return {"sd15": load_model(tiny_models.sd15_file, device, cache),
            "sdxl": load_model(tiny_models.sdxl_dir, device, cache)}


@pytest.mark.parametrize(("arch", "size", "batch"), [
    ("sd15", 64, 1), ("sd15", 128, 2), ("sdxl", 64, 1), ("sdxl", 128, 2)])
def test_full_mode_prediction_is_within_a_quarter_of_the_profiled_peak(loaded, arch: str, size: int,
                                                                       batch: int) -> None:
    model = loaded[arch]
    task = _task(size, size, batch)
    run_task(model, task, _Quiet())  # once unprofiled: lazy one-time allocations are not the job's
    activations = _profiled_activation_peak(lambda: run_task(model, task, _Quiet()))
    weights = pipeline_weights(model.pipeline.components).total
    plan = plan_job(model, size, size, batch).for_mode(MemoryMode.FULL)
    measured = weights + activations
    assert plan.peak.weights_bytes == weights  # full mode keeps every weight resident, read exactly
    assert abs(plan.peak_bytes - measured) <= TOLERANCE * measured, (plan.breakdown(), measured)
    assert abs(plan.peak.activation_bytes - activations) <= TOLERANCE * activations, (plan.breakdown(), activations)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_the_sampling_phase_alone_is_predicted_too(loaded, arch: str) -> None:
    """The tiny models peak in the VAE decode; the UNet's estimate is checked on sampling alone."""
    model = loaded[arch]
    task = _task(128, 128, 2)
    sample_task(model, task, _Quiet())
    activations = _profiled_activation_peak(lambda: sample_task(model, task, _Quiet()))
    plan = plan_job(model, 128, 128, 2).for_mode(MemoryMode.FULL)
    predicted = max(c.activation_bytes for c in plan.phases if c.phase in (Phase.TEXT, Phase.SAMPLING))
    assert abs(predicted - activations) <= TOLERANCE * activations, (predicted, activations)


def test_hires_fix_prediction_follows_the_second_pass(loaded) -> None:
    model = loaded["sd15"]
    first = _task(64, 64, 1)
    upscaler = find_upscaler("Latent")
    assert upscaler is not None
    second = HiresPlan(task=_task(128, 128, 1), upscaler=upscaler, upscale_size=(128, 128))

    def job() -> None:
        run_hires(model, first, second, _Quiet())

    job()
    activations = _profiled_activation_peak(job)
    plan = plan_job(model, 64, 64, 1, HiresShape(final_size=(128, 128), upscale_size=(128, 128)))
    full = plan.for_mode(MemoryMode.FULL)
    measured = pipeline_weights(model.pipeline.components).total + activations
    assert full.peak.phase is Phase.HIRES_DECODE  # the larger second pass, not the first, is the peak
    assert abs(full.peak_bytes - measured) <= TOLERANCE * measured, (full.breakdown(), measured)
    assert full.peak_bytes > plan_job(model, 64, 64, 1).for_mode(MemoryMode.FULL).peak_bytes


def test_the_cpu_shares_memory_so_the_modes_differ_only_in_what_they_would_keep(loaded) -> None:
    plan = plan_job(loaded["sdxl"], 128, 128, 2)
    full, medvram, lowvram = (plan.for_mode(m) for m in (MemoryMode.FULL, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM))
    assert full.peak_bytes >= medvram.peak_bytes >= lowvram.peak_bytes
    assert full.overhead_bytes == 0  # no CUDA context on the CPU
    assert plan.for_mode(MemoryMode.MEDVRAM_SDXL).mode is MemoryMode.MEDVRAM  # an SDXL model


def _real_sd15_fp16(device_type: str = "cuda"):
    """SD1.5's real architecture, fp16, on the meta device: exact weight sizes, nothing allocated."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules.engine import vram_activations as act
    from modules.engine.vram_plan import ModelProfile

    folder = CONFIGS / "sd15"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(json.loads((folder / "unet" / "config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((folder / "vae" / "config.json").read_text()))
        text_config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
        components = {"unet": unet.half(), "vae": vae.half(), "text_encoder": CLIPTextModel(text_config).half()}
    return ModelProfile(weights=pipeline_weights(components), unet=act.UnetShape.of(unet.config),
                        vae=act.VaeShape.of(vae.config), text=(act.TextShape.of(text_config),),
                        unet_dtype_bytes=2, vae_dtype_bytes=2, text_dtype_bytes=2, device_type=device_type,
                        is_sdxl=False)


def test_real_sd15_in_half_precision_predicts_what_a_gpu_shows() -> None:
    from modules.engine.vram_plan import JobShape, plan_for

    profile = _real_sd15_fp16()
    weights = {c.name: c.bytes for c in profile.weights.components}
    assert weights["unet"] == pytest.approx(1.72e9, rel=0.01)  # 860 M parameters in fp16
    assert weights["text_encoder"] == pytest.approx(246e6, rel=0.01)
    assert weights["vae"] == pytest.approx(167e6, rel=0.01)
    full = plan_for(profile, JobShape(512, 512, 1)).for_mode(MemoryMode.FULL)
    # About 2.6 GiB in use at 512x512 on a GPU, the CUDA context included.
    assert 2.2 <= full.device_bytes / 1024**3 <= 3.2, full.breakdown()
    big = plan_for(profile, JobShape(1024, 1024, 1)).for_mode(MemoryMode.FULL)
    assert big.peak.phase is Phase.DECODE, big.breakdown()  # the VAE decode is the peak at 1024x1024
    assert size_text(big.device_bytes) in big.breakdown()

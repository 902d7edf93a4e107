"""The fast path compiles the UNet once, not once per job, and merges LoRAs into the weights.

torch.compile runs here with a backend that only counts the graphs it is handed (dynamo's tracing
and guards are the real ones; inductor's kernels and CUDA graphs need a GPU): a new size, batch,
CFG 1 (a batch half as big), a longer prompt (another token chunk) or a new LoRA weight must not
each cost a compilation.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from modules.devtools.tiny_lora import write_tiny_lora
from modules.engine.devices import DeviceInfo
from modules.engine.fast_path import apply_fast_path
from modules.engine.generate import ImageTask, run_task
from modules.engine.loader import load_model
from modules.engine.lora import LoraUse, apply_loras
from modules.engine.sampling.loop import NoisePlan
from modules.samplers import ScheduleType, resolve_sampler

CPU = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")


class _Quiet:
    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _task(**changes: Any) -> ImageTask:
    task = ImageTask(prompt="a lighthouse", negative_prompt="", sampler=resolve_sampler("Euler")[0],  # type: ignore[index]
                     schedule=ScheduleType.AUTOMATIC, steps=2, cfg_scale=7.0, width=64, height=64, clip_skip=1,
                     noise=NoisePlan(seeds=(1,)))
    return replace(task, **changes)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image.convert("RGB")).astype(int) for image in images])


@pytest.fixture(scope="module")
def lora(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_lora(tiny_models.sd15_file, tmp_path_factory.mktemp("lora") / "style.safetensors", seed=3,
                           scale=4.0)


def test_new_sizes_batches_prompts_and_lora_weights_reuse_the_compiled_unet(tiny_models, lora: Path,
                                                                            tmp_path: Path) -> None:
    model = load_model(tiny_models.sd15_file, CPU, tmp_path)
    compiled: list[int] = []

    def counting_backend(graph: torch.fx.GraphModule, inputs: list[Any]) -> Any:
        compiled.append(len(graph.graph.nodes))
        return graph.forward

    apply_fast_path(model, backend=counting_backend)
    jobs = [_task(), _task(width=128, height=192), _task(noise=NoisePlan(seeds=(1, 2, 3))),
            _task(prompt="a lighthouse on a cliff, " * 12), _task(cfg_scale=1.0, noise=NoisePlan(seeds=(4, 5))),
            _task(cfg_scale=1.0), _task(width=96)]
    for job in jobs:
        run_task(model, job, _Quiet())
    # Dynamic shapes: one graph for all of them, plus at most one where diffusers' UNet takes another
    # branch (a latent side that is not a multiple of 8 is upsampled to an explicit size) and one for
    # a batch of exactly one (CFG 1, one image), a size torch always specialises.
    assert 1 <= len(compiled) <= 3, compiled
    # A LoRA's first use adds adapter layers to the UNet (new modules: its own compilations, once);
    # its weights, merged into the UNet's, are then ordinary tensors: changing them compiles nothing.
    apply_loras(model.pipeline, [LoraUse("style", lora, 0.5, 0.5)], fuse=True)
    for job in jobs:
        run_task(model, job, _Quiet())
    with_lora = len(compiled)
    for weight in (0.9, -0.4):
        apply_loras(model.pipeline, [LoraUse("style", lora, weight, weight)], fuse=True)
        for job in jobs:
            run_task(model, job, _Quiet())
    assert len(compiled) == with_lora


def test_a_fused_lora_makes_the_unfused_image_and_unfuses_cleanly(tiny_models, lora: Path, tmp_path: Path) -> None:
    model = load_model(tiny_models.sd15_file, CPU, tmp_path)
    plain = _pixels(run_task(model, _task(), _Quiet()))
    use = LoraUse("style", lora, 0.8, 0.8)
    apply_loras(model.pipeline, [use])
    unfused = _pixels(run_task(model, _task(), _Quiet()))
    apply_loras(model.pipeline, [use], fuse=True)
    fused = _pixels(run_task(model, _task(), _Quiet()))
    apply_loras(model.pipeline, [replace(use, unet_weight=0.3, te_weight=0.3)], fuse=True)
    apply_loras(model.pipeline, [], fuse=True)
    back = _pixels(run_task(model, _task(), _Quiet()))
    assert np.abs(unfused - plain).max() > 10  # the LoRA shows
    assert np.abs(fused - unfused).max() <= 2  # merged weights compute the same image
    assert np.abs(back - plain).max() <= 1  # and come out again

"""``--text-encoder-cpu``: the flow families' T5 / LLM text encoders stay in RAM and run on the CPU,
only their embeddings go to the execution device.

The forward hooks are checked with the ``meta`` device standing in for the GPU (an output that
reached it is on ``meta``); whole generations run with the CPU standing in for the GPU, in every
memory mode, and must give the image the flag-less full mode gives, with the encoder's weights
still real tensors in RAM where the other parts are offloaded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from modules.cmd_args import parse_flags
from modules.devtools import tiny_flux
from modules.devtools.tiny_model import TinyArch
from modules.engine.devices import DeviceInfo, DevicePolicy, MemoryMode, choose_device
from modules.engine.generate import ImageTask, run_task
from modules.engine.loader import LoadedModel, load_model
from modules.engine.model_detect import ModelArch
from modules.engine.placement import cpu_encoder_names, keep_on_cpu, kept_on_cpu
from modules.engine.sampling.loop import NoisePlan
from modules.samplers import ScheduleType, resolve_sampler
from modules.services.device_flags import device_policy

CPU = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test")
META = DeviceInfo(device=torch.device("meta"), dtype=torch.float16, reason="a stand-in GPU", text_encoders_on_cpu=True)


class _Quiet:
    def on_step(self, step: int, total: int, denoised: torch.Tensor) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def _image(model: LoadedModel) -> np.ndarray:
    sampler = resolve_sampler("Euler")[0]  # type: ignore[index]
    task = ImageTask(prompt="a (red:1.2) house", negative_prompt="", sampler=sampler,
                     schedule=ScheduleType.SIMPLE, steps=3, cfg_scale=1.0, width=64, height=64, clip_skip=1,
                     noise=NoisePlan(seeds=(11,)))
    images = run_task(model, task, _Quiet())
    assert images is not None
    return np.stack([np.asarray(image.convert("RGB")).astype(int) for image in images])


@pytest.fixture(scope="module")
def flux_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("te-cpu")
    return tiny_flux.write_tiny(TinyArch.FLUX_SCHNELL, root / "tiny-flux.safetensors", seed=2)


@pytest.fixture(scope="module")
def reference(flux_file: Path) -> np.ndarray:
    image = _image(load_model(flux_file, CPU, flux_file.parent / "cache"))
    assert image.std() > 1  # an image, not a flat field
    return image


def test_the_flag_reaches_the_device_choice() -> None:
    flags = parse_flags(["--text-encoder-cpu"], {})
    assert flags.text_encoder_cpu and not parse_flags([], {}).text_encoder_cpu
    info = choose_device(replace(device_policy(flags), use_cpu=True))
    assert info.text_encoders_on_cpu and "text encoders on the CPU" in info.describe()
    assert not choose_device(DevicePolicy(use_cpu=True)).text_encoders_on_cpu


def test_only_the_t5_of_a_flux_pipeline_is_kept_on_the_cpu() -> None:
    pipe = tiny_flux.build_tiny_flux_pipeline(TinyArch.FLUX_SCHNELL, seed=0)
    assert cpu_encoder_names(pipe, ModelArch.FLUX_SCHNELL) == ("text_encoder_2",)  # T5; CLIP-L stays
    assert cpu_encoder_names(pipe, ModelArch.SD1) == ()  # not a flow family: nothing moves


def test_hooks_move_the_outputs_to_the_execution_device_in_its_dtype() -> None:
    pipe = tiny_flux.build_tiny_flux_pipeline(TinyArch.FLUX_SCHNELL, seed=0)
    pipe.text_encoder_2.to(torch.float16)  # as loaded for a half-precision GPU
    assert keep_on_cpu(pipe, ModelArch.FLUX_SCHNELL, META) == ("text_encoder_2",)
    t5 = pipe.text_encoder_2
    assert kept_on_cpu(t5) and not kept_on_cpu(pipe.text_encoder)
    assert {p.device.type for p in t5.parameters()} == {"cpu"}
    dtypes = {p.dtype for p in t5.parameters()}
    assert torch.bfloat16 in dtypes and torch.float16 not in dtypes  # half weights run in bfloat16 on the CPU
    with torch.inference_mode():
        out = t5(torch.tensor([[5, 6, 7, 1]]), output_hidden_states=True)
    assert out.last_hidden_state.device.type == "meta" and out.last_hidden_state.dtype == torch.float16
    assert out[0].device.type == "meta"  # the tuple view of the ModelOutput agrees with its attribute
    assert len(out.hidden_states) > 1 and all(h.device.type == "meta" for h in out.hidden_states)
    keep_on_cpu(pipe, ModelArch.FLUX_SCHNELL, META)  # placing again (a memory-mode change) adds no second hook
    assert len(t5._forward_hooks) == 1 and len(t5._forward_pre_hooks) == 1


@pytest.mark.parametrize("mode", [MemoryMode.FULL, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_a_flux_image_is_unchanged_with_the_flag(flux_file: Path, reference: np.ndarray, mode: MemoryMode) -> None:
    device = replace(CPU, memory=mode, text_encoders_on_cpu=True)
    model = load_model(flux_file, device, flux_file.parent / "cache")
    pipe = model.pipeline
    assert kept_on_cpu(pipe.text_encoder_2) and not kept_on_cpu(pipe.text_encoder)
    assert np.array_equal(_image(model), reference)
    assert model.execution_device.type == "cpu"
    t5_weights = list(pipe.text_encoder_2.parameters())
    assert all(p.device.type == "cpu" for p in t5_weights)  # real tensors in RAM, never offloaded
    assert not any(hasattr(m, "_hf_hook") for m in pipe.text_encoder_2.modules())
    if mode is MemoryMode.LOWVRAM:
        assert any(p.is_meta for p in pipe.transformer.parameters())  # the rest really was offloaded
    if mode is MemoryMode.MEDVRAM:
        assert hasattr(pipe.transformer, "_hf_hook")
        assert all(h.model is not pipe.text_encoder_2 for h in pipe._all_hooks)
        # the chain skips the T5: the transformer's hook now sends CLIP-L back to RAM before it runs
        transformer_hook = next(h for h in pipe._all_hooks if h.model is pipe.transformer)
        assert transformer_hook.hook.prev_module_hook.model is pipe.text_encoder


@pytest.mark.parametrize("arch", [TinyArch.SD35, TinyArch.ZIMAGE, TinyArch.FLUX2_KLEIN])
def test_the_t5_or_llm_of_the_other_flow_families_runs_on_the_cpu(arch: TinyArch, tmp_path: Path) -> None:
    from modules.devtools.tiny_model import write_tiny_model

    file = write_tiny_model(arch, tmp_path / f"tiny-{arch.value}.safetensors", seed=1)
    plain = _image(load_model(file, CPU, tmp_path / "cache"))
    model = load_model(file, replace(CPU, text_encoders_on_cpu=True), tmp_path / "cache")
    kept = [name for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
            if getattr(model.pipeline, name, None) is not None and kept_on_cpu(getattr(model.pipeline, name))]
    assert kept == ["text_encoder_3" if arch is TinyArch.SD35 else "text_encoder"]  # the T5 / the Qwen3 LLM
    assert np.array_equal(_image(model), plain)

"""The VRAM planner and placement accept a flow family's pipeline (a transformer, a T5 encoder)."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType

import pytest
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from modules.engine.devices import DeviceInfo, MemoryMode
from modules.engine.latent_format import LatentFormat
from modules.engine.loaded_model import LoadedModel
from modules.engine.model_detect import ModelArch
from modules.engine.placement import place, replace_mode
from modules.engine.vram_plan import Phase, plan_job
from modules.engine.vram_weights import pipeline_weights


def _tiny_flux() -> FluxPipeline:
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(16,),
                        down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                        norm_num_groups=8, layers_per_block=1)
    clip = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, projection_dim=32, vocab_size=100))
    t5 = T5EncoderModel(T5Config(d_model=64, d_ff=128, num_layers=2, num_heads=2, d_kv=32, vocab_size=100))
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=clip, tokenizer=None,
                        text_encoder_2=t5, tokenizer_2=None, transformer=transformer)


def _model(pipe: FluxPipeline, memory: MemoryMode) -> LoadedModel:
    device = DeviceInfo(device=torch.device("cpu"), dtype=torch.float32, reason="test", memory=memory)
    return LoadedModel(path=Path("tiny-flux.safetensors"), arch=ModelArch.FLUX_DEV, pipeline=pipe, device=device,
                       load_seconds=0.0, base_scheduler_config=MappingProxyType({}), sigmas=None,
                       latent_format=LatentFormat())


@pytest.fixture(scope="module")
def pipe() -> FluxPipeline:
    return _tiny_flux()


def test_planner_counts_the_transformer_and_t5(pipe):
    model = _model(pipe, MemoryMode.FULL)
    assert model.denoiser_network is pipe.transformer
    plan = plan_job(model, 512, 512, 1)
    weights = pipeline_weights(pipe.components)
    full = plan.for_mode(MemoryMode.FULL)
    medvram = plan.for_mode(MemoryMode.MEDVRAM)
    sampling = next(p for p in medvram.phases if p.phase is Phase.SAMPLING)
    text = next(p for p in medvram.phases if p.phase is Phase.TEXT)
    # Under medvram only the transformer is on the device while sampling: the T5 was offloaded after encoding.
    assert sampling.weights_bytes == weights.bytes_of("transformer")
    assert text.weights_bytes == weights.bytes_of("text_encoder", "text_encoder_2")
    assert full.peak.weights_bytes == weights.total
    assert medvram.peak_bytes < full.peak_bytes
    # Activations grow with the image size (the transformer's image tokens).
    bigger = plan_job(model, 1024, 1024, 1).for_mode(MemoryMode.FULL)
    big_sampling = next(p for p in bigger.phases if p.phase is Phase.SAMPLING)
    small_sampling = next(p for p in full.phases if p.phase is Phase.SAMPLING)
    assert big_sampling.activation_bytes > 2.5 * small_sampling.activation_bytes  # 4x the image tokens


@pytest.mark.parametrize("memory", [MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_placement_offloads_a_flow_pipeline_and_back(memory):
    pipe = _tiny_flux()
    device = _model(pipe, memory).device
    place(pipe, ModelArch.FLUX_DEV, device)
    hooked = [name for name in ("transformer", "text_encoder_2", "vae")
              if hasattr(getattr(pipe, name), "_hf_hook")]
    assert hooked == ["transformer", "text_encoder_2", "vae"]
    replace_mode(pipe, ModelArch.FLUX_DEV, _model(pipe, MemoryMode.FULL).device)
    assert not any(p.is_meta for p in pipe.transformer.parameters())
    assert not hasattr(pipe.text_encoder_2, "_hf_hook") or pipe.text_encoder_2._hf_hook is None

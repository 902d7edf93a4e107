"""Tiny random-weight SD 2.x models (the eps 512 base and the v-prediction 768 kind) for tests.

The layout is SD 2.x's: an OpenCLIP text tower (``cond_stage_model.model.*``, gelu, q/k/v packed
into ``in_proj``, its last layer present in the file but unused as the UNet sees the penultimate
one), a UNet with linear projections and 64-wide heads. Both kinds share weights for a seed, only
what they predict differs, so the same weights with different markers make different images.

A single file says which kind it is with a :class:`Sd2Marker`: SAI ModelSpec keys in the header
(the default, so the file is self-contained), A1111's ``.yaml`` beside it, or nothing (it then
loads as v, the common SD 2.x).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from modules.devtools.ldm_keys import sd2_pipeline_to_ldm
from modules.devtools.tiny_model import TinyArch, load_clip_tokenizer

_TEXT_WIDTH = 64
_TEXT_LAYERS = 3  # in the file; the diffusers encoder has one fewer (penultimate-layer conditioning)

_UNET = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": _TEXT_WIDTH,
    "attention_head_dim": (1, 1),  # SD 2.x configs list heads per level: 64-wide heads, at least one
    "use_linear_projection": True,
    "upcast_attention": True,  # as the shipped SD 2.x configs say
    "norm_num_groups": 32,
}

_VAE = {
    "block_out_channels": (32, 32, 32, 32),  # four levels: latents are H/8 as in the real VAE
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}

# The scheduler values of stabilityai's SD 2.x scheduler_config.json; only prediction_type differs.
_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}
_PREDICTION = {TinyArch.SD2: "epsilon", TinyArch.SD2_V: "v_prediction"}
# SAI ModelSpec (github.com/Stability-AI/ModelSpec): what kohya's trainers write for SD 2.x.
_MODELSPEC = {
    TinyArch.SD2: {"modelspec.prediction_type": "epsilon", "modelspec.architecture": "stable-diffusion-v2-512"},
    TinyArch.SD2_V: {"modelspec.prediction_type": "v", "modelspec.architecture": "stable-diffusion-v2-768-v"},
}
# A1111's configs (v2-inference.yaml / v2-inference-v.yaml), cut to the part that tells them apart.
_A1111_YAML = {
    TinyArch.SD2: "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
                  "    linear_start: 0.00085\n    linear_end: 0.0120\n",
    TinyArch.SD2_V: "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
                    "    parameterization: \"v\"\n    linear_start: 0.00085\n    linear_end: 0.0120\n",
}


class Sd2Marker(enum.Enum):
    """How a tiny single file says whether it predicts eps or v."""

    HEADER = "header"  # modelspec.* keys in the safetensors header
    YAML = "yaml"  # A1111's .yaml beside the file (same stem)
    NONE = "none"  # no marker: loads as v


def _arch(arch: TinyArch | str) -> TinyArch:
    # By value: run as ``python -m modules.devtools.tiny_model`` the caller's enum is __main__'s copy.
    return TinyArch(getattr(arch, "value", arch))


@contextmanager
def _seeded(seed: int, component: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + component)
        yield


def _text_config(layers: int) -> CLIPTextConfig:
    return CLIPTextConfig(hidden_size=_TEXT_WIDTH, intermediate_size=_TEXT_WIDTH * 2, num_hidden_layers=layers,
                          num_attention_heads=max(1, _TEXT_WIDTH // 64), max_position_embeddings=77,
                          vocab_size=49408, hidden_act="gelu", projection_dim=_TEXT_WIDTH,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=0)


def _text_tower(seed: int) -> tuple[CLIPTextModel, dict[str, torch.Tensor]]:
    """The pipeline's encoder and the whole OpenCLIP tower it was cut from (as the file holds it)."""
    with _seeded(seed, 2):
        full = CLIPTextModel(_text_config(_TEXT_LAYERS))
    with _seeded(seed, 3):
        projection = torch.randn(_TEXT_WIDTH, _TEXT_WIDTH) * _TEXT_WIDTH**-0.5
    encoder = CLIPTextModel(_text_config(_TEXT_LAYERS - 1))
    wanted = encoder.state_dict()
    encoder.load_state_dict({k: v for k, v in full.state_dict().items() if k in wanted}, strict=True)
    tower = {k: v for k, v in full.state_dict().items() if not k.endswith("position_ids")}
    tower["text_projection.weight"] = projection
    return encoder, tower


def _build(arch: TinyArch, seed: int) -> tuple[StableDiffusionPipeline, dict[str, torch.Tensor]]:
    if arch not in _PREDICTION:
        raise ValueError(f"{arch.value} is not an SD 2.x architecture")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    with _seeded(seed, 0):
        unet = UNet2DConditionModel(**_UNET)
    with _seeded(seed, 1):
        vae = AutoencoderKL(**_VAE, force_upcast=True)
    encoder, tower = _text_tower(seed)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=encoder, tokenizer=load_clip_tokenizer("!"), unet=unet,
        scheduler=DDIMScheduler(**_SCHEDULER, prediction_type=_PREDICTION[arch]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, tower


def build_tiny_pipeline(arch: TinyArch, seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight fp32 CPU SD 2.x pipeline; equal seeds give equal weights for both kinds."""
    return _build(_arch(arch), seed)[0]


def _save_atomic(state: Mapping[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    tmp_name = str(out.with_name(f".{out.name}.{os.getpid()}.tmp"))
    try:
        save_file(dict(state), tmp_name, metadata=metadata)
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def write_tiny(arch: TinyArch, out: Path, seed: int = 0, gguf: str | None = None, *,
               marker: Sd2Marker = Sd2Marker.HEADER) -> Path:
    """Write a tiny SD 2.x model: a ``.safetensors`` single file (LDM keys, ``marker`` saying eps or
    v) or else a diffusers folder (its scheduler config says it)."""
    arch = _arch(arch)
    if gguf is not None:
        raise ValueError(f"--gguf is for the flow families' transformers, not {arch.value}")
    pipe, tower = _build(arch, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".safetensors":
        pipe.save_pretrained(out, safe_serialization=True)
        return out
    metadata = {"format": "pt"} | (_MODELSPEC[arch] if marker is Sd2Marker.HEADER else {})
    _save_atomic(sd2_pipeline_to_ldm(pipe, tower), out, metadata)
    sidecar = out.with_suffix(".yaml")
    if marker is Sd2Marker.YAML:
        sidecar.write_text(_A1111_YAML[arch], encoding="utf-8")
    elif sidecar.exists():
        sidecar.unlink()  # a stale marker from an earlier write would override this one
    return out

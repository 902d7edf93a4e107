"""Tiny random-weight Stable Diffusion models (SD1.5, SD1.5 inpainting, SDXL) for tests.

Each model is a few MB and builds in about a second on CPU. The shapes follow the rules the
checkpoint loader uses to infer a config (64-wide attention heads, a 4-level VAE so latents are
H/8, two SDXL text encoders of different widths), so a tiny model exercises the same loading
path as a real one. Weights are seeded: the same seed writes byte-identical files.

Usage::

    python -m modules.devtools.tiny_model --arch sd15 --out models/Stable-diffusion/tiny.safetensors
    python -m modules.devtools.tiny_model --arch sdxl --out /tmp/tiny-sdxl   # a diffusers folder
"""

from __future__ import annotations

import argparse
import enum
import gzip
import importlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from modules.devtools.ldm_keys import pipeline_to_ldm

log = logging.getLogger(__name__)

CLIP_BPE_DIR = Path(__file__).resolve().parents[1] / "engine" / "model_configs" / "clip_bpe"
_BPE_FILES = ("vocab.json", "merges.txt")
_MAX_LENGTH = 77
_VOCAB_SIZE = 49408


class TinyArch(enum.Enum):
    """Which real architecture a tiny model imitates."""

    SD15 = "sd15"
    SDXL = "sdxl"
    SD15_INPAINT = "sd15-inpaint"
    SD2 = "sd2"
    SD2_V = "sd2-v"
    SD35 = "sd35"  # SD 3.5 Large's layout
    SD35_MEDIUM = "sd35-medium"
    FLUX_DEV = "flux-dev"
    FLUX_SCHNELL = "flux-schnell"
    FLUX_FILL = "flux-fill"
    FLUX2_KLEIN = "flux2-klein"
    ZIMAGE = "zimage"


# The families whose tiny models are written by their own module's
# ``write_tiny(arch: TinyArch, out: Path, seed: int, gguf: str | None) -> Path``.
_FAMILY_WRITERS = {
    TinyArch.SD2: "modules.devtools.tiny_sd2",
    TinyArch.SD2_V: "modules.devtools.tiny_sd2",
    TinyArch.SD35: "modules.devtools.tiny_sd3",
    TinyArch.SD35_MEDIUM: "modules.devtools.tiny_sd3",
    TinyArch.FLUX_DEV: "modules.devtools.tiny_flux",
    TinyArch.FLUX_SCHNELL: "modules.devtools.tiny_flux",
    TinyArch.FLUX_FILL: "modules.devtools.tiny_flux",
    TinyArch.FLUX2_KLEIN: "modules.devtools.tiny_flux2",
    TinyArch.ZIMAGE: "modules.devtools.tiny_zimage",
}


# Scheduler settings of the real models' scheduler_config.json (betas, offset, spacing).
_SCHEDULER_BASE: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}

_VAE: dict[str, Any] = {
    # Four levels, as in the real VAE, so latents are H/8 (two levels would give H/2).
    "block_out_channels": (32, 32, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
}

_SD15_UNET: dict[str, Any] = {
    "sample_size": 8,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "use_linear_projection": False,
}

_SDXL_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2),
    "attention_head_dim": (1, 1),  # 64-wide heads: max(1, channels // 64) per level
    "cross_attention_dim": 32 + 64,  # both text encoders' hidden states, concatenated
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,  # six size/crop numbers + pooled text
    "norm_num_groups": 32,
}


def _text_config(hidden: int, act: str, projection_dim: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=3,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=_MAX_LENGTH,
        vocab_size=_VOCAB_SIZE,
        hidden_act=act,
        projection_dim=projection_dim,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


@contextmanager
def _seeded(seed: int, component: int) -> Iterator[None]:
    """Seed torch's default generator for one component, leaving the caller's RNG state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + component)
        yield


def _read_bpe(folder: Path, name: str) -> bytes:
    plain, packed = folder / name, folder / f"{name}.gz"
    if plain.is_file():
        return plain.read_bytes()
    if packed.is_file():
        return gzip.decompress(packed.read_bytes())
    raise FileNotFoundError(f"CLIP tokenizer file {name} (or {name}.gz) not found in {folder}")


def load_clip_tokenizer(pad_token: str, bpe_dir: Path | None = None) -> CLIPTokenizer:
    """The real 49,408-token CLIP tokenizer from the shipped BPE files (plain or gzipped)."""
    folder = bpe_dir or CLIP_BPE_DIR
    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as tmp:
        for name in _BPE_FILES:
            (Path(tmp) / name).write_bytes(_read_bpe(folder, name))
        return CLIPTokenizer.from_pretrained(
            tmp, pad_token=pad_token, model_max_length=_MAX_LENGTH, local_files_only=True
        )


def _vae(scaling_factor: float, force_upcast: bool) -> AutoencoderKL:
    return AutoencoderKL(**_VAE, scaling_factor=scaling_factor, force_upcast=force_upcast)


def _build_sd15(arch: TinyArch, seed: int, bpe_dir: Path | None) -> DiffusionPipeline:
    in_channels = 9 if arch is TinyArch.SD15_INPAINT else 4
    with _seeded(seed, 0):
        unet = UNet2DConditionModel(**_SD15_UNET, in_channels=in_channels)
    with _seeded(seed, 1):
        vae = _vae(scaling_factor=0.18215, force_upcast=True)
    with _seeded(seed, 2):
        text_encoder = CLIPTextModel(_text_config(32, "quick_gelu", 32))
    pipeline_class = StableDiffusionInpaintPipeline if arch is TinyArch.SD15_INPAINT else StableDiffusionPipeline
    return pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer("<|endoftext|>", bpe_dir),
        unet=unet,
        scheduler=PNDMScheduler(**_SCHEDULER_BASE, skip_prk_steps=True, set_alpha_to_one=False),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(seed: int, bpe_dir: Path | None) -> DiffusionPipeline:
    with _seeded(seed, 0):
        unet = UNet2DConditionModel(**_SDXL_UNET)
    with _seeded(seed, 1):
        vae = _vae(scaling_factor=0.13025, force_upcast=False)
    with _seeded(seed, 2):
        text_encoder = CLIPTextModel(_text_config(32, "quick_gelu", 32))
    with _seeded(seed, 3):
        # Wider than the first encoder on purpose: the single-file loader tells them apart by width.
        text_encoder_2 = CLIPTextModelWithProjection(_text_config(64, "gelu", 32))
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=load_clip_tokenizer("<|endoftext|>", bpe_dir),
        tokenizer_2=load_clip_tokenizer("!", bpe_dir),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**_SCHEDULER_BASE, interpolation_type="linear"),
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def build_tiny_pipeline(arch: TinyArch, seed: int = 0, *, bpe_dir: Path | None = None) -> DiffusionPipeline:
    """A random-weight fp32 CPU pipeline of ``arch``; equal seeds give equal weights.

    ``bpe_dir`` overrides where the CLIP tokenizer files are read from (default: the shipped copy).
    """
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    arch = TinyArch(arch)
    if arch in _FAMILY_WRITERS:
        raise ValueError(f"{arch.value} is built by {_FAMILY_WRITERS[arch]}, not here")
    if arch is TinyArch.SDXL:
        pipe = _build_sdxl(seed, bpe_dir)
    else:
        pipe = _build_sd15(arch, seed, bpe_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _write_single_file(pipe: DiffusionPipeline, out: Path) -> None:
    """Write atomically, so a reader never sees half a checkpoint; no timestamps in metadata."""
    state = pipeline_to_ldm(pipe)
    tmp_name = str(out.with_name(f".{out.name}.{os.getpid()}.tmp"))
    try:
        save_file(state, tmp_name, metadata={"format": "pt"})
        os.replace(tmp_name, out)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def write_tiny_model(
    arch: TinyArch, out: Path, seed: int = 0, *, bpe_dir: Path | None = None, gguf: str | None = None
) -> Path:
    """Write a tiny model: a self-contained ``.safetensors`` single file (LDM keys for the Stable
    Diffusion UNets), a GGUF transformer (``gguf``: its quantisation, flow families), or else a
    diffusers folder."""
    started = time.perf_counter()
    arch = TinyArch(arch)
    out = Path(out)
    if arch in _FAMILY_WRITERS:
        writer = importlib.import_module(_FAMILY_WRITERS[arch]).write_tiny
        path = writer(arch, out, seed, gguf)
        log.info("wrote tiny %s model (seed %d) to %s in %.1fs", arch.value, seed, path, time.perf_counter() - started)
        return path
    if gguf is not None:
        raise ValueError(f"--gguf is for the flow families' transformers, not {arch.value}")
    pipe = build_tiny_pipeline(arch, seed, bpe_dir=bpe_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        _write_single_file(pipe, out)
    else:
        pipe.save_pretrained(out, safe_serialization=True)
    log.info("wrote tiny %s model (seed %d) to %s in %.1fs", arch.value, seed, out, time.perf_counter() - started)
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m modules.devtools.tiny_model",
        description="Write a tiny random-weight Stable Diffusion model for tests.",
    )
    parser.add_argument("--arch", required=True, choices=[a.value for a in TinyArch])
    parser.add_argument(
        "--out", required=True, type=Path, help="*.safetensors for an A1111-style file, else a diffusers folder"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bpe-dir", type=Path, default=None, help="folder with CLIP's vocab.json and merges.txt")
    parser.add_argument("--gguf", default=None, choices=["Q8_0", "Q4_0"],
                        help="write the transformer alone as a GGUF file of this quantisation (flow families)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: write one model and print its path."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = write_tiny_model(TinyArch(args.arch), args.out, args.seed, bpe_dir=args.bpe_dir, gguf=args.gguf)
    print(path)


if __name__ == "__main__":
    main()

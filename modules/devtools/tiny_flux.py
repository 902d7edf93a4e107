"""Tiny random-weight FLUX.1 dev / schnell / Fill models for tests.

The transformer has one double and one single block with two 32-wide heads; CLIP-L and T5 are two
layers of width 32 (CLIP with the real BPE tokenizer, T5 with a small generated Unigram tokenizer,
compatible with T5TokenizerFast); the VAE has FLUX.1's 16 latent channels and four levels (/8).
The configs are the shipped real ones with the widths changed, so a tiny model loads through the
same code as a real one. Weights are seeded: equal seeds give byte-identical files.

Formats: ``*.safetensors`` is one ComfyUI-style all-in-one file (``model.diffusion_model.*`` in
BFL names, ``text_encoders.clip_l.*``, ``text_encoders.t5xxl.*``, ``vae.*``, the T5 tokenizer in the
header); any other name a diffusers folder; :func:`write_tiny_parts` writes the separate files
users have (BFL transformer, clip_l, t5xxl, ae).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxFillPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

from modules.devtools.ldm_keys import VAE_PREFIX, vae_to_ldm
from modules.devtools.tiny_model import TinyArch
from modules.engine.families import flux_keys
from modules.engine.families import flux_parts as parts
from modules.engine.model_detect import ModelArch
from modules.engine.tokenizer_files import tokenizer_source

_ARCHS = {TinyArch.FLUX_DEV: ModelArch.FLUX_DEV, TinyArch.FLUX_SCHNELL: ModelArch.FLUX_SCHNELL,
          TinyArch.FLUX_FILL: ModelArch.FLUX_FILL}
_WIDTH = 32  # both text encoders' width: the transformer's pooled and joint attention inputs
_WORDS = ("a", "an", "the", "of", "on", "in", "with", "and", "photo", "painting", "cat", "dog", "red", "blue",
          "green", "house", "tree", "sky", "sea", "mountain", "big", "small", "old", "young", "man", "woman",
          "city", "night", "day", "forest", "flower", "car", "portrait", "landscape", "sunset", "river")
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,:;!?()[]'-"


def _arch(arch: TinyArch | str) -> ModelArch:
    return _ARCHS[TinyArch(arch)]


@contextmanager
def _seeded(seed: int, component: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 16 + component)
        yield


def tiny_t5_tokenizer_json() -> str:
    """A small Unigram tokenizer in T5's conventions (<pad> 0, </s> 1, <unk> 2, Metaspace, </s> appended)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + word, -3.0) for word in _WORDS]
    vocab += [(char, -6.0) for char in _CHARS]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                             special_tokens=[("</s>", 1)])
    return tokenizer.to_str()


def tiny_dims(arch: ModelArch) -> flux_keys.FluxDims:
    fill = arch is ModelArch.FLUX_FILL
    return flux_keys.FluxDims(in_channels=384 if fill else 64, out_channels=64, num_layers=1, num_single_layers=1,
                              head_dim=32, heads=2, joint_attention_dim=_WIDTH, pooled_projection_dim=_WIDTH,
                              guidance_embeds=arch is not ModelArch.FLUX_SCHNELL)


def _clip(arch: ModelArch) -> CLIPTextModel:
    config = parts.shipped_config(arch, "text_encoder/config.json")
    config.update(hidden_size=_WIDTH, intermediate_size=2 * _WIDTH, num_hidden_layers=2, num_attention_heads=1)
    return CLIPTextModel(CLIPTextConfig(**config))


def _t5(arch: ModelArch, vocab: int) -> T5EncoderModel:
    config = parts.shipped_config(arch, "text_encoder_2/config.json")
    config.update(vocab_size=vocab, d_model=_WIDTH, d_ff=2 * _WIDTH, num_layers=2, num_heads=2, d_kv=16)
    return T5EncoderModel(T5Config(**config))


def _vae(arch: ModelArch) -> AutoencoderKL:
    config = parts.shipped_config(arch, "vae/config.json")
    config.update(block_out_channels=[32] * 4, layers_per_block=1)
    return AutoencoderKL.from_config(config)


def build_tiny_flux_pipeline(arch: TinyArch | str, seed: int = 0) -> DiffusionPipeline:
    """A random-weight fp32 CPU FluxPipeline (FluxFillPipeline for flux-fill); equal seeds, equal weights."""
    model_arch = _arch(arch)
    tokenizer_2 = parts.t5_tokenizer_from_json(tiny_t5_tokenizer_json())
    with _seeded(seed, 0):
        transformer = FluxTransformer2DModel(**tiny_dims(model_arch).config())
    with _seeded(seed, 1):
        vae = _vae(model_arch)
    with _seeded(seed, 2):
        text_encoder = _clip(model_arch)
    with _seeded(seed, 3):
        text_encoder_2 = _t5(model_arch, len(tokenizer_2))
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        parts.shipped_config(model_arch, "scheduler/scheduler_config.json"))
    pipeline_class = FluxFillPipeline if model_arch is ModelArch.FLUX_FILL else FluxPipeline
    pipe = pipeline_class(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=parts.clip_tokenizer(),
                          text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _contiguous(state: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().contiguous().clone() for k, v in state.items()}


def transformer_bfl(pipe: DiffusionPipeline, prefix: str = "") -> dict[str, torch.Tensor]:
    dims = flux_keys.FluxDims(**_dims_fields(pipe))  # type: ignore[arg-type]
    return flux_keys.to_bfl(pipe.transformer.state_dict(), dims, prefix)


def _dims_fields(pipe: DiffusionPipeline) -> dict[str, object]:
    c = pipe.transformer.config
    return {"in_channels": c.in_channels, "out_channels": c.out_channels or c.in_channels,
            "num_layers": c.num_layers, "num_single_layers": c.num_single_layers, "head_dim": c.attention_head_dim,
            "heads": c.num_attention_heads, "joint_attention_dim": c.joint_attention_dim,
            "pooled_projection_dim": c.pooled_projection_dim, "guidance_embeds": c.guidance_embeds}


def clip_state(pipe: DiffusionPipeline, prefix: str = "") -> dict[str, torch.Tensor]:
    """CLIP-L as the original files name it: ``text_model.*`` (transformers >= 5.6 drops that level)."""
    state = {k: v for k, v in pipe.text_encoder.state_dict().items() if not k.endswith("position_ids")}
    return _contiguous({f"text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()}, prefix)


def t5_state(pipe: DiffusionPipeline, prefix: str = "") -> dict[str, torch.Tensor]:
    """T5 as t5xxl files store it: ``shared.weight`` once, the tied encoder embedding left out."""
    state = {k: v for k, v in pipe.text_encoder_2.state_dict().items() if k != "encoder.embed_tokens.weight"}
    return _contiguous(state, prefix)


def vae_state(pipe: DiffusionPipeline, prefix: str = "") -> dict[str, torch.Tensor]:
    """The VAE in the original (LDM) names, as ae.safetensors has them."""
    ldm = vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    return _contiguous({k.removeprefix(VAE_PREFIX): v for k, v in ldm.items()}, prefix)


def _save(state: dict[str, torch.Tensor], out: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write atomically, so a reader never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def write_single_file(pipe: DiffusionPipeline, out: Path) -> Path:
    """One self-contained ComfyUI-layout file: transformer, both encoders, VAE, T5 tokenizer."""
    state = transformer_bfl(pipe, flux_keys.COMFY_PREFIX)
    state.update(clip_state(pipe, "text_encoders.clip_l.transformer."))
    state.update(t5_state(pipe, "text_encoders.t5xxl.transformer."))
    state.update(vae_state(pipe, "vae."))
    return _save(state, out, {parts.TOKENIZER_METADATA: pipe.tokenizer_2.backend_tokenizer.to_str()})


def write_tiny_parts(arch: TinyArch | str, folder: Path, seed: int = 0) -> dict[str, Path]:
    """The separate files users download: ``flux1-*.safetensors`` (BFL transformer alone),
    ``clip_l.safetensors``, ``t5xxl_fp16.safetensors``, ``ae.safetensors``, and the T5 tokenizer folder."""
    pipe = build_tiny_flux_pipeline(arch, seed)
    name = TinyArch(arch).value.replace("flux-", "flux1-")
    paths = {"transformer": _save(transformer_bfl(pipe), folder / f"{name}.safetensors"),
             "clip_l": _save(clip_state(pipe), folder / "clip_l.safetensors"),
             "t5xxl": _save(t5_state(pipe), folder / "t5xxl_fp16.safetensors"),
             "vae": _save(vae_state(pipe), folder / "ae.safetensors")}
    tokenizer_dir = folder / tokenizer_source("t5xxl").folder_name
    pipe.tokenizer_2.save_pretrained(str(tokenizer_dir))
    paths["tokenizer"] = tokenizer_dir
    return paths


def write_tiny(arch: TinyArch | str, out: Path, seed: int = 0, gguf: str | None = None) -> Path:
    """``tiny_model``'s writer for the FLUX.1 archs (see the module docstring for the formats)."""
    out = Path(out)
    pipe = build_tiny_flux_pipeline(arch, seed)
    if gguf is not None:
        return _write_gguf(pipe, out, gguf)
    if out.suffix == ".safetensors":
        return write_single_file(pipe, out)
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def _write_gguf(pipe: DiffusionPipeline, out: Path, quant: str) -> Path:
    """The transformer alone as GGUF (BFL names), through the quantized-file helper's writer."""
    try:
        from modules.devtools import tiny_gguf  # type: ignore[attr-defined]
    except ImportError as exc:
        raise ValueError("writing GGUF needs modules.devtools.tiny_gguf, which this build lacks") from exc
    return tiny_gguf.write_gguf(transformer_bfl(pipe), out, quant)

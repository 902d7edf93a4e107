"""Tiny random-weight SD 3.5 models (Large and Medium layouts) for tests.

A tiny model keeps every structural trait the loader reads: Large's MMDiT has no second
attention, Medium's first blocks have ``x_block.attn2`` (MMDiT-X); both have q/k RMSNorm with
64-wide heads, CLIP-L narrower than CLIP-G (their pooled widths add up to the MMDiT's pooled
input), T5 as wide as the joint attention, a 16-channel VAE with four levels (latents are 1/8).
The T5 tokenizer is a small generated Unigram one (no real tokenizer is downloaded in tests).
``*.safetensors`` files are Stability's single-file layout with everything bundled and the
tokenizer in the header metadata; another suffix writes a diffusers folder.
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast

from modules.devtools.ldm_keys import vae_to_ldm
from modules.devtools.tiny_model import TinyArch, _seeded, load_clip_tokenizer
from modules.engine.families import sd3_layout as layout
from modules.engine.model_detect import ModelArch

_ARCHS = {TinyArch.SD35: ModelArch.SD35_LARGE, TinyArch.SD35_MEDIUM: ModelArch.SD35_MEDIUM}
JOINT, POOLED_L, POOLED_G = 128, 32, 64  # T5 width; CLIP-L and CLIP-G widths (pooled input 96)
_WORDS = "a an the of on in with and cat dog red blue green house tree sky lighthouse photo painting".split()


def model_arch(arch: TinyArch | ModelArch | str) -> ModelArch:
    if isinstance(arch, ModelArch):
        return arch
    return _ARCHS[TinyArch(arch)]


def t5_tokenizer_json() -> str:
    """A small SentencePiece-like (Unigram, Metaspace) tokenizer with T5's special ids:
    <pad> 0, </s> 1 (appended to every text), <unk> 2; whole words where known, else characters."""
    chars = string.ascii_letters + string.digits + string.punctuation + "▁"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{w}", -2.0) for w in _WORDS] + [(c, -6.0) for c in chars]
    tokenizer = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return tokenizer.to_str()


def tiny_t5_tokenizer() -> T5TokenizerFast:
    return T5TokenizerFast(tokenizer_object=Tokenizer.from_str(t5_tokenizer_json()), eos_token="</s>",
                           pad_token="<pad>", unk_token="<unk>", extra_ids=0)


def _transformer(arch: ModelArch) -> SD3Transformer2DModel:
    config = layout.base_config(arch, "transformer")
    medium = arch is ModelArch.SD35_MEDIUM
    config.update(sample_size=8, num_layers=3 if medium else 2, attention_head_dim=64, num_attention_heads=2,
                  joint_attention_dim=JOINT, caption_projection_dim=128, pooled_projection_dim=POOLED_L + POOLED_G,
                  pos_embed_max_size=32, dual_attention_layers=[0, 1] if medium else [])
    return SD3Transformer2DModel.from_config(config)


def _clip(arch: ModelArch, component: str, width: int) -> CLIPTextModelWithProjection:
    config = {**layout.base_config(arch, component), "hidden_size": width, "intermediate_size": width * 2,
              "num_hidden_layers": 2, "num_attention_heads": max(1, width // 64), "projection_dim": width}
    return CLIPTextModelWithProjection(CLIPTextConfig(**config))


def _t5(arch: ModelArch, vocab: int) -> T5EncoderModel:
    config = {**layout.base_config(arch, "text_encoder_3"), "d_model": JOINT, "d_kv": 64, "num_heads": 2,
              "d_ff": 256, "num_layers": 2, "num_decoder_layers": 2, "vocab_size": vocab}
    return T5EncoderModel(T5Config(**config))


def _vae(arch: ModelArch) -> AutoencoderKL:
    config = {**layout.base_config(arch, "vae"), "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1,
              "sample_size": 64}
    return AutoencoderKL.from_config(config)


def build_tiny_sd3_pipeline(arch: TinyArch | ModelArch | str = TinyArch.SD35, seed: int = 0) -> StableDiffusion3Pipeline:
    """A random-weight fp32 CPU pipeline of the Large or Medium layout; equal seeds, equal weights."""
    arch = model_arch(arch)
    tokenizer_3 = tiny_t5_tokenizer()
    with _seeded(seed, 0):
        transformer = _transformer(arch)
    with _seeded(seed, 1):
        vae = _vae(arch)
    with _seeded(seed, 2):
        clip_l = _clip(arch, "text_encoder", POOLED_L)
    with _seeded(seed, 3):
        clip_g = _clip(arch, "text_encoder_2", POOLED_G)
    with _seeded(seed, 4):
        t5 = _t5(arch, len(tokenizer_3))
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(layout.base_config(arch, "scheduler")),
        text_encoder=clip_l, tokenizer=load_clip_tokenizer("<|endoftext|>"),
        text_encoder_2=clip_g, tokenizer_2=load_clip_tokenizer("!"),
        text_encoder_3=t5, tokenizer_3=tokenizer_3)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _swap(weight: torch.Tensor) -> torch.Tensor:
    """diffusers' ``swap_scale_shift``: its own inverse (the two halves trade places)."""
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _block_to_sai(state: Mapping[str, torch.Tensor], i: int, last: bool, dual: bool) -> dict[str, torch.Tensor]:
    d, s, out = f"transformer_blocks.{i}.", f"joint_blocks.{i}.", {}
    for kind in ("weight", "bias"):
        out[f"{s}x_block.attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.to_{c}.{kind}"] for c in "qkv"])
        out[f"{s}context_block.attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.add_{c}_proj.{kind}"] for c in "qkv"])
        out[f"{s}x_block.attn.proj.{kind}"] = state[f"{d}attn.to_out.0.{kind}"]
        out[f"{s}x_block.adaLN_modulation.1.{kind}"] = state[f"{d}norm1.linear.{kind}"]
        context_ada = state[f"{d}norm1_context.linear.{kind}"]
        out[f"{s}context_block.adaLN_modulation.1.{kind}"] = _swap(context_ada) if last else context_ada
        out[f"{s}x_block.mlp.fc1.{kind}"] = state[f"{d}ff.net.0.proj.{kind}"]
        out[f"{s}x_block.mlp.fc2.{kind}"] = state[f"{d}ff.net.2.{kind}"]
        if not last:
            out[f"{s}context_block.attn.proj.{kind}"] = state[f"{d}attn.to_add_out.{kind}"]
            out[f"{s}context_block.mlp.fc1.{kind}"] = state[f"{d}ff_context.net.0.proj.{kind}"]
            out[f"{s}context_block.mlp.fc2.{kind}"] = state[f"{d}ff_context.net.2.{kind}"]
        if dual:
            out[f"{s}x_block.attn2.qkv.{kind}"] = torch.cat([state[f"{d}attn2.to_{c}.{kind}"] for c in "qkv"])
            out[f"{s}x_block.attn2.proj.{kind}"] = state[f"{d}attn2.to_out.0.{kind}"]
    for sai, ours in (("x_block.attn.ln_q", "attn.norm_q"), ("x_block.attn.ln_k", "attn.norm_k"),
                      ("context_block.attn.ln_q", "attn.norm_added_q"), ("context_block.attn.ln_k", "attn.norm_added_k"),
                      *((("x_block.attn2.ln_q", "attn2.norm_q"), ("x_block.attn2.ln_k", "attn2.norm_k")) if dual else ())):
        if f"{d}{ours}.weight" in state:
            out[f"{s}{sai}.weight"] = state[f"{d}{ours}.weight"]
    return out


_TOP = {"pos_embed.pos_embed": "pos_embed", "pos_embed.proj": "x_embedder.proj",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2", "context_embedder": "context_embedder",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2", "proj_out": "final_layer.linear"}


def transformer_to_sai(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers SD3Transformer2DModel state dict in Stability's key names (the inverse of
    diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers``); strict: every tensor placed."""
    out: dict[str, torch.Tensor] = {}
    for ours, sai in _TOP.items():
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in state:
                out[f"{sai}.{kind}"] = state[f"{ours}.{kind}"]
    out["pos_embed"] = state["pos_embed.pos_embed"]
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(state[f"norm_out.linear.{kind}"])
    layers, dual = int(config["num_layers"]), set(config["dual_attention_layers"])
    for i in range(layers):
        out.update(_block_to_sai(state, i, i == layers - 1, i in dual))
    if sum(t.numel() for t in out.values()) != sum(t.numel() for t in state.values()):
        raise ValueError("the MMDiT has tensors this converter does not place")
    return out


def single_file_state(pipe: StableDiffusion3Pipeline) -> dict[str, torch.Tensor]:
    """Everything in one state dict, as Stability's ``*_incl_clips_t5xxl`` files lay it out."""
    state = {layout.TRANSFORMER_PREFIXES[0] + k: v
             for k, v in transformer_to_sai(pipe.transformer.state_dict(), pipe.transformer.config).items()}
    for prefix, encoder in ((layout.CLIP_L, pipe.text_encoder), (layout.CLIP_G, pipe.text_encoder_2)):
        state.update({prefix + k: v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")})
    state.update({layout.T5XXL + k: v for k, v in pipe.text_encoder_3.state_dict().items()
                  if k != "encoder.embed_tokens.weight"})  # tied to shared.weight
    state.update(vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config))
    return {k: v.detach().contiguous() for k, v in state.items()}


def _save(state: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    """Atomically, so a reader never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def write_tiny(arch: TinyArch, out: Path, seed: int = 0, gguf: str | None = None) -> Path:
    """``tiny_model``'s writer for ``sd35`` / ``sd35-medium``."""
    pipe = build_tiny_sd3_pipeline(arch, seed)
    out = Path(out)
    if gguf is not None:
        try:
            from modules.devtools.tiny_gguf import write_gguf
        except ImportError as exc:
            raise ValueError("GGUF writing is not available here (modules.devtools.tiny_gguf)") from exc
        state = transformer_to_sai(pipe.transformer.state_dict(), pipe.transformer.config)
        return write_gguf({k: v.detach().contiguous() for k, v in state.items()}, out, gguf, architecture="sd3")
    if out.suffix == ".safetensors":
        _save(single_file_state(pipe), out, {"format": "pt", "atelier.tokenizer.t5": t5_tokenizer_json()})
    else:
        pipe.save_pretrained(out, safe_serialization=True)
    return out

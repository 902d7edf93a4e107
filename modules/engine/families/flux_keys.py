"""FLUX.1 transformer checkpoints: their key layouts, their dimensions, and conversion to diffusers.

Black Forest Labs' files (``flux1-dev.safetensors``) name the transformer ``double_blocks.*`` /
``single_blocks.*`` with fused q/k/v projections; ComfyUI's all-in-one files put the same keys under
``model.diffusion_model.``; some files carry diffusers' own names. The mapping follows diffusers'
``convert_flux_transformer_checkpoint_to_diffusers`` (loaders/single_file_utils.py) but takes the
widths from the tensors instead of assuming FLUX.1's 3072, so pruned and tiny models convert too;
the reverse direction writes test files in the real layouts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from modules.engine.checkpoint_files import TensorIndex

COMFY_PREFIX = "model.diffusion_model."
# A FLUX.1 transformer has both a pooled-text embedder (vector_in) and fused qk norms; Chroma has no
# vector_in and FLUX.2 no pooled text, so these keys tell FLUX.1 from its relatives.
_BFL_MARKERS = ("double_blocks.0.img_attn.norm.key_norm.scale", "vector_in.in_layer.weight", "time_in.in_layer.weight")
_DIFFUSERS_MARKERS = ("transformer_blocks.0.attn.add_q_proj.weight", "single_transformer_blocks.0.proj_mlp.weight",
                      "time_text_embed.text_embedder.linear_1.weight", "x_embedder.weight")
_BLOCK = re.compile(r"^(double_blocks|single_blocks|transformer_blocks|single_transformer_blocks)\.(\d+)\.")

# (BFL name, diffusers name) of the parameters that map one to one (each with .weight and .bias)
TOP_NAMES = (("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
        ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
        ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
        ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
        ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
        ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
        ("txt_in", "context_embedder"), ("img_in", "x_embedder"), ("final_layer.linear", "proj_out"))
DOUBLE_NAMES = (("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
           ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"),
           ("txt_mlp.0", "ff_context.net.0.proj"), ("txt_mlp.2", "ff_context.net.2"),
           ("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"))
_DOUBLE_NORMS = (("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
                 ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
                 ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
                 ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"))
_SINGLE = (("modulation.lin", "norm.linear"), ("linear2", "proj_out"))
_SINGLE_NORMS = (("norm.query_norm.scale", "attn.norm_q.weight"), ("norm.key_norm.scale", "attn.norm_k.weight"))
_IMG_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
_TXT_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
_FINAL_MOD = ("final_layer.adaLN_modulation.1", "norm_out.linear")


@dataclass(frozen=True)
class FluxDims:
    """A FLUX.1 transformer's configuration as its tensors give it."""

    in_channels: int  # 64; 384 for Fill (latents + masked image + mask, all packed)
    out_channels: int
    num_layers: int
    num_single_layers: int
    head_dim: int
    heads: int
    joint_attention_dim: int  # the T5 width
    pooled_projection_dim: int  # the CLIP width
    guidance_embeds: bool  # dev and Fill; schnell has no distilled guidance

    @property
    def axes_dims_rope(self) -> tuple[int, int, int]:
        """The rotary axes (index, y, x); FLUX.1's (16, 56, 56) for its 128-wide heads. Not stored in
        a file: this rule gives the real split for 128 and an even split for the tiny models' widths."""
        first = self.head_dim // 8
        rest = (self.head_dim - first) // 2
        return first, rest, rest

    def config(self) -> dict[str, object]:
        """FluxTransformer2DModel's constructor arguments."""
        return {"patch_size": 1, "in_channels": self.in_channels, "out_channels": self.out_channels,
                "num_layers": self.num_layers, "num_single_layers": self.num_single_layers,
                "attention_head_dim": self.head_dim, "num_attention_heads": self.heads,
                "joint_attention_dim": self.joint_attention_dim, "pooled_projection_dim": self.pooled_projection_dim,
                "guidance_embeds": self.guidance_embeds, "axes_dims_rope": list(self.axes_dims_rope)}


def transformer_prefix(index: TensorIndex) -> tuple[str, bool] | None:
    """(key prefix, is BFL layout) of a FLUX.1 transformer in the file; None if it has none."""
    for prefix in ("", COMFY_PREFIX):
        if all(prefix + key in index for key in _BFL_MARKERS):
            return prefix, True
    for prefix in ("", "transformer.", COMFY_PREFIX):
        if all(prefix + key in index for key in _DIFFUSERS_MARKERS):
            return prefix, False
    return None


def _count(keys: Iterable[str], block: str) -> int:
    numbers = {int(m.group(2)) for k in keys if (m := _BLOCK.match(k)) and m.group(1) == block}
    return max(numbers) + 1 if numbers else 0


def infer_dims(index: TensorIndex) -> FluxDims | None:
    """The transformer's dimensions from its tensor shapes; None when the file holds no FLUX.1 transformer."""
    found = transformer_prefix(index)
    if found is None:
        return None
    prefix, bfl = found
    keys = [k[len(prefix):] for k in index.shapes if k.startswith(prefix)]

    def shape(bfl_key: str, diffusers_key: str) -> tuple[int, ...]:
        got = index.shape(prefix + (bfl_key if bfl else diffusers_key))
        assert got is not None, bfl_key
        return got

    hidden, in_channels = shape("img_in.weight", "x_embedder.weight")
    head_dim = shape("double_blocks.0.img_attn.norm.query_norm.scale", "transformer_blocks.0.attn.norm_q.weight")[0]
    guidance = ("guidance_in.in_layer.weight" if bfl else "time_text_embed.guidance_embedder.linear_1.weight")
    return FluxDims(
        in_channels=in_channels, out_channels=shape("final_layer.linear.weight", "proj_out.weight")[0],
        num_layers=_count(keys, "double_blocks" if bfl else "transformer_blocks"),
        num_single_layers=_count(keys, "single_blocks" if bfl else "single_transformer_blocks"),
        head_dim=head_dim, heads=hidden // head_dim,
        joint_attention_dim=shape("txt_in.weight", "context_embedder.weight")[1],
        pooled_projection_dim=shape("vector_in.in_layer.weight", "time_text_embed.text_embedder.linear_1.weight")[1],
        guidance_embeds=prefix + guidance in index)


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants (scale, shift)."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _pairs(dims: FluxDims) -> list[tuple[str, str]]:
    """Every one-to-one (BFL, diffusers) parameter name pair of the model."""
    pairs = [(f"{b}.{kind}", f"{d}.{kind}") for b, d in TOP_NAMES for kind in ("weight", "bias")
             if dims.guidance_embeds or not b.startswith("guidance_in")]
    for i in range(dims.num_layers):
        pairs += [(f"double_blocks.{i}.{b}.{kind}", f"transformer_blocks.{i}.{d}.{kind}")
                  for b, d in DOUBLE_NAMES for kind in ("weight", "bias")]
        pairs += [(f"double_blocks.{i}.{b}", f"transformer_blocks.{i}.{d}") for b, d in _DOUBLE_NORMS]
    for i in range(dims.num_single_layers):
        pairs += [(f"single_blocks.{i}.{b}.{kind}", f"single_transformer_blocks.{i}.{d}.{kind}")
                  for b, d in _SINGLE for kind in ("weight", "bias")]
        pairs += [(f"single_blocks.{i}.{b}", f"single_transformer_blocks.{i}.{d}") for b, d in _SINGLE_NORMS]
    return pairs


def _fused(dims: FluxDims) -> list[tuple[str, tuple[str, ...], tuple[int, ...]]]:
    """(BFL fused name, diffusers names, split sizes) of the fused projections."""
    hidden = dims.heads * dims.head_dim
    fused: list[tuple[str, tuple[str, ...], tuple[int, ...]]] = []
    for kind in ("weight", "bias"):
        for i in range(dims.num_layers):
            block = f"transformer_blocks.{i}."
            fused.append((f"double_blocks.{i}.img_attn.qkv.{kind}", tuple(f"{block}{n}.{kind}" for n in _IMG_QKV),
                          (hidden,) * 3))
            fused.append((f"double_blocks.{i}.txt_attn.qkv.{kind}", tuple(f"{block}{n}.{kind}" for n in _TXT_QKV),
                          (hidden,) * 3))
        for i in range(dims.num_single_layers):
            block = f"single_transformer_blocks.{i}."
            names = tuple(f"{block}{n}.{kind}" for n in (*_IMG_QKV, "proj_mlp"))
            # FLUX.1's MLP is 4x the width (diffusers' FluxSingleTransformerBlock mlp_ratio)
            fused.append((f"single_blocks.{i}.linear1.{kind}", names, (hidden, hidden, hidden, 4 * hidden)))
    return fused


def to_diffusers(state: Mapping[str, torch.Tensor], dims: FluxDims, prefix: str = "") -> dict[str, torch.Tensor]:
    """A BFL-layout transformer state dict (keys under ``prefix``) in diffusers' names."""
    out = {d: state[prefix + b] for b, d in _pairs(dims)}
    for bfl, names, sizes in _fused(dims):
        out.update(zip(names, torch.split(state[prefix + bfl], list(sizes), dim=0), strict=True))
    for kind in ("weight", "bias"):
        out[f"{_FINAL_MOD[1]}.{kind}"] = _swap_halves(state[f"{prefix}{_FINAL_MOD[0]}.{kind}"])
    return out


def to_bfl(state: Mapping[str, torch.Tensor], dims: FluxDims, prefix: str = "") -> dict[str, torch.Tensor]:
    """A diffusers transformer state dict in BFL's names, each key under ``prefix`` (test files)."""
    out = {prefix + b: state[d] for b, d in _pairs(dims)}
    for bfl, names, _sizes in _fused(dims):
        out[prefix + bfl] = torch.cat([state[n] for n in names], dim=0)
    for kind in ("weight", "bias"):
        out[f"{prefix}{_FINAL_MOD[0]}.{kind}"] = _swap_halves(state[f"{_FINAL_MOD[1]}.{kind}"])
    return {k: v.contiguous() for k, v in out.items()}

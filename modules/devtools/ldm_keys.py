"""Diffusers -> original LDM (A1111 single-file) key names for SD1.x, SD2.x and SDXL components.

This is the inverse of what ``diffusers.loaders.single_file_utils`` does when it loads a
checkpoint such as ``v1-5-pruned-emaonly.safetensors`` or ``sd_xl_base_1.0.safetensors``. Every
converter is strict: a key it cannot place, or two keys landing on one name, is an error, so a
checkpoint written with these names never loads with silently missing weights.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
SD2_OPENCLIP_PREFIX = "cond_stage_model.model."

# OpenCLIP's initial temperature, ln(1/0.07); real checkpoints carry a trained value we cannot know.
OPENCLIP_LOGIT_SCALE = math.log(1 / 0.07)

StateDict = dict[str, torch.Tensor]
Inner = Callable[[str, torch.Tensor], tuple[str, torch.Tensor]]


class KeyMappingError(ValueError):
    """A state dict holds a key the LDM layout has no place for, or two keys collide."""


def _same(rest: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    return rest, tensor


def _renamer(table: Mapping[str, str]) -> Inner:
    """Rename each dotted component of the remainder found in ``table`` (others pass unchanged)."""

    def inner(rest: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
        return ".".join(table.get(part, part) for part in rest.split(".")), tensor

    return inner


_UNET_RESNET = _renamer(
    {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    }
)
_VAE_RESNET = _renamer({"conv_shortcut": "nin_shortcut"})
_VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _vae_attention(rest: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    """The VAE's mid-block attention: original checkpoints store q/k/v/proj_out as 1x1 convs."""
    for new, old in _VAE_ATTENTION_NAMES.items():
        if rest.startswith(new + "."):
            name = old + rest[len(new) :]
            if old != "norm" and name.endswith(".weight") and tensor.ndim == 2:
                tensor = tensor[:, :, None, None]
            return name, tensor
    raise KeyMappingError(f"unknown VAE attention parameter {rest!r}")


def _convert(
    state: Mapping[str, torch.Tensor],
    exact: Mapping[str, str],
    prefixes: list[tuple[str, str, Inner]],
    out_prefix: str,
) -> StateDict:
    """Map every key either exactly or by its longest matching block prefix; refuse leftovers."""
    ordered = sorted(prefixes, key=lambda p: len(p[0]), reverse=True)
    out: StateDict = {}
    for key, tensor in state.items():
        if key in exact:
            name, value = exact[key], tensor
        else:
            match = next((p for p in ordered if key.startswith(p[0])), None)
            if match is None:
                raise KeyMappingError(f"no LDM name for {key!r}")
            src, dst, inner = match
            rest, value = inner(key[len(src) :], tensor)
            name = dst + rest
        full = out_prefix + name
        if full in out:
            raise KeyMappingError(f"two parameters map to {full!r}")
        out[full] = value
    return out


def _per_block(value: Any, count: int) -> list[int]:
    return [int(value)] * count if isinstance(value, int) else [int(v) for v in value]


def _unet_prefixes(config: Mapping[str, Any]) -> list[tuple[str, str, Inner]]:
    """Block-level prefix pairs, following the LDM UNet's numbering of input/output blocks."""
    down_types: list[str] = list(config["down_block_types"])
    up_types: list[str] = list(config["up_block_types"])
    layers = _per_block(config["layers_per_block"], len(down_types))
    pairs: list[tuple[str, str, Inner]] = []
    n = 1  # input_blocks.0 is conv_in
    for b, block_type in enumerate(down_types):
        for j in range(layers[b]):
            pairs.append((f"down_blocks.{b}.resnets.{j}.", f"input_blocks.{n}.0.", _UNET_RESNET))
            if "CrossAttn" in block_type:
                pairs.append((f"down_blocks.{b}.attentions.{j}.", f"input_blocks.{n}.1.", _same))
            n += 1
        if b < len(down_types) - 1:
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{n}.0.op.", _same))
            n += 1
    pairs += [
        ("mid_block.resnets.0.", "middle_block.0.", _UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", _same),
        ("mid_block.resnets.1.", "middle_block.2.", _UNET_RESNET),
    ]
    n = 0
    up_layers = list(reversed(layers))
    for b, block_type in enumerate(up_types):
        attention = "CrossAttn" in block_type
        for j in range(up_layers[b] + 1):
            pairs.append((f"up_blocks.{b}.resnets.{j}.", f"output_blocks.{n}.0.", _UNET_RESNET))
            if attention:
                pairs.append((f"up_blocks.{b}.attentions.{j}.", f"output_blocks.{n}.1.", _same))
            if j == up_layers[b] and b < len(up_types) - 1:
                slot = 2 if attention else 1
                pairs.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{n}.{slot}.conv.", _same))
            n += 1
    return pairs


_UNET_EXACT = {
    "time_embedding.linear_1.weight": "time_embed.0.weight",
    "time_embedding.linear_1.bias": "time_embed.0.bias",
    "time_embedding.linear_2.weight": "time_embed.2.weight",
    "time_embedding.linear_2.bias": "time_embed.2.bias",
    "conv_in.weight": "input_blocks.0.0.weight",
    "conv_in.bias": "input_blocks.0.0.bias",
    "conv_norm_out.weight": "out.0.weight",
    "conv_norm_out.bias": "out.0.bias",
    "conv_out.weight": "out.2.weight",
    "conv_out.bias": "out.2.bias",
    # SDXL's "text_time" embedding (pooled text + size/crop conditioning) is LDM's label_emb.
    "add_embedding.linear_1.weight": "label_emb.0.0.weight",
    "add_embedding.linear_1.bias": "label_emb.0.0.bias",
    "add_embedding.linear_2.weight": "label_emb.0.2.weight",
    "add_embedding.linear_2.bias": "label_emb.0.2.bias",
}


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """A diffusers ``UNet2DConditionModel`` state dict as ``model.diffusion_model.*`` tensors."""
    return _convert(state, _UNET_EXACT, _unet_prefixes(config), UNET_PREFIX)


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """A diffusers ``AutoencoderKL`` state dict as ``first_stage_model.*`` tensors."""
    exact = {
        f"{part}.{name}.{kind}": f"{part}.{ldm}.{kind}"
        for part in ("encoder", "decoder")
        for name, ldm in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out"))
        for kind in ("weight", "bias")
    }
    exact.update({f"{c}.{k}": f"{c}.{k}" for c in ("quant_conv", "post_quant_conv") for k in ("weight", "bias")})
    levels = len(config["down_block_types"])
    pairs: list[tuple[str, str, Inner]] = []
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", _VAE_RESNET),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", _VAE_RESNET),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _vae_attention),
        ]
    for i in range(levels):
        pairs += [
            (f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block.", _VAE_RESNET),
            (f"encoder.down_blocks.{i}.downsamplers.0.conv.", f"encoder.down.{i}.downsample.conv.", _same),
            # The LDM decoder numbers its levels from the lowest resolution up; diffusers the reverse.
            (f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{levels - 1 - i}.block.", _VAE_RESNET),
            (f"decoder.up_blocks.{i}.upsamplers.0.conv.", f"decoder.up.{levels - 1 - i}.upsample.conv.", _same),
        ]
    return _convert(state, exact, pairs, VAE_PREFIX)


def clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """A transformers ``CLIPTextModel`` (OpenAI CLIP-L layout) under ``prefix + 'text_model.'``.

    transformers >= 5.6 dropped the ``text_model.`` level from ``CLIPTextModel``; older state dicts
    still have it, so both are accepted.
    """
    out: StateDict = {}
    for key, tensor in state.items():
        if key.endswith("position_ids"):
            continue  # a buffer, not a weight; the loaders rebuild it
        out[f"{prefix}text_model.{key.removeprefix('text_model.')}"] = tensor
    return out


_OPENCLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_LAYER_KEY = re.compile(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$")
_QKV_KEY = re.compile(r"self_attn\.([qkv])_proj$")


def _open_clip_layer(layer: str, module: str, kind: str) -> str:
    if module not in _OPENCLIP_LAYER:
        raise KeyMappingError(f"unknown text encoder layer parameter {module}.{kind}")
    return f"transformer.resblocks.{layer}.{_OPENCLIP_LAYER[module]}.{kind}"


def open_clip_to_ldm(state: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP's layout (SDXL's bigG encoder).

    q/k/v projections are concatenated into ``attn.in_proj_weight``/``in_proj_bias`` and the
    projection is stored transposed (``x @ text_projection``), as OpenCLIP keeps them.
    """
    fixed = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        short = key.removeprefix("text_model.")
        if short.endswith("position_ids"):
            continue
        if short == "text_projection.weight":
            out[prefix + "text_projection"] = tensor.t().contiguous()
        elif short in fixed:
            out[prefix + fixed[short]] = tensor
        elif (match := _LAYER_KEY.match(short)) is not None:
            layer, module, kind = match.groups()
            if (part := _QKV_KEY.match(module)) is not None:
                qkv.setdefault((layer, kind), {})[part.group(1)] = tensor
            else:
                out[prefix + _open_clip_layer(layer, module, kind)] = tensor
        else:
            raise KeyMappingError(f"no OpenCLIP name for {key!r}")
    for (layer, kind), parts in sorted(qkv.items()):
        if sorted(parts) != ["k", "q", "v"]:
            raise KeyMappingError(f"layer {layer} lacks some of q/k/v {kind}")
        name = "in_proj_weight" if kind == "weight" else "in_proj_bias"
        out[f"{prefix}transformer.resblocks.{layer}.attn.{name}"] = torch.cat([parts[p] for p in "qkv"], dim=0)
    out[prefix + "logit_scale"] = torch.tensor(OPENCLIP_LOGIT_SCALE, dtype=torch.float32)
    return out


def merge_state_dicts(*parts: Mapping[str, torch.Tensor]) -> StateDict:
    """One checkpoint from converted components, each tensor detached, contiguous and unshared."""
    merged: StateDict = {}
    for part in parts:
        for key, tensor in part.items():
            if key in merged:
                raise KeyMappingError(f"two components both write {key!r}")
            merged[key] = tensor.detach().to("cpu").contiguous().clone()
    return merged


def pipeline_to_ldm(pipe: Any) -> StateDict:
    """A whole SD1.x or SDXL diffusers pipeline as one A1111-style state dict.

    SDXL is recognised by its second text encoder: CLIP-L goes to ``conditioner.embedders.0``
    and OpenCLIP bigG to ``conditioner.embedders.1``; SD1.x keeps CLIP-L at ``cond_stage_model``.
    """
    unet = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    vae = vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    if getattr(pipe, "text_encoder_2", None) is not None:
        text = clip_to_ldm(pipe.text_encoder.state_dict(), SDXL_CLIP_PREFIX)
        text_2 = open_clip_to_ldm(pipe.text_encoder_2.state_dict(), SDXL_OPENCLIP_PREFIX)
        return merge_state_dicts(unet, vae, text, text_2)
    return merge_state_dicts(unet, vae, clip_to_ldm(pipe.text_encoder.state_dict(), SD1_CLIP_PREFIX))


def sd2_pipeline_to_ldm(pipe: Any, text_state: Mapping[str, torch.Tensor]) -> StateDict:
    """A whole SD 2.x diffusers pipeline as one A1111-style state dict.

    ``text_state`` is the whole OpenCLIP text tower in transformers' names (``text_projection.weight``
    included): SD 2.x conditions on the penultimate layer, so the pipeline's encoder lacks the last
    layer that real checkpoints still carry under ``cond_stage_model.model``, and diffusers' converter
    skips (``SD_2_TEXT_ENCODER_KEYS_TO_IGNORE``).
    """
    unet = unet_to_ldm(pipe.unet.state_dict(), pipe.unet.config)
    vae = vae_to_ldm(pipe.vae.state_dict(), pipe.vae.config)
    return merge_state_dicts(unet, vae, open_clip_to_ldm(text_state, SD2_OPENCLIP_PREFIX))

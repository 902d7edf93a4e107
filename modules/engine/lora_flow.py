"""The names LoRA files give a flow-matching transformer's layers, and which family a file was made for.

LoRAs for FLUX.1, FLUX.2, SD 3.5 and Z-Image name the denoiser's layers in one of two ways:

- diffusers' names (ai-toolkit, diffusers, peft): ``transformer.<path>``, ``diffusion_model.<path>``
  or kohya-style ``lora_transformer_<path with underscores>`` / ``lora_unet_<...>``;
- the original checkpoint's names (kohya-ss sd-scripts, ComfyUI): ``lora_unet_double_blocks_0_img_attn_qkv``
  or ``diffusion_model.joint_blocks.0.x_block.attn.qkv``, where one original layer may be several
  diffusers layers side by side (fused q/k/v, FLUX.1's ``linear1`` = q, k, v and the MLP input) or
  the same layer with its output halves swapped (BFL's final modulation is (shift, scale), diffusers'
  (scale, shift)).

This module maps every such name onto a :data:`Route`: the diffusers layers a file layer changes and
which rows of its up weight go to each. The original names follow the single-file converters in
diffusers' ``loaders/single_file_utils.py`` (``convert_flux_transformer_checkpoint_to_diffusers``,
``convert_sd3_transformer_checkpoint_to_diffusers``, ``convert_z_image_transformer_checkpoint_to_diffusers``)
and the LoRA converters in ``loaders/lora_conversion_utils.py`` (``_convert_kohya_flux_lora_to_diffusers``, ``_convert_kohya_flux2_lora_to_diffusers``,
``_convert_non_diffusers_z_image_lora_to_diffusers``); the split sizes come from the loaded layers'
shapes rather than FLUX.1's fixed 3072, so pruned and tiny models map too. Nothing here changes a model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from modules.engine.families import flux_keys

Rows = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Part:
    """One model layer a file layer changes: ``rows`` of the file's up weight (in order), or all of them."""

    layer: str  # the layer's path inside the transformer, as diffusers names it
    rows: Rows | None = None


Route = tuple[Part, ...]
Layers = Mapping[str, torch.nn.Module]

# diffusers' transformer classes -> the family group a LoRA is made for (what refusals name)
_MODEL_GROUPS = {"FluxTransformer2DModel": "FLUX.1", "Flux2Transformer2DModel": "FLUX.2",
                 "SD3Transformer2DModel": "SD 3.5", "ZImageTransformer2DModel": "Z-Image",
                 "UNet2DConditionModel": "SD 1/2/XL"}
# Markers in a file's layer names (dots and underscores alike) -> the group it was made for.
_FILE_MARKERS = (
    (re.compile(r"(^|[._])joint_blocks[._]\d+[._](x|context)_block"), "SD 3.5"),
    (re.compile(r"(^|[._])(noise_refiner|context_refiner)[._]\d+"), "Z-Image"),
    (re.compile(r"(^|[._])layers[._]\d+[._](attention|feed_forward|adaLN_modulation)"), "Z-Image"),
    (re.compile(r"(^|[._])double_blocks[._]\d+[._](img|txt)_mod[._]lin"), "FLUX.1"),
    (re.compile(r"(^|[._])single_transformer_blocks[._]\d+[._](proj_mlp|attn[._]to_q(?![a-z]))"), "FLUX.1"),
    (re.compile(r"(^|[._])(double_blocks|single_blocks|single_transformer_blocks)[._]\d"), "FLUX"),
    (re.compile(r"(^|[._])(down_blocks|up_blocks|input_blocks|output_blocks|mid_block|middle_block)[._]\d"),
     "SD 1/2/XL"),
)

_FLUX_TOP = flux_keys.TOP_NAMES  # the same (original, diffusers) pairs the checkpoint loader uses
_FLUX_DOUBLE = flux_keys.DOUBLE_NAMES
_FLUX2_TOP = (("img_in", "x_embedder"), ("txt_in", "context_embedder"), ("final_layer.linear", "proj_out"),
              ("time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_1"),
              ("time_in.out_layer", "time_guidance_embed.timestep_embedder.linear_2"))
_FLUX2_DOUBLE = (("img_attn.proj", "attn.to_out.0"), ("txt_attn.proj", "attn.to_add_out"),
                 ("img_mlp.0", "ff.linear_in"), ("img_mlp.2", "ff.linear_out"),
                 ("txt_mlp.0", "ff_context.linear_in"), ("txt_mlp.2", "ff_context.linear_out"))
_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
_ADD_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
_SD3_TOP = (("x_embedder.proj", "pos_embed.proj"), ("context_embedder", "context_embedder"),
            ("t_embedder.mlp.0", "time_text_embed.timestep_embedder.linear_1"),
            ("t_embedder.mlp.2", "time_text_embed.timestep_embedder.linear_2"),
            ("y_embedder.mlp.0", "time_text_embed.text_embedder.linear_1"),
            ("y_embedder.mlp.2", "time_text_embed.text_embedder.linear_2"), ("final_layer.linear", "proj_out"))
_SD3_BLOCK = (("x_block.attn.proj", "attn.to_out.0"), ("x_block.mlp.fc1", "ff.net.0.proj"),
              ("x_block.mlp.fc2", "ff.net.2"), ("x_block.adaLN_modulation.1", "norm1.linear"),
              ("context_block.attn.proj", "attn.to_add_out"), ("context_block.mlp.fc1", "ff_context.net.0.proj"),
              ("context_block.mlp.fc2", "ff_context.net.2"), ("x_block.attn2.proj", "attn2.to_out.0"))
_ZIMAGE_RENAMES = (("all_final_layer.2-1.", "final_layer."), ("all_x_embedder.2-1", "x_embedder"),
                   (".attention.to_out.0", ".attention.out"))


def _rows(layers: Layers, name: str) -> int:
    module = layers[name]
    return int(module.out_features if isinstance(module, torch.nn.Linear) else module.out_channels)


def _fused(layers: Layers, names: Iterable[str]) -> Route | None:
    """Several layers stacked along the output: each takes the next ``out_features`` rows of the up weight."""
    names = list(names)
    if not all(name in layers for name in names):
        return None
    parts, start = [], 0
    for name in names:
        stop = start + _rows(layers, name)
        parts.append(Part(name, ((start, stop),)))
        start = stop
    return tuple(parts)


def _swapped(layers: Layers, name: str) -> Route | None:
    """diffusers' ``swap_scale_shift``: the original's (shift, scale) rows are the model's (scale, shift)."""
    if name not in layers:
        return None
    half = _rows(layers, name) // 2
    return (Part(name, ((half, 2 * half), (0, half))),)


def _one(layers: Layers, name: str) -> Route | None:
    return (Part(name),) if name in layers else None


def _blocks(layers: Layers, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for name in layers if (m := pattern.match(name))})


def _flux_originals(layers: Layers) -> dict[str, Route | None]:
    """BFL names of a FluxTransformer2DModel (``convert_flux_transformer_checkpoint_to_diffusers``)."""
    out: dict[str, Route | None] = {bfl: _one(layers, ours) for bfl, ours in _FLUX_TOP}
    out["final_layer.adaLN_modulation.1"] = _swapped(layers, "norm_out.linear")
    for i in _blocks(layers, "transformer_blocks."):
        d = f"transformer_blocks.{i}."
        out.update({f"double_blocks.{i}.{bfl}": _one(layers, d + ours) for bfl, ours in _FLUX_DOUBLE})
        out[f"double_blocks.{i}.img_attn.qkv"] = _fused(layers, (d + n for n in _QKV))
        out[f"double_blocks.{i}.txt_attn.qkv"] = _fused(layers, (d + n for n in _ADD_QKV))
    for i in _blocks(layers, "single_transformer_blocks."):
        d = f"single_transformer_blocks.{i}."
        out[f"single_blocks.{i}.linear1"] = _fused(layers, (d + n for n in (*_QKV, "proj_mlp")))
        out[f"single_blocks.{i}.linear2"] = _one(layers, d + "proj_out")
        out[f"single_blocks.{i}.modulation.lin"] = _one(layers, d + "norm.linear")
    return out


def _flux2_originals(layers: Layers) -> dict[str, Route | None]:
    """BFL names of a Flux2Transformer2DModel, as diffusers' ``_convert_kohya_flux2_lora_to_diffusers`` maps them."""
    out: dict[str, Route | None] = {bfl: _one(layers, ours) for bfl, ours in _FLUX2_TOP}
    for i in _blocks(layers, "transformer_blocks."):
        d = f"transformer_blocks.{i}."
        out.update({f"double_blocks.{i}.{bfl}": _one(layers, d + ours) for bfl, ours in _FLUX2_DOUBLE})
        out[f"double_blocks.{i}.img_attn.qkv"] = _fused(layers, (d + n for n in _QKV))
        out[f"double_blocks.{i}.txt_attn.qkv"] = _fused(layers, (d + n for n in _ADD_QKV))
    for i in _blocks(layers, "single_transformer_blocks."):
        d = f"single_transformer_blocks.{i}."
        out[f"single_blocks.{i}.linear1"] = _one(layers, d + "attn.to_qkv_mlp_proj")  # fused in diffusers too
        out[f"single_blocks.{i}.linear2"] = _one(layers, d + "attn.to_out")
    return out


def _sd3_originals(layers: Layers) -> dict[str, Route | None]:
    """Stability's MMDiT names of an SD3Transformer2DModel (``convert_sd3_transformer_checkpoint_to_diffusers``)."""
    out: dict[str, Route | None] = {sai: _one(layers, ours) for sai, ours in _SD3_TOP}
    out["final_layer.adaLN_modulation.1"] = _swapped(layers, "norm_out.linear")
    blocks = _blocks(layers, "transformer_blocks.")
    for i in blocks:
        d, s = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        out.update({s + sai: _one(layers, d + ours) for sai, ours in _SD3_BLOCK})
        out[s + "x_block.attn.qkv"] = _fused(layers, (d + n for n in _QKV))
        out[s + "x_block.attn2.qkv"] = _fused(layers, (d + n.replace("attn.", "attn2.") for n in _QKV))
        out[s + "context_block.attn.qkv"] = _fused(layers, (d + n for n in _ADD_QKV))
        # The last block's context modulation is an AdaLayerNormContinuous: stored (shift, scale).
        last = i == blocks[-1]
        out[s + "context_block.adaLN_modulation.1"] = (_swapped if last else _one)(layers, d + "norm1_context.linear")
        if last:  # its context stream ends there: the original has no attn.proj / mlp for it
            for sai in ("context_block.attn.proj", "context_block.mlp.fc1", "context_block.mlp.fc2"):
                out[s + sai] = None
    return out


def _zimage_originals(layers: Layers) -> dict[str, Route | None]:
    """Z-Image's own names (``convert_z_image_transformer_checkpoint_to_diffusers``): fused qkv, ``out``."""
    out: dict[str, Route | None] = {}
    for name in layers:
        if name.endswith((".attention.to_k", ".attention.to_v")):
            continue
        if name.endswith(".attention.to_q"):
            block = name.removesuffix(".to_q")
            out[f"{block}.qkv"] = _fused(layers, (f"{block}.to_{p}" for p in "qkv"))
            continue
        original = name
        for ours, theirs in _ZIMAGE_RENAMES:
            original = original.replace(ours, theirs)
        if original != name:
            out[original] = _one(layers, name)
    return out


_ORIGINALS: Mapping[str, Callable[[Layers], dict[str, Route | None]]] = {
    "FluxTransformer2DModel": _flux_originals,
    "Flux2Transformer2DModel": _flux2_originals,
    "SD3Transformer2DModel": _sd3_originals,
    "ZImageTransformer2DModel": _zimage_originals,
}


def _underscored(name: str) -> str:
    return name.replace(".", "_")


def transformer_routes(model: torch.nn.Module, layers: Layers) -> dict[str, Route]:
    """Every name a LoRA file may give a layer of ``model`` (a flow transformer), without the
    ``.lora_*`` suffix, with the :data:`Route` it takes. ``layers``: the model's adaptable layers by path."""
    routes: dict[str, Route] = {}
    for name in layers:
        route = (Part(name),)
        for key in (f"transformer.{name}", f"diffusion_model.{name}", f"lora_transformer_{_underscored(name)}",
                    f"lora_unet_{_underscored(name)}"):
            routes.setdefault(key, route)
    for original, original_route in original_routes(model, layers).items():
        for key in (f"diffusion_model.{original}", f"lora_unet_{_underscored(original)}"):
            routes.setdefault(key, original_route)
    return routes


def original_routes(model: torch.nn.Module, layers: Layers) -> dict[str, Route]:
    """The original checkpoint's names of ``model``'s layers where they differ from diffusers' ({} if unknown)."""
    originals = _ORIGINALS.get(type(model).__name__)
    return {name: route for name, route in (originals(layers) if originals else {}).items() if route is not None}


def model_group(model: torch.nn.Module) -> str | None:
    """The family group of a denoiser (``FLUX.1``, ``SD 3.5``...), None if unknown."""
    return _MODEL_GROUPS.get(type(model).__name__)


def file_group(layer_names: Iterable[str]) -> str | None:
    """The family group a LoRA's layer names were made for, when they say it unambiguously."""
    found = {group for name in layer_names for pattern, group in _FILE_MARKERS if pattern.search(name)}
    # "FLUX" (FLUX.1 or FLUX.2) says less than "FLUX.1": keep the most specific of nested groups
    found = {g for g in found if not any(o != g and o.startswith(g) for o in found)}
    return found.pop() if len(found) == 1 else None


def foreign_group(layer_names: Iterable[str], model: torch.nn.Module) -> str | None:
    """The group a LoRA was made for when it is plainly not the loaded model's; None when it may fit."""
    made_for, loaded = file_group(layer_names), model_group(model)
    if made_for is None or loaded is None or loaded.startswith(made_for):
        return None
    return made_for

"""Fitting a LoRA file's layers onto the layers of a loaded pipeline.

Names are matched against the model itself rather than rewritten by string rules: every Linear and
Conv2d of the UNet and text encoders is indexed under its diffusers path, its kohya spelling and, for
the UNet, its original LDM path (``input_blocks`` / ``middle_block`` / ``output_blocks``). That gives
one exact answer for SD1, SD2 and SDXL alike (diffusers remaps LDM block names only for SDXL) and
refuses a file made for another base model before anything changes. A flow family's transformer is
indexed under its diffusers names and its original checkpoint names (:mod:`modules.engine.lora_flow`),
where one file layer may feed several model layers (fused q/k/v): each gets the shared down weight
and its own rows of the up weight, so the fused layer's change ``up @ down`` is exactly the split
layers' changes stacked.

Each matched layer's factors are checked against the layer's shape and converted to peft's names.
The network alpha is folded into the up weights, so each adapter runs at its weight times 1 and
diffusers' fragile per-layer alpha patterns never come into play. The result, a
:class:`PreparedLora`, is ready to attach; the pipeline itself is never touched here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers import DiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer

from modules.engine.lora_files import (
    COMPONENT_LABELS,
    COMPONENT_PREFIXES,
    DENOISERS,
    PEFT_DOWN,
    PEFT_UP,
    Factors,
    FileStamp,
    file_stamp,
    parse_factors,
    rank_of,
    read_lora_metadata,
    read_tensors,
    refuse,
)
from modules.engine.lora_flow import Rows, foreign_group, transformer_routes

log = logging.getLogger(__name__)

# diffusers UNet -> original LDM names: whole layers, and the layers inside a resnet.
_UNET_TO_LDM = MappingProxyType({
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_out": "out.2",
})
_RESNET_TO_LDM = MappingProxyType({
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
})


@dataclass(frozen=True)
class Target:
    """A layer of the pipeline a LoRA can adapt (the base layer, when peft already wraps it)."""

    component: str
    name: str
    module: torch.nn.Linear | torch.nn.Conv2d


@dataclass(frozen=True)
class Slot:
    """A target and which rows of a file layer's up weight it takes (in order); None: all of them."""

    target: Target
    rows: Rows | None = None


Route = tuple[Slot, ...]  # the model layers one file layer changes


@dataclass(frozen=True)
class PreparedLora:
    """A LoRA read, checked against the pipeline and converted to peft names, not yet attached."""

    stamp: FileStamp
    tensors: Mapping[str, Mapping[str, torch.Tensor]]  # component -> {"<layer>.lora_A.weight": ...}


# ------------------------------------------------------------------------------- the model's layers


def ldm_block_pairs(config: Mapping[str, Any]) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, LDM prefix, is a resnet), following the LDM UNet's block numbering."""
    down_types, up_types = list(config["down_block_types"]), list(config["up_block_types"])
    per_block = config["layers_per_block"]
    layers = [int(per_block)] * len(down_types) if isinstance(per_block, int) else [int(n) for n in per_block]
    pairs: list[tuple[str, str, bool]] = []
    n = 1  # input_blocks.0 is conv_in
    for b, kind in enumerate(down_types):
        for j in range(layers[b]):
            pairs.append((f"down_blocks.{b}.resnets.{j}", f"input_blocks.{n}.0", True))
            if "CrossAttn" in kind:
                pairs.append((f"down_blocks.{b}.attentions.{j}", f"input_blocks.{n}.1", False))
            n += 1
        if b < len(down_types) - 1:
            pairs.append((f"down_blocks.{b}.downsamplers.0.conv", f"input_blocks.{n}.0.op", False))
            n += 1
    pairs += [("mid_block.resnets.0", "middle_block.0", True), ("mid_block.attentions.0", "middle_block.1", False),
              ("mid_block.resnets.1", "middle_block.2", True)]
    n = 0
    up_layers = list(reversed(layers))
    for b, kind in enumerate(up_types):
        attention = "CrossAttn" in kind
        for j in range(up_layers[b] + 1):
            pairs.append((f"up_blocks.{b}.resnets.{j}", f"output_blocks.{n}.0", True))
            if attention:
                pairs.append((f"up_blocks.{b}.attentions.{j}", f"output_blocks.{n}.1", False))
            if j == up_layers[b] and b < len(up_types) - 1:
                pairs.append((f"up_blocks.{b}.upsamplers.0.conv", f"output_blocks.{n}.{2 if attention else 1}.conv",
                              False))
            n += 1
    return pairs


def ldm_name(name: str, pairs: Sequence[tuple[str, str, bool]]) -> str | None:
    """The LDM path of a diffusers UNet layer, given :func:`ldm_block_pairs` of its config."""
    if name in _UNET_TO_LDM:
        return _UNET_TO_LDM[name]
    for src, dst, resnet in pairs:
        if name == src or name.startswith(src + "."):
            rest = name[len(src):]
            if resnet:
                rest = ".".join(_RESNET_TO_LDM.get(part, part) for part in rest.split("."))
            return dst + rest
    return None


def _adaptable_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Linear | torch.nn.Conv2d]]:
    wrapper = None  # a peft wrapper's children (base_layer, lora_A...) are its bookkeeping, not model layers
    for name, module in model.named_modules():
        if wrapper is not None and name.startswith(wrapper):
            continue
        if isinstance(module, BaseTunerLayer):
            wrapper = name + "."
            module = module.get_base_layer()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            yield name, module


def _aliases(component: str, name: str, ldm_pairs: Sequence[tuple[str, str, bool]] | None) -> Iterator[str]:
    yield name
    if component != "unet":
        # transformers 5 dropped CLIPTextModel's ``text_model.`` level; files written before keep it.
        yield name.removeprefix("text_model.") if name.startswith("text_model.") else f"text_model.{name}"
    elif ldm_pairs is not None and (ldm := ldm_name(name, ldm_pairs)) is not None:
        yield ldm


def adaptable_components(pipe: DiffusionPipeline) -> list[str]:
    """The pipeline's parts a LoRA may change: those it has and its LoRA API loads (not Z-Image's LLM)."""
    loadable = getattr(pipe, "_lora_loadable_modules", None)
    return [component for component, _ in COMPONENT_PREFIXES
            if isinstance(getattr(pipe, component, None), torch.nn.Module)
            and (loadable is None or component in loadable)]


def _transformer_index(model: torch.nn.Module) -> dict[str, Route]:
    layers = dict(_adaptable_layers(model))
    targets = {name: Target("transformer", name, module) for name, module in layers.items()}
    return {key: tuple(Slot(targets[part.layer], part.rows) for part in route)
            for key, route in transformer_routes(model, layers).items()}


def index_targets(pipe: DiffusionPipeline) -> dict[str, Route]:
    """Every adaptable layer under each name a file may give it: ``component.path`` and kohya's spellings."""
    index: dict[str, Route] = {}
    for component, prefixes in COMPONENT_PREFIXES:
        if component not in adaptable_components(pipe):
            continue
        model = getattr(pipe, component)
        if component == "transformer":
            index.update(_transformer_index(model))
            continue
        ldm_pairs = ldm_block_pairs(model.config) if component == "unet" else None
        for name, module in _adaptable_layers(model):
            route = (Slot(Target(component, name, module)),)
            for alias in _aliases(component, name, ldm_pairs):
                index.setdefault(f"{component}.{alias}", route)
                for prefix in prefixes:
                    index.setdefault(prefix + alias.replace(".", "_"), route)
    return index


# ------------------------------------------------------------------------------ fitting to the model


def _made_for(factors: Sequence[Factors], metadata: Mapping[str, str]) -> str:
    base = metadata.get("ss_base_model_version") or metadata.get("modelspec.architecture")
    if not base and any(f.component == "text_encoder_2" for f in factors):
        base = "SDXL"
    return "it was probably made for another base model" + (f" (the file says {base})" if base else "")


def _denoiser(pipe: DiffusionPipeline) -> torch.nn.Module | None:
    return next((model for c in ("unet", "transformer") if isinstance(model := getattr(pipe, c, None), torch.nn.Module)),
                None)


def _refuse_other_family(path: Path, factors: Sequence[Factors], pipe: DiffusionPipeline) -> None:
    """A LoRA whose layer names say plainly which other family it is for, refused by that name."""
    denoiser = _denoiser(pipe)
    made_for = foreign_group((f.key for f in factors if f.component in DENOISERS), denoiser) if denoiser else None
    if made_for is not None:
        raise refuse(path, f"it is a LoRA for {made_for} models; the loaded model is {type(denoiser).__name__} "
                           f"({type(pipe).__name__})")


def _label(component: str, pipe: DiffusionPipeline) -> str:
    if component in DENOISERS:
        return "transformer" if getattr(pipe, "unet", None) is None else "UNet"
    return COMPONENT_LABELS[component]


def _resolve(path: Path, factors: Sequence[Factors], index: Mapping[str, Route], pipe: DiffusionPipeline,
             metadata: Mapping[str, str]) -> list[tuple[Factors, Route]]:
    found: list[tuple[Factors, Route]] = []
    missing: dict[str, list[str]] = {}
    for factor in factors:
        route = index.get(factor.key)
        if route is None:
            missing.setdefault(factor.component, []).append(factor.key)
        else:
            found.append((factor, route))
    for component, keys in missing.items():
        label = _label(component, pipe)
        present = _denoiser(pipe) is not None if component in DENOISERS else component in adaptable_components(pipe)
        if not present:
            raise refuse(path, f"it changes a {label}, which the loaded model does not have; "
                               f"{_made_for(factors, metadata)}")
        total = sum(1 for f in factors if f.component == component)
        if 2 * len(keys) > total:  # mostly foreign: the wrong base model, not a few stray layers
            raise refuse(path, f"{len(keys)} of the {total} {label} layers it changes do not exist in the loaded "
                               f"model (e.g. {keys[0]}); {_made_for(factors, metadata)}")
        log.warning("LoRA %s: %d of %d %s layers do not exist in the loaded model and are skipped (e.g. %s)",
                    path.name, len(keys), total, label, keys[0])
    if not found:
        raise refuse(path, "none of its layers exist in the loaded model")
    return found


def _squeeze_1x1(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.flatten(1) if tensor.ndim == 4 and tuple(tensor.shape[2:]) == (1, 1) else tensor


def _unsqueeze_1x1(tensor: torch.Tensor) -> torch.Tensor:
    return tensor[:, :, None, None] if tensor.ndim == 2 else tensor


def _fit(path: Path, factor: Factors, target: Target, hint: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the factors' shapes against the layer; fold the scale into ``up``; match its device and dtype."""
    module = target.module
    rank = rank_of(factor.down)
    if isinstance(module, torch.nn.Linear):
        # A 1x1 conv and a linear layer are the same map; trainers store either for proj_in/proj_out.
        down, up = _squeeze_1x1(factor.down), _squeeze_1x1(factor.up)
        want_down, want_up = (rank, module.in_features), (module.out_features, rank)
    else:
        down, up = _unsqueeze_1x1(factor.down), _unsqueeze_1x1(factor.up)
        want_down = (rank, module.in_channels // module.groups, *module.kernel_size)
        want_up = (module.out_channels, rank, 1, 1)
    if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
        raise refuse(path, f"layer {factor.key} does not fit the loaded model: it needs {want_down} and "
                           f"{want_up}, the file has {tuple(factor.down.shape)} and {tuple(factor.up.shape)}; {hint}")
    weight = module.weight
    # Sequential CPU offload parks weights on the meta device; diffusers restores them while attaching.
    device = weight.device if weight.device.type != "meta" else torch.device("cpu")
    scaled_up = up.to(torch.float32) * (1.0 if factor.scale is None else factor.scale)
    return down.to(device, weight.dtype), scaled_up.to(device, weight.dtype)


def _split(path: Path, factor: Factors, route: Route, hint: str) -> list[tuple[Target, Factors]]:
    """One file layer's factors for each model layer it changes: the same down, the slot's rows of up.

    With ``D`` shared and ``U`` cut into row blocks ``U_i``, each slot's change ``U_i @ D`` is block
    ``i`` of the fused change ``U @ D``: together they are exactly what the file's layer does.
    """
    if len(route) == 1 and route[0].rows is None:
        return [(route[0].target, factor)]
    up = _squeeze_1x1(factor.up)
    covered = sum(stop - start for slot in route for start, stop in slot.rows or ())
    if up.ndim != 2 or up.shape[0] != covered:
        raise refuse(path, f"layer {factor.key} does not fit the loaded model: its up weight has "
                           f"{tuple(factor.up.shape)}, the model's layers there take {covered} rows; {hint}")
    return [(slot.target, Factors(factor.component, factor.key, factor.down,
                                  torch.cat([up[start:stop] for start, stop in slot.rows or ()]), factor.scale))
            for slot in route]


def prepare(pipe: DiffusionPipeline, path: Path, index: Mapping[str, Route]) -> PreparedLora:
    """Read, check and convert one file against ``index`` (from :func:`index_targets`); the pipeline is not touched."""
    stamp = file_stamp(path)
    tensors = read_tensors(path)
    metadata = read_lora_metadata(path)
    factors = parse_factors(path, tensors, metadata)
    _refuse_other_family(path, factors, pipe)
    hint = _made_for(factors, metadata)
    out: dict[str, dict[str, torch.Tensor]] = {}
    for factor, route in _resolve(path, factors, index, pipe, metadata):
        for target, part in _split(path, factor, route, hint):
            group = out.setdefault(target.component, {})
            if f"{target.name}{PEFT_DOWN}" in group:
                raise refuse(path, f"two of its layers both change {target.component}.{target.name}")
            down, up = _fit(path, part, target, hint)
            group[f"{target.name}{PEFT_DOWN}"], group[f"{target.name}{PEFT_UP}"] = down, up
    return PreparedLora(stamp=stamp, tensors=out)

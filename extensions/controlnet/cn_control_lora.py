"""Stability AI's Control-LoRA files (``stabilityai/control-lora``'s ``control-lora-*-rank128.safetensors``,
the ``control_lora_*`` files of ComfyUI's ControlNet-v1-1 sets): telling them apart, the family they
are for, and the ControlNet each stands for on the job's own UNet.

A Control-LoRA is a ControlNet stored as a difference from the UNet it was trained on: it holds the
``lora_controlnet`` marker, LDM names without a prefix, each large weight of the parts a ControlNet
shares with the UNet (``input_blocks``, ``middle_block``, ``time_embed``, ``label_emb``) as
low-rank factors ``up`` / ``down`` added to the UNet's weight, and the rest (biases, norms, the hint
block, the zero convolutions, ``middle_block_out``) in full. The ControlNet is built as ComfyUI and
the A1111 extension build it: the checkpoint's UNet weights, every full tensor in place of the
UNet's, ``up @ down`` added. diffusers' own loader (``ControlNetModel.load_lora_adapter``, which
converts with ``convert_sai_sd_control_lora_state_dict_to_peft``) is not used: its converter assumes
two layers per level (the real UNets' layout, not every UNet's), and with peft it keeps the UNet's
biases where the file has trained ones. Tests check this build gives diffusers' result where both apply.

The ControlNet depends on the checkpoint (its weights are the UNet's), so it is built in JOB_START
from ``ctx.model.unet`` and cached by file and checkpoint; the family check needs no UNet.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cn_adapters
from cn_models import FAMILY_LABELS, FILE_SUFFIXES, ControlNetCache, ModelFile, check_family, read_state

from modules.extension_api import JobStart

if TYPE_CHECKING:  # torch and diffusers are imported where used: loading the extension must not import them
    import torch
    from diffusers import ControlNetModel

log = logging.getLogger(__name__)

MARKER = "lora_controlnet"
KIND = "control-lora"  # the cache key's first part: a Control-LoRA's net is not a plain ControlNet's
_PARAMS = ("weight", "bias", "up", "down")
# LDM resnet parts -> diffusers' (the remainder after a resnet's prefix)
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
# LDM module paths whose diffusers path does not depend on the UNet's levels
_FIXED = {"input_blocks.0.0": "conv_in", "time_embed.0": "time_embedding.linear_1",
          "time_embed.2": "time_embedding.linear_2", "label_emb.0.0": "add_embedding.linear_1",
          "label_emb.0.2": "add_embedding.linear_2", "middle_block.0": "mid_block.resnets.0",
          "middle_block.1": "mid_block.attentions.0", "middle_block.2": "mid_block.resnets.1",
          "middle_block_out.0": "controlnet_mid_block"}
_HINT = re.compile(r"input_hint_block\.(\d+)\.weight")


def is_control_lora(path: Path) -> bool:
    """Whether ``path`` is a Control-LoRA file (reads keys only where the format allows)."""
    path = Path(path)
    if not path.is_file() or path.suffix.lower() not in FILE_SUFFIXES:
        return False
    try:
        return MARKER in cn_adapters.read_shapes(path)
    except cn_adapters.UNREADABLE as exc:  # the ControlNet loader refuses it, naming the file
        log.debug("cannot read %s: %s", path, exc)
        return False


def family_of(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """"sdxl" (it has SDXL's size/crop embedding), else "sd2" or "sd1" by the text width that the
    cross-attention keys take (1024 or other)."""
    if any(key.startswith("label_emb.") for key in shapes):
        return "sdxl"
    widths = {shape[1] for key, shape in shapes.items()
              if key.endswith(("attn2.to_k.down", "attn2.to_k.weight")) and len(shape) == 2}
    return "sd2" if widths == {1024} else "sd1"


def _module_names(config: Any, hint: list[int]) -> dict[str, str]:
    """LDM module paths of a ControlNet for a UNet with ``config`` -> diffusers' paths;
    ``hint``: the hint block's convolution indices, in order."""
    types = list(config.down_block_types)
    layers = config.layers_per_block
    per_level = list(layers) if isinstance(layers, (list, tuple)) else [layers] * len(types)
    names = dict(_FIXED)
    index = 1  # input_blocks.0 is conv_in
    for level in range(len(types)):
        for layer in range(per_level[level]):
            names[f"input_blocks.{index}.0"] = f"down_blocks.{level}.resnets.{layer}"
            names[f"input_blocks.{index}.1"] = f"down_blocks.{level}.attentions.{layer}"
            index += 1
        if level < len(types) - 1:
            names[f"input_blocks.{index}.0.op"] = f"down_blocks.{level}.downsamplers.0.conv"
            index += 1
    names.update({f"zero_convs.{i}.0": f"controlnet_down_blocks.{i}" for i in range(index)})
    names[f"input_hint_block.{hint[0]}"] = "controlnet_cond_embedding.conv_in"
    names[f"input_hint_block.{hint[-1]}"] = "controlnet_cond_embedding.conv_out"
    names.update({f"input_hint_block.{n}": f"controlnet_cond_embedding.blocks.{i}" for i, n in enumerate(hint[1:-1])})
    return names


def _rename(module: str, names: Mapping[str, str]) -> str | None:
    """The diffusers path of an LDM module path; None when the ControlNet has no such module."""
    parts = module.split(".")
    for cut in range(len(parts), 0, -1):
        target = names.get(".".join(parts[:cut]))
        if target is None:
            continue
        rest = ".".join(parts[cut:])
        if re.search(r"resnets\.\d+$", target):
            rest = next((new + rest[len(old):] for old, new in _RESNET.items()
                         if rest == old or rest.startswith(old + ".")), rest)
        return f"{target}.{rest}" if rest else target
    return None


def _unet_weights(unet: Any) -> dict[str, torch.Tensor]:
    """The UNet's own weights by plain diffusers names: a LoRA attached with peft is left out
    (a fused one is part of the weights)."""
    weights = {}
    for key, value in unet.state_dict().items():
        if ".lora_" in key or "lora_magnitude" in key:
            continue
        weights[key.replace(".base_layer.", ".")] = value
    return weights


def _hint_layout(state: Mapping[str, torch.Tensor]) -> tuple[list[int], tuple[int, ...], int]:
    """(the hint block's convolution indices, ``conditioning_embedding_out_channels``, its input channels)."""
    hint = sorted(int(m.group(1)) for key in state if (m := _HINT.fullmatch(key)))
    if len(hint) < 2:
        raise ValueError("it has no hint block (input_hint_block)")
    # conv_in, then pairs of blocks (same width, then stride 2 to the next width), then conv_out
    channels = [state[f"input_hint_block.{n}.weight"].shape[0] for n in (hint[0], *hint[2:-1:2])]
    return hint, tuple(channels), state[f"input_hint_block.{hint[0]}.weight"].shape[1]


def _apply(state: Mapping[str, torch.Tensor], names: Mapping[str, str], wanted: Mapping[str, torch.Tensor],
           target: dict[str, torch.Tensor], device: torch.device) -> list[str]:
    """Put the file's tensors into ``target`` (the UNet's weights): full ones in place, ``up @ down``
    (computed on ``device``, the UNet's) added to the weight; the file's keys that fit no place in
    the ControlNet."""
    import torch

    factors: dict[str, dict[str, torch.Tensor]] = {}
    misfits = []
    for key, tensor in state.items():
        module, _, param = key.rpartition(".")
        if param not in _PARAMS or "__" in key:  # as ComfyUI reads these files: not a layer's tensor
            continue
        name = _rename(module, names)
        if name is not None and param in ("up", "down"):
            factors.setdefault(name, {})[param] = tensor
        elif name is not None and f"{name}.{param}" in wanted and wanted[f"{name}.{param}"].shape == tensor.shape:
            target[f"{name}.{param}"] = tensor.to(torch.float32)
        else:
            misfits.append(key)
    for name, pair in factors.items():  # after the full tensors: a file may give a weight and factors
        weight = target.get(f"{name}.weight")
        if weight is None or set(pair) != {"up", "down"}:
            misfits.append(f"{name} (up/down)")
            continue
        delta = (pair["up"].to(device, torch.float32).flatten(1) @ pair["down"].to(device, torch.float32).flatten(1))
        delta = delta.cpu()
        if delta.shape != (weight.shape[0], weight[0].numel()):
            misfits.append(f"{name} (up/down)")
            continue
        target[f"{name}.weight"] = weight + delta.reshape(weight.shape)
    return misfits


def build(path: Path, unet: Any) -> ControlNetModel:
    """The ControlNet a Control-LoRA file stands for on ``unet``, on the CPU in fp32."""
    import torch
    from diffusers import ControlNetModel

    state = {key: value for key, value in read_state(path).items() if key != MARKER}
    hint, channels, hint_channels = _hint_layout(state)
    with torch.device("meta"):  # no memory, no random init: every weight comes from the UNet or the file
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=channels,
                                        conditioning_channels=hint_channels, load_weights_from_unet=False)
    wanted = net.state_dict()
    base = _unet_weights(unet)
    target = {key: base[key].detach().to("cpu", torch.float32, copy=True) for key in wanted
              if key in base and not key.startswith("controlnet_")}
    device = next(unet.parameters()).device
    misfits = _apply(state, _module_names(unet.config, hint), wanted, target, device)
    if misfits:
        raise ValueError(f"{len(misfits)} of its tensors fit no layer of a ControlNet for this checkpoint's UNet "
                         f"(e.g. {', '.join(misfits[:3])}): made for another model?")
    missing = sorted(set(wanted) - set(target))
    if missing:
        raise ValueError(f"it lacks {len(missing)} of the ControlNet's tensors (e.g. {', '.join(missing[:3])})")
    net.load_state_dict(target, strict=True, assign=True)
    return net.eval()


def checkpoint_identity(ctx: JobStart) -> tuple[Any, ...]:
    """What the built ControlNet depends on: the checkpoint, its loaded UNet, and any LoRA fused into
    its weights (the adapters merged and their scales)."""
    unet = ctx.model.unet
    fused: tuple[Any, ...] = ()
    for module in unet.modules():
        merged = getattr(module, "merged_adapters", None)
        if merged:
            fused = (tuple(merged), tuple(sorted(getattr(module, "scaling", {}).items())))
            break
    return str(ctx.job.request.checkpoint), id(unet), fused


def load(cache: ControlNetCache, model: ModelFile, ctx: JobStart) -> ControlNetModel:
    """JOB_START: the ControlNet of a Control-LoRA unit, built on the job's UNet (cached by file and
    checkpoint); one for another family than the checkpoint's is refused naming both."""
    try:
        family = family_of(cn_adapters.read_shapes(model.path))
    except cn_adapters.UNREADABLE as exc:
        raise ValueError(f"model: cannot load {model.title} as a Control-LoRA: {exc}") from exc
    check_family(model, family, ctx.model.family)

    def built() -> tuple[ControlNetModel, str]:
        try:
            net = build(model.path, ctx.model.unet)
        except (*cn_adapters.UNREADABLE, TypeError) as exc:
            raise ValueError(f"model: cannot load {model.title} as a Control-LoRA for this checkpoint: {exc}") from exc
        log.info("built ControlNet %s (Control-LoRA, %s) on %s", model.title, FAMILY_LABELS.get(family, family),
                 ctx.job.request.checkpoint)
        return net, family

    net, _ = cache.remember((KIND, str(model.path), model.title, *checkpoint_identity(ctx)), built)
    return net

"""Tiny random LoRA files matching a tiny checkpoint, in the layouts real LoRAs come in, for tests.

A LoRA covers the UNet's attention projections (to_q/to_k/to_v/to_out.0, proj_in/proj_out) and every
text encoder's q/k/v/out_proj and mlp fc1/fc2, optionally the resnets' 3x3 convs too (LoCon). Its up
and down weights are random and non-zero, so weight 1 visibly changes what the model computes. The
weights depend only on the seed and the model's layers, never on the layout: the same seed written
as kohya, kohya with LDM block names, or peft has the same effect, which is what tests compare.

Layouts (:class:`LoraStyle`):

- ``kohya``: ``lora_unet_<diffusers path with underscores>.lora_down.weight`` / ``.lora_up.weight`` /
  ``.alpha``, text encoders as ``lora_te_`` (SD1) or ``lora_te1_`` / ``lora_te2_`` (SDXL);
- ``kohya-ldm``: the same, with the UNet's original LDM block names (``input_blocks_1_1_...``), as
  most real SD1 and SDXL LoRAs have;
- ``peft``: diffusers' format, ``unet.<path>.lora_A.weight`` / ``lora_B.weight`` and
  ``text_encoder.text_model.<path>...``, with each component's alpha in ``lora_adapter_metadata``.

Flow families (FLUX.1, SD 3.5, Z-Image: pipelines with a ``transformer``) get every Linear/Conv of
the transformer and of the text encoders their LoRA API adapts (:func:`tiny_flow_lora_tensors`), as

- ``kohya``: ``lora_unet_<original checkpoint name>`` with its fused layers (FLUX.1's
  ``double_blocks_0_img_attn_qkv`` and ``single_blocks_0_linear1``, SD 3.5's ``joint_blocks_0_x_block_attn_qkv``,
  Z-Image's ``layers_0_attention_qkv``), alpha = rank / 2, text encoders as ``lora_te1_`` / ``lora_te2_``;
- ``peft`` (ai-toolkit / diffusers): ``transformer.<diffusers path>.lora_A.weight``, no alpha;
- ``comfy``: the same under ``diffusion_model.`` (ai-toolkit's Z-Image files, ComfyUI saves).

Usage::

    python -m modules.devtools.tiny_lora --checkpoint models/Stable-diffusion/tiny.safetensors \\
        --out models/Lora/tiny.safetensors --style kohya-ldm --seed 1
"""

from __future__ import annotations

import argparse
import enum
import json
import logging
import math
import os
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save

from modules.devtools.ldm_keys import UNET_PREFIX, unet_to_ldm
from modules.engine.devices import DevicePolicy, choose_device
from modules.engine.loader import load_model
from modules.engine.lora_flow import original_routes

log = logging.getLogger(__name__)

_UNET_LAYERS = ("to_q", "to_k", "to_v", "proj_in", "proj_out")  # and to_out.0
_CONV_LAYERS = ("conv1", "conv2")  # inside resnets: the 3x3 convs LoCon adds
_TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
_TEXT_COMPONENTS = ("text_encoder", "text_encoder_2")


class LoraStyle(enum.Enum):
    """How a tiny LoRA names its tensors."""

    KOHYA = "kohya"
    KOHYA_LDM = "kohya-ldm"
    PEFT = "peft"
    COMFY = "comfy"  # flow families only: peft names under ``diffusion_model.``


@dataclass(frozen=True)
class _Layer:
    component: str
    name: str  # path inside the component, as the loaded model names it
    module: torch.nn.Linear | torch.nn.Conv2d


def _covered(component: str, name: str, conv: bool) -> bool:
    last = name.rsplit(".", 1)[-1]
    if component != "unet":
        return last in _TEXT_LAYERS
    if name.endswith(".to_out.0") or last in _UNET_LAYERS:
        return True
    return conv and last in _CONV_LAYERS and ".resnets." in name


def _layers(pipe: DiffusionPipeline, conv: bool) -> Iterator[_Layer]:
    """The layers a tiny LoRA covers, in a fixed order (component, then name)."""
    for component in ("unet", *_TEXT_COMPONENTS):
        model = getattr(pipe, component, None)
        if model is None:
            continue
        found = {name: module for name, module in model.named_modules()
                 if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and _covered(component, name, conv)}
        for name in sorted(found):
            yield _Layer(component, name, found[name])


def _factors(layer: _Layer, rank: int, scale: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) the size real ones have: down like the layer's input, up like its output."""
    module = layer.module
    if isinstance(module, torch.nn.Linear):
        down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
    else:
        down_shape = (rank, module.in_channels // module.groups, *module.kernel_size)
        up_shape = (module.out_channels, rank, 1, 1)
    fan_in = math.prod(down_shape[1:])
    down = torch.randn(down_shape, generator=gen) / math.sqrt(fan_in)
    up = torch.randn(up_shape, generator=gen) * (scale / math.sqrt(rank))
    return down, up


def _kohya_prefix(component: str, sdxl: bool) -> str:
    if component == "unet":
        return "lora_unet_"
    if not sdxl:
        return "lora_te_"
    return "lora_te1_" if component == "text_encoder" else "lora_te2_"


def _ldm_names(pipe: DiffusionPipeline, layers: list[_Layer]) -> dict[str, str]:
    """diffusers -> LDM path of each UNet layer, by the converter tiny checkpoints are written with."""
    names: dict[str, str] = {}
    for layer in layers:
        if layer.component == "unet":
            ldm = unet_to_ldm({f"{layer.name}.weight": layer.module.weight}, pipe.unet.config)
            names[layer.name] = next(iter(ldm)).removeprefix(UNET_PREFIX).removesuffix(".weight")
    return names


def _file_name(layer: _Layer, style: LoraStyle, sdxl: bool, ldm: dict[str, str]) -> str:
    """The layer's name in the file, without the down/up/alpha suffix."""
    if layer.component == "unet":
        path = ldm[layer.name] if style is LoraStyle.KOHYA_LDM else layer.name
    else:
        # Files keep CLIP's ``text_model.`` level, whatever the installed transformers calls it.
        path = "text_model." + layer.name.removeprefix("text_model.")
    if style is LoraStyle.PEFT:
        return f"{layer.component}.{path}"
    return _kohya_prefix(layer.component, sdxl) + path.replace(".", "_")


def tiny_lora_tensors(pipe: DiffusionPipeline, *, seed: int = 0, style: LoraStyle = LoraStyle.KOHYA, rank: int = 4,
                      scale: float = 1.0, conv: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and safetensors metadata of a tiny LoRA for ``pipe``'s layers."""
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    style = LoraStyle(style)
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    layers = list(_layers(pipe, conv))
    ldm = _ldm_names(pipe, layers) if style is LoraStyle.KOHYA_LDM else {}
    alpha = rank / 2  # not the rank, so a loader that ignores alpha gets a visibly different result
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        down, up = _factors(layer, rank, scale, gen)
        name = _file_name(layer, style, sdxl, ldm)
        if style is LoraStyle.PEFT:
            tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
        else:
            tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(alpha),
        "ss_base_model_version": "sdxl_base_v1-0" if sdxl else "sd_v1",
        "ss_output_name": f"tiny-{style.value}-{seed}",
    }
    if style is LoraStyle.PEFT:
        metadata["lora_adapter_metadata"] = json.dumps(_peft_configs(layers, rank, alpha), sort_keys=True)
    return tensors, metadata


def _random_pair(module: torch.nn.Module, rows: int, rank: int, scale: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (down, up) for a file layer whose input is ``module``'s and whose up has ``rows`` rows."""
    down, up = _factors(_Layer("transformer", "", module), rank, scale, gen)
    return down, torch.randn((rows, *up.shape[1:]), generator=gen) * (scale / math.sqrt(rank))


def _flow_entries(pipe: DiffusionPipeline, style: LoraStyle) -> list[tuple[str, torch.nn.Module, int]]:
    """(name in the file, the layer giving its input width, rows of its up weight) of every covered layer."""
    model = pipe.transformer
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    entries: list[tuple[str, torch.nn.Module, int]] = []
    covered: set[str] = set()
    if style is LoraStyle.KOHYA:
        for name, route in sorted(original_routes(model, layers).items()):
            rows = sum(stop - start for part in route for start, stop in part.rows or ((0, _out(layers[part.layer])),))
            entries.append((name, layers[route[0].layer], rows))
            covered.update(part.layer for part in route)
    entries += [(name, module, _out(module)) for name, module in sorted(layers.items()) if name not in covered]
    prefix = {LoraStyle.KOHYA: "lora_unet_", LoraStyle.PEFT: "transformer.", LoraStyle.COMFY: "diffusion_model."}[style]
    named = [(prefix + (n.replace(".", "_") if style is LoraStyle.KOHYA else n), m, r) for n, m, r in entries]
    loadable = getattr(pipe, "_lora_loadable_modules", ())
    for layer in _layers(pipe, False):
        if layer.component in loadable and layer.component != "unet":
            path = "text_model." + layer.name.removeprefix("text_model.")  # files keep CLIP's text_model. level
            name = (("lora_te1_" if layer.component == "text_encoder" else "lora_te2_") + path.replace(".", "_")
                    if style is LoraStyle.KOHYA else f"{layer.component}.{path}")
            named.append((name, layer.module, _out(layer.module)))
    return named


def _out(module: torch.nn.Module) -> int:
    return int(module.out_features if isinstance(module, torch.nn.Linear) else module.out_channels)


def tiny_flow_lora_tensors(pipe: DiffusionPipeline, *, seed: int = 0, style: LoraStyle = LoraStyle.KOHYA,
                           rank: int = 4, scale: float = 1.0) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a tiny LoRA for a flow pipeline's transformer (and CLIP encoders)."""
    style = LoraStyle(style)
    if style is LoraStyle.KOHYA_LDM:
        raise ValueError("kohya-ldm names SD UNet blocks; flow families use kohya, peft or comfy")
    gen = torch.Generator().manual_seed(seed)
    alpha = rank / 2
    tensors: dict[str, torch.Tensor] = {}
    for name, module, rows in _flow_entries(pipe, style):
        down, up = _random_pair(module, rows, rank, scale, gen)
        if style is LoraStyle.KOHYA:
            tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"] = down, up
            tensors[f"{name}.alpha"] = torch.tensor(alpha)
        else:
            tensors[f"{name}.lora_A.weight"], tensors[f"{name}.lora_B.weight"] = down, up
    metadata = {"ss_output_name": f"tiny-{type(pipe.transformer).__name__}-{style.value}-{seed}"}
    if style is LoraStyle.KOHYA:
        metadata |= {"ss_network_module": "networks.lora_flux", "ss_network_dim": str(rank),
                     "ss_network_alpha": str(alpha)}
    return tensors, metadata


def _peft_configs(layers: list[_Layer], rank: int, alpha: float) -> dict[str, object]:
    """Each component's LoraConfig as diffusers stores it (``<component>.<field>``)."""
    config: dict[str, object] = {}
    for component in sorted({layer.component for layer in layers}):
        config[f"{component}.r"] = rank
        config[f"{component}.lora_alpha"] = alpha
        config[f"{component}.target_modules"] = sorted(ly.name for ly in layers if ly.component == component)
    return config


def _sorted_header(raw: bytes) -> bytes:
    """safetensors writes metadata in hash order; sort it so equal seeds give byte-identical files."""
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    if len(text) > length:  # cannot happen for a reordering, but never write a corrupt file
        return raw
    return raw[:8] + text.ljust(length, b" ") + raw[8 + length :]


def _save(tensors: dict[str, torch.Tensor], metadata: dict[str, str], out: Path) -> None:
    """Write atomically, so a reader never sees half a file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    data = _sorted_header(save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))
    tmp_name = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp_name.write_bytes(data)
        os.replace(tmp_name, out)
    finally:
        tmp_name.unlink(missing_ok=True)


def write_lora_file(pipe: DiffusionPipeline, out: Path, *, seed: int = 0, style: LoraStyle = LoraStyle.KOHYA,
                    rank: int = 4, scale: float = 1.0, conv: bool = False) -> Path:
    """Write a tiny LoRA for an already built ``pipe`` (SD or flow family) to ``out``."""
    if getattr(pipe, "unet", None) is None:
        tensors, metadata = tiny_flow_lora_tensors(pipe, seed=seed, style=style, rank=rank, scale=scale)
    else:
        tensors, metadata = tiny_lora_tensors(pipe, seed=seed, style=style, rank=rank, scale=scale, conv=conv)
    _save(tensors, metadata, Path(out))
    return Path(out)


def write_tiny_lora(checkpoint: Path, out: Path, *, seed: int = 0, style: LoraStyle = LoraStyle.KOHYA, rank: int = 4,
                    scale: float = 1.0, conv: bool = False) -> Path:
    """Write a tiny LoRA for ``checkpoint`` (a tiny single file or diffusers folder) to ``out``.

    ``scale`` sets the size of the change at weight 1; ``conv`` adds the resnets' 3x3 convs (LoCon).
    """
    with tempfile.TemporaryDirectory(prefix="tiny-lora-configs-") as cache:
        model = load_model(Path(checkpoint), choose_device(DevicePolicy(use_cpu=True)), Path(cache))
    out = Path(out)
    write_lora_file(model.pipeline, out, seed=seed, style=style, rank=rank, scale=scale, conv=conv)
    log.info("wrote tiny %s LoRA (seed %d) to %s", LoraStyle(style).value, seed, out)
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m modules.devtools.tiny_lora",
                                     description="Write a tiny random LoRA matching a tiny checkpoint, for tests.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="tiny .safetensors file or diffusers folder")
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument("--style", default=LoraStyle.KOHYA.value, choices=[s.value for s in LoraStyle])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--scale", type=float, default=1.0, help="size of the change at weight 1")
    parser.add_argument("--conv", action="store_true", help="also cover the resnets' 3x3 convs (LoCon)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point: write one LoRA and print its path."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    path = write_tiny_lora(args.checkpoint, args.out, seed=args.seed, style=LoraStyle(args.style), rank=args.rank,
                           scale=args.scale, conv=args.conv)
    print(path)


if __name__ == "__main__":
    main()

"""Tiny random ControlNets matching the tiny SD1.5 / SDXL models, for tests.

A ControlNet is made from the tiny UNet (``ControlNetModel.from_unet``) with a small conditioning
embedding that still brings the control image down by 8 (four ``conditioning_embedding_out_channels``
entries, as the real ones), and random rather than zero "zero convolutions", so a weight of 1
visibly changes the pixels. Written in the two layouts users have: lllyasviel's single file
(``control_model.*`` LDM keys, ``.safetensors``) and a diffusers folder. A tiny Control-LoRA
(Stability AI's layout, :func:`build_tiny_control_lora`) is a ControlNet stored as a difference
from the UNet it was made for.

Usage::

    python -m modules.devtools.tiny_controlnet --arch sd15 --out models/ControlNet/tiny-canny.safetensors
    python -m modules.devtools.tiny_controlnet --arch sdxl --control-lora --out models/ControlNet/tiny-cl.safetensors
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file

from modules.devtools.ldm_keys import _UNET_EXACT, StateDict, _convert, _unet_prefixes
from modules.devtools.tiny_model import TinyArch, build_tiny_pipeline

log = logging.getLogger(__name__)

LDM_PREFIX = "control_model."
CONTROL_LORA_MARKER = "lora_controlnet"  # the key that marks Stability AI's Control-LoRA files
# The LDM parts a Control-LoRA shares with its UNet: their weights are stored as low-rank factors
# (``.up`` / ``.down``) over the UNet's, their biases and norms in full; the rest in full.
_SHARED_PARTS = ("input_blocks.", "middle_block.", "time_embed.", "label_emb.")
# Four entries: three stride-2 convolutions, so a 64 px control image meets the 8 px latent.
TINY_EMBEDDING_CHANNELS = (4, 8, 8, 16)


def build_tiny_controlnet(unet: UNet2DConditionModel, seed: int = 0) -> ControlNetModel:
    """A random ControlNet for ``unet`` whose output is not zero (its zero convs are random)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1000 + seed)
        controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_EMBEDDING_CHANNELS,
                                               load_weights_from_unet=False)
        zero_convs = [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out]
        with torch.no_grad():
            for conv in zero_convs:
                torch.nn.init.normal_(conv.weight, std=0.5)
                torch.nn.init.normal_(conv.bias, std=0.1)
    return controlnet.eval()


def build_for_arch(arch: TinyArch, seed: int = 0, model_seed: int = 0) -> ControlNetModel:
    """A tiny ControlNet for the tiny model of ``arch`` built with ``model_seed``."""
    return build_tiny_controlnet(build_tiny_pipeline(arch, model_seed).unet, seed)


def _embedding_exact(count: int) -> dict[str, str]:
    """diffusers' conditioning embedding -> LDM's ``input_hint_block`` (convs at even positions)."""
    names = {"conv_in": 0, "conv_out": 4 * count - 2}
    names.update({f"blocks.{k}": 2 * (k + 1) for k in range(2 * (count - 1))})
    return {f"controlnet_cond_embedding.{name}.{kind}": f"input_hint_block.{index}.{kind}"
            for name, index in names.items() for kind in ("weight", "bias")}


def controlnet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> StateDict:
    """A diffusers ``ControlNetModel`` state dict in lllyasviel's layout (``control_model.*``)."""
    levels = len(config["down_block_types"])
    layers = config["layers_per_block"]
    zero_convs = 1 + levels * (layers + 1) - 1  # conv_in, every resnet/attention pair, each downsampler
    exact = dict(_UNET_EXACT)
    exact.update(_embedding_exact(len(config["conditioning_embedding_out_channels"])))
    for i in range(zero_convs):
        for kind in ("weight", "bias"):
            exact[f"controlnet_down_blocks.{i}.{kind}"] = f"zero_convs.{i}.0.{kind}"
    exact.update({f"controlnet_mid_block.{kind}": f"middle_block_out.0.{kind}" for kind in ("weight", "bias")})
    prefixes = _unet_prefixes({**config, "up_block_types": ()})
    return _convert(state, exact, prefixes, LDM_PREFIX)


def write_tiny_controlnet(controlnet: ControlNetModel, out: Path) -> Path:
    """``out``: a ``.safetensors`` single file in lllyasviel's layout, or else a diffusers folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".safetensors":
        controlnet.save_pretrained(out, safe_serialization=True)
        return out
    return write_state(controlnet_to_ldm(dict(controlnet.state_dict()), controlnet.config), out)


def build_tiny_control_lora(unet: UNet2DConditionModel, seed: int = 0, rank: int = 4,
                            trained_biases: bool = True) -> tuple[StateDict, ControlNetModel]:
    """(a Control-LoRA for ``unet`` in Stability AI's layout, the ControlNet it stands for).

    As in ``control-lora-canny-rank128.safetensors``: the ``lora_controlnet`` marker; LDM names
    without a prefix; every weight of 2 or more dimensions of the parts shared with the UNet as
    ``up`` (out, rank[, 1, 1]) and ``down`` (rank, in[, kh, kw]) factors whose product is added to
    the UNet's weight; biases and norms of those parts, the hint block, the zero convolutions and
    ``middle_block_out`` in full. Random non-zero factors, so the difference shows.
    ``trained_biases=False``: the low-rank layers' biases are the UNet's (what diffusers' loader,
    which keeps the UNet's biases there, gives the same ControlNet for)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2000 + seed)
        net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_EMBEDDING_CHANNELS)
        with torch.no_grad():
            for conv in [*net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out]:
                torch.nn.init.normal_(conv.weight, std=0.5)
                torch.nn.init.normal_(conv.bias, std=0.1)
        state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        names = dict(zip(state, controlnet_to_ldm(state, net.config), strict=True))  # one to one, in order
        lora: StateDict = {CONTROL_LORA_MARKER: torch.zeros(0)}
        for key, tensor in state.items():
            name = names[key].removeprefix(LDM_PREFIX)
            if not name.startswith(_SHARED_PARTS):
                lora[name] = tensor
            elif tensor.ndim == 1:  # a trained bias or norm replaces the UNet's
                low_rank = state.get(key.removesuffix(".bias") + ".weight", tensor).ndim > 1
                noise = 0.05 * torch.randn_like(tensor)
                state[key] = lora[name] = tensor + (noise if trained_biases or not low_rank else 0)
            else:
                module = name.removesuffix(".weight")
                up = 0.2 * torch.randn(tensor.shape[0], rank, *[1] * (tensor.ndim - 2))
                down = 0.2 * torch.randn(rank, *tensor.shape[1:])
                lora[f"{module}.up"], lora[f"{module}.down"] = up, down
                state[key] = tensor + (up.flatten(1) @ down.flatten(1)).reshape(tensor.shape)
    net.load_state_dict(state)
    return lora, net.eval()


def write_state(state: StateDict, out: Path) -> Path:
    """``state`` as a ``.safetensors`` file, written atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m modules.devtools.tiny_controlnet",
                                     description="Write a tiny random ControlNet for the tiny models.")
    parser.add_argument("--arch", required=True, choices=[TinyArch.SD15.value, TinyArch.SDXL.value])
    parser.add_argument("--out", required=True, type=Path, help="*.safetensors (lllyasviel layout) or a folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--control-lora", action="store_true", help="a Control-LoRA (Stability AI's layout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.control_lora:
        state, _ = build_tiny_control_lora(build_tiny_pipeline(TinyArch(args.arch)).unet, args.seed)
        print(write_state(state, args.out))
    else:
        print(write_tiny_controlnet(build_for_arch(TinyArch(args.arch), args.seed), args.out))


if __name__ == "__main__":
    main()

"""Tiny random-weight T2I-Adapters, IP-Adapters and CLIP image encoders for tests.

Each matches the tiny UNets of :mod:`modules.devtools.tiny_model` the way the real ones match SD1.5
and SDXL: a T2I-Adapter's features have the channels and sizes of the UNet's down blocks, an
IP-Adapter's attention weights the UNet's cross-attention widths, and its image projection the
tiny encoder's output. Files are written in the layouts users have: TencentARC's ``.pth``, a
diffusers folder, IP-Adapter ``.safetensors`` (``image_proj.*`` / ``ip_adapter.*`` keys) or ``.bin``
(two nested dicts), and a CLIP vision ``.safetensors`` with transformers' key names (as
``models/clip_vision`` holds them). Weights are seeded and non-zero, so weight 1 changes pixels.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import T2IAdapter, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

# The tiny encoder: 64-wide (one 64-wide head, as the real encoders' heads are 64..104 wide),
# 32-pixel images in 8-pixel patches: 16 tokens + the class token.
TINY_CLIP_VISION = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 1,
    "image_size": 32,
    "patch_size": 8,
    "projection_dim": 48,
    "hidden_act": "gelu",
}
_PLUS_QUERIES = 4  # image tokens of a tiny "plus" adapter (16 in the real ones)
_PLUS_WIDTH = 64  # the resampler's width: one 64-wide head (diffusers reads heads = width // 64)


class IpVariant(enum.Enum):
    PLAIN = "plain"  # image_embeds -> 4 tokens (ip-adapter_sd15, ip-adapter_sdxl)
    PLUS = "plus"  # penultimate hidden states -> resampler (ip-adapter-plus_sd15, ...)


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _unet_is_xl(unet: UNet2DConditionModel) -> bool:
    return unet.config.addition_embed_type == "text_time"


def build_tiny_t2i_adapter(unet: UNet2DConditionModel, seed: int = 0, in_channels: int = 3) -> T2IAdapter:
    """A T2I-Adapter whose features fit ``unet``'s two down blocks (tiny SD1 or SDXL UNet)."""
    channels = list(unet.config.block_out_channels)
    with _seeded(seed):
        if _unet_is_xl(unet):
            # SDXL's layout: features at /16 and /16 (the last two, at /32, find no matching block
            # in the tiny UNet and are left over, as the UNet allows)
            return T2IAdapter(in_channels=in_channels, channels=[channels[0], channels[1], channels[1], channels[1]],
                              num_res_blocks=1, downscale_factor=16, adapter_type="full_adapter_xl")
        return T2IAdapter(in_channels=in_channels, channels=channels, num_res_blocks=1, downscale_factor=8,
                          adapter_type="full_adapter")


def to_tencentarc_keys(adapter: T2IAdapter) -> dict[str, torch.Tensor]:
    """A diffusers full T2I-Adapter's weights in TencentARC's original layout (``t2iadapter_*.pth``)."""
    blocks = adapter.config.num_res_blocks
    out: dict[str, torch.Tensor] = {}
    for key, value in adapter.state_dict().items():
        parts = key.split(".")[1:]  # drop "adapter."
        if parts[0] == "body":
            block = int(parts[1])
            if parts[2] == "resnets":  # body.i.resnets.j.blockK -> body.(i*blocks+j).blockK
                parts = ["body", str(block * blocks + int(parts[3])), *parts[4:]]
            else:  # body.i.in_conv -> body.(i*blocks).in_conv
                parts = ["body", str(block * blocks), *parts[2:]]
        out[".".join(parts)] = value.detach().clone().contiguous()
    return out


def write_tiny_t2i_adapter(unet: UNet2DConditionModel, out: Path, seed: int = 0) -> Path:
    """``*.pth``: TencentARC's layout (SD1 only); ``*.safetensors``: diffusers keys; else a diffusers folder."""
    adapter = build_tiny_t2i_adapter(unet, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pth":
        if adapter.config.adapter_type != "full_adapter":
            raise ValueError("TencentARC's .pth layout exists for SD1 T2I-Adapters only")
        torch.save(to_tencentarc_keys(adapter), out)
    elif out.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in adapter.state_dict().items()}, str(out))
    else:
        adapter.save_pretrained(out, safe_serialization=True)
    return out


def build_tiny_clip_vision(seed: int = 0) -> CLIPVisionModelWithProjection:
    with _seeded(seed):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_VISION))


def write_tiny_clip_vision(out: Path, seed: int = 0, with_config: bool = False) -> Path:
    """A CLIP image encoder as ``models/clip_vision`` holds one: ``*.safetensors`` with transformers'
    keys (``with_config``: a ``<name>.json`` config beside it), or else a transformers folder."""
    model = build_tiny_clip_vision(seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".safetensors":
        model.save_pretrained(out, safe_serialization=True)
        return out
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    if with_config:
        out.with_suffix(".json").write_text(json.dumps(TINY_CLIP_VISION, indent=1), encoding="utf-8")
    return out


def _cross_attention_sizes(unet: UNet2DConditionModel) -> list[int]:
    """Hidden width of each cross-attention layer, in the order diffusers numbers IP-Adapter keys."""
    channels = list(unet.config.block_out_channels)
    sizes: list[int] = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            sizes.append(channels[-1])
        elif name.startswith("up_blocks"):
            sizes.append(list(reversed(channels))[int(name[len("up_blocks.")])])
        else:
            sizes.append(channels[int(name[len("down_blocks.")])])
    return sizes


def _plus_projection(embed_dims: int, output_dims: int) -> dict[str, torch.Tensor]:
    """The original IP-Adapter "Resampler" keys (four perceiver layers, as diffusers expects)."""
    width, ff = _PLUS_WIDTH, _PLUS_WIDTH * 4
    proj: dict[str, torch.Tensor] = {
        "latents": torch.randn(1, _PLUS_QUERIES, width) / width**0.5,
        "proj_in.weight": torch.randn(width, embed_dims) / embed_dims**0.5,
        "proj_in.bias": torch.randn(width) * 0.1,
        "proj_out.weight": torch.randn(output_dims, width) / width**0.5,
        "proj_out.bias": torch.randn(output_dims) * 0.1,
        "norm_out.weight": 1 + torch.randn(output_dims) * 0.1,
        "norm_out.bias": torch.randn(output_dims) * 0.1,
    }
    for i in range(4):
        for norm in ("0.norm1", "0.norm2", "1.0"):
            proj[f"layers.{i}.{norm}.weight"] = 1 + torch.randn(width) * 0.1
            proj[f"layers.{i}.{norm}.bias"] = torch.randn(width) * 0.1
        proj[f"layers.{i}.0.to_q.weight"] = torch.randn(width, width) / width**0.5
        proj[f"layers.{i}.0.to_kv.weight"] = torch.randn(2 * width, width) / width**0.5
        proj[f"layers.{i}.0.to_out.weight"] = torch.randn(width, width) / width**0.5
        proj[f"layers.{i}.1.1.weight"] = torch.randn(ff, width) / width**0.5
        proj[f"layers.{i}.1.3.weight"] = torch.randn(width, ff) / ff**0.5
    return proj


def build_tiny_ip_adapter(unet: UNet2DConditionModel, variant: IpVariant = IpVariant.PLAIN,
                          seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """An IP-Adapter state dict ``{"image_proj": ..., "ip_adapter": ...}`` for ``unet`` and the tiny encoder."""
    cross = int(unet.config.cross_attention_dim)
    with _seeded(seed):
        if IpVariant(variant) is IpVariant.PLUS:
            image_proj = _plus_projection(TINY_CLIP_VISION["hidden_size"], cross)
        else:
            clip = TINY_CLIP_VISION["projection_dim"]
            image_proj = {
                "proj.weight": torch.randn(cross * 4, clip) / clip**0.5,
                "proj.bias": torch.randn(cross * 4) * 0.1,
                "norm.weight": 1 + torch.randn(cross) * 0.1,
                "norm.bias": torch.randn(cross) * 0.1,
            }
        ip_adapter: dict[str, torch.Tensor] = {}
        for i, hidden in enumerate(_cross_attention_sizes(unet)):
            key_id = 2 * i + 1  # the original numbering counts self- and cross-attention layers
            ip_adapter[f"{key_id}.to_k_ip.weight"] = torch.randn(hidden, cross) / cross**0.5
            ip_adapter[f"{key_id}.to_v_ip.weight"] = torch.randn(hidden, cross) / cross**0.5
    return {"image_proj": image_proj, "ip_adapter": ip_adapter}


def write_tiny_ip_adapter(unet: UNet2DConditionModel, out: Path, variant: IpVariant = IpVariant.PLAIN,
                          seed: int = 0) -> Path:
    """``*.safetensors`` with flat ``image_proj.`` / ``ip_adapter.`` keys, or ``*.bin`` with nested dicts."""
    state = build_tiny_ip_adapter(unet, variant, seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".safetensors":
        flat = {f"{group}.{k}": v.contiguous() for group, part in state.items() for k, v in part.items()}
        save_file(flat, str(out))
    else:
        torch.save(state, out)
    return out

"""SD 3.5 checkpoint layouts: which tensors are where, and the configs their shapes imply.

Stability's single files (and ComfyUI's saves) hold the MMDiT under ``model.diffusion_model.`` (or
with no prefix), and may bundle ``text_encoders.clip_l.transformer.*``, ``text_encoders.clip_g.
transformer.*``, ``text_encoders.t5xxl.transformer.*`` (transformers' own key names below the
prefix) and the VAE in the LDM layout under ``first_stage_model.`` (or ``vae.``). Separate encoder
and VAE files use the same names without the prefix. Every config starts from the shipped real one
and takes each size from the tensors, so tiny test models load through the same code as real ones.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.model_detect import ModelArch

CONFIGS = Path(__file__).resolve().parents[1] / "model_configs"
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "")
CLIP_L = "text_encoders.clip_l.transformer."
CLIP_G = "text_encoders.clip_g.transformer."
T5XXL = "text_encoders.t5xxl.transformer."
VAE_PREFIXES = ("first_stage_model.", "vae.")
# A separate encoder file's own prefix, if any, below which transformers' key names start.
CLIP_FILE_PREFIXES = (CLIP_L, CLIP_G, "clip_l.transformer.", "clip_g.transformer.", "transformer.", "")
T5_FILE_PREFIXES = (T5XXL, "t5xxl.transformer.", "transformer.", "")
CLIP_PROBE = "text_model.embeddings.token_embedding.weight"
T5_PROBE = "encoder.block.0.layer.0.SelfAttention.q.weight"
LDM_VAE_PROBE = "encoder.conv_out.weight"
DIFFUSERS_VAE_PROBE = "encoder.down_blocks.0.resnets.0.conv1.weight"
_MMDIT_PROBES = ("joint_blocks.0.x_block.attn.qkv.weight", "x_embedder.proj.weight", "context_embedder.weight")


def base_config(arch: ModelArch, component: str) -> dict[str, Any]:
    """The shipped real config of ``component`` (a diffusers sub-folder name) for ``arch``."""
    path = CONFIGS / arch.value / component / ("scheduler_config.json" if component == "scheduler" else "config.json")
    return json.loads(path.read_text(encoding="utf-8"))


def transformer_prefix(index: TensorIndex) -> str | None:
    """Where the file's MMDiT lives, or None when it has none."""
    for prefix in TRANSFORMER_PREFIXES:
        if all(prefix + probe in index for probe in _MMDIT_PROBES):
            return prefix
    return None


def detect(index: TensorIndex) -> ModelArch | None:
    """SD 3.5 Medium is MMDiT-X: its first blocks have a second image self-attention
    (``x_block.attn2``), as diffusers' ``get_attn2_layers`` reads it; Large has none. (SD 3.0 Medium,
    without attn2, loads as the Large layout: the same network code with its own sizes.)"""
    prefix = transformer_prefix(index)
    if prefix is None:
        return None
    dual = any(k.startswith(prefix + "joint_blocks.") and ".x_block.attn2." in k for k in index.shapes)
    return ModelArch.SD35_MEDIUM if dual else ModelArch.SD35_LARGE


def _numbered(index: TensorIndex, prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in index.shapes if (m := pattern.match(k))})


def _shape(index: TensorIndex, key: str) -> tuple[int, ...]:
    shape = index.shape(key)
    if shape is None:
        raise KeyError(f"missing tensor {key}")
    return shape


def transformer_config(index: TensorIndex, arch: ModelArch, prefix: str) -> dict[str, Any]:
    """The SD3Transformer2DModel config of the file's MMDiT (what diffusers'
    ``convert_sd3_transformer_checkpoint_to_diffusers`` reads from the keys, plus the sizes)."""
    config = base_config(arch, "transformer")
    inner, in_channels, patch, _ = _shape(index, prefix + "x_embedder.proj.weight")
    layers = _numbered(index, prefix + "joint_blocks.")
    ln_q = index.shape(prefix + "joint_blocks.0.x_block.attn.ln_q.weight")
    head_dim = ln_q[0] if ln_q else int(config["attention_head_dim"])  # the q/k RMSNorm is per head
    caption, joint = _shape(index, prefix + "context_embedder.weight")
    positions = _shape(index, prefix + "pos_embed")[1]
    config.update(
        num_layers=len(layers),
        in_channels=in_channels,
        patch_size=patch,
        attention_head_dim=head_dim,
        num_attention_heads=inner // head_dim,
        joint_attention_dim=joint,
        caption_projection_dim=caption,
        pooled_projection_dim=_shape(index, prefix + "y_embedder.mlp.0.weight")[1],
        out_channels=_shape(index, prefix + "final_layer.linear.weight")[0] // (patch * patch),
        pos_embed_max_size=round(positions ** 0.5),
        dual_attention_layers=[i for i in layers if prefix + f"joint_blocks.{i}.x_block.attn2.qkv.weight" in index],
        qk_norm="rms_norm" if ln_q else None,
    )
    return config


def clip_config(index: TensorIndex, prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """A CLIPTextModelWithProjection config (``base``: the shipped CLIP-L or CLIP-G one) sized by the tensors."""
    vocab, hidden = _shape(index, prefix + CLIP_PROBE)
    projection = index.shape(prefix + "text_projection.weight")
    return {**base, "vocab_size": vocab, "hidden_size": hidden,
            "intermediate_size": _shape(index, prefix + "text_model.encoder.layers.0.mlp.fc1.weight")[0],
            "num_hidden_layers": len(_numbered(index, prefix + "text_model.encoder.layers.")),
            "num_attention_heads": max(1, hidden // 64),  # CLIP's 64-wide heads
            "max_position_embeddings": _shape(index, prefix + "text_model.embeddings.position_embedding.weight")[0],
            "projection_dim": projection[0] if projection else hidden}


def t5_config(index: TensorIndex, prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """A T5EncoderModel config sized by the tensors (heads from the relative attention bias table)."""
    block = prefix + "encoder.block.0.layer."
    buckets, heads = _shape(index, block + "0.SelfAttention.relative_attention_bias.weight")
    inner, d_model = _shape(index, block + "0.SelfAttention.q.weight")
    gated = block + "1.DenseReluDense.wi_0.weight" in index
    d_ff = _shape(index, block + ("1.DenseReluDense.wi_0.weight" if gated else "1.DenseReluDense.wi.weight"))[0]
    return {**base, "d_model": d_model, "d_kv": inner // heads, "num_heads": heads, "d_ff": d_ff,
            "num_layers": len(_numbered(index, prefix + "encoder.block.")),
            "vocab_size": _shape(index, prefix + "shared.weight")[0] if prefix + "shared.weight" in index
            else _shape(index, prefix + "encoder.embed_tokens.weight")[0],
            "relative_attention_num_buckets": buckets,
            "feed_forward_proj": "gated-gelu" if gated else "relu", "is_gated_act": gated}


def vae_config(index: TensorIndex, prefix: str, base: dict[str, Any]) -> dict[str, Any]:
    """An AutoencoderKL config for an LDM-layout VAE under ``prefix``."""
    levels = _numbered(index, prefix + "encoder.down.")
    return {**base,
            "block_out_channels": [_shape(index, prefix + f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels],
            "layers_per_block": len(_numbered(index, prefix + "encoder.down.0.block.")),
            "latent_channels": _shape(index, prefix + LDM_VAE_PROBE)[0] // 2,
            "down_block_types": ["DownEncoderBlock2D"] * len(levels),
            "up_block_types": ["UpDecoderBlock2D"] * len(levels),
            "use_quant_conv": prefix + "quant_conv.weight" in index,
            "use_post_quant_conv": prefix + "post_quant_conv.weight" in index}


def diffusers_vae_config(index: TensorIndex, base: dict[str, Any]) -> dict[str, Any]:
    """An AutoencoderKL config for a VAE file already in diffusers' key names."""
    levels = _numbered(index, "encoder.down_blocks.")
    return {**base,
            "block_out_channels": [_shape(index, f"encoder.down_blocks.{i}.resnets.0.conv1.weight")[0]
                                   for i in levels],
            "layers_per_block": len(_numbered(index, "encoder.down_blocks.0.resnets.")),
            "latent_channels": _shape(index, "encoder.conv_out.weight")[0] // 2,
            "down_block_types": ["DownEncoderBlock2D"] * len(levels),
            "up_block_types": ["UpDecoderBlock2D"] * len(levels),
            "use_quant_conv": "quant_conv.weight" in index,
            "use_post_quant_conv": "post_quant_conv.weight" in index}


def find_prefix(index: TensorIndex, prefixes: tuple[str, ...], probe: str) -> str | None:
    """The first of ``prefixes`` under which ``probe`` exists."""
    return next((p for p in prefixes if p + probe in index), None)

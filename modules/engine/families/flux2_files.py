"""FLUX.2 [klein] single files: which tensors are which part, their sizes, and the parts found elsewhere.

A klein single file holds the transformer in Black Forest Labs' layout (``double_blocks.*``, as
published, or under ComfyUI's ``model.diffusion_model.`` prefix) or in diffusers' layout; it may
bundle the Qwen3 text encoder (``text_encoders.qwen*.``) and the VAE (``vae.`` or
``first_stage_model.``, LDM key names, with the batch-norm statistics ``bn.running_mean/var``).
Each part's config is the shipped one (``model_configs/flux2_klein``) with the sizes read from
the tensor shapes, so reduced-size models load with the same code. Parts the file lacks are
looked for in the text encoder and VAE folders by shape; none is a :class:`MissingComponentError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from modules.engine.checkpoint_files import TensorIndex, load_pickle_state_dict, read_safetensors_index
from modules.engine.config_folders import SHIPPED_CONFIGS
from modules.engine.quantized import apply_weight_scales

CONFIGS = SHIPPED_CONFIGS / "flux2_klein"
COMFY_PREFIX = "model.diffusion_model."
VAE_PREFIXES = ("vae.", "first_stage_model.")
TEXT_ENCODER_PREFIX = "text_encoders."
# The marker diffusers' single_file_utils uses for the FLUX.2 transformer (CHECKPOINT_KEY_NAMES["flux2"]),
# in the BFL and the diffusers spelling.
BFL_MARKER = "single_stream_modulation.lin.weight"
DIFFUSERS_MARKER = "single_stream_modulation.linear.weight"


@dataclass(frozen=True)
class TransformerLayout:
    prefix: str  # "" (BFL or diffusers file) or "model.diffusion_model."
    diffusers_keys: bool  # True: already diffusers' names, no conversion


def shipped_config(part: str) -> dict[str, Any]:
    name = "scheduler/scheduler_config.json" if part == "scheduler" else f"{part}/config.json"
    return json.loads((CONFIGS / name).read_text(encoding="utf-8"))


def transformer_layout(index: TensorIndex) -> TransformerLayout | None:
    for prefix in ("", COMFY_PREFIX):
        if prefix + BFL_MARKER in index:
            return TransformerLayout(prefix, False)
        if prefix + DIFFUSERS_MARKER in index:
            return TransformerLayout(prefix, True)
    return None


def _count(index: TensorIndex, pattern: str) -> int:
    found = {int(m.group(1)) for key in index.shapes if (m := re.match(pattern, key))}
    return max(found) + 1 if found else 0


def _shape(index: TensorIndex, key: str) -> tuple[int, ...]:
    shape = index.shape(key)
    if shape is None:
        raise KeyError(f"the file has no tensor {key}")
    return shape


def transformer_config(index: TensorIndex, layout: TransformerLayout) -> dict[str, Any]:
    """The shipped transformer config with the sizes this file's tensors have."""
    p = re.escape(layout.prefix)
    if layout.diffusers_keys:
        names = ("x_embedder.weight", "context_embedder.weight", "time_guidance_embed.timestep_embedder.linear_1.weight",
                 "transformer_blocks.0.attn.norm_q.weight", "transformer_blocks.0.ff.linear_in.weight",
                 "proj_out.weight", "time_guidance_embed.guidance_embedder.linear_1.weight")
        double, single = rf"{p}transformer_blocks\.(\d+)\.", rf"{p}single_transformer_blocks\.(\d+)\."
    else:
        names = ("img_in.weight", "txt_in.weight", "time_in.in_layer.weight",
                 "double_blocks.0.img_attn.norm.query_norm.scale", "double_blocks.0.img_mlp.0.weight",
                 "final_layer.linear.weight", "guidance_in.in_layer.weight")
        double, single = rf"{p}double_blocks\.(\d+)\.", rf"{p}single_blocks\.(\d+)\."
    img_in, txt_in, time_in, q_norm, mlp_in, final, guidance = (layout.prefix + n for n in names)
    inner, in_channels = _shape(index, img_in)
    head_dim = _shape(index, q_norm)[0]
    config = shipped_config("transformer")
    config.update(
        in_channels=in_channels, out_channels=_shape(index, final)[0],
        joint_attention_dim=_shape(index, txt_in)[1], timestep_guidance_channels=_shape(index, time_in)[1],
        attention_head_dim=head_dim, num_attention_heads=inner // head_dim,
        # the SwiGLU input projection is two halves of the MLP width (Flux2FeedForward)
        mlp_ratio=_shape(index, mlp_in)[0] / 2 / inner,
        num_layers=_count(index, double), num_single_layers=_count(index, single),
        axes_dims_rope=[head_dim // 4] * 4,  # four equal RoPE axes (T, H, W, L), as every FLUX.2 config
        guidance_embeds=guidance in index,
    )
    return config


def text_encoder_prefix(index: TensorIndex) -> str | None:
    """``text_encoders.<qwen name>.`` when the file bundles a Qwen3 encoder."""
    for key in index.shapes:
        if key.startswith(TEXT_ENCODER_PREFIX) and key.endswith("embed_tokens.weight"):
            name = key[len(TEXT_ENCODER_PREFIX):].split(".", 1)[0]
            if name.lower().startswith("qwen"):
                return f"{TEXT_ENCODER_PREFIX}{name}."
    return None


def _qwen_root(index: TensorIndex, prefix: str) -> str:
    """Where the Qwen3 decoder layers start: ComfyUI files keep transformers' ``model.`` level."""
    return prefix + "model." if f"{prefix}model.embed_tokens.weight" in index else prefix


def text_encoder_config(index: TensorIndex, prefix: str) -> dict[str, Any]:
    """The shipped Qwen3 config with this file's sizes."""
    root = _qwen_root(index, prefix)
    vocab, hidden = _shape(index, f"{root}embed_tokens.weight")
    head_dim = _shape(index, f"{root}layers.0.self_attn.q_norm.weight")[0]
    config = shipped_config("text_encoder")
    config.update(
        vocab_size=vocab, hidden_size=hidden, head_dim=head_dim,
        num_attention_heads=_shape(index, f"{root}layers.0.self_attn.q_proj.weight")[0] // head_dim,
        num_key_value_heads=_shape(index, f"{root}layers.0.self_attn.k_proj.weight")[0] // head_dim,
        intermediate_size=_shape(index, f"{root}layers.0.mlp.gate_proj.weight")[0],
        num_hidden_layers=_count(index, rf"{re.escape(root)}layers\.(\d+)\."),
        tie_word_embeddings=f"{prefix}lm_head.weight" not in index,
    )
    config["max_window_layers"] = config["num_hidden_layers"]
    for special in ("bos_token_id", "eos_token_id"):  # a reduced vocabulary has no room for Qwen's ids
        if config.get(special) is not None and config[special] >= vocab:
            config[special] = None
    return config


def vae_prefix(index: TensorIndex) -> str | None:
    for prefix in VAE_PREFIXES + ("",):
        if f"{prefix}bn.running_mean" in index and f"{prefix}decoder.conv_in.weight" in index:
            return prefix
    return None


def vae_config(index: TensorIndex, prefix: str) -> dict[str, Any]:
    """The shipped AutoencoderKLFlux2 config with this file's sizes (LDM or diffusers key names)."""
    ldm = f"{prefix}encoder.down.0.block.0.conv1.weight" in index
    if ldm:
        levels = _count(index, rf"{re.escape(prefix)}encoder\.down\.(\d+)\.")
        channels = [_shape(index, f"{prefix}encoder.down.{i}.block.0.conv1.weight")[0] for i in range(levels)]
        per_block = _count(index, rf"{re.escape(prefix)}encoder\.down\.0\.block\.(\d+)\.")
        attention = f"{prefix}encoder.mid.attn_1.q.weight" in index
    else:
        levels = _count(index, rf"{re.escape(prefix)}encoder\.down_blocks\.(\d+)\.")
        channels = [_shape(index, f"{prefix}encoder.down_blocks.{i}.resnets.0.conv1.weight")[0] for i in range(levels)]
        per_block = _count(index, rf"{re.escape(prefix)}encoder\.down_blocks\.0\.resnets\.(\d+)\.")
        attention = f"{prefix}encoder.mid_block.attentions.0.to_q.weight" in index
    config = shipped_config("vae")
    config.update(
        block_out_channels=channels, layers_per_block=per_block, mid_block_add_attention=attention,
        latent_channels=_shape(index, f"{prefix}decoder.conv_in.weight")[1],
        down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
        # GroupNorm's group count is not in the shapes: the real 32 where the widths allow it
        norm_num_groups=32 if all(c % 32 == 0 for c in channels) else min(channels),
    )
    return config


def read_tensors(path: Path, index: TensorIndex, prefix: str, skip: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """The file's tensors under ``prefix``, the prefix removed (``skip``: other parts' prefixes
    that start with the same text, e.g. ``""``)."""
    keys = [k for k in index.shapes if k.startswith(prefix) and not any(k.startswith(s) for s in skip if s)]
    if path.suffix.lower() != ".safetensors":
        state = load_pickle_state_dict(path)
        return apply_weight_scales({k[len(prefix):]: state[k] for k in keys})
    with safe_open(str(path), framework="pt") as handle:
        return apply_weight_scales({k[len(prefix):]: handle.get_tensor(k) for k in keys})


def find_component(folders: tuple[Path, ...], globs: tuple[str, ...],
                   fits: Any) -> tuple[Path, TensorIndex] | None:
    """The first ``*.safetensors`` in ``folders`` matching ``globs`` whose index ``fits(index)``."""
    for folder in folders:
        if not folder.is_dir():
            continue
        for pattern in globs:
            for candidate in sorted(folder.glob(pattern)):
                if candidate.suffix.lower() != ".safetensors":
                    continue
                try:
                    index = read_safetensors_index(candidate)
                except Exception:  # noqa: BLE001 - an unreadable file is just not the one we want
                    continue
                if fits(index):
                    return candidate, index
    return None


def tokenizer_json(metadata: Mapping[str, str], name: str = "qwen3") -> str | None:
    return metadata.get(f"atelier.tokenizer.{name}")

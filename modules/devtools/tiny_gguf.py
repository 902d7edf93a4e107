"""Tiny GGUF transformer files for tests, laid out like the community's quantized Flux files.

:func:`write_gguf` follows what city96's ComfyUI-GGUF conversion writes: the original (BFL) tensor
names, ``general.architecture`` set, weights of two or more dimensions quantized (Q8_0 / Q4_0
through ``gguf.quants``), and vectors (biases, norm scales) and tiny or odd-sized tensors kept as
F32 / F16 (a quantized row must be a whole number of 32-value blocks). diffusers converts these
names itself when loading. :func:`flux_bfl_state_dict` makes random FLUX.1 weights under those
names for a small diffusers ``FluxTransformer2DModel`` config, so tests need no real file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

_SMALL_TENSOR = 1024  # city96's threshold: tensors with fewer values stay unquantized
QUANTS = ("Q8_0", "Q4_0", "F16")


def _tensor_entry(name: str, tensor: torch.Tensor, qtype_name: str):
    import gguf

    data = tensor.detach().float().cpu().numpy()
    qtype = gguf.GGMLQuantizationType[qtype_name]
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if data.ndim <= 1 or data.size <= _SMALL_TENSOR:
        return data.astype(np.float32), gguf.GGMLQuantizationType.F32
    if qtype_name == "F16" or data.shape[-1] % block:
        return data.astype(np.float16), gguf.GGMLQuantizationType.F16
    return gguf.quants.quantize(data, qtype), qtype


def write_gguf(state_dict: Mapping[str, torch.Tensor], out: Path, quant: str = "Q8_0",
               architecture: str = "flux") -> Path:
    """Write ``state_dict`` (original key names) as a GGUF file with its weights in ``quant``."""
    import gguf

    if quant not in QUANTS:
        raise ValueError(f"quant must be one of {', '.join(QUANTS)}, not {quant!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(out), architecture)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, tensor in state_dict.items():
        data, qtype = _tensor_entry(name, tensor, quant)
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_raw_gguf(out: Path, name: str, shape: tuple[int, ...], qtype_name: str) -> Path:
    """A GGUF file holding one tensor of any quant type with zero bytes (for refusal tests)."""
    import gguf

    qtype = gguf.GGMLQuantizationType[qtype_name]
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    raw = np.zeros((rows, shape[-1] // block * type_size), dtype=np.uint8)
    writer = gguf.GGUFWriter(str(out), "flux")
    writer.add_tensor(name, raw, raw_dtype=qtype)  # the logical shape follows from the bytes per row
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _linear(sd: dict[str, torch.Tensor], name: str, out_f: int, in_f: int, gen: torch.Generator) -> None:
    sd[f"{name}.weight"] = torch.randn(out_f, in_f, generator=gen) * in_f ** -0.5
    sd[f"{name}.bias"] = torch.randn(out_f, generator=gen) * 0.02


def flux_bfl_state_dict(config: Mapping[str, object], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random FLUX.1 weights under BFL's names (``double_blocks.N.img_attn.qkv`` ...) for a diffusers
    ``FluxTransformer2DModel`` config (what diffusers' ``convert_flux_transformer_checkpoint_to_diffusers`` reads)."""
    gen = torch.Generator().manual_seed(seed)
    head = int(config["attention_head_dim"])
    hidden = int(config["num_attention_heads"]) * head
    mlp = hidden * 4
    patch_out = int(config.get("out_channels") or config["in_channels"])
    sd: dict[str, torch.Tensor] = {}
    _linear(sd, "img_in", hidden, int(config["in_channels"]), gen)
    _linear(sd, "txt_in", hidden, int(config["joint_attention_dim"]), gen)
    embedders = [("time_in", 256), ("vector_in", int(config["pooled_projection_dim"]))]
    if config.get("guidance_embeds"):
        embedders.append(("guidance_in", 256))
    for name, width in embedders:
        _linear(sd, f"{name}.in_layer", hidden, width, gen)
        _linear(sd, f"{name}.out_layer", hidden, hidden, gen)
    for i in range(int(config["num_layers"])):
        for stream in ("img", "txt"):
            p = f"double_blocks.{i}.{stream}"
            _linear(sd, f"{p}_mod.lin", 6 * hidden, hidden, gen)
            _linear(sd, f"{p}_attn.qkv", 3 * hidden, hidden, gen)
            _linear(sd, f"{p}_attn.proj", hidden, hidden, gen)
            _linear(sd, f"{p}_mlp.0", mlp, hidden, gen)
            _linear(sd, f"{p}_mlp.2", hidden, mlp, gen)
            sd[f"{p}_attn.norm.query_norm.scale"] = 1 + 0.1 * torch.randn(head, generator=gen)
            sd[f"{p}_attn.norm.key_norm.scale"] = 1 + 0.1 * torch.randn(head, generator=gen)
    for i in range(int(config["num_single_layers"])):
        p = f"single_blocks.{i}"
        _linear(sd, f"{p}.linear1", 3 * hidden + mlp, hidden, gen)
        _linear(sd, f"{p}.linear2", hidden, hidden + mlp, gen)
        _linear(sd, f"{p}.modulation.lin", 3 * hidden, hidden, gen)
        sd[f"{p}.norm.query_norm.scale"] = 1 + 0.1 * torch.randn(head, generator=gen)
        sd[f"{p}.norm.key_norm.scale"] = 1 + 0.1 * torch.randn(head, generator=gen)
    _linear(sd, "final_layer.linear", patch_out, hidden, gen)
    _linear(sd, "final_layer.adaLN_modulation.1", 2 * hidden, hidden, gen)
    return sd


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    shift, scale = t.chunk(2, dim=0)  # BFL's final modulation is (shift, scale); diffusers' (scale, shift)
    return torch.cat([scale, shift], dim=0)


_DOUBLE_RENAMES = (("img_mod.lin", "norm1.linear"), ("txt_mod.lin", "norm1_context.linear"),
                   ("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
                   ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
                   ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
                   ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
                   ("img_mlp.0", "ff.net.0.proj"), ("img_mlp.2", "ff.net.2"), ("txt_mlp.0", "ff_context.net.0.proj"),
                   ("txt_mlp.2", "ff_context.net.2"), ("img_attn.proj", "attn.to_out.0"),
                   ("txt_attn.proj", "attn.to_add_out"))
_GLOBAL_RENAMES = (("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
                   ("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
                   ("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
                   ("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
                   ("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
                   ("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
                   ("txt_in", "context_embedder"), ("img_in", "x_embedder"), ("final_layer.linear", "proj_out"))


def flux_bfl_to_diffusers(checkpoint: dict[str, torch.Tensor], hidden: int) -> dict[str, torch.Tensor]:
    """BFL FLUX.1 names -> diffusers', for any width: diffusers' ``convert_flux_transformer_checkpoint_to_diffusers``
    assumes the real model's 3072 (it splits ``linear1`` by that), so tiny files need this one. Works on
    GGUF parameters too (they split and join along rows)."""
    sd = {k.removeprefix("model.diffusion_model."): v for k, v in checkpoint.items()}
    out: dict[str, torch.Tensor] = {}
    for old, new in _GLOBAL_RENAMES:
        for suffix in ("weight", "bias"):
            if f"{old}.{suffix}" in sd:
                out[f"{new}.{suffix}"] = sd.pop(f"{old}.{suffix}")
    for suffix in ("weight", "bias"):
        out[f"norm_out.linear.{suffix}"] = _swap_halves(sd.pop(f"final_layer.adaLN_modulation.1.{suffix}"))
    for key in [k for k in sd if k.startswith("double_blocks.")]:
        _, index, rest = key.split(".", 2)
        prefix = f"transformer_blocks.{index}."
        if rest.endswith(".scale"):
            out[prefix + dict(_DOUBLE_RENAMES)[rest]] = sd.pop(key)
        elif rest.startswith(("img_attn.qkv", "txt_attn.qkv")):
            names = ("to_q", "to_k", "to_v") if rest.startswith("img") else ("add_q_proj", "add_k_proj", "add_v_proj")
            for name, part in zip(names, torch.chunk(sd.pop(key), 3, dim=0)):
                out[f"{prefix}attn.{name}.{rest.rsplit('.', 1)[1]}"] = part
        else:
            base, suffix = rest.rsplit(".", 1)
            out[f"{prefix}{dict(_DOUBLE_RENAMES)[base]}.{suffix}"] = sd.pop(key)
    for key in [k for k in sd if k.startswith("single_blocks.")]:
        _, index, rest = key.split(".", 2)
        prefix = f"single_transformer_blocks.{index}."
        base, suffix = rest.rsplit(".", 1)
        tensor = sd.pop(key)
        if base == "linear1":
            parts = torch.split(tensor, (hidden, hidden, hidden, tensor.shape[0] - 3 * hidden), dim=0)
            for name, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), parts):
                out[f"{prefix}{name}.{suffix}"] = part
        else:
            renames = {"linear2": "proj_out", "modulation.lin": "norm.linear", "norm.query_norm": "attn.norm_q",
                       "norm.key_norm": "attn.norm_k"}
            out[f"{prefix}{renames[base]}.{'weight' if suffix == 'scale' else suffix}"] = tensor
    if sd:
        raise KeyError(f"tensors with no FLUX.1 name mapping: {sorted(sd)[:5]}")
    return out

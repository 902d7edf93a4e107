"""FLUX.1 dev, schnell and Fill: recognising their files and folders, and loading them offline.

Single files come as BFL's transformer alone (``flux1-dev.safetensors``: ``double_blocks.*``,
``single_blocks.*``; dev and Fill have ``guidance_in.*``, Fill's ``img_in`` takes 384 channels),
as ComfyUI all-in-one files (the same keys under ``model.diffusion_model.``, perhaps with
``text_encoders.clip_l.*``, ``text_encoders.t5xxl.*`` and ``vae.*``), or with diffusers' names.
What a file does not bundle comes from the text encoder and VAE folders (:mod:`.flux_parts`).
The transformer's configuration comes from its shapes; the rest from the shipped real configs.
How the loop runs the model is in :mod:`.flux_flow`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxPipeline

from modules.atomic import write_text_atomic
from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import flux_flow, flux_keys
from modules.engine.families import flux_parts as parts
from modules.engine.families.base import EngineFamily, FileLoad, FlowParts, FolderLoad
from modules.engine.model_detect import ModelArch
from modules.errors import ModelLoadError

_FOLDER_CLASSES = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
_FILL_CHANNELS = 384  # latents (64) + masked image latents (64) + mask (256), all packed


def _arch_of(dims: flux_keys.FluxDims) -> ModelArch | None:
    if dims.in_channels == _FILL_CHANNELS:
        return ModelArch.FLUX_FILL
    if dims.in_channels != dims.out_channels:
        return None  # FLUX.1 Depth / Canny (128 channels) and others this module does not run
    return ModelArch.FLUX_DEV if dims.guidance_embeds else ModelArch.FLUX_SCHNELL


def detect_file(index: TensorIndex) -> ModelArch | None:
    dims = flux_keys.infer_dims(index)
    return None if dims is None else _arch_of(dims)


def detect_folder(folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    name = str(model_index.get("_class_name", ""))
    if name == "FluxFillPipeline":
        return ModelArch.FLUX_FILL
    if name not in _FOLDER_CLASSES:
        return None
    try:
        config = json.loads((folder / "transformer" / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(str(folder), f"not a diffusers model folder ({exc})") from exc
    if config.get("in_channels") == _FILL_CHANNELS:
        return ModelArch.FLUX_FILL
    return ModelArch.FLUX_DEV if config.get("guidance_embeds") else ModelArch.FLUX_SCHNELL


def _pipeline_class(arch: ModelArch) -> type[DiffusionPipeline]:
    return FluxFillPipeline if arch is ModelArch.FLUX_FILL else FluxPipeline


def _gguf_transformer(load: FileLoad, dtype: torch.dtype) -> torch.nn.Module:
    """A GGUF transformer through the quantized-file helper, its config read off the file's shapes (any
    width, tiny ones included) and its BFL names converted here (diffusers' converter assumes 3072 wide)."""
    from diffusers import FluxTransformer2DModel

    from modules.engine import quantized

    dims = flux_keys.infer_dims(load.index)
    found = flux_keys.transformer_prefix(load.index)
    if dims is None or found is None:
        raise ModelLoadError(str(load.path), "no FLUX.1 transformer in the GGUF file")
    prefix, bfl = found
    config = {"_class_name": "FluxTransformer2DModel", **dims.config()}
    text = json.dumps(config, sort_keys=True)
    folder = load.config_cache / f"flux-gguf-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "config.json", text)

    def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if bfl:
            return flux_keys.to_diffusers(state, dims, prefix)
        return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    return quantized.load_gguf_transformer(FluxTransformer2DModel, load.path, folder, dtype, convert=convert)


def _transformer(load: FileLoad, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    if load.path.suffix.lower() == ".gguf":
        return _gguf_transformer(load, dtype)
    dims = flux_keys.infer_dims(load.index)
    found = flux_keys.transformer_prefix(load.index)
    if dims is None or found is None:
        raise ModelLoadError(str(load.path), "no FLUX.1 transformer in the file")
    prefix, bfl = found
    state = parts.read_tensors(load.path, prefix, dtype)
    if bfl:
        try:
            state = flux_keys.to_diffusers(state, dims)
        except KeyError as exc:
            raise ModelLoadError(str(load.path), f"the transformer has no tensor {exc}") from exc
    return parts.build_module(lambda: FluxTransformer2DModel(**dims.config()).to(dtype), state, "transformer",
                              load.path)


def _locate(load: FileLoad, dims: flux_keys.FluxDims) -> tuple[parts.Found, parts.Found, parts.Found]:
    """CLIP-L, T5 and the VAE: in the file, or in the component folders (shapes checked against the
    transformer's widths, so an encoder of another family is never taken); else what is missing."""
    index, path, comps = load.index, load.path, load.components

    def clip(idx: TensorIndex, p: Path) -> parts.Found | None:
        found = parts.find_clip(idx, p)
        return found if found is not None and parts.clip_width(found) == dims.pooled_projection_dim else None

    def t5(idx: TensorIndex, p: Path) -> parts.Found | None:
        found = parts.find_t5(idx, p)
        return found if found is not None and parts.t5_width(found) == dims.joint_attention_dim else None

    t5_found, refused = t5(index, path), ()
    if t5_found is None:
        t5_found, refused = parts.search_all(comps.text_encoders, ("t5xxl*", "t5*"), t5)
    if t5_found is None:
        raise parts.missing_t5(path, comps, refused)
    clip_found = clip(index, path)
    if clip_found is None:
        clip_found, refused = parts.search_all(comps.text_encoders, ("clip_l*",), clip)
    if clip_found is None:
        raise parts.missing_clip(path, comps, refused)
    vae_found = parts.find_vae(index, path) or parts.search(comps.vaes, ("ae*", "flux*"), parts.find_vae)
    if vae_found is None:
        raise parts.missing_vae(path, comps)
    return clip_found, t5_found, vae_found


def load_file(load: FileLoad) -> DiffusionPipeline:
    dims = flux_keys.infer_dims(load.index)
    if dims is None and load.path.suffix.lower() != ".gguf":
        raise ModelLoadError(str(load.path), "not a FLUX.1 checkpoint")
    dtype = load.device.dtype
    if dims is None:  # a GGUF file: the real model's widths
        config = parts.shipped_config(load.arch, "transformer/config.json")
        dims = flux_keys.FluxDims(config["in_channels"], config.get("out_channels") or 64, config["num_layers"],
                                  config["num_single_layers"], config["attention_head_dim"],
                                  config["num_attention_heads"], config["joint_attention_dim"],
                                  config["pooled_projection_dim"], config["guidance_embeds"])
    clip_found, t5_found, vae_found = _locate(load, dims)
    tokenizer_2 = parts.t5_tokenizer(load.path, load.index, load.components)  # before the heavy loading
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        parts.shipped_config(load.arch, "scheduler/scheduler_config.json"))
    return _pipeline_class(load.arch)(
        scheduler=scheduler,
        vae=parts.load_vae(vae_found, load.arch, dtype),
        text_encoder=parts.load_clip(clip_found, load.arch, dtype),
        tokenizer=parts.clip_tokenizer(),
        text_encoder_2=parts.load_t5(t5_found, load.arch, dtype),
        tokenizer_2=tokenizer_2,
        transformer=_transformer(load, dtype),
    )


def load_folder(load: FolderLoad) -> DiffusionPipeline:
    return _pipeline_class(load.arch).from_pretrained(str(load.path), local_files_only=True, dtype=load.device.dtype)


_FLOW = FlowParts(encode=flux_flow.encode, network=flux_flow.network, sigmas=flux_flow.sigmas)

FAMILY = EngineFamily(
    name="FLUX.1",
    archs=(ModelArch.FLUX_DEV, ModelArch.FLUX_SCHNELL),
    detect_file=lambda index: arch if (arch := detect_file(index)) is not ModelArch.FLUX_FILL else None,
    detect_folder=lambda folder, index: arch if (arch := detect_folder(folder, index)) is not ModelArch.FLUX_FILL
    else None,
    load_file=load_file,
    load_folder=load_folder,
    flow=_FLOW,
    default_sigmas=flux_flow.default_sigmas,
)

# Fill is its own entry: the loop gives its network the masked image instead of a latent mask.
FILL_FAMILY = EngineFamily(
    name="FLUX.1 Fill",
    archs=(ModelArch.FLUX_FILL,),
    detect_file=lambda index: arch if (arch := detect_file(index)) is ModelArch.FLUX_FILL else None,
    detect_folder=lambda folder, index: arch if (arch := detect_folder(folder, index)) is ModelArch.FLUX_FILL
    else None,
    load_file=load_file,
    load_folder=load_folder,
    flow=FlowParts(encode=flux_flow.encode, network=flux_flow.network, sigmas=flux_flow.sigmas,
                   inpaint_concat=flux_flow.inpaint_concat),
    default_sigmas=flux_flow.default_sigmas,
)

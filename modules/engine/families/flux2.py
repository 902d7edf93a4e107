"""The FLUX.2 [klein] family (4B and 9B, distilled and base): detection and loading.

Single files are recognised by the FLUX.2 transformer's marker tensor (diffusers'
``CHECKPOINT_KEY_NAMES["flux2"]``) without a guidance embedder (FLUX.2 dev has one); diffusers
folders by ``Flux2KleinPipeline``. Parts load on the meta device and take the file's tensors
(``assign``), so a 4B model is never built twice in memory. The Qwen3 tokenizer ships with no
wheel: it comes from the file's metadata (tiny test models), or a downloaded copy of
:data:`QWEN3_TOKENIZER` under ``components.tokenizers``. The sampling parts are in :mod:`.flux2_flow`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline, Flux2Transformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_flux2_transformer_checkpoint_to_diffusers,
    convert_ldm_vae_checkpoint,
)
from transformers import Qwen2TokenizerFast, Qwen3Config, Qwen3ForCausalLM

from modules.engine.checkpoint_files import TensorIndex
from modules.engine.families import flux2_files as files
from modules.engine.families import flux2_flow
from modules.engine.families.base import ComponentDirs, EngineFamily, FileLoad, FolderLoad
from modules.engine.model_detect import ModelArch
from modules.engine.tokenizer_files import find_tokenizer, missing_tokenizer
from modules.errors import MissingComponentError, ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerSource:
    """Where a tokenizer no wheel carries is downloaded from, and the files it needs."""

    repo: str
    subfolder: str
    files: tuple[str, ...]

    @property
    def folder_name(self) -> str:  # the folder under components.tokenizers
        return self.repo.rsplit("/", 1)[-1]

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/tree/main/{self.subfolder}"


# klein 4B and 9B share Qwen3's tokenizer; the 4B repository is the one without a licence gate.
QWEN3_TOKENIZER = TokenizerSource("black-forest-labs/FLUX.2-klein-4B", "tokenizer",
                                  ("tokenizer.json", "tokenizer_config.json"))
TEXT_ENCODER_GLOBS = ("qwen*", "Qwen*")


def detect_file(index: TensorIndex) -> ModelArch | None:
    layout = files.transformer_layout(index)
    if layout is None:
        return None
    guidance = "time_guidance_embed.guidance_embedder.linear_1.weight" if layout.diffusers_keys \
        else "guidance_in.in_layer.weight"
    return None if layout.prefix + guidance in index else ModelArch.FLUX2_KLEIN  # a guidance embedder: FLUX.2 dev


def detect_folder(_folder: Path, model_index: Mapping[str, Any]) -> ModelArch | None:
    return ModelArch.FLUX2_KLEIN if model_index.get("_class_name") == "Flux2KleinPipeline" else None


# -- building parts from tensors ----------------------------------------------------------------------


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], dtype: torch.dtype) -> torch.nn.Module:
    """Give a meta-device module the file's tensors (strict: a missing or extra tensor is an error)."""
    module.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                           strict=True, assign=True)
    return module.eval()


def _transformer(path: Path, index: TensorIndex, dtype: torch.dtype) -> Flux2Transformer2DModel:
    layout = files.transformer_layout(index)
    assert layout is not None
    state = files.read_tensors(path, index, layout.prefix, skip=files.VAE_PREFIXES + (files.TEXT_ENCODER_PREFIX,))
    if layout.prefix == "":
        state = {k: v for k, v in state.items() if not k.startswith(("model.", "bn.", "encoder.", "decoder."))}
    if not layout.diffusers_keys:
        state = convert_flux2_transformer_checkpoint_to_diffusers(state)
    with torch.device("meta"):
        model = Flux2Transformer2DModel.from_config(files.transformer_config(index, layout))
    return _assign(model, state, dtype)


def _gguf_transformer(load: FileLoad) -> Flux2Transformer2DModel:
    """A GGUF transformer (BFL names, as city96's conversions write them), through diffusers'
    GGUF quantization config with a config written for its sizes."""
    from modules.engine import quantized

    layout = files.transformer_layout(load.index)
    assert layout is not None
    config = files.transformer_config(load.index, layout)
    text = json.dumps(config, sort_keys=True)
    folder = load.config_cache / f"flux2_klein-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text, encoding="utf-8")
    return quantized.load_gguf_transformer(Flux2Transformer2DModel, load.path, folder, load.device.dtype)


def _text_encoder(path: Path, index: TensorIndex, prefix: str, dtype: torch.dtype) -> Qwen3ForCausalLM:
    config = Qwen3Config(**files.text_encoder_config(index, prefix))
    state = files.read_tensors(path, index, prefix)
    state = {k if k.startswith(("model.", "lm_head.")) else f"model.{k}": v for k, v in state.items()}
    if "lm_head.weight" not in state:  # only the hidden states are used; tie the head like Qwen3-4B
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    _assign(model, state, dtype)
    # RoPE's inverse frequencies are a computed buffer, not in any file: build them for real
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    return model


def _vae(path: Path, index: TensorIndex, prefix: str, dtype: torch.dtype) -> AutoencoderKLFlux2:
    config = files.vae_config(index, prefix)
    state = files.read_tensors(path, index, prefix, skip=(files.COMFY_PREFIX, files.TEXT_ENCODER_PREFIX))
    stats = {k: v for k, v in state.items() if k.startswith("bn.")}
    if "encoder.down.0.block.0.conv1.weight" in state:  # LDM names, as BFL's and ComfyUI's files have
        state = convert_ldm_vae_checkpoint(state, config)
    state = {k: v for k, v in state.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    state.update(stats)
    state.setdefault("bn.num_batches_tracked", torch.tensor(0))
    with torch.device("meta"):
        model = AutoencoderKLFlux2.from_config(config)
    return _assign(model, state, dtype)


# -- parts the file does not bundle ------------------------------------------------------------------


def _folder_hint(folders: tuple[Path, ...], default: str) -> str:
    return str(folders[0]) if folders else default


def _external_text_encoder(load: FileLoad, joint_dim: int) -> tuple[Path, TensorIndex, str]:
    def fits(index: TensorIndex) -> bool:
        root = "model." if "model.embed_tokens.weight" in index else ""
        shape = index.shape(f"{root}embed_tokens.weight")
        return shape is not None and shape[1] * len(flux2_flow.HIDDEN_STATES_LAYERS) == joint_dim

    found = files.find_component(load.components.text_encoders, TEXT_ENCODER_GLOBS, fits)
    if found is None:
        size = "Qwen3-8B (qwen_3_8b)" if joint_dim == 12288 else "Qwen3-4B (qwen_3_4b)"
        raise MissingComponentError(str(load.path), "Qwen3 text encoder", f"a {size} .safetensors file",
                                    _folder_hint(load.components.text_encoders, "models/text_encoder"))
    return found[0], found[1], ""


def _external_vae(load: FileLoad, latent_channels: int) -> tuple[Path, TensorIndex, str]:
    def fits(index: TensorIndex) -> bool:
        prefix = files.vae_prefix(index)
        mean = index.shape(f"{prefix}bn.running_mean") if prefix is not None else None
        return mean is not None and mean[0] == latent_channels

    found = files.find_component(load.components.vaes, ("*",), fits)
    if found is None:
        raise MissingComponentError(str(load.path), "FLUX.2 VAE", "flux2-vae.safetensors (the FLUX.2 autoencoder)",
                                    _folder_hint(load.components.vaes, "models/VAE"))
    prefix = files.vae_prefix(found[1])
    assert prefix is not None
    return found[0], found[1], prefix


def load_tokenizer(path: Path, index: TensorIndex, components: ComponentDirs) -> Qwen2TokenizerFast:
    """From the file's metadata, else the downloaded copy, else MissingComponentError."""
    text = files.tokenizer_json(index.metadata)
    if text is not None:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "tokenizer.json").write_text(text, encoding="utf-8")
            (Path(tmp) / "tokenizer_config.json").write_text(json.dumps({
                "tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                "chat_template": flux2_flow.QWEN3_CHAT_TEMPLATE}), encoding="utf-8")
            return Qwen2TokenizerFast.from_pretrained(tmp, local_files_only=True)
    shared = find_tokenizer("qwen3", components.tokenizers)  # the Qwen3 copy Z-Image uses too
    if shared is not None:
        return Qwen2TokenizerFast.from_pretrained(str(shared), local_files_only=True)
    if components.tokenizers is not None:
        base = components.tokenizers / QWEN3_TOKENIZER.folder_name
        for folder in (base / QWEN3_TOKENIZER.subfolder, base):
            if (folder / "tokenizer.json").is_file():
                return Qwen2TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    raise missing_tokenizer(path, "qwen3", components.tokenizers)  # the UI and API offer the download


# -- loading -----------------------------------------------------------------------------------------


def load_file(load: FileLoad) -> Flux2KleinPipeline:
    dtype, index = load.device.dtype, load.index
    gguf = load.path.suffix.lower() == ".gguf"
    transformer = _gguf_transformer(load) if gguf else _transformer(load.path, index, dtype)
    tokenizer = load_tokenizer(load.path, index, load.components)
    te_prefix = None if gguf else files.text_encoder_prefix(index)
    te_source = (load.path, index, te_prefix) if te_prefix is not None \
        else _external_text_encoder(load, transformer.config.joint_attention_dim)
    vae_prefix = None if gguf else files.vae_prefix(index)
    vae_source = (load.path, index, vae_prefix) if vae_prefix is not None \
        else _external_vae(load, transformer.config.in_channels)
    text_encoder = _text_encoder(*te_source, dtype)
    vae = _vae(*vae_source, dtype)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(files.shipped_config("scheduler"))
    # Distilled and base klein have the same tensors; BFL names the base files "...-base-...".
    distilled = "base" not in load.path.stem.lower()
    if te_source[0] != load.path or vae_source[0] != load.path:
        log.info("%s: text encoder from %s, VAE from %s", load.path.name, te_source[0].name, vae_source[0].name)
    return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=distilled)


def load_folder(load: FolderLoad) -> Flux2KleinPipeline:
    if not (load.path / "tokenizer").is_dir():
        raise ModelLoadError(str(load.path), "the folder has no tokenizer/ (the Qwen3 tokenizer files)")
    return Flux2KleinPipeline.from_pretrained(str(load.path), local_files_only=True, dtype=load.device.dtype)


FAMILY = EngineFamily(
    name="FLUX.2 klein",
    archs=(ModelArch.FLUX2_KLEIN,),
    detect_file=detect_file,
    detect_folder=detect_folder,
    load_file=load_file,
    load_folder=load_folder,
    flow=flux2_flow.FLOW,
    default_sigmas=flux2_flow.default_sigmas,
    latent_format=flux2_flow.latent_format,
)

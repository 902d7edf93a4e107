"""Assembling an SD 3.5 pipeline from a single file and the parts it does not bundle.

The MMDiT comes from the checkpoint; each text encoder and the VAE from the checkpoint when it
bundles them, else from a shape-checked file in the text encoder / VAE folders (``clip_l*``,
``clip_g*``, ``t5xxl*``; a 16-channel VAE). CLIP-L and CLIP-G and the VAE are required. T5 is
optional, as in diffusers: ``StableDiffusion3Pipeline`` with ``text_encoder_3=None`` feeds zeros
in place of the T5 tokens (``_get_t5_prompt_embeds``), which is how Stability documents running
without it; the load logs that. The T5 tokenizer comes from the file's metadata (tiny test files),
else the downloaded copy in the tokenizers folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.loaders.single_file_utils import (
    convert_ldm_vae_checkpoint,
    convert_sd3_transformer_checkpoint_to_diffusers,
)
from safetensors import safe_open
from tokenizers import Tokenizer
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from modules.engine.checkpoint_files import TensorIndex, load_pickle_state_dict, read_safetensors_index
from modules.engine.config_folders import read_bpe_file
from modules.engine.families import sd3_layout as layout
from modules.engine.families.base import FileLoad
from modules.engine.model_detect import ModelArch
from modules.engine.quantized import apply_weight_scales
from modules.engine.tokenizer_files import find_tokenizer, missing_tokenizer
from modules.errors import MissingComponentError, ModelLoadError

log = logging.getLogger(__name__)

T5_TOKENIZER = "t5xxl"  # modules.engine.tokenizer_files' name (folder "t5-v1_1-xxl"), shared with FLUX.1
TOKENIZER_METADATA_KEYS = ("atelier.tokenizer.t5", "atelier.tokenizer.t5xxl")
_ENCODERS_URL = "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/tree/main/text_encoders"
_VAE_URL = "https://huggingface.co/stabilityai/stable-diffusion-3.5-large/tree/main/vae"


@dataclass(frozen=True)
class Part:
    """Where one component's tensors are: a file and the prefix its keys carry there."""

    path: Path
    index: TensorIndex
    prefix: str


def read_tensors(part: Part, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The part's tensors without its prefix, cast to ``dtype`` (fp8 files upcast here)."""
    if part.path.suffix.lower() == ".safetensors":
        with safe_open(str(part.path), framework="pt") as f:
            read = {k[len(part.prefix):]: f.get_tensor(k).to(dtype) for k in f.keys() if k.startswith(part.prefix)}
        return apply_weight_scales(read)
    state = load_pickle_state_dict(part.path)
    return apply_weight_scales({k[len(part.prefix):]: v.to(dtype) for k, v in state.items()
                                if k.startswith(part.prefix)})


def _materialise(part: Part, make: Callable[[], torch.nn.Module], state: dict[str, torch.Tensor],
                 dtype: torch.dtype) -> Any:
    """A module built without memory for its weights, then given the file's tensors."""
    with init_empty_weights():
        module = make()
    missing, _unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing:
        raise ModelLoadError(str(part.path), f"the {module.__class__.__name__} weights lack {missing[0]} "
                                             f"({len(missing)} tensors missing)")
    return module.eval()  # inference mode (T5's dropout is 0.1); the tensors are already ``dtype``


def _encoder_files(dirs: Iterable[Path], stem: str) -> list[Path]:
    found: list[Path] = []
    for folder in dirs:
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir()
                            if p.name.lower().startswith(stem) and p.suffix.lower() == ".safetensors")
    return found


def _find(load: FileLoad, bundled: str, stem: str, prefixes: tuple[str, ...], probe: str,
          fits: Callable[[Part], bool]) -> Part | None:
    """The bundled part, else the first fitting ``stem*`` file in the text encoder folders."""
    if bundled + probe in load.index:
        return Part(load.path, load.index, bundled)
    for path in _encoder_files(load.components.text_encoders, stem):
        try:
            index = read_safetensors_index(path)
        except ModelLoadError as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        prefix = layout.find_prefix(index, prefixes, probe)
        if prefix is not None and fits(Part(path, index, prefix)):
            return Part(path, index, prefix)
        log.warning("Skipping %s: its tensors do not fit this SD 3.5 model", path.name)
    return None


def _missing_encoder(load: FileLoad, what: str, file_hint: str) -> MissingComponentError:
    folder = str(load.components.text_encoders[0]) if load.components.text_encoders else "models/text_encoder"
    return MissingComponentError(str(load.path), what, file_hint, folder, _ENCODERS_URL)


def _clip_width(part: Part) -> tuple[int, int]:
    """(hidden width, projection width) of a CLIP part."""
    hidden = part.index.shapes[part.prefix + layout.CLIP_PROBE][1]
    projection = part.index.shape(part.prefix + "text_projection.weight")
    return hidden, projection[0] if projection else hidden


def find_text_encoders(load: FileLoad, transformer: dict[str, Any]) -> tuple[Part, Part, Part | None]:
    """CLIP-L, CLIP-G and (optional) T5 for the MMDiT whose config is ``transformer``. CLIP-G is
    the wider; their penultimate states side by side must fit the joint width, and their pooled
    vectors together make the MMDiT's pooled input (2048 = 768 + 1280 for the real ones)."""
    joint, pooled = transformer["joint_attention_dim"], transformer["pooled_projection_dim"]

    def clip_fits(part: Part) -> bool:
        hidden, projection = _clip_width(part)
        return hidden < joint and projection < pooled

    clip_l = _find(load, layout.CLIP_L, "clip_l", layout.CLIP_FILE_PREFIXES, layout.CLIP_PROBE, clip_fits)
    if clip_l is None:
        raise _missing_encoder(load, "CLIP-L text encoder", "clip_l.safetensors")
    clip_g = _find(load, layout.CLIP_G, "clip_g", layout.CLIP_FILE_PREFIXES, layout.CLIP_PROBE,
                   lambda p: clip_fits(p) and _clip_width(p)[1] + _clip_width(clip_l)[1] == pooled)
    if clip_g is None:
        raise _missing_encoder(load, "CLIP-G text encoder", "clip_g.safetensors")
    if _clip_width(clip_l)[0] + _clip_width(clip_g)[0] > joint:
        raise ModelLoadError(str(clip_l.path), "the CLIP-L and CLIP-G encoders are wider together than this "
                                               f"SD 3.5 model's text width {joint}: encoders of another model?")
    t5 = _find(load, layout.T5XXL, "t5xxl", layout.T5_FILE_PREFIXES, layout.T5_PROBE,
               lambda p: p.index.shapes[p.prefix + layout.T5_PROBE][1] == joint)
    if t5 is None:
        log.warning("%s: no T5-XXL encoder bundled or in the text encoder folder; SD 3.5 runs without it "
                    "(zeros in its place, as diffusers does), which follows long prompts less well", load.path.name)
    return clip_l, clip_g, t5


def _is_sd3_vae(part: Part) -> bool:
    """16 latent channels (the encoder outputs mean and log-variance); both layouts name it alike."""
    prefix = "" if part.prefix == "diffusers" else part.prefix
    return part.index.shapes[prefix + layout.LDM_VAE_PROBE][0] == 32


def find_vae(load: FileLoad) -> Part:
    """The bundled VAE, else a 16-channel VAE file (names with "sd3" first; FLUX's ``ae`` has the
    same shapes but other weights, so it is never taken). ``prefix == "diffusers"`` marks a file in
    diffusers' key names."""
    prefix = layout.find_prefix(load.index, layout.VAE_PREFIXES, layout.LDM_VAE_PROBE)
    if prefix is not None:
        return Part(load.path, load.index, prefix)
    files = [p for folder in load.components.vaes if folder.is_dir() for p in sorted(folder.iterdir())
             if p.suffix.lower() == ".safetensors" and "flux" not in p.name.lower() and p.stem.lower() != "ae"]
    for path in sorted(files, key=lambda p: "sd3" not in p.name.lower()):
        try:
            index = read_safetensors_index(path)
        except ModelLoadError:
            continue
        found = layout.find_prefix(index, ("", *layout.VAE_PREFIXES), layout.LDM_VAE_PROBE)
        if layout.DIFFUSERS_VAE_PROBE in index:
            found = "diffusers"
        if found is not None and _is_sd3_vae(Part(path, index, found)):
            return Part(path, index, found)
    folder = str(load.components.vaes[0]) if load.components.vaes else "models/VAE"
    raise MissingComponentError(str(load.path), "SD 3.5 VAE", "the vae/diffusion_pytorch_model.safetensors of "
                                "SD 3.5 (e.g. renamed sd3.5_vae.safetensors)", folder, _VAE_URL)


def load_transformer(part: Part, config: dict[str, Any], dtype: torch.dtype) -> SD3Transformer2DModel:
    # Followed: diffusers' convert_sd3_transformer_checkpoint_to_diffusers (qkv split, scale/shift swap).
    state = convert_sd3_transformer_checkpoint_to_diffusers(read_tensors(part, dtype))
    return _materialise(part, lambda: SD3Transformer2DModel.from_config(config), state, dtype)


def load_gguf(load: FileLoad, config: dict[str, Any], dtype: torch.dtype) -> SD3Transformer2DModel:
    """A GGUF MMDiT (weights stay quantized), its config written beside the other generated ones."""
    from modules.engine.quantized import load_gguf_transformer

    text = json.dumps(config, sort_keys=True)
    folder = load.config_cache / f"{load.arch.value}-mmdit-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(text, encoding="utf-8")
    model = load_gguf_transformer(SD3Transformer2DModel, load.path, folder, dtype)
    patch = model.pos_embed
    if hasattr(patch.pos_embed, "quant_type"):  # a buffer added as it is, not a layer that dequantizes itself
        from diffusers.quantizers.gguf.utils import dequantize_gguf_tensor

        patch.pos_embed = dequantize_gguf_tensor(patch.pos_embed).to(dtype)
    return model


def load_clip(part: Part, config: dict[str, Any], dtype: torch.dtype) -> CLIPTextModelWithProjection:
    state = {k: v for k, v in read_tensors(part, dtype).items() if not k.endswith("position_ids")}
    if "text_projection.weight" not in state:
        # Stability's and ComfyUI's CLIP-L has no projection: SD3 pools it unprojected, and diffusers'
        # create_diffusers_clip_model_from_ldm gives it an identity text_projection for that.
        state["text_projection.weight"] = torch.eye(config["hidden_size"], dtype=dtype)
    return _materialise(part, lambda: CLIPTextModelWithProjection(CLIPTextConfig(**config)), state, dtype)


def load_t5(part: Part, config: dict[str, Any], dtype: torch.dtype) -> T5EncoderModel:
    state = read_tensors(part, dtype)
    shared = state.get("shared.weight", state.get("encoder.embed_tokens.weight"))
    if shared is None:
        raise ModelLoadError(str(part.path), "the T5 encoder has no token embeddings (shared.weight)")
    state["shared.weight"] = state["encoder.embed_tokens.weight"] = shared  # tied in T5EncoderModel
    model = _materialise(part, lambda: T5EncoderModel(T5Config(**config)), state, dtype)
    if dtype == torch.float16:  # T5's feed-forward output overflows fp16 (transformers' _keep_in_fp32_modules)
        for name, module in model.named_modules():
            if name.endswith(".wo"):
                module.to(torch.float32)
    return model


def load_vae(part: Part, arch: ModelArch, dtype: torch.dtype) -> AutoencoderKL:
    base = layout.base_config(arch, "vae")
    if part.prefix == "diffusers":
        config = layout.diffusers_vae_config(part.index, base)
        state = read_tensors(Part(part.path, part.index, ""), dtype)
    else:
        config = layout.vae_config(part.index, part.prefix, base)
        # Followed: diffusers' convert_ldm_vae_checkpoint, on the LDM names without their prefix.
        state = convert_ldm_vae_checkpoint(read_tensors(part, dtype), config)
    return _materialise(part, lambda: AutoencoderKL.from_config(config), state, dtype)


def clip_tokenizer(pad_token: str) -> CLIPTokenizer:
    """SD3's CLIP tokenizers from the shipped BPE files: CLIP-L pads with its end token, CLIP-G
    with "!" (the tokenizer_config.json files of the SD 3.5 repositories)."""
    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as tmp:
        for name in ("vocab.json", "merges.txt"):
            (Path(tmp) / name).write_bytes(read_bpe_file(name))
        return CLIPTokenizer.from_pretrained(tmp, pad_token=pad_token, model_max_length=77, local_files_only=True)


def t5_tokenizer(load: FileLoad) -> T5TokenizerFast:
    """The file's own tokenizer (tiny test files carry it in their metadata), else the downloaded
    copy; else the error that offers the download."""
    for key in TOKENIZER_METADATA_KEYS:
        if key in load.index.metadata:
            return T5TokenizerFast(tokenizer_object=Tokenizer.from_str(load.index.metadata[key]), eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", extra_ids=0)
    folder = find_tokenizer(T5_TOKENIZER, load.components.tokenizers)
    if folder is None:
        raise missing_tokenizer(load.path, T5_TOKENIZER, load.components.tokenizers)
    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)


def assemble(load: FileLoad) -> StableDiffusion3Pipeline:
    """The whole pipeline of a single file recognised as ``load.arch``."""
    prefix = layout.transformer_prefix(load.index)
    if prefix is None:
        raise ModelLoadError(str(load.path), "no SD 3.5 MMDiT found (joint_blocks.* tensors)")
    dtype, arch = load.device.dtype, load.arch
    config = layout.transformer_config(load.index, arch, prefix)
    clip_l, clip_g, t5 = find_text_encoders(load, config)
    vae_part = find_vae(load)
    tokenizer_3 = t5_tokenizer(load) if t5 is not None else None
    gguf = load.path.suffix.lower() == ".gguf"
    return StableDiffusion3Pipeline(
        transformer=load_gguf(load, config, dtype) if gguf else load_transformer(Part(load.path, load.index, prefix),
                                                                                  config, dtype),
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(layout.base_config(arch, "scheduler")),
        vae=load_vae(vae_part, arch, dtype),
        text_encoder=load_clip(clip_l, layout.clip_config(clip_l.index, clip_l.prefix,
                                                          layout.base_config(arch, "text_encoder")), dtype),
        tokenizer=clip_tokenizer("<|endoftext|>"),
        text_encoder_2=load_clip(clip_g, layout.clip_config(clip_g.index, clip_g.prefix,
                                                            layout.base_config(arch, "text_encoder_2")), dtype),
        tokenizer_2=clip_tokenizer("!"),
        text_encoder_3=None if t5 is None else load_t5(
            t5, layout.t5_config(t5.index, t5.prefix, layout.base_config(arch, "text_encoder_3")), dtype),
        tokenizer_3=tokenizer_3,
    )

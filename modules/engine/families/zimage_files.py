"""Z-Image's parts from the files users have: transformer, Qwen3 text encoder, FLUX VAE, tokenizer.

Single files come in the original (Tongyi / ComfyUI) key layout, fused ``attention.qkv`` and
``x_embedder.`` names, with or without the ``model.diffusion_model.`` prefix, or with diffusers'
own key names; all-in-one files also carry ``text_encoders.<name>.*`` (a Qwen3 model) and
``vae.*`` (the FLUX autoencoder, LDM names). What a file does not bundle is looked for in the
component folders. Every part's config is the shipped real one (``model_configs/zimage``) with the
dimensions read off the tensor shapes, so tiny test models load through the same code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_vae_checkpoint,
    convert_z_image_transformer_checkpoint_to_diffusers,
)
from safetensors import safe_open
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from modules.engine.checkpoint_files import TensorIndex, read_safetensors_index
from modules.engine.config_folders import SHIPPED_CONFIGS
from modules.engine.families.base import ComponentDirs
from modules.engine.quantized import apply_weight_scales
from modules.errors import MissingComponentError, ModelLoadError

CONFIGS = SHIPPED_CONFIGS / "zimage"
TRANSFORMER_PREFIXES = ("model.diffusion_model.", "")
TEXT_ENCODER_PREFIX = "text_encoders."
VAE_PREFIX = "vae."
# The tokenizer no wheel carries: the shared Qwen3 download (modules.engine.tokenizer_files "qwen3"),
# or a copy of Z-Image's own in ``components.tokenizers / TOKENIZER_FOLDER``; tiny files carry
# tokenizer.json in their header.
TOKENIZER_REPO = "Tongyi-MAI/Z-Image-Turbo"
TOKENIZER_FOLDER = TOKENIZER_REPO.split("/")[-1]
TOKENIZER_FILES = ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
                   "tokenizer/merges.txt")
TOKENIZER_METADATA_KEY = "atelier.tokenizer.qwen3"
TEXT_ENCODER_HINT = "qwen_3_4b.safetensors"
TEXT_ENCODER_URL = "https://huggingface.co/Comfy-Org/z_image_turbo/tree/main/split_files/text_encoders"
VAE_HINT = "ae.safetensors"
VAE_URL = "https://huggingface.co/Comfy-Org/z_image_turbo/tree/main/split_files/vae"
# Qwen3's chat template as ZImagePipeline._encode_prompt applies it (one user message, generation
# prompt, enable_thinking=True); used when a tokenizer carries no template of its own (tiny files).
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}"
    "{% endif %}{% endif %}"
)
QWEN3_PAD_TOKEN = "<|endoftext|>"

StateDict = dict[str, torch.Tensor]


def shipped_config(part: str) -> dict[str, Any]:
    name = "scheduler_config.json" if part == "scheduler" else "config.json"
    return json.loads((CONFIGS / part / name).read_text(encoding="utf-8"))


def transformer_prefix(index: TensorIndex) -> str | None:
    """Where a Z-Image transformer's tensors start in the file (None: there is none); the keys
    ``single_file_utils`` recognises, plus what tells it from Lumina 2 and the Omni variant."""
    for prefix in TRANSFORMER_PREFIXES:
        if (prefix + "layers.0.adaLN_modulation.0.weight" in index and prefix + "cap_embedder.1.weight" in index
                and (prefix + "x_embedder.weight" in index or prefix + "all_x_embedder.2-1.weight" in index)
                and not index.has_prefix(prefix + "siglip_embedder.")):
            return prefix
    return None


def axes_dims_for(head_dim: int) -> list[int]:
    """RoPE axes (frame, height, width) for a head width: the real [32, 48, 48] at 128, the same
    proportions (even widths) otherwise; shapes do not record them, so tiny models use this rule."""
    frame = head_dim // 8 * 2
    height = (head_dim - frame) // 4 * 2
    return [frame, height, head_dim - frame - height]


def _count(shapes: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for key in shapes if (m := pattern.match(key))})


def read_tensors(path: Path, prefix: str, dtype: torch.dtype, skip: tuple[str, ...] = ()) -> StateDict:
    """The file's tensors under ``prefix`` (names without it), floating ones in ``dtype`` (fp8 upcast)."""
    state: StateDict = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
            if key.startswith(prefix) and not any(key.startswith(s) for s in skip):
                tensor = f.get_tensor(key)
                state[key[len(prefix):]] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return apply_weight_scales(state)


def _materialise(module: torch.nn.Module, state: StateDict, path: Path, part: str) -> torch.nn.Module:
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(str(path), f"the {part} weights do not fit Z-Image's {part}: {what}")
    return module.eval()


def transformer_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The transformer's config from diffusers-named tensor shapes."""
    config = shipped_config("transformer")
    dim, patch_in = shapes["all_x_embedder.2-1.weight"]
    norm_q = shapes.get("layers.0.attention.norm_q.weight")
    head_dim = norm_q[0] if norm_q else config["dim"] // config["n_heads"]
    config.update(dim=dim, in_channels=patch_in // 4, n_layers=_count(shapes, "layers."),
                  n_refiner_layers=_count(shapes, "noise_refiner."), n_heads=dim // head_dim,
                  n_kv_heads=dim // head_dim, cap_feat_dim=shapes["cap_embedder.1.weight"][1],
                  qk_norm=norm_q is not None, axes_dims=axes_dims_for(head_dim))
    return config


def diffusers_shapes(index: TensorIndex, prefix: str) -> dict[str, tuple[int, ...]]:
    """The transformer's shapes under the diffusers names :func:`transformer_config` reads (no tensors read)."""
    shapes = {k[len(prefix):]: v for k, v in index.shapes.items() if k.startswith(prefix)}
    if "all_x_embedder.2-1.weight" in shapes:
        return shapes
    renames = (("x_embedder.", "all_x_embedder.2-1."), (".attention.q_norm.", ".attention.norm_q."))
    result = {}
    for key, shape in shapes.items():
        for old, new in renames:
            key = key.replace(old, new) if not key.startswith("all_") else key
        result[key] = shape
    return result


def load_gguf_transformer(path: Path, index: TensorIndex, config_cache: Path,
                          dtype: torch.dtype) -> ZImageTransformer2DModel:
    """A GGUF transformer (original names), through diffusers' GGUF loading with a config of its shapes."""
    from modules.engine import quantized

    config = transformer_config(diffusers_shapes(index, transformer_prefix(index) or ""))
    folder = config_cache / "zimage-gguf" / "_".join(str(config[k]) for k in ("dim", "n_layers", "cap_feat_dim"))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return quantized.load_gguf_transformer(ZImageTransformer2DModel, path, folder, dtype)


def load_transformer(path: Path, prefix: str, dtype: torch.dtype) -> ZImageTransformer2DModel:
    state = read_tensors(path, prefix, dtype, skip=(TEXT_ENCODER_PREFIX, VAE_PREFIX) if not prefix else ())
    if "all_x_embedder.2-1.weight" not in state:  # the original layout: diffusers' own conversion
        state = convert_z_image_transformer_checkpoint_to_diffusers(state)
    config = transformer_config({k: tuple(v.shape) for k, v in state.items()})
    with init_empty_weights():
        model = ZImageTransformer2DModel.from_config(config)
    return _materialise(model, state, path, "transformer")


def text_encoder_prefix(index: TensorIndex, within: str) -> str | None:
    """The prefix of a Qwen3 model's tensors under ``within`` (``model.`` included when present)."""
    for key in index.shapes:
        if key.startswith(within) and key.endswith("embed_tokens.weight") and "visual" not in key:
            return key[: -len("embed_tokens.weight")]
    return None


def qwen3_config(shapes: Mapping[str, tuple[int, ...]]) -> Qwen3Config:
    config = shipped_config("text_encoder")
    vocab, hidden = shapes["embed_tokens.weight"]
    head_dim = shapes["layers.0.self_attn.q_norm.weight"][0]
    config.update(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=_count(shapes, "layers."),
                  intermediate_size=shapes["layers.0.mlp.gate_proj.weight"][0], head_dim=head_dim,
                  num_attention_heads=shapes["layers.0.self_attn.q_proj.weight"][0] // head_dim,
                  num_key_value_heads=shapes["layers.0.self_attn.k_proj.weight"][0] // head_dim)
    for special in ("bos_token_id", "eos_token_id"):
        if config[special] >= vocab:  # a tiny vocabulary: the real ids do not exist in it
            config[special] = None
    return Qwen3Config(**config)


def load_text_encoder(path: Path, prefix: str, dtype: torch.dtype) -> Qwen3Model:
    state = read_tensors(path, prefix, dtype)
    state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    config = qwen3_config({k: tuple(v.shape) for k, v in state.items()})
    with init_empty_weights():  # parameters only: the rotary buffers are computed for real
        model = Qwen3Model(config)
    return _materialise(model, state, path, "text encoder").to(dtype)


def vae_latent_channels(index: TensorIndex, prefix: str) -> int | None:
    shape = index.shape(prefix + "encoder.conv_out.weight")
    return shape[0] // 2 if shape else None


def vae_config(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
    """The FLUX VAE's config with the levels, widths and latent channels of the tensors (LDM or diffusers names)."""
    config = shipped_config("vae")
    ldm = _count(shapes, "encoder.down.") > 0
    levels = _count(shapes, "encoder.down.") or _count(shapes, "encoder.down_blocks.")
    first = "encoder.down.{}.block.0.conv1.weight" if ldm else "encoder.down_blocks.{}.resnets.0.conv1.weight"
    per_level = _count(shapes, "encoder.down.0.block.") if ldm else _count(shapes, "encoder.down_blocks.0.resnets.")
    config.update(block_out_channels=[shapes[first.format(i)][0] for i in range(levels)],
                  down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels,
                  layers_per_block=per_level, latent_channels=shapes["encoder.conv_out.weight"][0] // 2)
    return config


def load_vae(path: Path, prefix: str, dtype: torch.dtype) -> AutoencoderKL:
    state = read_tensors(path, prefix, dtype)
    config = vae_config({k: tuple(v.shape) for k, v in state.items()})
    if "encoder.down.0.block.0.conv1.weight" in state:  # LDM names (ae.safetensors, all-in-one files)
        state = convert_ldm_vae_checkpoint(state, config)
    with init_empty_weights():
        model = AutoencoderKL.from_config(config)
    return _materialise(model, state, path, "VAE")


def _candidates(folders: tuple[Path, ...], preferred: tuple[str, ...]) -> list[Path]:
    """safetensors files in ``folders``, those whose names start with ``preferred`` first."""
    files = sorted({f for folder in folders if folder.is_dir() for f in folder.rglob("*.safetensors")})
    return sorted(files, key=lambda f: not f.name.lower().startswith(preferred))


def _folder_hint(folders: tuple[Path, ...], default: str) -> str:
    return str(folders[0]) if folders else default


def find_text_encoder(path: Path, components: ComponentDirs, width: int) -> tuple[Path, str]:
    """A Qwen3 encoder file (qwen*) whose hidden width is the transformer's caption width."""
    for candidate in _candidates(components.text_encoders, ("qwen",)):
        if not candidate.name.lower().startswith("qwen"):
            continue
        index = read_safetensors_index(candidate)
        prefix = text_encoder_prefix(index, "")
        shape = index.shape(f"{prefix}embed_tokens.weight") if prefix is not None else None
        if shape is not None and shape[1] == width:
            return candidate, prefix or ""
    raise MissingComponentError(str(path), "Qwen3 text encoder", TEXT_ENCODER_HINT,
                                _folder_hint(components.text_encoders, "models/text_encoder"), TEXT_ENCODER_URL)


def find_vae(path: Path, components: ComponentDirs, channels: int) -> Path:
    """A VAE file with ``channels`` latent channels, FLUX's ``ae`` first (SD3's VAE has the
    same shapes but other scaling, so files named for it are passed over)."""
    for candidate in _candidates(components.vaes, ("ae", "flux", "z_image", "zimage")):
        if "sd3" in candidate.name.lower():
            continue
        if vae_latent_channels(read_safetensors_index(candidate), "") == channels:
            return candidate
    raise MissingComponentError(str(path), "FLUX VAE", VAE_HINT, _folder_hint(components.vaes, "models/VAE"), VAE_URL)


def tokenizer_from_json(text: str) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(text), pad_token=QWEN3_PAD_TOKEN)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def load_tokenizer(path: Path, index: TensorIndex, components: ComponentDirs) -> Any:
    """The file's own tokenizer (tiny files), else a downloaded copy (the shared Qwen3 one, or one
    from Z-Image's repository), else the error that offers the download."""
    from modules.engine import tokenizer_files

    text = index.metadata.get(TOKENIZER_METADATA_KEY)
    if text:
        return tokenizer_from_json(text)
    found = tokenizer_files.find_tokenizer("qwen3", components.tokenizers)
    if found is not None:
        return AutoTokenizer.from_pretrained(str(found), local_files_only=True)
    if components.tokenizers is not None:
        folder = components.tokenizers / TOKENIZER_FOLDER
        for candidate in (folder / "tokenizer", folder):
            if (candidate / "tokenizer.json").is_file():
                return AutoTokenizer.from_pretrained(str(candidate), local_files_only=True)
    raise tokenizer_files.missing_tokenizer(path, "qwen3", components.tokenizers)

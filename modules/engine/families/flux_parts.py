"""The parts of a FLUX.1 pipeline a single file may or may not bundle: CLIP-L, T5-XXL, the VAE and
the tokenizers, found in the file, beside it in the component folders, or reported missing.

Each part is recognised by its tensors, whatever prefix a file puts them under (ComfyUI's
``text_encoders.clip_l.transformer.``, ``text_encoders.t5xxl.transformer.``, ``vae.``; plain
transformers / BFL names in separate files), and built from the shipped real config patched with
the dimensions its shapes give, so tiny test models load through the same code as real ones.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from modules.engine.checkpoint_files import TensorIndex, load_pickle_state_dict, read_safetensors_index
from modules.engine.config_folders import SHIPPED_CONFIGS, read_bpe_file
from modules.engine.families.base import ComponentDirs
from modules.engine.model_detect import ModelArch
from modules.engine.quantized import apply_weight_scales
from modules.engine.tokenizer_files import find_tokenizer, missing_tokenizer
from modules.errors import MissingComponentError, ModelLoadError

TOKENIZER_METADATA = "atelier.tokenizer.t5"  # a tiny file's own T5 tokenizer.json, in its header
# Where users get the parts FLUX.1 single files often come without.
ENCODERS_URL = "https://huggingface.co/comfyanonymous/flux_text_encoders"
VAE_URL = "https://huggingface.co/black-forest-labs/FLUX.1-schnell/blob/main/ae.safetensors"
_CLIP_MARKERS = ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight")
_T5_MARKER = "encoder.block.0.layer.0.SelfAttention.q.weight"
_VAE_MARKER = "decoder.conv_in.weight"
_LAYER = re.compile(r"(?:layers|block)\.(\d+)\.")


def config_dir(arch: ModelArch) -> Path:
    return SHIPPED_CONFIGS / arch.value


def shipped_config(arch: ModelArch, rel: str) -> dict[str, Any]:
    return json.loads((config_dir(arch) / rel).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Found:
    """A part located in a file: where, and the prefix its keys carry there."""

    path: Path
    index: TensorIndex
    prefix: str


def _prefix_of(index: TensorIndex, marker: str) -> str | None:
    """The prefix under which ``marker`` appears (the shortest, if several)."""
    hits = sorted((k[: -len(marker)] for k in index.shapes if k.endswith(marker)), key=len)
    return hits[0] if hits else None


def read_tensors(path: Path, prefix: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The file's tensors under ``prefix`` (prefix removed), floating ones in ``dtype`` (fp8 upcast)."""
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        out: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key.startswith(prefix):
                    out[key[len(prefix):]] = f.get_tensor(key)
    else:
        out = {k[len(prefix):]: v for k, v in load_pickle_state_dict(path).items() if k.startswith(prefix)}
    return apply_weight_scales({k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()})


def build_module(make: Callable[[], torch.nn.Module], state: Mapping[str, torch.Tensor], what: str,
                 path: Path, optional: tuple[str, ...] = ()) -> torch.nn.Module:
    """``make()`` with its parameters created empty, then filled from ``state`` (no double memory)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = make()
    expected = set(module.state_dict())
    missing = sorted(expected - set(state) - set(optional))
    if missing:
        raise ModelLoadError(str(path), f"the {what} has no weights for {', '.join(missing[:3])}"
                                        f"{' ...' if len(missing) > 3 else ''}")
    # Fresh copies: tensors read from a file (or split from a fused one) may sit at any alignment, and
    # the CPU kernels round differently on unaligned data, so the same weights gave other bytes.
    module.load_state_dict({k: v.clone() for k, v in state.items() if k in expected}, strict=False, assign=True)
    return module.eval()


def _layers(index: TensorIndex, prefix: str, part: str) -> int:
    numbers = {int(m.group(1)) for k in index.shapes if k.startswith(prefix + part) and
               (m := _LAYER.match(k[len(prefix + part):]))}
    return max(numbers) + 1 if numbers else 0


# -- CLIP-L ------------------------------------------------------------------------------------------------

def find_clip(index: TensorIndex, path: Path) -> Found | None:
    for marker in _CLIP_MARKERS:
        prefix = _prefix_of(index, marker)
        if prefix is not None:
            return Found(path, index, prefix + marker[: -len("embeddings.token_embedding.weight")])
    return None


def clip_width(found: Found) -> int:
    return found.index.shapes[found.prefix + "embeddings.token_embedding.weight"][1]


def load_clip(found: Found, arch: ModelArch, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    p, shapes = found.prefix, found.index.shapes
    vocab, width = shapes[p + "embeddings.token_embedding.weight"]
    config = shipped_config(arch, "text_encoder/config.json")
    config.update(vocab_size=vocab, hidden_size=width, intermediate_size=shapes[p + "encoder.layers.0.mlp.fc1.weight"][0],
                  num_hidden_layers=_layers(found.index, p, "encoder."), num_attention_heads=max(1, width // 64),
                  max_position_embeddings=shapes[p + "embeddings.position_embedding.weight"][0])
    state = read_tensors(found.path, p, dtype)

    def make() -> torch.nn.Module:
        return CLIPTextModel(CLIPTextConfig(**config)).to(dtype)

    # transformers >= 5.6 has no ``text_model.`` level; a model that still has it gets it back.
    return build_module(lambda: _with_text_model_keys(make(), state), state, "CLIP-L text encoder", found.path,
                        optional=("embeddings.position_ids", "text_model.embeddings.position_ids"))


def _with_text_model_keys(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    if any(k.startswith("text_model.") for k in module.state_dict()):
        for key in list(state):
            state["text_model." + key] = state.pop(key)
    return module


# -- T5-XXL ------------------------------------------------------------------------------------------------

def find_t5(index: TensorIndex, path: Path) -> Found | None:
    prefix = _prefix_of(index, _T5_MARKER)
    return None if prefix is None else Found(path, index, prefix)


def t5_width(found: Found) -> int:
    return found.index.shapes[found.prefix + _T5_MARKER][1]


def load_t5(found: Found, arch: ModelArch, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import T5Config, T5EncoderModel

    p, shapes = found.prefix, found.index.shapes
    embed = p + "shared.weight" if p + "shared.weight" in shapes else p + "encoder.embed_tokens.weight"
    vocab, width = shapes[embed]
    buckets, heads = shapes[p + "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    config = shipped_config(arch, "text_encoder_2/config.json")
    config.update(vocab_size=vocab, d_model=width, num_heads=heads, relative_attention_num_buckets=buckets,
                  d_kv=shapes[p + _T5_MARKER][0] // heads, num_layers=_layers(found.index, p, "encoder."),
                  d_ff=shapes[p + "encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0])
    state = read_tensors(found.path, p, dtype)
    # The input embedding is shared; files store it under one name or the other.
    state.setdefault("shared.weight", state.get("encoder.embed_tokens.weight"))
    state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    return build_module(lambda: T5EncoderModel(T5Config(**config)).to(dtype), state, "T5-XXL text encoder",
                        found.path)


# -- the VAE -----------------------------------------------------------------------------------------------

def find_vae(index: TensorIndex, path: Path) -> Found | None:
    prefix = _prefix_of(index, _VAE_MARKER)
    if prefix is None or index.shapes[prefix + _VAE_MARKER][1] != 16:  # FLUX.1's VAE has 16 latent channels
        return None
    return Found(path, index, prefix)


def load_vae(found: Found, arch: ModelArch, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    p, shapes = found.prefix, found.index.shapes
    config = shipped_config(arch, "vae/config.json")
    diffusers_keys = p + "encoder.down_blocks.0.resnets.0.conv1.weight" in shapes
    level = "encoder.down_blocks.{}.resnets.0.conv1.weight" if diffusers_keys else "encoder.down.{}.block.0.conv1.weight"
    widths = []
    while p + level.format(len(widths)) in shapes:
        widths.append(shapes[p + level.format(len(widths))][0])
    per_block = "encoder.down_blocks.0.resnets." if diffusers_keys else "encoder.down.0.block."
    config.update(block_out_channels=widths, down_block_types=["DownEncoderBlock2D"] * len(widths),
                  up_block_types=["UpDecoderBlock2D"] * len(widths),
                  layers_per_block=_count_blocks(found.index, p + per_block), latent_channels=16)
    state = read_tensors(found.path, p, dtype)
    if not diffusers_keys:  # LDM names (ae.safetensors, ComfyUI's vae.*): diffusers' own conversion
        state = convert_ldm_vae_checkpoint(state, config)
    return build_module(lambda: AutoencoderKL.from_config(config).to(dtype), state, "VAE", found.path)


def _count_blocks(index: TensorIndex, prefix: str) -> int:
    numbers = {int(k[len(prefix):].split(".", 1)[0]) for k in index.shapes if k.startswith(prefix)}
    return max(numbers) + 1 if numbers else 0


# -- looking in the component folders ----------------------------------------------------------------------

def _candidates(dirs: tuple[Path, ...], patterns: tuple[str, ...]) -> list[Path]:
    """Files in ``dirs`` whose names match ``patterns`` first (in pattern order), then the rest."""
    files = [f for d in dirs if d.is_dir() for f in sorted(d.iterdir())
             if f.is_file() and f.suffix.lower() == ".safetensors"]
    named = [f for pat in patterns for f in files if _named(f, (pat,))]
    return list(dict.fromkeys(named + files))


def search(dirs: tuple[Path, ...], patterns: tuple[str, ...],
           accept: Callable[[TensorIndex, Path], Found | None]) -> Found | None:
    return search_all(dirs, patterns, accept)[0]


def search_all(dirs: tuple[Path, ...], patterns: tuple[str, ...],
               accept: Callable[[TensorIndex, Path], Found | None]) -> tuple[Found | None, tuple[str, ...]]:
    """The first file named like ``patterns`` that ``accept`` takes, and the names of those it refused
    (another family's encoder, another width), so a message can say why none was taken."""
    refused: list[str] = []
    for candidate in _candidates(dirs, patterns):
        try:
            index = read_safetensors_index(candidate)
        except ModelLoadError:
            continue  # a broken file beside the right one is not this model's problem
        found = accept(index, candidate)
        if found is not None:
            return found, tuple(refused)
        if _named(candidate, patterns):  # named as the part, yet not it: worth saying
            refused.append(candidate.name)
    return None, tuple(refused)


def _named(path: Path, patterns: tuple[str, ...]) -> bool:
    return any(path.match(pat) or path.name.lower().startswith(pat.rstrip("*")) for pat in patterns)


def _folder(dirs: tuple[Path, ...], default: str) -> str:
    return str(dirs[0]) if dirs else default


def missing_t5(path: Path, components: ComponentDirs, unusable: tuple[str, ...] = ()) -> MissingComponentError:
    return MissingComponentError(str(path), "T5-XXL text encoder", "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn"
                                 ".safetensors", _folder(components.text_encoders, "models/text_encoder"), ENCODERS_URL,
                                 unusable)


def missing_clip(path: Path, components: ComponentDirs, unusable: tuple[str, ...] = ()) -> MissingComponentError:
    return MissingComponentError(str(path), "CLIP-L text encoder", "clip_l.safetensors",
                                 _folder(components.text_encoders, "models/text_encoder"), ENCODERS_URL, unusable)


def missing_vae(path: Path, components: ComponentDirs) -> MissingComponentError:
    return MissingComponentError(str(path), "FLUX.1 VAE", "ae.safetensors", _folder(components.vaes, "models/VAE"),
                                 VAE_URL)


# -- tokenizers --------------------------------------------------------------------------------------------

def clip_tokenizer() -> Any:
    """CLIP-L's tokenizer from the shipped BPE files (FLUX.1's tokenizer pads with the end token)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="clip-bpe-") as tmp:
        for name in ("vocab.json", "merges.txt"):
            (Path(tmp) / name).write_bytes(read_bpe_file(name))
        return CLIPTokenizer.from_pretrained(tmp, pad_token="<|endoftext|>", model_max_length=77,
                                             local_files_only=True)


def t5_tokenizer_from_json(text: str) -> Any:
    from tokenizers import Tokenizer
    from transformers import T5TokenizerFast

    return T5TokenizerFast(tokenizer_object=Tokenizer.from_str(text), extra_ids=0, pad_token="<pad>",
                           eos_token="</s>", unk_token="<unk>", model_max_length=512)


def t5_tokenizer(path: Path, index: TensorIndex, components: ComponentDirs) -> Any:
    """The file's own tokenizer (tiny test files), else the downloaded copy; else what to fetch."""
    text = index.metadata.get(TOKENIZER_METADATA)
    if text:
        return t5_tokenizer_from_json(text)
    folder = find_tokenizer("t5xxl", components.tokenizers)
    if folder is None:
        raise missing_tokenizer(path, "t5xxl", components.tokenizers)  # the UI and API offer the download
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)

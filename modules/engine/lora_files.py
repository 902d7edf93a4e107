"""Reading LoRA files: their metadata, their tensors, and what kind of adapter they hold.

This module decides which files Atelier accepts as LoRAs and turns the accepted ones into plain
low-rank factors (:class:`Factors`), one per adapted layer, still under the file's own layer names:

- kohya-ss files (``lora_unet_*``, ``lora_te_*`` / ``lora_te1_*`` / ``lora_te2_*`` layers holding
  ``lora_down`` / ``lora_up`` / ``alpha``), linear and conv layers alike (so LoCon too); for a flow
  transformer ``lora_unet_`` names its layers (original or diffusers names) and ``lora_transformer_``
  its diffusers names; SD 3.5's T5 layers (``lora_te3_``) are skipped, as diffusers skips them;
- peft / diffusers / ai-toolkit files (``unet.*`` / ``transformer.*`` / ``diffusion_model.*`` /
  ``text_encoder.*`` / ``text_encoder_2.*`` with ``lora_A`` / ``lora_B`` or ``lora_down`` / ``lora_up``,
  or diffusers' older spellings, which diffusers' own converters normalise).

LyCORIS LoHa, LoKr, OFT, GLoRA, (IA)^3, full-difference and CP-decomposed files, and DoRA, are refused
by name, as are checkpoints, embeddings and VAEs put among the LoRAs. Every refusal is an
:class:`AddonLoadError` naming the file and the reason. Nothing here looks at a model.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers.utils import (
    convert_state_dict_to_diffusers,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from modules.engine.checkpoint_files import load_pickle_state_dict, read_safetensors_index
from modules.errors import AddonLoadError, ModelLoadError

log = logging.getLogger(__name__)

KIND = "LoRA"
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
_PICKLE_SUFFIXES = (".pt", ".ckpt", ".pth", ".bin")

# Pipeline components a LoRA may change, with the kohya prefixes that name them.
COMPONENT_PREFIXES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("unet", ("lora_unet_",)),
    ("text_encoder", ("lora_te_", "lora_te1_")),
    ("text_encoder_2", ("lora_te2_",)),
    ("transformer", ("lora_transformer_",)),
)
COMPONENT_LABELS = MappingProxyType(
    {"unet": "UNet", "text_encoder": "text encoder", "text_encoder_2": "second (SDXL) text encoder",
     "transformer": "transformer"})
DENOISERS = frozenset({"unet", "transformer"})  # a kohya ``lora_unet_`` layer is a flow model's transformer too
# peft-style roots that name a component by another word: ai-toolkit and ComfyUI write ``diffusion_model.``
_PEFT_ROOTS = MappingProxyType({"diffusion_model": "transformer"})
_SKIPPED_KOHYA = ("lora_te3_",)  # SD 3.5's T5: no pipeline LoRA API adapts it (diffusers drops these too)
_KOHYA_PARTS = frozenset({"lora_down.weight", "lora_up.weight", "alpha"})
PEFT_DOWN, PEFT_UP = ".lora_A.weight", ".lora_B.weight"

# Tensor-name endings of adapter kinds diffusers cannot apply to SD1/SDXL; named so users know why.
_FOREIGN_FORMATS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\.hada_(w[12]_[ab]|t[12])$"), "LyCORIS LoHa"),
    (re.compile(r"\.lokr_(w[12](_[ab])?|t2)$"), "LyCORIS LoKr"),
    (re.compile(r"\.(oft_blocks|oft_diag|oft_R(\.weight)?)$"), "LyCORIS OFT/BOFT"),
    (re.compile(r"\.[ab][12]\.weight$"), "LyCORIS GLoRA"),
    (re.compile(r"\.diff(_b)?$"), "LyCORIS full (weight difference)"),
    (re.compile(r"\.on_input$"), "LyCORIS (IA)^3"),
    (re.compile(r"\.lora_mid\.weight$"), "LyCORIS LoCon with CP decomposition"),
    (re.compile(r"(\.dora_scale|lora_magnitude_vector(\.weight)?)$"), "DoRA"),
)


@dataclass(frozen=True)
class Factors:
    """One adapted layer as the file stores it: ``W += up @ down * scale`` (times the LoRA's weight)."""

    component: str
    key: str  # the layer's name in the file: what the index is looked up with, and what messages show
    down: torch.Tensor
    up: torch.Tensor
    scale: float | None  # alpha / rank; None when the file gives no alpha (scale 1)


@dataclass(frozen=True)
class FileStamp:
    """Which version of a file was read: a changed size or mtime means it must be read again."""

    path: Path
    mtime_ns: int
    size: int


def refuse(path: Path, reason: str) -> AddonLoadError:
    return AddonLoadError(KIND, str(path), reason)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


# ---------------------------------------------------------------------------------------------- files


def read_lora_metadata(path: Path) -> dict[str, str]:
    """The safetensors ``__metadata__`` header (kohya's ``ss_*`` training info) without reading tensors.

    Other file types carry no metadata: ``{}``. A damaged safetensors file raises :class:`AddonLoadError`.
    """
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return {}
    try:
        read_safetensors_index(path)  # clear reasons for empty, LFS-pointer, truncated, malformed files
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except ModelLoadError as exc:
        raise refuse(path, exc.reason) from exc
    except (SafetensorError, OSError) as exc:
        raise refuse(path, f"unreadable safetensors header ({first_line(exc)})") from exc
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def file_stamp(path: Path) -> FileStamp:
    try:
        stat = path.stat()
    except OSError as exc:
        raise refuse(path, f"cannot read the file ({exc.strerror or exc})") from exc
    return FileStamp(path=path, mtime_ns=stat.st_mtime_ns, size=stat.st_size)


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            read_safetensors_index(path)
            return load_file(str(path), device="cpu")
        if suffix in _PICKLE_SUFFIXES:
            return load_pickle_state_dict(path)  # weights only: refuses pickles that want to run code
    except ModelLoadError as exc:
        raise refuse(path, exc.reason) from exc
    except (SafetensorError, OSError) as exc:
        raise refuse(path, f"unreadable file ({first_line(exc)})") from exc
    raise refuse(path, f"unsupported file type {suffix or '(none)'}; LoRAs are .safetensors or weights-only .pt/.ckpt")


# -------------------------------------------------------------------------------------- file formats


def _refuse_foreign_formats(path: Path, keys: Sequence[str]) -> None:
    for pattern, name in _FOREIGN_FORMATS:
        if any(pattern.search(k) for k in keys):
            raise refuse(path, f"this is a {name} file; Atelier applies plain LoRA and LoCon files only")


def _not_a_lora(path: Path, keys: Sequence[str]) -> AddonLoadError:
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner."))
           for k in keys):
        return refuse(path, "this is a Stable Diffusion checkpoint, not a LoRA; it belongs with the checkpoints")
    if any(k in ("emb_params", "clip_l", "clip_g") or k.startswith("string_to_param") for k in keys):
        return refuse(path, "this is a textual-inversion embedding, not a LoRA; it belongs with the embeddings")
    if any(k.startswith(("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.")) for k in keys):
        return refuse(path, "this is a VAE, not a LoRA")
    if named := next((k for k in keys if "lora" in k.lower()), None):
        return refuse(path, f"it holds LoRA weights under layer names Atelier does not know (e.g. {named})")
    return refuse(path, "it holds no LoRA weights (expected lora_unet_/lora_te_ layers with lora_down/lora_up, "
                        "or unet./transformer./text_encoder. layers with lora_A/lora_B)")


def _kohya_component(layer: str) -> str | None:
    for component, prefixes in COMPONENT_PREFIXES:
        if layer.startswith(prefixes):
            return component
    return None


def _alpha_of(path: Path, key: str, tensor: torch.Tensor | None) -> float | None:
    if tensor is None:
        return None
    if tensor.numel() != 1 or not math.isfinite(value := float(tensor.float().reshape(()).item())):
        raise refuse(path, f"{key} is not a single finite number")
    return value


def rank_of(down: torch.Tensor) -> int:
    return int(down.shape[0]) if down.ndim >= 1 and down.shape[0] > 0 else 1


def _kohya_factors(path: Path, tensors: Mapping[str, torch.Tensor]) -> list[Factors]:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        layer, _, part = key.partition(".")
        layers.setdefault(layer, {})[part] = tensor
    factors = []
    if skipped := [layer for layer in layers if layer.startswith(_SKIPPED_KOHYA)]:
        log.warning("LoRA %s: its %d T5 text encoder layers are skipped (e.g. %s)", path.name, len(skipped),
                    skipped[0])
    for layer, parts in layers.items():
        if layer.startswith(_SKIPPED_KOHYA):
            continue
        component = _kohya_component(layer)
        if component is None or not set(parts) <= _KOHYA_PARTS:
            raise refuse(path, f"unexpected tensors in a kohya LoRA: {layer}.{{{', '.join(sorted(parts))}}}")
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise refuse(path, f"layer {layer} lacks its lora_down or lora_up weight (incomplete file?)")
        down = parts["lora_down.weight"]
        alpha = _alpha_of(path, f"{layer}.alpha", parts.get("alpha"))
        scale = None if alpha is None else alpha / rank_of(down)
        factors.append(Factors(component, layer, down, parts["lora_up.weight"], scale))
    return factors


def _peft_alpha_config(metadata: Mapping[str, str]) -> dict[str, Any]:
    """diffusers writes each component's LoraConfig (r, lora_alpha, alpha_pattern...) as JSON metadata."""
    raw = metadata.get("lora_adapter_metadata")
    try:
        config = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        config = {}
    return config if isinstance(config, dict) else {}


def _peft_scale(config: Mapping[str, Any], component: str, layer: str, rank: int) -> float | None:
    alpha: Any = config.get(f"{component}.lora_alpha")
    patterns = config.get(f"{component}.alpha_pattern")
    if isinstance(patterns, dict):
        for pattern, value in patterns.items():
            try:  # peft's own rule: the pattern matches the layer's name, or a dotted suffix of it
                if re.match(rf"(.*\.)?({pattern})$", layer):
                    alpha = value
                    break
            except re.error:
                continue
    if not isinstance(alpha, (int, float)):
        return None
    root = math.sqrt(rank) if config.get(f"{component}.use_rslora") else rank
    return float(alpha) / root


def _as_peft_names(path: Path, component: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Older diffusers spellings (``to_q_lora.down``, ``lora_linear_layer``) -> peft's, by diffusers' converters."""
    if all(k.endswith((PEFT_DOWN, PEFT_UP)) for k in tensors):
        return tensors
    if component == "transformer":
        # ComfyUI / some ai-toolkit saves: peft layer names with kohya's factor names, which is how
        # diffusers' ``_convert_kohya_flux_lora_to_diffusers`` reads them too.
        return {k.replace(".lora_down.weight", PEFT_DOWN).replace(".lora_up.weight", PEFT_UP): v
                for k, v in tensors.items()}
    try:
        if component == "unet":
            return convert_unet_state_dict_to_peft(tensors)
        return convert_state_dict_to_peft(convert_state_dict_to_diffusers(tensors))
    except (ValueError, KeyError) as exc:
        raise refuse(path, f"unrecognised {COMPONENT_LABELS[component]} layer names ({first_line(exc)})") from exc


def _peft_factors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> list[Factors]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        root, _, rest = key.partition(".")
        if root not in COMPONENT_LABELS and root not in _PEFT_ROOTS:
            raise refuse(path, f"unexpected tensor {key!r} in a peft/diffusers LoRA")
        groups.setdefault(root, {})[rest] = tensor
    config = _peft_alpha_config(metadata)
    factors = []
    for root, group in groups.items():
        component = _PEFT_ROOTS.get(root, root)
        alphas = {k.removesuffix(".alpha"): v for k, v in group.items() if k.endswith(".alpha")}
        weights = _as_peft_names(path, component, {k: v for k, v in group.items() if not k.endswith(".alpha")})
        layers: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            suffix = PEFT_DOWN if key.endswith(PEFT_DOWN) else PEFT_UP if key.endswith(PEFT_UP) else None
            if suffix is None:
                raise refuse(path, f"unexpected tensor {root}.{key} in a peft/diffusers LoRA")
            layers.setdefault(key.removesuffix(suffix), {})[suffix] = tensor
        for layer, parts in layers.items():
            if len(parts) != 2:
                raise refuse(path, f"layer {root}.{layer} lacks its lora_A or lora_B weight (incomplete file?)")
            down = parts[PEFT_DOWN]
            alpha = _alpha_of(path, f"{root}.{layer}.alpha", alphas.get(layer))
            scale = alpha / rank_of(down) if alpha is not None else _peft_scale(config, component, layer,
                                                                                rank_of(down))
            factors.append(Factors(component, f"{root}.{layer}", down, parts[PEFT_UP], scale))
    return factors


def parse_factors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> list[Factors]:
    """The file's layers as :class:`Factors`, or an :class:`AddonLoadError` saying what the file is instead."""
    keys = list(tensors)
    _refuse_foreign_formats(path, keys)
    if any(_kohya_component(k) for k in keys):
        return _kohya_factors(path, tensors)
    if any((k.partition(".")[0] in COMPONENT_LABELS or k.partition(".")[0] in _PEFT_ROOTS) and "lora" in k
           for k in keys):
        return _peft_factors(path, tensors, metadata)
    raise _not_a_lora(path, keys)

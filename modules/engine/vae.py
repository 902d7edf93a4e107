"""External VAE files (A1111's ``models/VAE``): reading, checking and swapping them into a pipeline.

A VAE may come as an A1111-style single file (``.safetensors``, or a weights-only ``.pt``/``.ckpt``/
``.bin`` pickle) with the original LDM tensor names, bare or under ``first_stage_model.``, or with
diffusers' names; or as a diffusers folder (``config.json`` + weights). Every form is normalised to
diffusers' names by diffusers' own converter, checked to fill the model exactly, and loaded against
a config written from the model's architecture and the file's shapes, so nothing here touches the
network.

Every refusal is an :class:`AddonLoadError` naming the file, so the caller keeps the VAE it has.
"""

from __future__ import annotations

import enum
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.loaders.single_file_utils import SingleFileComponentError, convert_ldm_vae_checkpoint
from safetensors import SafetensorError
from safetensors.torch import load_file

from modules.engine.checkpoint_files import (
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    TensorIndex,
    index_of_state_dict,
    load_pickle_state_dict,
    read_safetensors_index,
)
from modules.engine.config_folders import SHIPPED_CONFIGS
from modules.engine.devices import DeviceInfo
from modules.engine.model_detect import VAE, ModelArch, VaeDims, infer_vae
from modules.errors import AddonLoadError, ModelLoadError

log = logging.getLogger(__name__)

KIND = "VAE"
LATENT_CHANNELS = 4  # the Stable Diffusion UNet families' latent space (the flow families: their FamilyInfo)
LEVELS = 4  # four resolution levels: latents are 1/8 of the image, as the samplers assume

_LDM_MARKER = "encoder.down.0.block.0.conv1.weight"
_DIFFUSERS_MARKER = "encoder.down_blocks.0.resnets.0.conv1.weight"
_PREFIXES = (VAE, "vae.")  # whole checkpoints, and some diffusers-era exports
# The parts of an AutoencoderKL; anything else (the GAN loss, EMA bookkeeping that fine-tunes carry,
# a whole checkpoint's UNet) is not the VAE's and is left out.
_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")
# Names the mid-block attention had in diffusers before 0.14; saved VAEs still carry them.
_OLD_ATTENTION_NAMES = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}
_FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                   "diffusion_pytorch_model.bin")
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError,
                SafetensorError, SingleFileComponentError)


class VaeNaming(enum.Enum):
    """Which tensor names a VAE file uses."""

    LDM = "ldm"  # the original Stable Diffusion code's names, as A1111's VAE files have them
    DIFFUSERS = "diffusers"


class _Refusal(ValueError):
    """Why a file is not a usable VAE; turned into an AddonLoadError naming the file."""


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        read_safetensors_index(path)  # refuses empty, LFS-pointer and truncated files before reading
        return load_file(str(path))
    if suffix in PICKLE_SUFFIXES:
        return load_pickle_state_dict(path)  # weights only: never runs code from the file
    raise _Refusal(f"unsupported file type {path.suffix!r} (expected .safetensors, .pt, .ckpt or .bin)")


def _read_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and config of a diffusers VAE folder (or of a pipeline folder's ``vae/``)."""
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise _Refusal(f"not a diffusers VAE folder: no readable config.json ({exc.__class__.__name__})") from exc
    if not isinstance(config, dict) or config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise _Refusal(f"the folder holds a {found}, not an AutoencoderKL")
    weights = next((folder / name for name in _FOLDER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise _Refusal(f"the folder has no weights file ({' or '.join(_FOLDER_WEIGHTS)})")
    return _read_tensors(weights), config


def _vae_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The VAE's own tensors, with any checkpoint prefix removed."""
    prefix = next((p for p in _PREFIXES if any(k.startswith(p + "encoder.") for k in state)), "")
    wanted = tuple(prefix + part for part in _PARTS)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(wanted)}


def _renamed_old_attention(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if ".mid_block.attentions." in key:
            for old, new in _OLD_ATTENTION_NAMES.items():
                key = key.replace(old, new)
        renamed[key] = tensor
    return renamed


def normalise_vae_state(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], VaeNaming]:
    """The VAE's tensors and their naming: LDM names under ``first_stage_model.`` (the layout diffusers'
    converter reads), or current diffusers names (older attention names renamed)."""
    tensors = _vae_tensors(state)
    if _LDM_MARKER in tensors:
        return {VAE + k: v for k, v in tensors.items()}, VaeNaming.LDM
    if _DIFFUSERS_MARKER in tensors:
        return _renamed_old_attention(tensors), VaeNaming.DIFFUSERS
    raise _Refusal("no VAE encoder/decoder tensors found (is this a LoRA, an embedding or a checkpoint "
                   "without a VAE?)")


def _numbered(index: TensorIndex, prefix: str) -> int:
    """How many distinct N there are in keys ``prefix + 'N.'...``."""
    return len({k[len(prefix):].split(".", 1)[0] for k in index.shapes if k.startswith(prefix)})


def _diffusers_dims(index: TensorIndex) -> VaeDims:
    levels = _numbered(index, "encoder.down_blocks.")
    channels = []
    for i in range(levels):
        shape = index.shape(f"encoder.down_blocks.{i}.resnets.0.conv1.weight")
        if shape is None:
            raise _Refusal(f"missing tensor encoder.down_blocks.{i}.resnets.0.conv1.weight")
        channels.append(shape[0])
    conv_out = index.shape("encoder.conv_out.weight")
    if conv_out is None:
        raise _Refusal("missing tensor encoder.conv_out.weight")
    return VaeDims(block_out_channels=tuple(channels), latent_channels=conv_out[0] // 2,
                   layers_per_block=_numbered(index, "encoder.down_blocks.0.resnets."))


def vae_dims(state: Mapping[str, torch.Tensor], naming: VaeNaming, arch: ModelArch) -> VaeDims:
    """The VAE's dimensions, refused unless such a VAE can serve a model of ``arch``."""
    index = index_of_state_dict(state)
    prefix = VAE if naming is VaeNaming.LDM else ""
    dims = infer_vae(index) if naming is VaeNaming.LDM else _diffusers_dims(index)
    conv_in = index.shape(prefix + "encoder.conv_in.weight")
    if conv_in is None or len(conv_in) != 4 or conv_in[1] != 3:
        raise _Refusal(f"the encoder does not take RGB images (encoder.conv_in has shape {conv_in})")
    if arch is ModelArch.FLUX2_KLEIN:  # its VAE is another class (patchified, batch-normalised latents)
        raise _Refusal(f"{arch.label} decodes with its own VAE only; choose Automatic or None for it")
    expected = arch.family.latent_channels
    if dims.latent_channels != expected:
        raise _Refusal(f"this VAE has {dims.latent_channels} latent channels; {arch.label} models use "
                       f"{expected} (it belongs to another model family)")
    if len(dims.block_out_channels) != LEVELS:
        raise _Refusal(f"this VAE scales images by {2 ** (len(dims.block_out_channels) - 1)}, "
                       f"not by {2 ** (LEVELS - 1)} as {arch.label} models do")
    return dims


def vae_config(arch: ModelArch, dims: VaeDims, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The diffusers config for these shapes. The latent scale belongs to the model (as in A1111), so it
    comes from ``arch`` even when a folder's config says otherwise; ``force_upcast`` from the folder
    when there is one (an fp16-safe VAE says so there), else from the architecture."""
    shipped = json.loads((SHIPPED_CONFIGS / arch.value / "vae" / "config.json").read_text(encoding="utf-8"))
    config = dict(base) if base is not None else shipped
    config.update(
        _class_name="AutoencoderKL",
        block_out_channels=list(dims.block_out_channels),
        layers_per_block=dims.layers_per_block,
        latent_channels=dims.latent_channels,
        down_block_types=["DownEncoderBlock2D"] * len(dims.block_out_channels),
        up_block_types=["UpDecoderBlock2D"] * len(dims.block_out_channels),
        scaling_factor=shipped["scaling_factor"],
    )
    return config


def _config_folder(config: Mapping[str, Any], arch: ModelArch, cache_root: Path) -> Path:
    """A folder holding ``config.json``, written once per distinct config and reused."""
    text = json.dumps(config, indent=2, sort_keys=True)
    target = cache_root / f"vae-{arch.value}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if (target / "config.json").is_file():
        return target
    target.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=".config-", dir=target)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(staging, target / "config.json")  # atomic: a racing writer writes the same bytes
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return target


def _diffusers_state(state: dict[str, torch.Tensor], naming: VaeNaming,
                     config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict in diffusers' names (by diffusers' own converter), checked to fill the model exactly.

    Checked here because diffusers cannot report it: a weight the file lacks stays on the meta device
    and the loader then fails to move it with a message that names no weight.
    """
    converted = convert_ldm_vae_checkpoint(state, dict(config)) if naming is VaeNaming.LDM else state
    with torch.device("meta"):  # only the names are wanted; nothing is allocated
        expected = set(AutoencoderKL.from_config(dict(config)).state_dict())
    missing, unexpected = sorted(expected - converted.keys()), sorted(converted.keys() - expected)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise _Refusal(f"the file has no weights for {missing[0]}{more}")
    if unexpected:
        raise _Refusal(f"the tensor {unexpected[0]} has no place in a VAE of this shape")
    return converted


def _load(path: Path, arch: ModelArch, device: DeviceInfo, config_cache: Path) -> AutoencoderKL:
    if path.is_dir():
        raw, base = _read_folder(path)
    else:
        raw, base = _read_tensors(path), None
    state, naming = normalise_vae_state(raw)
    config = vae_config(arch, vae_dims(state, naming, arch), base)
    converted = _diffusers_state(state, naming, config)
    folder = _config_folder(config, arch, config_cache)
    # The names now match the model's exactly, so from_single_file loads them as they are; it is used
    # for its offline, meta-device loading against a local config.
    vae = AutoencoderKL.from_single_file(converted, config=str(folder), local_files_only=True,
                                         low_cpu_mem_usage=True)
    if vae.dtype != device.vae:  # the VAE's own precision: --no-half-vae holds for external VAEs too
        vae.to(dtype=device.vae)
    return vae  # on the CPU: the pipeline's placement puts it where its scheme says


def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    if isinstance(exc, _Refusal):
        return text
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__


def load_vae(path: Path, arch: ModelArch, device: DeviceInfo, config_cache: Path) -> AutoencoderKL:
    """An external VAE for a model of ``arch``, in RAM, in the VAE precision ``device`` names.

    Accepts LDM-named single files (bare or under ``first_stage_model.``), diffusers-named single
    files and diffusers folders; see the module docstring. Raises :class:`AddonLoadError` naming the
    file when it is unreadable, truncated, a placeholder, not a VAE, or a VAE of another model family.
    """
    path = Path(path)
    try:
        vae = _load(path, arch, device, config_cache)
    except ModelLoadError as exc:  # the checkpoint readers' refusals: empty, LFS pointer, truncated, unsafe
        raise AddonLoadError(KIND, str(path), exc.reason) from exc
    except _LOAD_ERRORS as exc:  # includes _Refusal; diffusers reports shape mismatches as ValueError
        raise AddonLoadError(KIND, str(path), _reason(exc)) from exc
    log.info("Loaded VAE %s for %s (%s)", path.name, arch.label, str(device.vae).removeprefix("torch."))
    return vae


def _scale_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def swap_vae(pipe: DiffusionPipeline, vae: AutoencoderKL) -> AutoencoderKL:
    """Put ``vae`` into ``pipe`` (its config and image processors follow); return the VAE it replaces.

    Nothing is moved: the caller places the new VAE under the pipeline's memory scheme
    (:func:`modules.engine.placement.place_component`). Its dtype is kept, since a VAE may rightly run
    in float32 under a half-precision UNet.
    """
    old: AutoencoderKL = pipe.vae
    pipe.vae = vae  # DiffusionPipeline records the new component in its config as well
    factor = _scale_factor(vae)
    if getattr(pipe, "vae_scale_factor", factor) != factor:
        pipe.vae_scale_factor = factor
        for processor in vars(pipe).values():
            if isinstance(processor, VaeImageProcessor):
                processor.register_to_config(vae_scale_factor=factor)
    return old

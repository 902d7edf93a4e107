"""Telling what a checkpoint is from its tensor names and shapes.

diffusers calls every small or unusual checkpoint "v1", so Atelier decides the architecture itself
(SD1.x, SD1.x inpainting, SD2.x eps / v-prediction, SDXL base, SDXL refiner) and reads the
dimensions that vary between checkpoints (channels, depths, text encoder sizes) off the shapes, so a
config folder can be written that matches the weights exactly.

SD 2.x 512 (eps) and 768 (v-prediction) checkpoints have the same shapes; what they predict is read
from a marker: A1111's ``.yaml`` beside the file (``model.params.parameterization: "v"``; no key
means eps), else the safetensors header (SAI ModelSpec ``modelspec.prediction_type`` /
``modelspec.architecture``), else v (the 768 models are the common SD 2.x).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from modules.engine.checkpoint_files import TensorIndex
from modules.model_families import FamilyInfo, family_info

UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_CLIP = "cond_stage_model.transformer.text_model."
SD2_OPENCLIP = "cond_stage_model.model."
SDXL_CLIP = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP = "conditioner.embedders.1.model."
REFINER_OPENCLIP = "conditioner.embedders.0.model."


class ModelArch(enum.Enum):
    """Architectures (families) Atelier loads; values name the shipped config folders and key
    :data:`modules.model_families.FAMILIES`."""

    SD1 = "sd15"
    SD1_INPAINT = "sd15_inpaint"
    SD2 = "sd2"
    SD2_V = "sd2_v"
    SDXL = "sdxl"
    SDXL_REFINER = "sdxl_refiner"
    SD35_LARGE = "sd35"
    SD35_MEDIUM = "sd35_medium"
    FLUX_DEV = "flux_dev"
    FLUX_SCHNELL = "flux_schnell"
    FLUX_FILL = "flux_fill"
    FLUX2_KLEIN = "flux2_klein"
    ZIMAGE = "zimage"

    @property
    def is_sdxl(self) -> bool:
        return self in (ModelArch.SDXL, ModelArch.SDXL_REFINER)

    @property
    def family(self) -> FamilyInfo:
        return family_info(self.value)

    @property
    def is_flow(self) -> bool:
        return self.family.is_flow

    @property
    def label(self) -> str:
        return self.family.label


@dataclass(frozen=True)
class UNetDims:
    in_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    has_attention: tuple[bool, ...]
    transformer_depth: tuple[int, ...]
    cross_attention_dim: int
    linear_projection: bool
    adm_in_channels: int | None


@dataclass(frozen=True)
class VaeDims:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int


@dataclass(frozen=True)
class TextEncoderDims:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    max_positions: int
    projection_dim: int | None


@dataclass(frozen=True)
class CheckpointDims:
    """Everything about a checkpoint's shapes that its config files must agree with."""

    arch: ModelArch
    unet: UNetDims
    vae: VaeDims
    text_encoder: TextEncoderDims | None  # CLIP ViT-L style (SD1, SDXL base) or OpenCLIP (SD2)
    text_encoder_2: TextEncoderDims | None  # OpenCLIP bigG (SDXL base and refiner)


class UnknownArchitecture(ValueError):
    """The tensors do not look like a Stable Diffusion checkpoint Atelier knows."""


SD2_ARCHS = (ModelArch.SD2, ModelArch.SD2_V)
_V_NAMES = frozenset({"v", "v_prediction", "v-prediction"})
_EPS_NAMES = frozenset({"eps", "epsilon"})
_YAML_KEY = ("model", "params", "parameterization")
_MAX_YAML_BYTES = 1 << 20  # A1111's configs are ~2 KB; a huge file is not one


def sd2_arch_from_metadata(metadata: Mapping[str, str]) -> ModelArch | None:
    """SD 2.x eps or v from SAI ModelSpec header keys (kohya's trainers write both); None: not said."""
    prediction = metadata.get("modelspec.prediction_type", "").strip().lower()
    if prediction in _V_NAMES:
        return ModelArch.SD2_V
    if prediction in _EPS_NAMES:
        return ModelArch.SD2
    architecture = metadata.get("modelspec.architecture", "").strip().lower()
    if architecture.startswith("stable-diffusion-v2-768-v"):
        return ModelArch.SD2_V
    if architecture.startswith("stable-diffusion-v2-512"):
        return ModelArch.SD2
    return None


def yaml_parameterization(path: Path) -> str | None:
    """``model.params.parameterization`` of an A1111/LDM config (``"eps"`` when the config has a
    ``model`` section without the key, as LDM's default); None when there is no such config.

    A line-based reader for this one key, so the engine needs no YAML library: LDM configs are
    plain block mappings (two-space indents, ``key: value``), which is all it understands.
    """
    try:
        if path.stat().st_size > _MAX_YAML_BYTES:
            return None
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    stack: list[tuple[int, str]] = []  # (indent, key) of the open mappings above the current line
    has_model = False
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip()
        content = line.lstrip(" ")
        if not content or content.startswith(("#", "-")) or ":" not in content:
            continue
        indent = len(line) - len(content)
        key, _, value = content.partition(":")
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key.strip().strip("\"'")))
        path_keys = tuple(k for _, k in stack)
        has_model = has_model or path_keys == _YAML_KEY[:1]
        if path_keys == _YAML_KEY:
            return value.strip().strip("\"'").lower() or None
    return "eps" if has_model else None


def sidecar_arch(path: Path, arch: ModelArch) -> ModelArch:
    """``arch``, or the SD 2.x kind that A1111's ``.yaml`` beside the checkpoint names (it wins over
    the header: it is what the user put there for A1111 to read)."""
    if arch not in SD2_ARCHS:
        return arch
    parameterization = yaml_parameterization(path.with_suffix(".yaml"))
    if parameterization in _V_NAMES:
        return ModelArch.SD2_V
    if parameterization in _EPS_NAMES:
        return ModelArch.SD2
    return arch


def detect_arch(index: TensorIndex) -> ModelArch:
    conv_in = index.shape(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        raise UnknownArchitecture("no Stable Diffusion UNet found (missing model.diffusion_model.* tensors)")
    in_channels = conv_in[1]
    if index.has_prefix(SDXL_OPENCLIP):
        arch = ModelArch.SDXL
    elif index.has_prefix(REFINER_OPENCLIP):
        arch = ModelArch.SDXL_REFINER
    elif index.has_prefix(SD2_OPENCLIP):
        arch = sd2_arch_from_metadata(index.metadata) or ModelArch.SD2_V
    elif index.has_prefix(SD1_CLIP):
        arch = ModelArch.SD1_INPAINT if in_channels == 9 else ModelArch.SD1
    else:
        raise UnknownArchitecture("no known text encoder found (neither CLIP nor OpenCLIP tensors)")
    if in_channels not in (4, 9) or (in_channels == 9 and arch is not ModelArch.SD1_INPAINT):
        raise UnknownArchitecture(f"{arch.label} with {in_channels} UNet input channels is not supported")
    return arch


def _numbered(index: TensorIndex, prefix: str) -> list[int]:
    """Sorted distinct N for keys ``prefix + 'N.'...``."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in index.shapes if (m := pattern.match(k))})


def _require(index: TensorIndex, key: str) -> tuple[int, ...]:
    shape = index.shape(key)
    if shape is None:
        raise UnknownArchitecture(f"missing tensor {key}")
    return shape


def infer_unet(index: TensorIndex) -> UNetDims:
    levels: list[list[int]] = [[]]  # per level, the input block ids holding a resnet
    for block in _numbered(index, UNET + "input_blocks.")[1:]:
        if UNET + f"input_blocks.{block}.0.op.weight" in index:
            levels.append([])
        else:
            levels[-1].append(block)
    channels, attention, depth = [], [], []
    for blocks in levels:
        if not blocks:
            raise UnknownArchitecture("malformed UNet: a level without resnet blocks")
        channels.append(_require(index, UNET + f"input_blocks.{blocks[0]}.0.in_layers.2.weight")[0])
        depths = _numbered(index, UNET + f"input_blocks.{blocks[0]}.1.transformer_blocks.")
        attention.append(bool(depths))
        depth.append(len(depths) or 1)
    attn_keys = sorted(k for k in index.shapes if k.startswith(UNET) and k.endswith("attn2.to_k.weight"))
    if not attn_keys:
        raise UnknownArchitecture("the UNet has no cross-attention layers")
    proj_in = next(k for k in sorted(index.shapes) if k.startswith(UNET) and k.endswith(".proj_in.weight"))
    adm = index.shape(UNET + "label_emb.0.0.weight")
    return UNetDims(
        in_channels=_require(index, UNET + "input_blocks.0.0.weight")[1],
        block_out_channels=tuple(channels),
        layers_per_block=len(levels[0]),
        has_attention=tuple(attention),
        transformer_depth=tuple(depth),
        cross_attention_dim=_require(index, attn_keys[0])[1],
        linear_projection=len(_require(index, proj_in)) == 2,
        adm_in_channels=adm[1] if adm else None,
    )


def infer_vae(index: TensorIndex) -> VaeDims:
    levels = _numbered(index, VAE + "encoder.down.")
    if not levels:
        raise UnknownArchitecture("no VAE found (missing first_stage_model.* tensors)")
    channels = tuple(_require(index, VAE + f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels)
    return VaeDims(
        block_out_channels=channels,
        layers_per_block=len(_numbered(index, VAE + "encoder.down.0.block.")),
        latent_channels=_require(index, VAE + "encoder.conv_out.weight")[0] // 2,
    )


def infer_clip(index: TensorIndex, prefix: str) -> TextEncoderDims:
    vocab, hidden = _require(index, prefix + "embeddings.token_embedding.weight")
    return TextEncoderDims(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=_require(index, prefix + "encoder.layers.0.mlp.fc1.weight")[0],
        num_layers=len(_numbered(index, prefix + "encoder.layers.")),
        max_positions=_require(index, prefix + "embeddings.position_embedding.weight")[0],
        projection_dim=None,
    )


def infer_open_clip(index: TensorIndex, prefix: str, drop_last_layer: bool) -> TextEncoderDims:
    vocab, hidden = _require(index, prefix + "token_embedding.weight")
    projection = index.shape(prefix + "text_projection")
    layers = len(_numbered(index, prefix + "transformer.resblocks."))
    return TextEncoderDims(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=_require(index, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        # SD2 uses the penultimate layer; its diffusers encoder is built without the last one.
        num_layers=layers - 1 if drop_last_layer else layers,
        max_positions=_require(index, prefix + "positional_embedding")[0],
        projection_dim=projection[1] if projection else None,
    )


def infer_dims(index: TensorIndex) -> CheckpointDims:
    """Architecture and dimensions of an LDM-layout (A1111-style) checkpoint."""
    arch = detect_arch(index)
    te1 = te2 = None
    if arch in (ModelArch.SD1, ModelArch.SD1_INPAINT):
        te1 = infer_clip(index, SD1_CLIP)
    elif arch in SD2_ARCHS:
        te1 = infer_open_clip(index, SD2_OPENCLIP, drop_last_layer=True)
    elif arch is ModelArch.SDXL:
        te1 = infer_clip(index, SDXL_CLIP)
        te2 = infer_open_clip(index, SDXL_OPENCLIP, drop_last_layer=False)
    else:
        te2 = infer_open_clip(index, REFINER_OPENCLIP, drop_last_layer=False)
    return CheckpointDims(arch=arch, unet=infer_unet(index), vae=infer_vae(index), text_encoder=te1, text_encoder_2=te2)

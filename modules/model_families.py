"""What each model family is, as the faces and the front need to know it (no torch here).

A family is a kind of checkpoint: SD 1.x, SDXL, FLUX.1 dev, ... Its key is the value of the
engine's ``ModelArch``. This table says how a family denoises (eps / v prediction UNets, or
velocity-predicting flow transformers), what its defaults are (Forge's, which A1111-API clients are
written against), which request fields it can honour, and the sizes it can make. The engine's
family modules (``modules.engine.families``) say how to detect, load and run it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


class DenoiserKind(enum.Enum):
    EPS = "eps"  # UNet predicting the noise (Karras preconditioning)
    V = "v"  # UNet predicting v (Karras preconditioning)
    FLOW = "flow"  # transformer predicting the velocity noise - x0 (rectified flow, sigma = t)


class Feature(enum.Enum):
    """What a family can honour beyond prompt, seed, size, steps and sampler."""

    NEGATIVE_PROMPT = "negative prompt"  # real classifier-free guidance with a negative prompt
    PROMPT_EDITING = "prompt editing"  # [from:to:when] and [a|b]
    AND_PROMPTS = "AND"  # composable prompts
    EMPHASIS = "emphasis"  # (word:1.2)
    CLIP_SKIP = "clip skip"
    TEXTUAL_INVERSION = "textual inversion"
    DISTILLED_CFG = "distilled CFG"  # guidance distilled into the network (FLUX.1 dev)
    SHIFT = "shift"  # the flow shift of the sigma schedule
    REFINER = "refiner"
    INPAINT_CHANNELS = "inpainting model"  # the network itself sees the mask (SD 1.x inpainting, FLUX.1 Fill)


_UNET_FEATURES = frozenset({Feature.NEGATIVE_PROMPT, Feature.PROMPT_EDITING, Feature.AND_PROMPTS, Feature.EMPHASIS,
                            Feature.CLIP_SKIP, Feature.TEXTUAL_INVERSION, Feature.REFINER})
_FLOW_FEATURES = frozenset({Feature.NEGATIVE_PROMPT, Feature.PROMPT_EDITING, Feature.AND_PROMPTS, Feature.EMPHASIS,
                            Feature.SHIFT})


@dataclass(frozen=True)
class FamilyDefaults:
    """What a new job on this family starts from (Forge's presets; the UI and the API use them)."""

    sampler: str
    schedule: str  # a ScheduleType value
    steps: int
    cfg_scale: float
    width: int
    height: int
    distilled_cfg_scale: float | None = None  # only families with Feature.DISTILLED_CFG
    shift: float | None = None  # None: the family's own rule (a fixed value or from the image size)


@dataclass(frozen=True)
class FamilyInfo:
    key: str  # ModelArch value
    label: str
    kind: DenoiserKind
    defaults: FamilyDefaults
    features: frozenset[Feature]
    latent_channels: int = 4
    size_multiple: int = 8  # width and height must be multiples of this
    group: str = ""  # the family as Forge's UI presets name it ("sd", "xl", "flux", ...)

    @property
    def is_flow(self) -> bool:
        return self.kind is DenoiserKind.FLOW

    def supports(self, feature: Feature) -> bool:
        return feature in self.features


_SD = FamilyDefaults(sampler="DPM++ 2M", schedule="Automatic", steps=20, cfg_scale=7.0, width=512, height=512)
_XL = FamilyDefaults(sampler="DPM++ 2M", schedule="Automatic", steps=20, cfg_scale=7.0, width=1024, height=1024)


def _info(key: str, label: str, kind: DenoiserKind, defaults: FamilyDefaults, features: frozenset[Feature],
          **kwargs: object) -> tuple[str, FamilyInfo]:
    return key, FamilyInfo(key=key, label=label, kind=kind, defaults=defaults, features=features, **kwargs)  # type: ignore[arg-type]


FAMILIES: Mapping[str, FamilyInfo] = MappingProxyType(dict([
    _info("sd15", "SD 1.x", DenoiserKind.EPS, _SD, _UNET_FEATURES - {Feature.REFINER}, group="sd"),
    _info("sd15_inpaint", "SD 1.x inpainting", DenoiserKind.EPS, _SD,
          (_UNET_FEATURES - {Feature.REFINER}) | {Feature.INPAINT_CHANNELS}, group="sd"),
    _info("sd2", "SD 2.x", DenoiserKind.EPS, _SD, _UNET_FEATURES - {Feature.REFINER}, group="sd"),
    _info("sd2_v", "SD 2.x (v-prediction)", DenoiserKind.V, FamilyDefaults(
        sampler="DPM++ 2M", schedule="Automatic", steps=20, cfg_scale=7.0, width=768, height=768),
        _UNET_FEATURES - {Feature.REFINER}, group="sd"),
    _info("sdxl", "SDXL", DenoiserKind.EPS, _XL, _UNET_FEATURES, group="xl"),
    _info("sdxl_refiner", "SDXL refiner", DenoiserKind.EPS, _XL, _UNET_FEATURES, group="xl"),
    _info("sd35", "SD 3.5 Large", DenoiserKind.FLOW, FamilyDefaults(
        sampler="Euler", schedule="Simple", steps=28, cfg_scale=3.5, width=1024, height=1024, shift=3.0),
        _FLOW_FEATURES, latent_channels=16, size_multiple=16, group="sd3"),
    _info("sd35_medium", "SD 3.5 Medium", DenoiserKind.FLOW, FamilyDefaults(
        sampler="Euler", schedule="Simple", steps=40, cfg_scale=4.5, width=1024, height=1024, shift=3.0),
        _FLOW_FEATURES, latent_channels=16, size_multiple=16, group="sd3"),
    _info("flux_dev", "FLUX.1 dev", DenoiserKind.FLOW, FamilyDefaults(
        sampler="Euler", schedule="Simple", steps=20, cfg_scale=1.0, width=1024, height=1024,
        distilled_cfg_scale=3.5), _FLOW_FEATURES | {Feature.DISTILLED_CFG}, latent_channels=16, size_multiple=16,
        group="flux"),
    _info("flux_schnell", "FLUX.1 schnell", DenoiserKind.FLOW, FamilyDefaults(
        sampler="Euler", schedule="Simple", steps=4, cfg_scale=1.0, width=1024, height=1024),
        _FLOW_FEATURES, latent_channels=16, size_multiple=16, group="flux"),
    _info("flux_fill", "FLUX.1 Fill", DenoiserKind.FLOW, FamilyDefaults(
        sampler="Euler", schedule="Simple", steps=20, cfg_scale=1.0, width=1024, height=1024,
        distilled_cfg_scale=30.0), _FLOW_FEATURES | {Feature.DISTILLED_CFG, Feature.INPAINT_CHANNELS},
        latent_channels=16, size_multiple=16, group="flux"),
    # The distilled klein models (BFL's example: 4 steps, guidance 1, i.e. no CFG); the "base"
    # checkpoints are the same architecture and want ~50 steps at CFG 4 (Flux2KleinPipeline's defaults).
    _info("flux2_klein", "FLUX.2 klein", DenoiserKind.FLOW, FamilyDefaults(
        sampler="Euler", schedule="Simple", steps=4, cfg_scale=1.0, width=1024, height=1024),
        _FLOW_FEATURES, latent_channels=128, size_multiple=16, group="flux2"),
    _info("zimage", "Z-Image", DenoiserKind.FLOW, FamilyDefaults(
        sampler="Euler", schedule="Simple", steps=9, cfg_scale=1.0, width=1024, height=1024, shift=3.0),
        _FLOW_FEATURES, latent_channels=16, size_multiple=16, group="zimage"),
]))


def family_info(key: str) -> FamilyInfo:
    """The family of a ModelArch value; KeyError for one Atelier does not know."""
    return FAMILIES[key]

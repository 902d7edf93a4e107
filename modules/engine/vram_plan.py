"""Predicting a job's peak device memory before it starts, for each memory mode.

The peak is the largest, over the job's phases (text encoding, the init image's VAE encode,
sampling, VAE decode, and hires fix's encode, sampling and decode at their sizes), of the weights
the memory mode keeps on the device during that phase plus the phase's activations:

- full: every model stays on the device.
- medvram (model-level offload, :mod:`modules.engine.placement`): the model running, and what
  accelerate's hooks leave beside it: a hook sends back only the model *before* its own in the
  pipeline's order, so both text encoders can be on the device at once, and once the VAE has run
  in a job (an init image, hires fix's first pass) it stays through the sampling that follows.
  Every model goes back to RAM after each job.
- lowvram (sequential offload): only the largest layer of the model running.

Weights are read exactly from the loaded pipeline (:mod:`modules.engine.vram_weights`); activations
come from the architecture (:mod:`modules.engine.vram_activations`). On CUDA a fixed allowance is
added for what the allocator does not count: the CUDA context and the cuBLAS/cuDNN workspaces.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from modules.engine import vram_activations as act
from modules.engine.devices import GIB, MemoryMode
from modules.engine.latents import LATENT_SCALE, TILED_DECODE_ABOVE
from modules.engine.loaded_model import LoadedModel
from modules.engine.vram_weights import DENOISERS, TEXT_ENCODERS, VAE, PipelineWeights, pipeline_weights

# The CUDA context (about 300-500 MiB, by card and driver) and cuBLAS/cuDNN workspaces: memory the
# process holds on the card that torch's allocator statistics do not show.
CUDA_OVERHEAD_BYTES = 448 * 1024**2
PLANNED_MODES = (MemoryMode.FULL, MemoryMode.MEDVRAM, MemoryMode.LOWVRAM)


class Phase(enum.Enum):
    TEXT = "text encoding"
    ENCODE = "VAE encode"
    SAMPLING = "sampling"
    DECODE = "VAE decode"
    HIRES_ENCODE = "hires fix encode"
    HIRES_SAMPLING = "hires fix sampling"
    HIRES_DECODE = "hires fix decode"


_VAE_PHASES = frozenset({Phase.ENCODE, Phase.DECODE, Phase.HIRES_ENCODE, Phase.HIRES_DECODE})
_UNET_PHASES = frozenset({Phase.SAMPLING, Phase.HIRES_SAMPLING})


@dataclass(frozen=True)
class HiresShape:
    """Hires fix's second pass: its size, and what happens to the first pass's images."""

    final_size: tuple[int, int]  # (width, height) the second pass samples and decodes at
    upscale_size: tuple[int, int]  # (width, height) an image upscaler's pixels are encoded at
    image_upscaler: bool = False  # the first pass is decoded, resized as pixels and encoded again
    save_first_pass: bool = False  # the first pass is decoded to be saved


@dataclass(frozen=True)
class JobShape:
    """The sizes of one batch of a job."""

    width: int
    height: int
    batch: int = 1
    hires: HiresShape | None = None
    init_image: bool = False  # img2img, inpainting: one init image is VAE-encoded first
    guidance_groups: int = 2  # images per UNet call per picture: the prompt(s) and the negative
    prompt_chunks: int = 1  # 75-token chunks per prompt


@dataclass(frozen=True)
class ModelProfile:
    """What of a loaded model decides its memory: weights, architectures, dtypes, device."""

    weights: PipelineWeights
    unet: act.UnetShape | None  # None: a flow family's transformer (``transformer``) denoises
    vae: act.VaeShape
    text: tuple[act.TextShape, ...]
    unet_dtype_bytes: int
    vae_dtype_bytes: int  # the VAE runs in its own dtype (float32 for good after a NaN in half)
    text_dtype_bytes: int
    device_type: str
    is_sdxl: bool
    transformer: act.TransformerShape | None = None


@dataclass(frozen=True)
class PhaseCost:
    """One phase of a job in one memory mode."""

    phase: Phase
    size: tuple[int, int]  # (width, height) in pixels
    weights_bytes: int
    activation_bytes: int
    grows_with_batch: bool  # the activations are per picture of the batch (not one init image, not text)

    @property
    def total(self) -> int:
        return self.weights_bytes + self.activation_bytes


@dataclass(frozen=True)
class MemoryPlan:
    """A job's predicted memory in one mode: per phase, its peak, and the CUDA overhead."""

    mode: MemoryMode
    phases: tuple[PhaseCost, ...]
    overhead_bytes: int  # CUDA context and workspaces (0 off CUDA)

    @property
    def peak(self) -> PhaseCost:
        return max(self.phases, key=lambda p: p.total)

    @property
    def peak_bytes(self) -> int:
        """What torch's allocator will hold at the peak: weights plus activations."""
        return self.peak.total

    @property
    def device_bytes(self) -> int:
        """What the card will show in use at the peak (the CUDA overhead added)."""
        return self.peak_bytes + self.overhead_bytes

    def breakdown(self) -> str:
        peak = self.peak
        text = (f"{self.mode.value}: {size_text(self.device_bytes)} at the {peak.phase.value} "
                f"({peak.size[0]}x{peak.size[1]}): weights {size_text(peak.weights_bytes)} + activations "
                f"{size_text(peak.activation_bytes)}")
        overhead = f" + CUDA context and workspaces {size_text(self.overhead_bytes)}" if self.overhead_bytes else ""
        return text + overhead


@dataclass(frozen=True)
class JobMemoryPlan:
    """A job's predicted memory in every mode the planner knows."""

    shape: JobShape
    device_type: str
    is_sdxl: bool
    plans: tuple[MemoryPlan, ...]

    def for_mode(self, mode: MemoryMode) -> MemoryPlan:
        """The plan of ``mode`` (medvram-sdxl: medvram for SDXL, full otherwise)."""
        wanted = mode.offload_for(self.is_sdxl)
        return next(p for p in self.plans if p.mode is wanted)


def size_text(value: int) -> str:
    """Bytes for people: GiB with two decimals, MiB below one GiB."""
    return f"{value / GIB:.2f} GiB" if value >= GIB else f"{value / 1024**2:.1f} MiB"


def _dtype_bytes(module: torch.nn.Module) -> int:
    return next((p.element_size() for p in module.parameters() if p.is_floating_point()), 4)


def profile_of(model: LoadedModel) -> ModelProfile:
    """Read a loaded model's weights (exactly), configs and dtypes."""
    pipe = model.pipeline
    encoders = [getattr(pipe, name, None) for name in TEXT_ENCODERS]
    encoders = [e for e in encoders if isinstance(e, torch.nn.Module)]
    denoiser = model.denoiser_network
    is_unet = getattr(pipe, "unet", None) is not None
    return ModelProfile(
        weights=pipeline_weights(pipe.components), unet=act.UnetShape.of(denoiser.config) if is_unet else None,
        vae=act.VaeShape.of(pipe.vae.config), text=tuple(act.TextShape.of(e.config) for e in encoders),
        unet_dtype_bytes=_dtype_bytes(denoiser), vae_dtype_bytes=_dtype_bytes(pipe.vae),
        text_dtype_bytes=_dtype_bytes(encoders[0]) if encoders else 4,
        device_type=model.execution_device.type, is_sdxl=model.arch.is_sdxl,
        transformer=None if is_unet else act.TransformerShape.of(denoiser.config))


def _resident(weights: PipelineWeights, mode: MemoryMode, phase: Phase, vae_has_run: bool) -> int:
    """Weight bytes on the device during ``phase`` in ``mode``; ``vae_has_run``: the VAE ran
    earlier in the job (under medvram it then stays until the job ends)."""
    if mode is MemoryMode.FULL:
        return weights.total
    running = TEXT_ENCODERS if phase is Phase.TEXT else (VAE,) if phase in _VAE_PHASES else DENOISERS
    if mode is MemoryMode.LOWVRAM:
        return weights.largest_layer_of(*running)
    left_over = weights.bytes_of(VAE) if vae_has_run and phase not in _VAE_PHASES else 0
    return weights.bytes_of(*running) + left_over


def _tiled(mode: MemoryMode, size: tuple[int, int]) -> bool:
    """As modules.engine.latents decides: tiles for large images and whenever models are offloaded."""
    return mode is not MemoryMode.FULL or max(size) > TILED_DECODE_ABOVE


def _activations(profile: ModelProfile, shape: JobShape, phase: Phase, size: tuple[int, int],
                 mode: MemoryMode) -> tuple[int, bool]:
    """Activation bytes of one phase at ``size``, and whether they grow with the batch size."""
    width, height = size
    latent_h, latent_w = height // LATENT_SCALE, width // LATENT_SCALE
    vae_bytes = profile.vae_dtype_bytes
    if phase is Phase.TEXT:
        worst = max((act.text_elements(t, shape.prompt_chunks) for t in profile.text), default=0)
        return worst * profile.text_dtype_bytes, False
    if phase in _UNET_PHASES:
        tokens = act.TOKENS_PER_CHUNK * shape.prompt_chunks
        images = shape.batch * shape.guidance_groups
        if profile.unet is None and profile.transformer is not None:
            elements = act.transformer_elements(profile.transformer, height, width, act.FLOW_CONTEXT_TOKENS, images)
            return elements * profile.unet_dtype_bytes, True
        return act.unet_elements(profile.unet, latent_h, latent_w, tokens, images) * profile.unet_dtype_bytes, True
    # The VAE's encoder is tiled only when a decode left tiling on: always so when offloading.
    if phase is Phase.ENCODE:  # one init image, expanded to the batch afterwards
        return act.encode_elements(profile.vae, height, width, 1, mode is not MemoryMode.FULL) * vae_bytes, False
    if phase is Phase.HIRES_ENCODE:
        elements = act.encode_elements(profile.vae, height, width, shape.batch, mode is not MemoryMode.FULL)
        return elements * vae_bytes, True
    elements = act.decode_elements(profile.vae, latent_h, latent_w, shape.batch, _tiled(mode, size))
    return elements * vae_bytes, True


def _phases(shape: JobShape) -> list[tuple[Phase, tuple[int, int]]]:
    """The job's phases in order, each with the size it runs at."""
    first = (shape.width, shape.height)
    steps = [(Phase.ENCODE, first)] if shape.init_image else []
    steps += [(Phase.TEXT, first), (Phase.SAMPLING, first)]
    hires = shape.hires
    if hires is None:
        return steps + [(Phase.DECODE, first)]
    if hires.image_upscaler or hires.save_first_pass:
        steps.append((Phase.DECODE, first))
    if hires.image_upscaler:
        steps.append((Phase.HIRES_ENCODE, hires.upscale_size))
    return steps + [(Phase.HIRES_SAMPLING, hires.final_size), (Phase.HIRES_DECODE, hires.final_size)]


def plan_for(profile: ModelProfile, shape: JobShape) -> JobMemoryPlan:
    """The job's predicted memory in full, medvram and lowvram modes."""
    overhead = CUDA_OVERHEAD_BYTES if profile.device_type == "cuda" else 0
    plans = []
    for mode in PLANNED_MODES:
        costs, vae_has_run = [], False
        for phase, size in _phases(shape):
            activation, grows = _activations(profile, shape, phase, size, mode)
            weights = _resident(profile.weights, mode, phase, vae_has_run)
            costs.append(PhaseCost(phase, size, weights, activation, grows))
            vae_has_run = vae_has_run or phase in _VAE_PHASES
        plans.append(MemoryPlan(mode, tuple(costs), overhead))
    return JobMemoryPlan(shape=shape, device_type=profile.device_type, is_sdxl=profile.is_sdxl, plans=tuple(plans))


def plan_job(model: LoadedModel, width: int, height: int, batch: int,
             hires: HiresShape | None = None, *, init_image: bool = False, guidance_groups: int = 2,
             prompt_chunks: int = 1) -> JobMemoryPlan:
    """The predicted peak memory of one batch of ``batch`` images at ``width`` x ``height`` on ``model``."""
    shape = JobShape(width=width, height=height, batch=batch, hires=hires, init_image=init_image,
                     guidance_groups=guidance_groups, prompt_chunks=prompt_chunks)
    return plan_for(profile_of(model), shape)

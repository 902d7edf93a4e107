"""Choosing the compute device, precision, attention and memory mode, and saying why.

CUDA first (fp16 unless told otherwise, bf16 when asked and supported), then Apple's MPS, else the
CPU in fp32 (bf16 when asked). Memory modes follow A1111's flags: ``--medvram`` keeps each model
on the GPU only while it runs (model-level CPU offload), ``--medvram-sdxl`` does so for SDXL only,
``--lowvram`` moves weights layer by layer (sequential offload). With none given on CUDA, the mode
is chosen from the card's memory and logged. ``--text-encoder-cpu`` keeps the flow families' T5 / LLM
text encoders in RAM, in any mode (:func:`modules.engine.placement.keep_on_cpu`). The choice is made
once by the composition root and passed down; nothing probes devices at import time.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, replace

import torch

from modules.errors import ConfigError
from modules.precision import Precision

log = logging.getLogger(__name__)

GIB = 1024**3
# Below these totals an SDXL (about 7 GB in fp16 with its text encoders) or any model does not fit
# with room for activations; A1111 users pick --medvram / --lowvram at about the same sizes.
_AUTO_MEDVRAM_BELOW = 8 * GIB
_AUTO_LOWVRAM_BELOW = 4 * GIB


class MemoryMode(enum.Enum):
    FULL = "full"  # every model on the device
    MEDVRAM = "medvram"  # model-level CPU offload
    MEDVRAM_SDXL = "medvram-sdxl"  # model-level offload for SDXL models only
    LOWVRAM = "lowvram"  # sequential (layer-level) CPU offload

    def offload_for(self, is_sdxl: bool) -> MemoryMode:
        """The mode that applies to a model: medvram-sdxl is full for SD1/SD2."""
        if self is MemoryMode.MEDVRAM_SDXL:
            return MemoryMode.MEDVRAM if is_sdxl else MemoryMode.FULL
        return self


class Attention(enum.Enum):
    SDPA = "sdpa"  # PyTorch scaled-dot-product attention (diffusers' default processor)
    XFORMERS = "xformers"


@dataclass(frozen=True)
class DevicePolicy:
    """What the user asked for (the front converts its command-line flags: ``services.device_flags``)."""

    use_cpu: bool = False
    device_id: int | None = None
    no_half: bool = False
    no_half_vae: bool = False
    precision: Precision = Precision.AUTOCAST
    upcast_sampling: bool = False
    xformers: bool = False
    memory: MemoryMode | None = None  # None: chosen from the device
    text_encoders_on_cpu: bool = False  # the flow families' T5 / LLM encoders run on the CPU


@dataclass(frozen=True)
class DeviceInfo:
    """The device and dtypes models run on, how they use memory, and the reasons."""

    device: torch.device
    dtype: torch.dtype
    reason: str
    vae_dtype: torch.dtype | None = None  # None: as ``dtype``
    memory: MemoryMode = MemoryMode.FULL
    attention: Attention = Attention.SDPA
    # True when the user named the memory mode (a flag): jobs keep it. False: it was chosen from the
    # card's size for loading, and each job's memory plan may pick another.
    memory_forced: bool = False
    # The flow families' big text encoders (T5, LLMs) stay in RAM and run on the CPU; only their
    # embeddings go to the device (a 4-9 GB encoder off an 8-16 GB card).
    text_encoders_on_cpu: bool = False
    # True when the user named the precision (--precision, --no-half): every family keeps it.
    precision_forced: bool = False

    @property
    def is_accelerator(self) -> bool:
        return self.device.type in ("cuda", "mps")

    @property
    def vae(self) -> torch.dtype:
        return self.vae_dtype or self.dtype

    def for_flow_family(self) -> DeviceInfo:
        """The device a flow-matching model runs on: bfloat16 instead of the default float16 on a card
        that has it (their transformers and T5/LLM encoders overflow in fp16; Forge and ComfyUI run
        them in bf16 too), unless the user named the precision."""
        bf16 = self.device.type == "cuda" and torch.cuda.is_bf16_supported()
        if self.precision_forced or self.dtype != torch.float16 or not bf16:
            return self
        return replace(self, dtype=torch.bfloat16, vae_dtype=self.vae_dtype or torch.bfloat16,
                       reason=self.reason.replace("half precision", "bfloat16 (flow-matching model: fp16 "
                                                                     "overflows in it)"))

    def describe(self) -> str:
        name = str(self.dtype).removeprefix("torch.")
        extra = f", VAE {str(self.vae).removeprefix('torch.')}" if self.vae != self.dtype else ""
        mode = f", {self.memory.value}" if self.memory is not MemoryMode.FULL else ""
        mode += ", text encoders on the CPU" if self.text_encoders_on_cpu else ""
        return f"{self.device} ({name}{extra}{mode}): {self.reason}"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def _pick_device(policy: DevicePolicy) -> tuple[torch.device, str]:
    if policy.use_cpu:
        return torch.device("cpu"), "--use-cpu was given"
    if torch.cuda.is_available():
        index = policy.device_id if policy.device_id is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device-id {index}: only {torch.cuda.device_count()} CUDA device(s) present")
        return torch.device("cuda", index), f"CUDA device {torch.cuda.get_device_name(index)}"
    if _mps_available():
        return torch.device("mps"), "Apple MPS is available"
    return torch.device("cpu"), "no CUDA or MPS device found"


def _pick_dtype(policy: DevicePolicy, device: torch.device) -> tuple[torch.dtype, str]:
    if policy.precision is Precision.BF16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("--precision bf16: this GPU does not support bfloat16; use half or full")
        return torch.bfloat16, "bfloat16 (asked for)"
    if policy.no_half or policy.precision is Precision.FULL:
        return torch.float32, "full precision (asked for)"
    if device.type == "cpu":
        return torch.float32, "full precision (CPU: half precision would be slower and less exact)"
    return torch.float16, "half precision"


def _pick_vae_dtype(policy: DevicePolicy, device: torch.device, dtype: torch.dtype) -> torch.dtype | None:
    """The VAE's precision (None: as the models'). Half precision for every family, bf16 where the
    card has it (its range does not overflow where fp16's does); a NaN still falls back to fp32 for
    that VAE. ``--no-half-vae`` forces fp32."""
    if dtype == torch.float32:
        return None
    if policy.no_half_vae:
        return torch.float32
    if device.type == "cuda" and dtype == torch.float16 and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def _pick_memory(policy: DevicePolicy, device: torch.device) -> tuple[MemoryMode, str]:
    if policy.memory not in (None, MemoryMode.FULL) and device.type != "cuda":
        raise ConfigError(f"--{policy.memory.value} moves models between a CUDA GPU and RAM; on {device.type} the "
                          "models already share one memory. Start without it.")
    if policy.memory is not None:
        return policy.memory, f"--{policy.memory.value} was given" if policy.memory is not MemoryMode.FULL else ""
    if device.type != "cuda":
        return MemoryMode.FULL, ""
    total = torch.cuda.get_device_properties(device).total_memory
    if total < _AUTO_LOWVRAM_BELOW:
        return MemoryMode.LOWVRAM, f"lowvram chosen: the GPU has {total / GIB:.1f} GiB"
    if total < _AUTO_MEDVRAM_BELOW:
        return MemoryMode.MEDVRAM_SDXL, f"medvram for SDXL chosen: the GPU has {total / GIB:.1f} GiB"
    return MemoryMode.FULL, f"{total / GIB:.0f} GiB of GPU memory: every model stays on the GPU"


def _pick_attention(policy: DevicePolicy, device: torch.device) -> Attention:
    if not policy.xformers:
        return Attention.SDPA
    if device.type != "cuda":
        raise ConfigError("--xformers needs a CUDA GPU; PyTorch's SDPA attention is used without it")
    try:
        import xformers.ops  # noqa: F401  # optional: installed by webui.sh only with --xformers
    except ImportError as exc:
        raise ConfigError(f"--xformers: xformers is not installed or does not match this torch ({exc}). "
                          "Run ./webui.sh --xformers to install it, or start without the flag.") from exc
    return Attention.XFORMERS


def choose_device(policy: DevicePolicy) -> DeviceInfo:
    """Pick device, dtypes, memory mode and attention from the policy and the hardware present;
    ConfigError for a combination that cannot work here."""
    device, why = _pick_device(policy)
    dtype, precision_why = _pick_dtype(policy, device)
    vae_dtype = _pick_vae_dtype(policy, device, dtype)
    memory, memory_why = _pick_memory(policy, device)
    attention = _pick_attention(policy, device)
    reasons = [why, precision_why] + ([memory_why] if memory_why else [])
    if policy.upcast_sampling:
        reasons.append("sampling math in fp32 (it always is: only the UNet runs in the weights' dtype)")
    info = DeviceInfo(device=device, dtype=dtype, reason="; ".join(reasons), vae_dtype=vae_dtype, memory=memory,
                      attention=attention, memory_forced=policy.memory is not None,
                      text_encoders_on_cpu=policy.text_encoders_on_cpu,
                      precision_forced=policy.no_half or policy.precision is not Precision.AUTOCAST)
    label = "xformers" if attention is Attention.XFORMERS else "PyTorch scaled-dot-product (SDPA)"
    log.info("Device: %s; attention: %s", info.describe(), label)
    return info

"""Choosing the compute device and precision, and saying why.

CUDA first (fp16 unless told otherwise), then Apple's MPS, else the CPU in fp32. The choice is made
once by the composition root and passed down; nothing probes devices at import time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from modules.cmd_args import Precision

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePolicy:
    """What the user asked for on the command line."""

    use_cpu: bool = False
    device_id: int | None = None
    no_half: bool = False
    precision: Precision = Precision.AUTOCAST


@dataclass(frozen=True)
class DeviceInfo:
    """The device and dtype models run on, and the reason they were chosen."""

    device: torch.device
    dtype: torch.dtype
    reason: str

    @property
    def is_accelerator(self) -> bool:
        return self.device.type in ("cuda", "mps")

    def describe(self) -> str:
        return f"{self.device} ({str(self.dtype).removeprefix('torch.')}): {self.reason}"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend and backend.is_available())


def choose_device(policy: DevicePolicy) -> DeviceInfo:
    """Pick the device and dtype for this run from the policy and the hardware present."""
    if policy.use_cpu:
        device, why = torch.device("cpu"), "--use-cpu was given"
    elif torch.cuda.is_available():
        index = policy.device_id if policy.device_id is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device-id {index}: only {torch.cuda.device_count()} CUDA device(s) present")
        device, why = torch.device("cuda", index), f"CUDA device {torch.cuda.get_device_name(index)}"
    elif _mps_available():
        device, why = torch.device("mps"), "Apple MPS is available"
    else:
        device, why = torch.device("cpu"), "no CUDA or MPS device found"
    full = policy.no_half or policy.precision is Precision.FULL or device.type == "cpu"
    if full:
        dtype = torch.float32
        why += "; full precision" + (" (CPU)" if device.type == "cpu" else " (asked for)")
    else:
        dtype = torch.float16
        why += "; half precision"
    info = DeviceInfo(device=device, dtype=dtype, reason=why)
    log.info("Device: %s; attention: PyTorch scaled-dot-product (SDPA)", info.describe())
    return info

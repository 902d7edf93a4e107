"""RAM and GPU memory as the UI footer and ``/sdapi/v1/memory`` show them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modules.engine.devices import DeviceInfo

GIB = 1024**3


@dataclass(frozen=True)
class MemoryReport:
    ram_total: int = 0
    ram_free: int = 0
    process_rss: int = 0  # this process's resident memory
    gpu: dict[str, float] = field(default_factory=dict)  # free, total, allocated, peak (bytes); empty without CUDA

    @property
    def ram_used(self) -> int:
        return self.ram_total - self.ram_free

    def summary(self) -> str:
        """One line for the footer: "RAM 3.1/24.0 GiB (Atelier 1.2) · VRAM 2.4/24.0 GiB (peak 3.0)"."""
        parts = []
        if self.ram_total:
            parts.append(f"RAM {self.ram_used / GIB:.1f}/{self.ram_total / GIB:.1f} GiB"
                         + (f" (Atelier {self.process_rss / GIB:.1f})" if self.process_rss else ""))
        if self.gpu:
            used = self.gpu["total"] - self.gpu["free"]
            parts.append(f"VRAM {used / GIB:.1f}/{self.gpu['total'] / GIB:.1f} GiB (peak {self.gpu['peak'] / GIB:.1f})")
        return " · ".join(parts)


def _meminfo() -> tuple[int, int]:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            info = dict(line.split(":", 1) for line in fh.read().splitlines() if ":" in line)
        return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pages = os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else 0
        return (pages * os.sysconf("SC_PAGE_SIZE"), 0) if pages else (0, 0)


def _rss() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def memory_report(device: DeviceInfo | None) -> MemoryReport:
    """RAM always; the GPU's memory when there is a device (None: the engine is still starting)."""
    total, free = _meminfo()
    if device is None:
        return MemoryReport(ram_total=total, ram_free=free, process_rss=_rss())
    from modules.engine.memory import (
        memory_stats,  # imports torch, which a chosen device has loaded already
    )

    return MemoryReport(ram_total=total, ram_free=free, process_rss=_rss(), gpu=memory_stats(device.device))

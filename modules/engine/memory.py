"""Moving weights between the GPU and RAM, freeing memory, and the optional fast path.

The one place (with the loader's placement) that moves models between devices: a model kept in
the RAM cache is parked on the CPU and brought back when a job wants it; offloaded models (medvram,
lowvram) manage their own placement through their hooks and are left alone.
"""

from __future__ import annotations

import gc
import logging

import torch

from modules.engine.devices import MemoryMode
from modules.engine.loader import LoadedModel

log = logging.getLogger(__name__)


def _moves_whole(model: LoadedModel) -> bool:
    mode = model.device.memory.offload_for(model.arch.is_sdxl)
    return model.device.device.type != "cpu" and mode is MemoryMode.FULL


def park(model: LoadedModel) -> None:
    """Move a model that is not in use to RAM (nothing to do on the CPU or with offloading)."""
    if _moves_whole(model):
        model.pipeline.to("cpu")
        release_memory(model.device.device)


def unpark(model: LoadedModel) -> None:
    """Bring a parked model back to its device."""
    if _moves_whole(model):
        model.pipeline.to(model.device.device)


def release_memory(device: torch.device) -> None:
    """Give freed tensors back: Python's garbage first, then the CUDA caching allocator's blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory (CUDA's typed error, or MPS's message)."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def memory_stats(device: torch.device) -> dict[str, float]:
    """Current and peak memory of the device in bytes (empty on the CPU)."""
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"free": float(free), "total": float(total), "allocated": float(torch.cuda.memory_allocated(device)),
            "peak": float(torch.cuda.max_memory_allocated(device))}


def apply_fast_path(model: LoadedModel) -> None:
    """channels_last for the UNet (faster convolutions on GPUs), and on CUDA ``torch.compile`` of
    its forward: compiled once per input shape on first use and reused after (torch caches it)."""
    unet = model.pipeline.unet
    unet.to(memory_format=torch.channels_last)
    if model.device.device.type != "cuda":
        log.info("Fast path: channels_last only; torch.compile is used on CUDA")
        return
    unet.compile(mode="max-autotune-no-cudagraphs", fullgraph=False)
    log.info("Fast path: UNet compiled (the first image at each size takes longer)")

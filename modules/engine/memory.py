"""Moving whole models between the GPU and RAM, and freeing memory.

The one place (with :mod:`modules.engine.placement`) that moves models between devices: a model
kept in the RAM cache is parked on the CPU and brought back when a job wants it; offloaded models
(medvram, lowvram) manage their own placement through their hooks and are left alone. On CUDA a
parked model's weights go to pinned (page-locked) RAM, so bringing them back is one asynchronous copy
at the bus's full speed.
"""

from __future__ import annotations

import gc
import logging

import torch

from modules.engine.devices import MemoryMode
from modules.engine.loaded_model import LoadedModel
from modules.engine.placement import effective_mode, kept_on_cpu

log = logging.getLogger(__name__)


def _moves_whole(model: LoadedModel) -> bool:
    return model.device.device.type != "cpu" and effective_mode(model.device, model.arch) is MemoryMode.FULL


def _modules(model: LoadedModel) -> list[torch.nn.Module]:
    return [m for m in model.pipeline.components.values() if isinstance(m, torch.nn.Module)]


def weights_bytes(model: LoadedModel) -> int:
    """Bytes of every weight and buffer of the pipeline's models."""
    return sum(t.numel() * t.element_size() for m in _modules(model) for t in (*m.parameters(), *m.buffers()))


def _pinned_copy(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, layout=tensor.layout, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)


def park(model: LoadedModel) -> None:
    """Move a model that is not in use to RAM (nothing to do on the CPU or with offloading). Its
    device blocks return to the allocator at once, ready for the next model; the caller decides
    whether to give them back to the driver (:func:`release_memory`)."""
    if not _moves_whole(model):
        return
    if model.device.device.type == "cuda":
        for module in _modules(model):
            module._apply(_pinned_copy)  # what Module.to does, into page-locked memory
        torch.cuda.synchronize(model.device.device)  # the copies are done before the GPU blocks are reused
    else:
        model.pipeline.to("cpu")


def unpark(model: LoadedModel) -> None:
    """Bring a parked model back to its device (asynchronously from pinned memory on CUDA: the
    copies are queued on the stream the job's first kernels run on, so they wait for them)."""
    if _moves_whole(model):
        for module in _modules(model):
            if not kept_on_cpu(module):  # --text-encoder-cpu: its T5 / LLM never goes to the device
                module.to(model.device.device, non_blocking=True)


def on_device_bytes(model: LoadedModel) -> int:
    """Bytes of the model's weights that sit on its device now (0 when parked or offloaded)."""
    device = model.device.device
    return sum(t.numel() * t.element_size() for m in _modules(model) for t in (*m.parameters(), *m.buffers())
               if t.device.type == device.type and device.type != "cpu")


def release_memory(device: torch.device, collect: bool = True) -> None:
    """Give freed tensors back: Python's garbage first (``collect``: needed when a model was dropped,
    whose modules may sit in reference cycles; a tenth of a second or more on a big heap), then the
    CUDA caching allocator's blocks."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def free_device_bytes(device: torch.device) -> int | None:
    """Memory the device can still give (free plus what the allocator caches); None off CUDA."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


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
            "reserved": float(torch.cuda.memory_reserved(device)),
            "peak": float(torch.cuda.max_memory_allocated(device))}

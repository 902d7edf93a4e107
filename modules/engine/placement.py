"""Where a pipeline's weights live while it runs: all on the device, or offloaded to RAM.

* ``FULL``: every component on the device.
* ``MEDVRAM``: model-level offload (accelerate's hooks through diffusers): a component is moved to
  the device when its forward runs and the one before it in the pipeline's order goes back to RAM.
  Every component's inputs must be sent to :func:`execution_device`, never to ``module.device``
  (the hook moves weights, not arguments).
* ``LOWVRAM``: sequential offload: each layer's weights are brought in for its forward only; the
  parameters sit on the ``meta`` device in between, so ``module.device`` means nothing there.

A component swapped in later (an external VAE) joins the same scheme (:func:`place_component`), and
after each job the offloaded components are sent back to RAM (:func:`offload_idle`), so a job starts
with nothing of the last one left on the device.
"""

from __future__ import annotations

import logging

import torch
from accelerate import cpu_offload
from diffusers import DiffusionPipeline

from modules.engine.devices import Attention, DeviceInfo, MemoryMode
from modules.engine.model_detect import ModelArch

log = logging.getLogger(__name__)


def effective_mode(device: DeviceInfo, arch: ModelArch) -> MemoryMode:
    """The memory mode a model of ``arch`` runs in (medvram-sdxl is full for SD1/SD2)."""
    return device.memory.offload_for(arch.is_sdxl)


def execution_device(pipe: DiffusionPipeline) -> torch.device:
    """Where the pipeline computes: the device even while offloading keeps the weights in RAM."""
    return pipe._execution_device


def _modules(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def _offload_sequentially(module: torch.nn.Module, device: torch.device) -> None:
    # accelerate's own sequential offload, called with the device as given: diffusers' wrapper
    # always adds an index ("cpu:0"), which a CPU execution device (the tests' stand-in for a GPU)
    # does not survive.
    cpu_offload(module, device, offload_buffers=len(module._parameters) > 0)


def place(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo) -> None:
    """Put a pipeline (fresh from loading, on the CPU, with no hooks) where it runs: the VAE's own
    dtype, the attention kernels, and the device, whole or offloaded as the memory mode says."""
    # 1. Precision and attention kernels, before any weights move.
    if pipe.vae.dtype != device.vae:
        pipe.vae.to(dtype=device.vae)
    if device.attention is Attention.XFORMERS:
        pipe.enable_xformers_memory_efficient_attention()
    # 2. The weights.
    mode = effective_mode(device, arch)
    if mode is MemoryMode.MEDVRAM:
        pipe.enable_model_cpu_offload(device=device.device)
    elif mode is MemoryMode.LOWVRAM:
        for module in _modules(pipe).values():
            _offload_sequentially(module, device.device)
    elif device.device.type != "cpu":  # weights load on the CPU; moving there again only warns
        pipe.to(device.device)


def replace_mode(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo) -> None:
    """Move a placed pipeline to the memory mode ``device`` names: hooks off, back in RAM, placed again."""
    pipe.remove_all_hooks()
    for module in _modules(pipe).values():
        if any(parameter.is_meta for parameter in module.parameters()):
            raise RuntimeError("a sequentially offloaded pipeline lost its weights' home; load it again")
        module.to("cpu")
    place(pipe, arch, device)
    log.info("Memory mode for %s is now %s", arch.label, effective_mode(device, arch).value)


def place_component(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo, module: torch.nn.Module) -> None:
    """Put a component just swapped into ``pipe`` (an external VAE) under the pipeline's scheme."""
    mode = effective_mode(device, arch)
    if mode is MemoryMode.MEDVRAM:
        pipe.enable_model_cpu_offload(device=device.device)  # hooks the whole chain again, the new part included
    elif mode is MemoryMode.LOWVRAM:
        if not hasattr(module, "_hf_hook"):  # a VAE swapped back in keeps the hooks it had
            _offload_sequentially(module, device.device)
    else:
        module.to(device.device)


def offload_idle(pipe: DiffusionPipeline, arch: ModelArch, device: DeviceInfo) -> None:
    """After a job under model-level offload: every component back to RAM (the last one to run,
    usually the VAE, would otherwise stay on the device through the next job's sampling)."""
    if effective_mode(device, arch) is MemoryMode.MEDVRAM:
        for hook in getattr(pipe, "_all_hooks", ()):
            hook.offload()

"""The optional fast path (``--fast-path`` / the ``fast_path`` setting): the UNet compiled with CUDA
graphs, fast kernels switched on, LoRAs merged into the weights.

* ``torch.compile`` in ``max-autotune`` mode (autotuned kernels, launched through CUDA graphs) with
  dynamic shapes: the batch (which ``cfg = 1`` halves), the latent height and width and the prompt's
  token count (chunks of 75) are symbolic, so a new size, batch or prompt length reuses the compiled
  code, and CUDA graphs are only recorded again for a shape not seen yet. LoRAs are fused into the
  weights (:func:`modules.engine.lora.apply_loras` with ``fuse``), so a LoRA weight is not a Python
  float that the compiled code guards on.
* ``cudnn.benchmark`` (the fastest convolution algorithm per shape) and TF32 matrix maths on
  Ampere and later; channels-last memory layout for the convolutions.

Compilation happens on the first call at a new kind of shape and takes from seconds to minutes;
each one is logged with its time. Under model or sequential offload the UNet is not compiled (the
offload hooks move weights inside its forward) and the log says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from modules.engine.devices import MemoryMode
from modules.engine.loaded_model import LoadedModel
from modules.engine.placement import effective_mode

log = logging.getLogger(__name__)

COMPILE_MODE = "max-autotune"


def enable_fast_kernels(device: torch.device) -> None:
    """cuDNN autotuning and TF32 matrix maths (about 1e-3 relative error, invisible in an 8-bit
    image); nothing to do off CUDA."""
    if device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def _graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def compiled_forward(forward: Callable[..., Any], backend: str | Callable[..., Any] = "inductor",
                     mode: str | None = COMPILE_MODE) -> Callable[..., Any]:
    """``forward`` compiled once with dynamic shapes, logging how long each compilation takes."""
    options: dict[str, Any] = {"mode": mode} if backend == "inductor" else {}
    compiled = torch.compile(forward, backend=backend, dynamic=True, fullgraph=False, **options)

    def run(*args: Any, **kwargs: Any) -> Any:
        before, started = _graphs_compiled(), time.perf_counter()
        out = compiled(*args, **kwargs)
        if _graphs_compiled() != before:
            sample = args[0] if args else kwargs.get("sample")
            shape = tuple(sample.shape) if isinstance(sample, torch.Tensor) else "?"
            log.info("Fast path: UNet compiled for inputs like %s in %.1f s", shape, time.perf_counter() - started)
        return out

    return run


def apply_fast_path(model: LoadedModel, backend: str | Callable[..., Any] = "inductor") -> None:
    """Switch the fast path on for a freshly loaded model (see the module docstring). ``backend``
    other than inductor is for tests (a counting backend shows what would be compiled)."""
    unet = model.pipeline.unet
    unet.to(memory_format=torch.channels_last)
    device = model.device.device
    if device.type != "cuda" and backend == "inductor":
        log.info("Fast path: channels_last only; the UNet is compiled on CUDA")
        return
    if effective_mode(model.device, model.arch) is not MemoryMode.FULL:
        log.info("Fast path: the UNet is not compiled under %s (offload hooks move weights inside it)",
                 effective_mode(model.device, model.arch).value)
        return
    enable_fast_kernels(device)
    unet.forward = compiled_forward(unet.forward, backend)
    log.info("Fast path: UNet compiled on first use (%s, dynamic shapes); each compilation is logged", COMPILE_MODE)

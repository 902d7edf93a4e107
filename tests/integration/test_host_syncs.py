"""The step loop never makes the host wait for the device.

On a GPU, every Python branch on a tensor (``if sigma > 0``), ``float(t)``, ``.item()``,
``.tolist()``, ``.cpu()`` and every tensor built from host data stalls the CPU until the device has
caught up, so it cannot queue the next step ahead. These calls are counted here, on the CPU, while a
real txt2img job samples: per step = (calls in a 20-step job - calls in a 10-step job) / 10, which
cancels everything done once per job (prompt encoding, the sigma table, decoding, saving).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import pytest
import torch

from modules.params import GenerationRequest

_TENSOR_READS = ("__bool__", "__float__", "__int__", "item", "tolist", "cpu", "numpy")
_HOST_TO_TENSOR = ("tensor", "as_tensor", "from_numpy")


@contextmanager
def counting_host_syncs() -> Iterator[Counter[str]]:
    """Count the calls that read a tensor on the host, or make one from host data, while inside."""
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with lock:
                counts[name] += 1
            return real(*args, **kwargs)
        return call

    saved_methods = {name: getattr(torch.Tensor, name) for name in _TENSOR_READS}
    saved_functions = {name: getattr(torch, name) for name in _HOST_TO_TENSOR}
    for name, real in saved_methods.items():
        setattr(torch.Tensor, name, counted(name, real))
    for name, real in saved_functions.items():
        setattr(torch, name, counted(f"torch.{name}", real))
    try:
        yield counts
    finally:
        for name, real in saved_methods.items():
            setattr(torch.Tensor, name, real)
        for name, real in saved_functions.items():
            setattr(torch, name, real)


def syncs_per_step(services, request: GenerationRequest) -> dict[str, float]:
    def run(steps: int) -> Counter[str]:
        with counting_host_syncs() as counts:
            services.generation.generate(replace(request, steps=steps))
        return counts

    long, short = run(20), run(10)
    return {name: (long[name] - short[name]) / 10 for name in long.keys() | short.keys()
            if long[name] != short[name]}


@pytest.mark.parametrize("checkpoint", ["tiny-sd15.safetensors", "tiny-sdxl.safetensors"])
@pytest.mark.parametrize("sampler", ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M SDE"])
def test_the_default_samplers_make_no_host_sync_per_step(services, sampler: str, checkpoint: str) -> None:
    request = GenerationRequest(prompt="a lighthouse [at night:in fog:0.5]", negative_prompt="blurry", sampler=sampler,
                                width=64, height=64, seed=3, cfg_scale=6.0, checkpoint=checkpoint, save_images=False)
    services.generation.generate(request)  # loaded and warm
    assert syncs_per_step(services, request) == {}


def test_the_counter_sees_a_branch_on_a_device_value(services, monkeypatch) -> None:
    """The counter is not blind: one ``float(sigma)`` per model call shows up as one per step."""
    from modules.engine.sampling import denoiser as denoiser_module

    real_call = denoiser_module.GuidedDenoiser.__call__

    def reading_sigma(self, x: torch.Tensor, sigma: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        float(sigma[0])
        return real_call(self, x, sigma, **kwargs)

    monkeypatch.setattr(denoiser_module.GuidedDenoiser, "__call__", reading_sigma)
    request = GenerationRequest(prompt="a lighthouse", sampler="Euler", width=64, height=64, seed=3,
                                checkpoint="tiny-sd15.safetensors", save_images=False)
    assert syncs_per_step(services, request) == {"__float__": 1.0}

"""Seamless tiling, as A1111 does it: every 2-D convolution of the UNet and the VAE pads circularly
for one job, so the image's left edge continues its right edge and its top edge its bottom edge.

Only each ``torch.nn.Conv2d``'s ``padding_mode`` changes (torch pads with
``_reversed_padding_repeated_twice``, which every Conv2d keeps whatever its mode); no weight is
touched, so it works the same under accelerate's offload hooks. LoRA layers wrap a Conv2d (peft's
``base_layer``) and are modules themselves, so walking the modules finds the base layers and the
LoRA's own convolutions alike. The previous modes come back when the job ends, also on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

from modules.engine.generate import RefinerPlan
from modules.engine.loaded_model import LoadedModel

CIRCULAR = "circular"


def _convolutions(parts: Iterable[torch.nn.Module]) -> list[torch.nn.Conv2d]:
    """Every Conv2d under ``parts``, each once (a module shared by two parts counts once)."""
    found: dict[int, torch.nn.Conv2d] = {}
    for part in parts:
        for module in part.modules():
            if isinstance(module, torch.nn.Conv2d):
                found.setdefault(id(module), module)
    return list(found.values())


@contextmanager
def circular_padding(parts: Iterable[torch.nn.Module]) -> Iterator[int]:
    """Within the block, every Conv2d under ``parts`` pads circularly; yields how many there are.
    Each gets its own previous mode back afterwards, whatever happens inside."""
    # 1. The convolutions and their modes now.
    convolutions = _convolutions(parts)
    before = [conv.padding_mode for conv in convolutions]
    try:
        # 2. Circular padding for the block.
        for conv in convolutions:
            conv.padding_mode = CIRCULAR
        yield len(convolutions)
    finally:
        # 3. The previous modes back.
        for conv, mode in zip(convolutions, before, strict=True):
            conv.padding_mode = mode


def tiled_parts(model: LoadedModel, refiner: RefinerPlan | None = None) -> list[torch.nn.Module]:
    """What draws a tiling job's pixels: the UNet and VAE of the model and of the refiner, if any."""
    models = [model] + ([refiner.model] if refiner is not None else [])
    return [part for m in models for part in (m.pipeline.unet, m.pipeline.vae)]


def seamless_tiling(enabled: bool, model: LoadedModel,
                    refiner: RefinerPlan | None = None) -> AbstractContextManager[int]:
    """A job's tiling: circular padding of :func:`tiled_parts` when ``enabled``, nothing otherwise."""
    return circular_padding(tiled_parts(model, refiner)) if enabled else nullcontext(0)

"""Flow-matching (rectified flow) networks as denoisers in sigma space.

With sigma = t, the latent at sigma is ``x = (1 - sigma) * x0 + sigma * noise`` and a flow
network predicts the velocity ``v = noise - x0``, so ``D(x, sigma) = x - sigma * v``. The noise
levels are the training times 1/1000 ... 1 through the family's shift, ``sigma = shift * t / (1 +
(shift - 1) * t)`` (FLUX's exponential time shift with ``mu`` is the same map with shift = e^mu).
Each family's :class:`FlowNetwork` hides its own conventions (what time it passes, the sign of
its output, packing, position ids, distilled guidance), so every sampler sees the same ``D``.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch

from modules.engine.sampling.denoiser import Embeds, ExtrasFor
from modules.engine.sampling.schedules import ModelSigmas

TRAIN_STEPS = 1000


class FlowHookUnsupported(ValueError):
    """An extension tried to add UNet residuals to a flow transformer's call."""


class FlowNetwork(Protocol):
    """One family's transformer, called in the flow convention."""

    transformer: torch.nn.Module

    def conditions(self, embeds: Embeds) -> dict[str, torch.Tensor]:
        """What a prompt adds beside its token embeddings: 2-D tensors (1, n) (pooled vectors, masks),
        batched by rows like the tokens."""
        ...

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                 conditions: dict[str, torch.Tensor] | None, concat: torch.Tensor | None) -> torch.Tensor:
        """The velocity ``noise - x0`` (float32, shaped like ``x``) at (x, sigma), one sigma per row."""
        ...


def compute_dtype(network: torch.nn.Module) -> torch.dtype:
    """The dtype a network computes in: its first floating-point parameter's (a GGUF model's quantised
    weights are stored as bytes and dequantised to it), read once since ``.dtype`` walks every module."""
    return next(p.dtype for p in network.parameters() if p.dtype.is_floating_point)


def shifted(t: torch.Tensor, shift: float) -> torch.Tensor:
    """The family's sigma at training time ``t`` in (0, 1]."""
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(shift: float) -> ModelSigmas:
    """The model's noise levels for ``shift``: one per training step, increasing to exactly 1."""
    t = torch.arange(1, TRAIN_STEPS + 1, dtype=torch.float64) / TRAIN_STEPS
    return ModelSigmas.from_sigmas(shifted(t, shift))


def dynamic_shift(image_tokens: int, base_tokens: int = 256, max_tokens: int = 4096,
                  base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift: mu linear in the image's token count, shift = e^mu
    (diffusers' ``calculate_shift``; the arguments are the scheduler config's)."""
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = image_tokens * slope + (base_shift - slope * base_tokens)
    return math.exp(mu)


class FlowDenoiser:
    """``D(x, sigma) = x - sigma * v`` for a family's :class:`FlowNetwork`."""

    def __init__(self, network: FlowNetwork) -> None:
        self.network = network
        self.unet = network.transformer  # what MODEL_CALL hooks are shown as "the network"

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, tokens: torch.Tensor,
                 added: dict[str, torch.Tensor] | None, concat: torch.Tensor | None,
                 extras_for: ExtrasFor | None = None, **_: Any) -> torch.Tensor:
        if extras_for is not None and extras_for(x, sigma) is not None:
            raise FlowHookUnsupported("an extension adds UNet inputs (ControlNet, T2I-Adapter, IP-Adapter) to this "
                                      "job, but this model is a flow transformer, which has no UNet to take them")
        v = self.network(x, sigma, tokens, added, concat)
        return x - sigma.view(-1, *([1] * (x.ndim - 1))) * v

"""How a family's sampler latents relate to its VAE's latents.

Most families sample in the VAE's own latent space, scaled and shifted by the VAE config's
``scaling_factor`` and ``shift_factor`` (8 pixels per latent cell). A family whose network works on
another layout (FLUX.2 samples 2x2-patchified, batch-normalised latents) gives its own converters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

# (vae, latents) -> latents
Convert = Callable[[Any, torch.Tensor], torch.Tensor]


def _scaled(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return (latents - shift) * vae.config.scaling_factor


def _unscaled(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return latents / vae.config.scaling_factor + shift


@dataclass(frozen=True)
class LatentFormat:
    scale: int = 8  # pixels per sampler-latent cell, each side
    from_vae: Convert = _scaled  # the VAE encoder's latents (float32) -> sampler latents
    to_vae: Convert = _unscaled  # sampler latents (in the VAE's dtype) -> what the VAE decoder takes

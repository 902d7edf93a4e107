"""Where sampling noise comes from, as A1111 makes it, so seeds reproduce users' images.

* :class:`ImageNoise`: one generator per image, seeded ``seed + i``; the first draw is the initial
  latent noise (optionally slerped with a variation seed's noise), later draws (ancestral and SDE
  steps) continue from each image's generator, which "eta noise seed delta" (ENSD) reseeds with
  ``seed + ENSD`` after the first draw. The generators live on the GPU (A1111's default RNG) or the
  CPU (``RNG: CPU``).
* :class:`BrownianTreeNoise`: the Brownian-tree noise the SDE samplers use, one tree per image
  seed, so an SDE trajectory does not depend on the step count's noise draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchsde

from modules.samplers import RngSource


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of two noise tensors, exactly as A1111 does it for variation seeds:
    on one image's (C, H, W) noise, with norms taken over dim 1 (the rows), and A1111's own fallback
    for nearly parallel noise (which weighs ``low`` by ``strength``)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * strength + high * (1 - strength)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / so).unsqueeze(1) * low + \
        (torch.sin(strength * omega) / so).unsqueeze(1) * high


class ImageNoise:
    """Per-image seeded noise for a batch; call :meth:`first` once, then :meth:`next` per draw."""

    def __init__(self, shape: tuple[int, ...], seeds: Sequence[int], device: torch.device,
                 source: RngSource = RngSource.GPU, variation_seeds: Sequence[int] | None = None,
                 variation_strength: float = 0.0, eta_noise_seed_delta: int = 0,
                 resize_from: tuple[int, int] | None = None) -> None:
        self.shape = shape  # one image's latent shape, (C, H, W)
        self.seeds = list(seeds)
        self.device = device
        # A1111's "GPU" RNG on a machine without one is the device's own generator.
        self.generator_device = torch.device("cpu") if source is RngSource.CPU else device
        self.variation_seeds = list(variation_seeds) if variation_seeds else None
        self.variation_strength = variation_strength
        self.ensd = eta_noise_seed_delta
        # (h, w) of the latent the seed's noise is made at; None = this batch's own size.
        self.source_shape = (shape[0], *resize_from) if resize_from else shape
        self.generators = [self._generator(seed) for seed in self.seeds]

    def _generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.generator_device).manual_seed(int(seed))

    def _randn(self, generator: torch.Generator, shape: tuple[int, ...] | None = None) -> torch.Tensor:
        return torch.randn(shape or self.shape, generator=generator, device=self.generator_device)

    def first(self) -> torch.Tensor:
        """The initial latent noise of every image, (B, C, H, W) on the device, float32."""
        noises = []
        resized = self.source_shape != self.shape
        for i, (seed, generator) in enumerate(zip(self.seeds, self.generators)):
            # A1111 draws resized noise from a fresh generator, so the image's own generator
            # then gives the full-size noise the centre is pasted into, and the ancestral draws.
            noise = self._randn(self._generator(seed), self.source_shape) if resized else self._randn(generator)
            if self.variation_seeds is not None and self.variation_strength:
                variation = self._randn(self._generator(self.variation_seeds[i]), self.source_shape)
                noise = slerp(self.variation_strength, noise, variation)  # per image, (C, H, W), as A1111
            if resized:
                noise = _paste_centred(noise, self._randn(generator))
            noises.append(noise)
        if self.ensd:
            self.generators = [self._generator(seed + self.ensd) for seed in self.seeds]
        return torch.stack(noises).to(self.device)

    def next(self) -> torch.Tensor:
        """Fresh noise for a sampler step, continuing each image's generator."""
        return torch.stack([self._randn(g) for g in self.generators]).to(self.device)

    def sampler(self) -> "_StepNoise":
        return _StepNoise(self)


def _paste_centred(small: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """``full`` with ``small``'s centre over its centre (each side cropped where it is larger), with
    A1111's arithmetic: where ``small`` is larger by an odd amount, its last row or column that
    would fit is not pasted (``full``'s stays), as A1111's ``sh + 2 * dy`` makes it."""
    out = full.clone()
    (sh, sw), (fh, fw) = small.shape[-2:], full.shape[-2:]
    dy, dx = (fh - sh) // 2, (fw - sw) // 2
    h, w = (sh if dy >= 0 else sh + 2 * dy), (sw if dx >= 0 else sw + 2 * dx)
    ty, tx = max(dy, 0), max(dx, 0)  # where it lands in full
    sy, sx = max(-dy, 0), max(-dx, 0)  # where it is taken from in small
    out[:, ty:ty + h, tx:tx + w] = small[:, sy:sy + h, sx:sx + w]
    return out


class _StepNoise:
    """Adapts :class:`ImageNoise` to the samplers' ``noise_sampler(sigma, sigma_next)`` form."""

    def __init__(self, noise: ImageNoise) -> None:
        self._noise = noise

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        return self._noise.next()


class BrownianTreeNoise:
    """Noise from one Brownian tree per image over [sigma_min, sigma_max], normalised per step.

    The trees live on ``tree_device``: the compute device by default, so a query never waits for
    a host copy, or the CPU (A1111's "RNG: CPU"), where the same seed gives the same noise on any
    hardware. Samplers query them with Python floats, so no device value is read per step.
    """

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seeds: Sequence[int],
                 tree_device: torch.device | None = None) -> None:
        if len(seeds) != x.shape[0]:
            raise ValueError(f"need one seed per image: {len(seeds)} seeds for a batch of {x.shape[0]}")
        # torchsde rounds times to 6 digits (its default tolerance); using rounded bounds and
        # clamping queries to them keeps every query inside the tree's span.
        t0, t1 = sorted((round(float(sigma_min), 6), round(float(sigma_max), 6)))
        self._range = (t0, t1)
        w0 = torch.zeros_like(x[0], device=tree_device or x.device, dtype=torch.float32)
        self._trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(s)) for s in seeds]
        self._device, self._dtype = x.device, x.dtype

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        # Clamped to the tree's span: float32 sigmas can stray past it by an ulp.
        a, b = (min(max(float(v), self._range[0]), self._range[1]) for v in (sigma, sigma_next))
        low, high, sign = (a, b, 1.0) if a < b else (b, a, -1.0)
        w = torch.stack([tree(low, high) for tree in self._trees]) * sign
        return (w / abs(b - a) ** 0.5).to(self._device, self._dtype)

"""Variation seeds and "resize seed from" against a restatement of A1111's create_random_tensors
(CPU generator): per-image (C, H, W) noise, slerp with norms over dim 1, A1111's near-parallel
fallback, and its paste arithmetic when the sizes differ by an odd amount."""

from __future__ import annotations

import pytest
import torch

from modules.engine.sampling.noise import ImageNoise, slerp
from modules.samplers import RngSource


def a1111_randn(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def a1111_slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


def a1111_noise(shape: tuple[int, int, int], seed: int, subseed: int, strength: float,
                resize_from: tuple[int, int] | None) -> torch.Tensor:
    noise_shape = shape if resize_from is None else (shape[0], *resize_from)
    subnoise = a1111_randn(subseed, noise_shape) if strength != 0 else None
    noise = a1111_randn(seed, noise_shape)
    if subnoise is not None:
        noise = a1111_slerp(strength, noise, subnoise)
    if noise_shape != shape:
        x = a1111_randn(seed, shape)
        dx = (shape[2] - noise_shape[2]) // 2
        dy = (shape[1] - noise_shape[1]) // 2
        w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
        h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
        tx = 0 if dx < 0 else dx
        ty = 0 if dy < 0 else dy
        dx, dy = max(-dx, 0), max(-dy, 0)
        x[:, ty:ty + h, tx:tx + w] = noise[:, dy:dy + h, dx:dx + w]
        noise = x
    return noise


@pytest.mark.parametrize(("shape", "resize_from"), [
    ((4, 8, 8), None), ((4, 8, 12), None), ((4, 9, 11), (12, 14)), ((4, 12, 10), (9, 7)), ((4, 8, 8), (11, 8)),
])
@pytest.mark.parametrize(("seed", "subseed", "strength"), [(1, 2, 0.5), (123, 9, 0.1), (7, 77, 0.9), (5, 6, 0.0)])
def test_first_noise_is_a1111s(shape, resize_from, seed, subseed, strength) -> None:
    made = ImageNoise(shape, [seed], torch.device("cpu"), RngSource.CPU, variation_seeds=[subseed],
                      variation_strength=strength, resize_from=resize_from).first()[0]
    assert torch.allclose(made, a1111_noise(shape, seed, subseed, strength, resize_from), atol=1e-6, rtol=0)


def test_near_parallel_noise_takes_a1111s_fallback() -> None:
    low = a1111_randn(3, (4, 8, 8))
    high = low + 1e-4 * a1111_randn(4, (4, 8, 8))
    assert torch.allclose(slerp(0.3, low, high), low * 0.3 + high * 0.7)

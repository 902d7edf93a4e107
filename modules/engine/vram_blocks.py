"""The memory of diffusers' building blocks at inference, for the planner's walks through a network.

A :class:`Tally` follows the tensors alive while a network runs: the walk holds what a block's
caller keeps (skip connections, a block's input) and asks, for each step inside a block, how much
that step needs beyond it. Counts are elements per image, multiplied by the images of the call;
a convolution also copies its weights once per call, whatever the batch.

The step counts follow diffusers' code line by line (ResnetBlock2D, Transformer2DModel with its
GEGLU feed-forward, Upsample2D, AttnProcessor2_0): inference frees a tensor as soon as nothing
refers to it, so what a line keeps alive is what its local variables still name. A convolution
also needs scratch space: oneDNN on the CPU copies its input or output (the larger) and its
weights into a blocked layout on every call (measured with torch's profiler); cuDNN's workspace is
taken to be of the same order.
"""

from __future__ import annotations

_FF_MULT = 4  # BasicTransformerBlock's feed-forward width; GEGLU projects to twice that


class Tally:
    """Elements alive now and the most ever alive, for one walk (a local object, never shared)."""

    def __init__(self, images: int) -> None:
        self.images = images
        self.alive = 0
        self.peak = 0

    def during(self, per_image: int, fixed: int = 0) -> None:
        """A step that briefly needs ``per_image`` elements per image (and ``fixed`` in all) more."""
        self.peak = max(self.peak, self.alive + per_image * self.images + fixed)

    def hold(self, per_image: int) -> None:
        self.alive += per_image * self.images
        self.peak = max(self.peak, self.alive)

    def drop(self, per_image: int) -> None:
        self.alive -= per_image * self.images


def conv(tally: Tally, c_in: int, c_out: int, area_in: int, area_out: int, kernel: int = 3,
         beside: int = 0) -> None:
    """A convolution: its output and scratch (the larger of input and output, and the weights),
    with ``beside`` elements per image of the caller's still alive."""
    output, larger = c_out * area_out, max(c_in * area_in, c_out * area_out)
    tally.during(beside + output + larger, c_in * c_out * kernel * kernel)


def resnet(tally: Tally, c_in: int, c_out: int, area: int) -> None:
    """ResnetBlock2D on a held input; what it allocates beyond it, step by step."""
    tally.during(2 * c_in * area)  # norm1 and its SiLU
    conv(tally, c_in, c_out, area, area, beside=c_in * area)  # conv1 beside SiLU's output
    tally.during(2 * c_out * area)  # (+ time embedding) norm2 and its SiLU
    conv(tally, c_out, c_out, area, area, beside=c_out * area)  # conv2 beside SiLU's output
    if c_in != c_out:
        conv(tally, c_in, c_out, area, area, kernel=1, beside=c_out * area)  # 1x1 shortcut beside conv2's output
        tally.during(4 * c_out * area)  # shortcut, conv2's output, their sum, the scaled sum
    else:
        tally.during(3 * c_out * area)


def transformer(tally: Tally, channels: int, area: int, context_tokens: int) -> None:
    """Transformer2DModel on a held input: its flattened residual stream, beside which the largest
    step is the GEGLU feed-forward (projection to 8C, GELU of half of it, their product) with the
    block's input, the attention's output and the normed input alive; attention needs its normed
    input, q, k, v, the output and its reshaped copy (cross-attention keys and values are small)."""
    feed_forward = (1 + 3 + 2 * _FF_MULT + _FF_MULT + _FF_MULT) * channels * area
    attention = 7 * channels * area + 2 * context_tokens * channels
    tally.during(max(feed_forward, attention) + channels * area)  # and then its output


def vae_attention(tally: Tally, channels: int, area: int) -> None:
    """The VAE's single-head mid-block attention on a held input: group norm, q, k, v, the output
    and its reshaped copy (AttnProcessor2_0 keeps its locals until it returns), then the output."""
    tally.during(7 * channels * area)


def upsample(tally: Tally, channels: int, area_out: int) -> None:
    """Upsample2D on a held input: the nearest interpolation to ``area_out`` positions, then its
    conv; holds the output."""
    conv(tally, channels, channels, area_out, area_out, beside=channels * area_out)
    tally.hold(channels * area_out)


def resnet_chain(tally: Tally, c_in: int, c_out: int, count: int, area: int) -> int:
    """``count`` resnets one after another inside a block whose input stays held; returns the
    elements per image of the last output, which stays held."""
    latest = 0
    for _ in range(count):
        resnet(tally, c_in, c_out, area)
        tally.hold(c_out * area)
        tally.drop(latest)
        c_in, latest = c_out, c_out * area
    return latest

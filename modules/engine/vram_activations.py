"""Peak activation memory of one UNet call, one VAE decode or encode, and one text encoding,
derived from the models' configs and the job's sizes.

Each estimate walks the network in the order diffusers runs it and keeps a tally of the tensors
alive at every step (:mod:`modules.engine.vram_blocks`): the skip connections the UNet keeps for
its up path, the input of each block until the block returns, and the block's own intermediates.
Results are elements; the planner multiplies them by the bytes of the dtype the network runs in.

Attention is taken to be memory-efficient (PyTorch's SDPA flash or memory-efficient kernels, the
CPU's flash kernel, or xformers): the token-by-token score matrix is never materialised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modules.engine import vram_blocks as blocks
from modules.engine.vram_blocks import Tally

TOKENS_PER_CHUNK = 77  # CLIP's context: 75 prompt tokens plus start and end
_SAMPLER_LATENTS = 12  # latent-sized fp32 tensors a sampler and the guidance keep between calls


@dataclass(frozen=True)
class UnetShape:
    """What of a UNet2DConditionModel's config decides its activation memory."""

    in_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: tuple[int, ...]  # resnets per down level (up levels have one more)
    down_attention: tuple[int, ...]  # transformer blocks after each down resnet, per level (0: none)
    up_attention: tuple[int, ...]  # the same for the up levels, deepest first
    mid_attention: int  # transformer blocks in the mid block; -1: no mid block
    cross_attention_dim: int

    @staticmethod
    def of(config: Mapping[str, Any]) -> UnetShape:
        channels = tuple(int(c) for c in config["block_out_channels"])
        levels = len(channels)
        layers = _per_level(config.get("layers_per_block", 2), levels)
        depth = tuple(_depth(d) for d in _per_level(config.get("transformer_layers_per_block", 1) or 1, levels))
        reverse = config.get("reverse_transformer_layers_per_block")
        up_depth = tuple(_depth(d) for d in reverse) if reverse else tuple(reversed(depth))
        down = tuple(d if "CrossAttn" in kind else 0 for d, kind in zip(depth, config["down_block_types"], strict=True))
        up = tuple(d if "CrossAttn" in kind else 0 for d, kind in zip(up_depth, config["up_block_types"], strict=True))
        mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
        mid = -1 if mid_type is None else (depth[-1] if "CrossAttn" in mid_type else 0)
        return UnetShape(in_channels=int(config.get("in_channels", 4)), block_out_channels=channels,
                         layers_per_block=layers, down_attention=down, up_attention=up, mid_attention=mid,
                         cross_attention_dim=int(config.get("cross_attention_dim") or 768))


@dataclass(frozen=True)
class VaeShape:
    """What of an AutoencoderKL's config decides its activation memory, and its tiling."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int
    mid_attention: bool
    tile_pixels: int  # diffusers' tile_sample_min_size: tiles are this many pixels square

    @staticmethod
    def of(config: Mapping[str, Any]) -> VaeShape:
        sample = config.get("sample_size", 512)
        tile = int(sample[0] if isinstance(sample, (list, tuple)) else sample)
        add_attention = config.get("mid_block_add_attention")
        return VaeShape(block_out_channels=tuple(int(c) for c in config["block_out_channels"]),
                        layers_per_block=int(config.get("layers_per_block", 2)),
                        latent_channels=int(config.get("latent_channels", 4)),
                        mid_attention=True if add_attention is None else bool(add_attention), tile_pixels=tile)

    @property
    def scale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def tile_latents(self) -> int:
        return self.tile_pixels // self.scale


@dataclass(frozen=True)
class TextShape:
    """One CLIP text encoder."""

    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int

    @staticmethod
    def of(config: Any) -> TextShape:
        if getattr(config, "d_model", None) is not None:  # T5 (flow families): transformers' T5Config names
            return TextShape(hidden_size=int(config.d_model), intermediate_size=int(config.d_ff),
                             layers=int(config.num_layers), heads=int(config.num_heads))
        return TextShape(hidden_size=int(config.hidden_size), intermediate_size=int(config.intermediate_size),
                         layers=int(config.num_hidden_layers), heads=int(config.num_attention_heads))


@dataclass(frozen=True)
class TransformerShape:
    """A flow family's denoising transformer (FLUX, SD3, Z-Image): its width is what activations scale with."""

    hidden_size: int

    @staticmethod
    def of(config: Mapping[str, Any]) -> TransformerShape:
        width = config.get("dim") or config.get("hidden_size")
        if not width:
            width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        return TransformerShape(hidden_size=int(width))


# Every flow family makes one image token per 16x16 pixels (2x2 patches of an 8x latent, or FLUX.2's 16x one).
PIXELS_PER_TOKEN_SIDE = 16
FLOW_CONTEXT_TOKENS = 512  # T5 / LLM prompts are padded to up to 512 tokens


def transformer_elements(shape: TransformerShape, height: int, width: int, context_tokens: int, images: int) -> int:
    """Peak elements of one transformer call at ``height`` x ``width`` pixels: the residual stream and one
    block's projections (QKV, output, a 4x MLP); attention runs through SDPA and keeps no score matrix."""
    tokens = (height // PIXELS_PER_TOKEN_SIDE) * (width // PIXELS_PER_TOKEN_SIDE) + context_tokens
    return 16 * shape.hidden_size * tokens * images


def _per_level(value: int | Sequence[int], levels: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (list, tuple)) else (int(value),) * levels


def _depth(value: int | Sequence[int]) -> int:
    return max(value) if isinstance(value, (list, tuple)) else int(value)


def unet_elements(shape: UnetShape, latent_h: int, latent_w: int, context_tokens: int, images: int) -> int:
    """Peak elements of one UNet call on ``images`` latents (the batch times the guidance groups),
    with the sampler's own latents alive beside it."""
    tally = Tally(images)
    tally.hold(_SAMPLER_LATENTS * shape.in_channels * latent_h * latent_w)
    # 1. conv_in and the down path, 2. the mid block, 3. the up path, 4. norm, SiLU and conv_out.
    skips = _unet_down(tally, shape, latent_h, latent_w, context_tokens)
    channels, h, w = skips[-1]
    _unet_mid(tally, shape, channels, h * w, context_tokens)
    channels, area = _unet_up(tally, shape, skips, context_tokens)
    tally.during(channels * area)
    blocks.conv(tally, channels, shape.in_channels, area, area)
    return tally.peak


Skip = tuple[int, int, int]  # a skip connection's (channels, height, width)


def _unet_down(tally: Tally, shape: UnetShape, h: int, w: int, context_tokens: int) -> list[Skip]:
    """conv_in and the down path; every resnet (+ transformer) output and every downsample is a
    skip connection, held for the up path."""
    channels = shape.block_out_channels
    blocks.conv(tally, shape.in_channels, channels[0], h * w, h * w)
    skips = [(channels[0], h, w)]
    tally.hold(channels[0] * h * w)
    current = channels[0]
    for level, out in enumerate(channels):
        for _ in range(shape.layers_per_block[level]):
            blocks.resnet(tally, current, out, h * w)
            if shape.down_attention[level]:
                tally.hold(out * h * w)
                blocks.transformer(tally, out, h * w, context_tokens)
                tally.drop(out * h * w)
            current = out
            skips.append((out, h, w))
            tally.hold(out * h * w)
        if level < len(channels) - 1:
            small_h, small_w = math.ceil(h / 2), math.ceil(w / 2)
            blocks.conv(tally, out, out, h * w, small_h * small_w)  # stride 2
            h, w = small_h, small_w
            skips.append((out, h, w))
            tally.hold(out * h * w)
    return skips


def _unet_up(tally: Tally, shape: UnetShape, skips: list[Skip], context_tokens: int) -> tuple[int, int]:
    """The up path from the mid block's held output: each resnet takes the hidden state joined with
    the next skip connection; returns the (channels, positions) of the held output."""
    current, h, w = skips[-1]
    hidden = current * h * w
    for level, out in enumerate(reversed(shape.block_out_channels)):
        count = shape.layers_per_block[::-1][level] + 1
        taken, skips = skips[-count:], skips[:-count]
        block_input, latest = hidden, 0  # the block's input stays alive until the block returns
        for skip_channels, _h, _w in reversed(taken):
            joined = (current + skip_channels) * h * w
            tally.hold(joined)  # the concatenation; the previous resnet's output is then let go
            tally.drop(latest)
            blocks.resnet(tally, current + skip_channels, out, h * w)
            current, latest = out, out * h * w
            tally.hold(latest)
            tally.drop(joined)
            if shape.up_attention[level]:
                blocks.transformer(tally, out, h * w, context_tokens)
        if skips:  # upsampled to the next skip connection's size (diffusers' upsample_size)
            _, h, w = skips[-1]
            blocks.upsample(tally, current, h * w)
            tally.drop(latest)
            latest = current * h * w
        tally.drop(block_input + sum(c * sh * sw for c, sh, sw in taken))  # the block returns
        hidden = latest
    return current, h * w


def _unet_mid(tally: Tally, shape: UnetShape, channels: int, area: int, context_tokens: int) -> None:
    """The mid block (resnet, transformer, resnet) on the last skip; its output stays held."""
    if shape.mid_attention >= 0:
        blocks.resnet(tally, channels, channels, area)
    tally.hold(channels * area)  # without a mid block the up path starts from the last skip itself
    if shape.mid_attention > 0:
        blocks.transformer(tally, channels, area, context_tokens)
    if shape.mid_attention >= 0:
        blocks.resnet(tally, channels, channels, area)


def _vae_mid(tally: Tally, shape: VaeShape, channels: int, area: int) -> None:
    """The VAE's mid block (resnet, attention, resnet) on a held input; its output stays held."""
    blocks.resnet(tally, channels, channels, area)
    tally.hold(channels * area)
    if shape.mid_attention:
        blocks.vae_attention(tally, channels, area)
    blocks.resnet(tally, channels, channels, area)


def _decoder_elements(shape: VaeShape, latent_h: int, latent_w: int, images: int) -> int:
    """Peak elements of the decoder (untiled), pixels out included."""
    tally = Tally(images)
    channels, h, w = tuple(reversed(shape.block_out_channels)), latent_h, latent_w
    tally.hold(2 * shape.latent_channels * h * w)  # the latent and post_quant_conv's output
    current = channels[0]
    blocks.conv(tally, shape.latent_channels, current, h * w, h * w)
    tally.hold(current * h * w)
    # 1. Mid block; the decoder lets go of conv_in's output after it.
    _vae_mid(tally, shape, current, h * w)
    tally.drop(current * h * w)
    # 2. Up blocks: resnets, then an upsample (not after the last); each block's input stays
    # alive until the block returns.
    for level, out in enumerate(channels):
        block_input = current * h * w
        latest = blocks.resnet_chain(tally, current, out, shape.layers_per_block + 1, h * w)
        current = out
        if level < len(channels) - 1:
            h, w = h * 2, w * 2
            blocks.upsample(tally, current, h * w)
            tally.drop(latest)
        tally.drop(block_input)
    # 3. norm_out and SiLU, conv_out; then the pixels go to float, are scaled and clamped.
    tally.during(current * h * w)
    tally.drop(current * h * w)
    blocks.conv(tally, current, 3, h * w, h * w, beside=current * h * w)
    tally.hold(3 * h * w)
    tally.during(3 * 3 * h * w)
    return tally.peak


def _tile_lengths(size: int, tile: int) -> list[int]:
    """Lengths of diffusers' overlapping tiles along one side (a quarter overlap)."""
    stride = int(tile * 0.75)
    return [min(tile, size - start) for start in range(0, size, stride)]


def decode_elements(shape: VaeShape, latent_h: int, latent_w: int, images: int, tiled: bool) -> int:
    """Peak elements of decoding ``images`` latents; ``tiled``: VAE tiling is on (diffusers then
    tiles only latents larger than one tile, and keeps every decoded tile until it has blended them)."""
    tile = shape.tile_latents
    if not tiled or (latent_h <= tile and latent_w <= tile):
        return _decoder_elements(shape, latent_h, latent_w, images)
    scale = shape.scale
    kept = worst = 0
    for row in _tile_lengths(latent_h, tile):
        for col in _tile_lengths(latent_w, tile):
            worst = max(worst, kept + _decoder_elements(shape, row, col, images))
            kept += 3 * row * col * scale * scale * images
    pixels = 3 * latent_h * latent_w * scale * scale * images
    return max(worst, kept + 2 * pixels + 3 * pixels)  # blended rows, the whole image, then to float


def _encoder_elements(shape: VaeShape, height: int, width: int, images: int) -> int:
    """Peak elements of the encoder (untiled), from pixels to the latent moments."""
    tally = Tally(images)
    tally.hold(2 * 3 * height * width)  # the pixels, and their copy in the VAE's dtype
    channels, h, w = shape.block_out_channels, height, width
    current = channels[0]
    blocks.conv(tally, 3, current, h * w, h * w)
    tally.hold(current * h * w)
    # 1. Down blocks: resnets, then a padded stride-2 conv (not after the last); each block's input
    # stays alive until the block returns.
    for level, out in enumerate(channels):
        block_input = current * h * w
        latest = blocks.resnet_chain(tally, current, out, shape.layers_per_block, h * w)
        current = out
        if level < len(channels) - 1:
            small_h, small_w = math.ceil(h / 2), math.ceil(w / 2)
            padded = current * (h + 1) * (w + 1)
            blocks.conv(tally, current, current, (h + 1) * (w + 1), small_h * small_w, beside=padded)
            h, w = small_h, small_w
            tally.hold(current * h * w)
            tally.drop(latest)
        tally.drop(block_input)
    # 2. Mid block, then norm_out, SiLU and conv_out to the latent moments.
    _vae_mid(tally, shape, current, h * w)
    tally.drop(current * h * w)
    blocks.conv(tally, current, 2 * shape.latent_channels, h * w, h * w, beside=2 * current * h * w)
    return tally.peak


def encode_elements(shape: VaeShape, height: int, width: int, images: int, tiled: bool) -> int:
    """Peak elements of encoding ``images`` images of ``height`` x ``width`` pixels."""
    tile = shape.tile_pixels
    if not tiled or (height <= tile and width <= tile):
        return _encoder_elements(shape, height, width, images)
    worst = max(_encoder_elements(shape, row, col, images) for row in _tile_lengths(height, tile)
                for col in _tile_lengths(width, tile))
    return 2 * 3 * height * width * images + worst  # the whole image stays alive beside each tile


def text_elements(shape: TextShape, chunks: int) -> int:
    """Peak elements of encoding one prompt of ``chunks`` 75-token chunks with one CLIP encoder:
    every layer's hidden states (kept for clip skip), and one layer's attention and MLP."""
    tokens = TOKENS_PER_CHUNK * chunks
    kept = (shape.layers + 1) * shape.hidden_size * tokens
    layer = 6 * shape.hidden_size * tokens + 2 * shape.intermediate_size * tokens
    scores = shape.heads * TOKENS_PER_CHUNK * tokens
    return kept + max(layer, scores)

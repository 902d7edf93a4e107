"""A1111's emphasis syntax for the T5 and LLM encoders of the flow families.

``(word:1.2)`` splits a text into fragments with weights; each fragment is tokenised on its own (a
plain text is one fragment, so its tokens are exactly the tokenizer's), and after encoding each
token's hidden state is multiplied by its weight. "Original" then rescales the whole sequence so
its mean is what it was before (A1111's rule, which Forge applies to T5 too); "No norm" only
multiplies; "None" reads the text literally, brackets included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from modules import prompt_parser

ORIGINAL, NO_NORM, IGNORE, NONE = "Original", "No norm", "Ignore", "None"


@dataclass(frozen=True)
class WeightedTokens:
    ids: tuple[int, ...]  # without special tokens
    weights: tuple[float, ...]


def weighted_tokens(tokenizer: Any, text: str, emphasis: str) -> WeightedTokens:
    """The text's token ids, each with its emphasis weight (all 1.0 unless the syntax gives others)."""
    fragments = [(text, 1.0)] if emphasis == NONE else [
        (piece, weight) for piece, weight in prompt_parser.parse_attention(text) if piece != prompt_parser.BREAK_MARK
    ]
    ids: list[int] = []
    weights: list[float] = []
    for piece, weight in fragments:
        piece_ids = tokenizer(piece, add_special_tokens=False)["input_ids"]
        ids += piece_ids
        weights += [1.0 if emphasis == IGNORE else weight] * len(piece_ids)
    return WeightedTokens(tuple(ids), tuple(weights))


def apply_weights(hidden: torch.Tensor, weights: torch.Tensor, emphasis: str) -> torch.Tensor:
    """``hidden`` (1, T, width) with each token's weight (T,) applied; padding tokens carry 1.0."""
    if emphasis in (IGNORE, NONE) or bool((weights == 1.0).all()):
        return hidden
    weights = weights.to(hidden.device, hidden.dtype)
    scaled = hidden * weights[None, :, None]
    if emphasis == NO_NORM:
        return scaled
    before, after = hidden.mean(), scaled.mean()
    if after.abs() <= 1e-6 * hidden.abs().mean():  # a degenerate (random) encoder: only the scaling
        return scaled
    return scaled * (before / after)

"""A1111's X/Y/Z plot axis lists (scripts/xyz_grid.py, v1.10), so positional API calls line up.

A1111's axis type dropdowns send a position, not a name, and the position counts in the tab's own
list: every axis for both tabs, plus txt2img's own or img2img's own (which is why "Sampler" is 9 in
both lists while "Checkpoint name" is 11 in txt2img's and 10 in img2img's). Atelier names its axes
as A1111 does, so a position becomes a name here, and a name Atelier has no axis for is refused
with the axis named.

Pure Python, no Atelier imports.
"""

from __future__ import annotations

BOTH, TXT2IMG, IMG2IMG = "both", "txt2img", "img2img"

# (label, tab), in A1111's order.
AXIS_OPTIONS: tuple[tuple[str, str], ...] = (
    ("Nothing", BOTH), ("Seed", BOTH), ("Var. seed", BOTH), ("Var. strength", BOTH), ("Steps", BOTH),
    ("Hires steps", TXT2IMG), ("CFG Scale", BOTH), ("Image CFG Scale", IMG2IMG), ("Prompt S/R", BOTH),
    ("Prompt order", BOTH), ("Sampler", TXT2IMG), ("Hires sampler", TXT2IMG), ("Sampler", IMG2IMG),
    ("Checkpoint name", BOTH), ("Negative Guidance minimum sigma", BOTH), ("Sigma Churn", BOTH),
    ("Sigma min", BOTH), ("Sigma max", BOTH), ("Sigma noise", BOTH), ("Schedule type", BOTH),
    ("Schedule min sigma", BOTH), ("Schedule max sigma", BOTH), ("Schedule rho", BOTH),
    ("Beta schedule alpha", BOTH), ("Beta schedule beta", BOTH), ("Eta", BOTH), ("Clip skip", BOTH),
    ("Denoising", BOTH), ("Initial noise multiplier", BOTH), ("Extra noise", BOTH), ("Hires upscaler", TXT2IMG),
    ("Cond. Image Mask Weight", IMG2IMG), ("VAE", BOTH), ("Styles", BOTH), ("UniPC Order", BOTH),
    ("Face restore", BOTH), ("Token merging ratio", BOTH), ("Token merging ratio high-res", BOTH),
    ("Always discard next-to-last sigma", BOTH), ("SGM noise multiplier", BOTH), ("Refiner checkpoint", BOTH),
    ("Refiner switch at", BOTH), ("RNG source", BOTH), ("FP8 mode", BOTH), ("Size", BOTH),
    # Forge's axes for flow models, after A1111's so that A1111's positions stay as they are.
    ("Distilled CFG Scale", BOTH), ("Shift", BOTH),
)

# Axes whose values A1111's UI picks from a list: with "Use text inputs instead of dropdowns" off,
# A1111 reads their values from the list (x_values_dropdown), not from the text.
WITH_CHOICES = frozenset({
    "Sampler", "Hires sampler", "Checkpoint name", "Schedule type", "Hires upscaler", "VAE", "Styles",
    "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint", "RNG source", "FP8 mode",
})


def axis_list(tab: str) -> tuple[str, ...]:
    """A1111's axis labels for ``tab`` ("txt2img" or "img2img"), position by position."""
    return tuple(label for label, where in AXIS_OPTIONS if where in (BOTH, tab))

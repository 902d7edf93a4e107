"""What the guided denoiser lets a job's hooks see and change at each model call.

The engine knows no extensions: the renderer hands the denoiser a :class:`DenoiserHooks` (built by
the services layer from the extensions' handlers) and the denoiser calls it at three moments of
every model call: before the UNet (extra residuals and conditions), after it (each row's
prediction), and after guidance (the combined prediction). Without hooks nothing changes: not one
extra operation runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class UnetInputs:
    """One UNet call's inputs: rows are the prompts' groups then the negative prompt's."""

    x: torch.Tensor  # scaled for the UNet (rows, C, h, w), inpainting channels not included
    sigma: torch.Tensor  # (rows,)
    timestep: torch.Tensor  # (rows,)
    tokens: torch.Tensor  # (rows, tokens, width)
    added: dict[str, torch.Tensor] | None
    cond_rows: torch.Tensor  # (rows,) bool
    batch: int
    unet: torch.nn.Module


@dataclass
class UnetExtras:
    """What the hooks add to one UNet call (None / empty: nothing)."""

    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    intrablock: list[torch.Tensor] | None = None
    conditions: dict[str, Any] = field(default_factory=dict)
    tokens: torch.Tensor | None = None

    def unet_kwargs(self, dtype: torch.dtype) -> dict[str, Any]:
        """The UNet's keyword arguments for these additions, in its dtype."""
        kwargs: dict[str, Any] = {}
        if self.down is not None:
            kwargs["down_block_additional_residuals"] = tuple(r.to(dtype) for r in self.down)
        if self.mid is not None:
            kwargs["mid_block_additional_residual"] = self.mid.to(dtype)
        if self.intrablock is not None:
            kwargs["down_intrablock_additional_residuals"] = [r.to(dtype) for r in self.intrablock]
        return kwargs


class DenoiserHooks(Protocol):
    """A job's hooks, as the denoiser calls them."""

    model_calls: bool  # False: no MODEL_CALL handlers (the UNet call is made as without hooks)

    def begin_pass(self, total: int) -> None:
        """A sampling pass of ``total`` steps begins (hires fix's second pass is another)."""

    def begin_step(self) -> None:
        """A sampler step begins (its model calls belong to it)."""

    def model_call(self, inputs: UnetInputs) -> UnetExtras | None: ...

    def denoised(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, cond_rows: torch.Tensor,
                 batch: int) -> torch.Tensor: ...

    def after_cfg(self, x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor, cond: torch.Tensor,
                  uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor: ...

"""cfg_rescale: a per-step tweak of the guided prediction (AFTER_CFG), recorded in the infotext.

Classifier-free guidance pushes the prediction away from the negative prompt's; at high CFG scales
its spread grows past what the model ever produced and images burn. "CFG rescale" (Lin et al.,
2023) scales the guided prediction back to the spread of the prompt's own prediction, and blends
the two by ``multiplier``. Here it works on the denoised (clean-image) predictions the hook hands
over, per image.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modules.extension_api import AfterCfg, ExtensionSetup, Hook, InfotextFields, Param

KEY = "CFG Rescale"  # the infotext key this extension writes and reads back


def setup(ext: ExtensionSetup) -> None:
    ext.add_params(Param.float("multiplier", 0.0, "CFG rescale", minimum=0.0, maximum=1.0))
    ext.on(Hook.AFTER_CFG, rescale)
    ext.add_infotext(write_key, read_key)


def rescale(ctx: AfterCfg) -> Any:
    multiplier = ctx.params["multiplier"]
    if multiplier == 0 or ctx.uncond is None:  # off, or no guidance to correct (CFG 1)
        return None  # None keeps the prediction as it is
    dims = tuple(range(1, ctx.denoised.ndim))  # per image
    rescaled = ctx.denoised * (ctx.cond.std(dim=dims, keepdim=True) / ctx.denoised.std(dim=dims, keepdim=True))
    return multiplier * rescaled + (1 - multiplier) * ctx.denoised


def write_key(ctx: InfotextFields) -> Mapping[str, object] | None:
    multiplier = ctx.params["multiplier"]
    return {KEY: multiplier} if multiplier else None


def read_key(fields: Mapping[str, str]) -> Mapping[str, Any] | None:
    return {"multiplier": float(fields[KEY])} if KEY in fields else None

"""ControlNet at sampling time: what a job's units need (JOB_START) and their residuals at every
UNet call (MODEL_CALL), as the A1111 extension computes them.

At each call a unit is active when ``start <= step / total < end`` (so a guidance end of 0, or a
weight of 0, changes nothing) and its hires option allows the pass. Its residuals (the down blocks'
then the middle block's, 13 in SD 1.x) are scaled by the weight; "My prompt is more important" and
"ControlNet is more important" use soft injection, residual i of 13 scaled by
``weight * 0.825 ** (12 - i)``, and "ControlNet is more important" adds them to the prompt's rows
only (the negative prompt's rows get none). In hires fix's second pass canny and mlsd maps always
use soft injection, as there. Units add up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cn_adapters
import cn_adapters_ip
import cn_control_lora
from cn_hint import decode_image, fit, hint_tensor, pixel_perfect_resolution
from cn_models import ControlNetCache, ModelFile, check_family, find_models, resolve
from cn_units import ControlMode, HiresOption, ResizeMode, is_active
from PIL import Image

from modules.extension_api import FieldError, JobStart, ModelCall, ValidationError, decode_png

if TYPE_CHECKING:  # torch is imported where used: loading the extension must not import it
    import torch

log = logging.getLogger(__name__)

SOFT_BASE = 0.825  # the A1111 extension's soft injection: residual i of 13 weighted 0.825 ** (12 - i)
SOFT_COUNT = 13
HIRES_SOFT_MODULES = ("canny", "mlsd")  # always soft in hires fix's second pass (the A1111 extension)
STATE_UNITS = "units"
STATE_IP = "ip_adapters"  # cn_adapters_ip.IpRun: the job's IP-Adapter units, loaded into its UNet
# Atelier's img2img resize modes (GenerationRequest.resize_mode names) -> the unit's fitting.
JOB_RESIZE = {"JUST_RESIZE": ResizeMode.JUST_RESIZE, "CROP_AND_RESIZE": ResizeMode.CROP_AND_RESIZE,
              "RESIZE_AND_FILL": ResizeMode.RESIZE_AND_FILL, "LATENT_UPSCALE": ResizeMode.JUST_RESIZE}

# The preprocessor: (module, image, processor_res, threshold_a, threshold_b, host, device) -> map.
Preprocess = Callable[[str, Image.Image, int, float, float, Any, Any], Image.Image]


@dataclass
class PreparedUnit:
    """One active unit of a job: its ControlNet, its map, and the map fitted per pass size."""

    index: int  # the unit's param slot (unit_0 ...)
    unit: Mapping[str, Any]
    model: ModelFile
    net: Any  # diffusers ControlNetModel, or None for a T2I-Adapter
    detected: Image.Image  # the preprocessor's map, before fitting
    resize_mode: ResizeMode
    low_vram: bool
    used_res: int  # the processor resolution used (pixel perfect's, or the unit's)
    adapter: Any = None  # cn_adapters.T2IRun when the model is a T2I-Adapter
    ip_unit: Any = None  # cn_adapters_ip.IpUnit when the model is an IP-Adapter
    mask: Image.Image | None = None  # an inpaint preprocessor's mask ("L", white = repaint)
    hints: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)

    def hint(self, width: int, height: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if (width, height) not in self.hints:
            hint = hint_tensor(fit(self.detected, width, height, self.resize_mode))
            if self.mask is not None:  # the inpaint ControlNet's input: the pixels to repaint are -1
                repaint = fit(self.mask.convert("RGB"), width, height, self.resize_mode)[:, :, 0] > 127
                hint[:, :, repaint] = -1.0
            self.hints[(width, height)] = hint
        return self.hints[(width, height)].to(device, dtype)


def unit_values(params: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    """(slot, unit) of every unit sent, in slot order."""
    found = []
    for name, value in params.items():
        if name.startswith("unit_") and value is not None:
            found.append((int(name.split("_")[1]), value))
    return sorted(found, key=lambda pair: pair[0])


def _control_image(unit: Mapping[str, Any], request: Any,
                   key: str) -> tuple[Image.Image, Image.Image | None, ResizeMode]:
    """The unit's own image, or an img2img job's image with the job's resize mode (as in A1111); and
    for an inpaint preprocessor, the mask of what is repainted (the unit's, else the job's)."""
    mode = ResizeMode(unit["resize_mode"])
    if unit["image"] is not None:
        image = decode_image(unit["image"], f"{key}.image")
        mask = decode_image(unit["mask"], f"{key}.mask") if unit["mask"] is not None else None
    elif request.init_image is not None:
        image = decode_png(request.init_image)
        mask = decode_png(request.mask) if request.mask is not None else None
        mode = JOB_RESIZE.get(request.resize_mode.name, ResizeMode.JUST_RESIZE)
    else:
        raise ValueError(f"{key}.image: a ControlNet unit needs a control image in txt2img")
    if mask is None or not unit["module"].startswith("inpaint"):
        return image, None, mode
    return image.convert("RGB"), mask.convert("L").resize(image.size), mode


UNET_FAMILIES = ("sd15", "sd2", "sdxl")  # ModelView.family prefixes of the models units can act on


def prepare(ctx: JobStart, cache: ControlNetCache, preprocess: Preprocess) -> None:
    """JOB_START: load, check and preprocess every active unit; a refusal names the unit's key."""
    import torch

    request = ctx.job.request
    if not any(is_active(unit) for _index, unit in unit_values(ctx.params)):
        return  # most jobs: no unit, nothing to list or load
    if not ctx.model.family.startswith(UNET_FAMILIES):  # FLUX, SD 3.5, ...: transformers, no UNet
        raise ValidationError([FieldError("alwayson_scripts.controlnet", f"ControlNet, T2I-Adapter and IP-Adapter "
                                          f"units need an SD 1.x, SD 2.x or SDXL model; the loaded model is "
                                          f"{ctx.model.architecture}")])
    models = find_models(ctx.host)
    prepared: list[PreparedUnit] = []
    errors: list[FieldError] = []
    for index, unit in unit_values(ctx.params):
        key = f"alwayson_scripts.controlnet.unit_{index}"
        if not is_active(unit):
            continue
        try:
            prepared.append(_prepare_unit(ctx, index, unit, models, cache, preprocess))
        except ValueError as exc:
            errors.append(FieldError(key, str(exc)))
    ip_items = [item for item in prepared if item.ip_unit is not None]
    if ip_items:  # all IP-Adapters of a job go into the UNet together (undone when the job ends)
        try:
            ctx.state[STATE_IP] = cn_adapters_ip.start_ip(ctx, [item.ip_unit for item in ip_items])
        except ValueError as exc:
            errors.append(FieldError(f"alwayson_scripts.controlnet.unit_{ip_items[0].index}", f"model: {exc}"))
    if errors:
        raise ValidationError(errors)
    for item in prepared:
        if item.net is not None and not item.low_vram:
            _move(item.net, ctx.model.device, ctx.model.dtype)
            ctx.patches.on_undo(lambda net=item.net: _move(net, torch.device("cpu"), torch.float32))
    if prepared:
        log.info("ControlNet: %d unit(s) for job %s (%dx%d)", len(prepared), ctx.job.id, request.width,
                 request.height)
    ctx.state[STATE_UNITS] = prepared


def _move(net: Any, device: torch.device, dtype: torch.dtype) -> None:
    """Move a ControlNet (its dtype only when it changes: diffusers warns about every cast)."""
    net.to(device)
    if net.dtype != dtype:
        net.to(dtype=dtype)


def _prepare_unit(ctx: JobStart, index: int, unit: Mapping[str, Any], models: list[ModelFile],
                  cache: ControlNetCache, preprocess: Preprocess) -> PreparedUnit:
    request = ctx.job.request
    model = resolve(unit["model"], models)
    if model is None:
        raise ValueError("model: choose a ControlNet model (\"None\" runs no ControlNet)")
    adapter = net = None
    kind = cn_adapters.detect_kind(model.path)
    if kind == cn_adapters.AdapterKind.IP.value:  # the image itself goes to the CLIP image encoder
        image, _mask, mode = _control_image(unit, request, f"unit_{index}")
        cn_adapters_ip.check_ip_adapter(ctx, model.path)
        ip = cn_adapters_ip.IpUnit(model.path, image, unit["weight"], unit["guidance_start"], unit["guidance_end"])
        return PreparedUnit(index, unit, model, None, image, mode, False, -1, ip_unit=ip)
    if kind == cn_adapters.AdapterKind.T2I.value:
        adapter = cn_adapters.start_t2i(ctx, model.path, unit["weight"], unit["guidance_start"], unit["guidance_end"],
                                        [m.value for m in ControlMode].index(unit["control_mode"]))
    elif cn_control_lora.is_control_lora(model.path):  # built on the job's UNet, run as a ControlNet
        net = cn_control_lora.load(cache, model, ctx)
    else:
        time_dim = getattr(ctx.model.unet.config, "addition_time_embed_dim", None)
        net, family = cache.get(model, time_dim)
        check_family(model, family, ctx.model.family)
    image, mask, mode = _control_image(unit, request, f"unit_{index}")
    res = unit["processor_res"]
    if unit["pixel_perfect"]:
        res = pixel_perfect_resolution(image.size, (request.width, request.height), mode)
    detected = preprocess(unit["module"], image, res, unit["threshold_a"], unit["threshold_b"], ctx.host,
                          ctx.model.device)
    return PreparedUnit(index, unit, model, net, detected.convert("RGB"), mode, bool(unit["low_vram"]), res,
                        adapter, mask=mask)


def _applies(item: PreparedUnit, ctx: ModelCall, guidance: bool = True) -> bool:
    """Whether the unit acts in this call: its guidance window (``guidance``) and hires option."""
    unit = item.unit
    progress = ctx.step / max(ctx.total, 1)
    if guidance and not unit["guidance_start"] <= progress < unit["guidance_end"]:
        return False
    hires = ctx.job.request.hires is not None
    option = HiresOption(unit["hr_option"])
    if hires and option is HiresOption.LOW_RES_ONLY:
        return ctx.pass_index == 0
    if hires and option is HiresOption.HIGH_RES_ONLY:
        return ctx.pass_index == 1
    return True


def scales(unit: Mapping[str, Any], count: int, second_pass: bool) -> list[float]:
    """The weight of each of ``count`` residuals (down blocks', then the middle block's)."""
    weight = float(unit["weight"])
    soft = ControlMode(unit["control_mode"]) is not ControlMode.BALANCED or (
        second_pass and any(name in unit["module"] for name in HIRES_SOFT_MODULES))
    if not soft:
        return [weight] * count
    # Like the A1111 extension: the 13 SD 1.x weights, cut to the model's count (SDXL has 10).
    return [weight * SOFT_BASE ** float(SOFT_COUNT - 1 - i) for i in range(SOFT_COUNT)][:count]


def _residuals(item: PreparedUnit, ctx: ModelCall) -> tuple[list[torch.Tensor], torch.Tensor]:
    import torch

    device, dtype = ctx.x.device, ctx.x.dtype
    net = item.net
    if item.low_vram:
        _move(net, device, dtype)
    try:
        hint = item.hint(ctx.width, ctx.height, device, dtype).expand(ctx.x.shape[0], -1, -1, -1)
        added = {k: v.to(dtype) for k, v in ctx.added.items()} if ctx.added else None
        with torch.no_grad():
            down, mid = net(ctx.x, ctx.timestep, encoder_hidden_states=ctx.tokens.to(dtype), controlnet_cond=hint,
                            added_cond_kwargs=added, return_dict=False)
    finally:
        if item.low_vram:
            _move(net, torch.device("cpu"), torch.float32)
    outputs = [*down, mid]
    weights = scales(item.unit, len(outputs), ctx.pass_index == 1)
    outputs = [out * w for out, w in zip(outputs, weights, strict=False)]
    if ControlMode(item.unit["control_mode"]) is ControlMode.CONTROL:
        keep = ctx.cond_rows.to(device=device, dtype=dtype).view(-1, 1, 1, 1)
        outputs = [out * keep for out in outputs]
    return outputs[:-1], outputs[-1]


def model_call(ctx: ModelCall) -> None:
    """MODEL_CALL: every applying unit's residuals, added to this UNet call."""
    import torch

    items = ctx.state.get(STATE_UNITS, ())
    if ctx.state.get(STATE_IP) is not None:
        allowed = [_applies(item, ctx, guidance=False) for item in items if item.ip_unit is not None]
        cn_adapters_ip.ip_model_call(ctx, ctx.state[STATE_IP], allowed)
    for item in items:
        if item.ip_unit is not None:
            continue
        if item.adapter is not None:
            if _applies(item, ctx, guidance=False):
                hint = item.hint(ctx.width, ctx.height, ctx.x.device, torch.float32)
                cn_adapters.t2i_model_call(ctx, item.adapter, hint)
        elif _applies(item, ctx):
            down, mid = _residuals(item, ctx)
            ctx.changes.add_residuals(down, mid)

"""ControlNet (the A1111 extension sd-webui-controlnet, built in): units in txt2img, img2img,
inpainting and hires fix, its REST routes under /controlnet, its infotext keys, its panel.

Clients send units as A1111's do: ``alwayson_scripts: {"controlnet": {"args": [unit, ...]}}``
(positional, up to :data:`MAX_UNITS`) or ``{"args": {"unit_0": unit}}``; each unit is checked here
(``cn_units``), on the front, before the job is queued. Models are looked up, loaded and checked
against the checkpoint's family where the job runs (JOB_START), so a remote worker uses its own
ControlNet folder.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping
from functools import partial
from typing import Any

import cn_preprocess
import cn_ui
from cn_hint import decode_image
from cn_infotext import read_fields, write_fields
from cn_models import ControlNetCache, find_models
from cn_run import STATE_UNITS, model_call, prepare, unit_values
from cn_units import parse_unit
from PIL import Image

from modules.extension_api import (
    BeforeGenerate,
    ExtensionSetup,
    FieldError,
    Hook,
    InfotextFields,
    Param,
    RouteCall,
    UiPanel,
    ValidationError,
)

API_VERSION = 2  # what GET /controlnet/version answers
UNIT_COUNT = 3  # units the panel shows (A1111's default control_net_unit_count)
MAX_UNITS = 8  # units a request may send


def check_unit(value: Any) -> dict[str, Any] | None:
    """A unit as sent -> the normalised unit; its images are decoded once here so a bad one is a 422."""
    unit = parse_unit(value)
    if unit is not None:
        for key in ("image", "mask"):
            if unit[key] is not None:
                decode_image(unit[key], key)
    return unit


def unit_enabled(unit: Mapping[str, Any] | None) -> bool:
    """Whether a checked unit asks for control (a disabled one, as the UI sends it, does nothing)."""
    return unit is not None and bool(unit.get("enabled"))


def check_job(ctx: BeforeGenerate) -> None:
    """BEFORE_GENERATE: what can be refused on the front (modules, a missing image in txt2img)."""
    errors = []
    for index, unit in unit_values(ctx.params):
        key = f"alwayson_scripts.controlnet.unit_{index}"
        if not unit["enabled"]:
            continue
        try:
            cn_preprocess.check_module(unit["module"])
        except ValueError as exc:
            errors.append(FieldError(key, f"module: {exc}"))
        if unit["image"] is None and not ctx.request.is_img2img:
            errors.append(FieldError(key, "image: a ControlNet unit needs a control image in txt2img"))
        if unit["mask"] is not None and not unit["module"].startswith("inpaint"):
            errors.append(FieldError(key, "mask: only the inpaint preprocessors use a mask"))
    if errors:
        raise ValidationError(errors)


def _resolved(unit: Mapping[str, Any]) -> dict[str, Any]:
    """The unit with -1 ("unset") sliders as the preprocessor's defaults, as the A1111 extension
    writes them."""
    values = dict(unit)
    try:
        sliders = cn_preprocess.slider_specs(unit["module"])
    except ValueError:  # an unknown module was refused before the job; nothing to resolve
        return values
    for name in ("processor_res", "threshold_a", "threshold_b"):
        slider = getattr(sliders, "resolution" if name == "processor_res" else name)
        if values[name] == -1 and slider is not None:
            values[name] = int(slider.value) if name == "processor_res" else float(slider.value)
    return values


def infotext(ctx: InfotextFields) -> dict[str, str] | None:
    """INFOTEXT: ``ControlNet N`` for every enabled unit (processor resolution as used)."""
    used = {item.index: item for item in ctx.state.get(STATE_UNITS, ())}
    units = []
    for index, unit in unit_values(ctx.params):
        values = _resolved(unit)
        if index in used:  # as it ran: the model's title, pixel perfect's resolution
            values["model"] = used[index].model.title
            if used[index].used_res != -1:
                values["processor_res"] = used[index].used_res
        units.append(values)
    return write_fields(units) or None


def _encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError([FieldError(key, f"must be a number, got {value!r}")])
    return value


def detect(call: RouteCall, annotators: cn_preprocess.AnnotatorCache | None = None) -> dict[str, Any]:
    """POST /controlnet/detect: run a preprocessor over images, as the A1111 extension's route."""
    body = call.body if isinstance(call.body, Mapping) else {}
    module = body.get("controlnet_module", "none")
    try:
        cn_preprocess.check_module(module if isinstance(module, str) else repr(module))
    except ValueError as exc:
        raise ValidationError([FieldError("controlnet_module", str(exc))]) from exc
    images = body.get("controlnet_input_images", body.get("controlnet_images", []))
    if not isinstance(images, list) or not images:
        raise ValidationError([FieldError("controlnet_input_images", "no image given")])
    res = _number(body, "controlnet_processor_res", -1)
    if res != -1 and not (64 <= res <= 2048 and float(res).is_integer()):
        raise ValidationError([FieldError("controlnet_processor_res", f"must be -1 or 64 to 2048, got {res!r}")])
    a, b = _number(body, "controlnet_threshold_a", -1), _number(body, "controlnet_threshold_b", -1)
    decoded = []
    for i, text in enumerate(images):
        try:
            decoded.append(decode_image(_plain(text), f"controlnet_input_images[{i}]"))
        except ValueError as exc:
            raise ValidationError([FieldError(*str(exc).split(": ", 1))]) from exc
    try:
        maps = [cn_preprocess.run(module, image, int(res), float(a), float(b), call.host, None, cache=annotators)
                for image in decoded]
    except ValueError as exc:
        raise ValidationError([FieldError("controlnet_module", str(exc))]) from exc
    return {"images": [_encode(m) for m in maps], "info": "Success"}


def module_list(call: RouteCall) -> dict[str, Any]:
    """GET /controlnet/module_list: A1111's internal names, or the UI's with ``?alias_names=true``."""
    aliases = str(call.query.get("alias_names", "false")).lower() == "true"
    return {"module_list": list(cn_preprocess.module_list(aliases)),
            "module_detail": dict(cn_preprocess.module_detail(aliases))}


def _plain(text: Any) -> str:
    if not isinstance(text, str):
        raise ValueError("controlnet_input_images: each image must be base64 text")
    return text.split(",", 1)[1] if text.startswith("data:") else text


def setup(ext: ExtensionSetup) -> None:
    cache = ControlNetCache()
    annotators = cn_preprocess.AnnotatorCache()  # preprocessor models, kept loaded between jobs
    ext.add_params(*(Param.object(f"unit_{i}", check_unit, label=f"ControlNet Unit {i}", active=unit_enabled)
                      for i in range(MAX_UNITS)))
    ext.on(Hook.BEFORE_GENERATE, check_job)
    ext.on(Hook.JOB_START, lambda ctx: prepare(ctx, cache, partial(cn_preprocess.run, cache=annotators)))
    ext.on(Hook.MODEL_CALL, model_call)
    ext.add_infotext(infotext, read_fields)

    def titles(host: Any) -> list[str]:
        return [model.title for model in find_models(host)]

    preprocessors = cn_ui.Preprocessors(
        names=cn_preprocess.module_list, detail=cn_preprocess.module_detail,
        run=lambda host, image, module, res, a, b: cn_preprocess.run(module, image, res, a, b, host, None,
                                                                     cache=annotators))
    ext.on(Hook.UI_PANEL, lambda ctx: _panel(ctx, titles, preprocessors))
    ext.set_title("ControlNet")
    ext.set_route_prefix("/controlnet")
    ext.add_route("GET", "/version", lambda call: {"version": API_VERSION})
    ext.add_route("GET", "/model_list", lambda call: {"model_list": titles(call.host)})
    ext.add_route("GET", "/module_list", module_list)
    ext.add_route("GET", "/settings", lambda call: {"control_net_unit_count": UNIT_COUNT})
    ext.add_route("POST", "/detect", lambda call: detect(call, annotators))


def _panel(ctx: UiPanel, titles: Any, preprocessors: Any) -> Any:
    return cn_ui.build_panel(ctx, titles, preprocessors, declared=MAX_UNITS)


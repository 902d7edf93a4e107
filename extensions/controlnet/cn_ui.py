"""ControlNet's panel in txt2img and img2img (A1111's accordion): one tab per unit, each unit one
param (``unit_0`` ...) whose value is the unit dict a REST client sends.

Each unit's controls make a :class:`PanelValue`: ``combine`` turns the controls' values into the unit
dict (the image as base64 PNG text, as the ``webuiapi`` client sends it), ``split`` gives the controls'
values back from a unit dict (a pasted infotext carries no image, so the image comes back empty).
The preprocessor's sliders follow the chosen module (its ``module_detail`` entry), as A1111's do.
Every event here is private: none of them is part of the server's API.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.extension_api import Host, PanelValue, UiPanel

log = logging.getLogger(__name__)

UNIT_COUNT = 3
NO_MODEL = "None"
NO_MODULE = "none"
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
# What a unit sends for a slider its module does not use (the values ``webuiapi``'s ControlNetUnit sends).
DEFAULT_RES = 512
DEFAULT_THRESHOLD = 64.0


@dataclass(frozen=True)
class Preprocessors:
    """The preprocessors as the panel needs them (from ``cn_preprocess``, or stand-ins in tests)."""

    names: Callable[[], Sequence[str]]  # module_list()
    detail: Callable[[], Mapping[str, Mapping[str, Any]]]  # module_detail(): {module: {"sliders": [...]}}
    run: Callable[[Host, Image.Image, str, int, float, float], Image.Image]  # host, image, module, res, a, b


@dataclass(frozen=True)
class SliderSpec:
    label: str
    value: float
    minimum: float
    maximum: float
    step: float


@dataclass(frozen=True)
class ModuleSliders:
    """A module's three sliders (None: the module has no such slider; it is hidden)."""

    resolution: SliderSpec | None
    threshold_a: SliderSpec | None
    threshold_b: SliderSpec | None


def _spec(slider: Mapping[str, Any]) -> SliderSpec:
    low, high = float(slider.get("min", 0)), float(slider.get("max", 1))
    step = float(slider.get("step") or (1 if high - low > 2 else 0.01))
    return SliderSpec(label=str(slider.get("name", "")), value=float(slider.get("value", low)), minimum=low,
                      maximum=high, step=step)


def module_sliders(detail: Mapping[str, Mapping[str, Any]], module: str) -> ModuleSliders:
    """A module's sliders from ``module_detail``, by position as A1111 lists them: resolution,
    threshold A, threshold B (None, or left off at the end: the module has no such slider)."""
    sliders = [*list((detail.get(module) or {}).get("sliders") or [])[:3], None, None, None]
    specs = [_spec(slider) if slider else None for slider in sliders[:3]]
    return ModuleSliders(specs[0], specs[1], specs[2])


def encode_image(image: Image.Image) -> str:
    """Base64 PNG text without a data: header (what ``webuiapi`` sends for a unit's image)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_image(text: str) -> Image.Image | None:
    """A unit's base64 image (with or without a data: header), None when it does not decode."""
    try:
        data = base64.b64decode(text.split(",", 1)[1] if text.startswith("data:") else text, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (ValueError, OSError):
        return None


def _named(value: Any, names: Sequence[str], default: str) -> str:
    """A mode given by name or by index (A1111's API takes both) as its name."""
    if isinstance(value, bool):
        return default
    if isinstance(value, int) and 0 <= value < len(names):
        return names[value]
    return value if isinstance(value, str) and value in names else default


# The order of a unit's controls: combine() takes their values in it, split() gives them back in it.
FIELDS = ("enabled", "image", "use_tab_image", "low_vram", "pixel_perfect", "module", "model", "weight",
          "guidance_start", "guidance_end", "processor_res", "threshold_a", "threshold_b", "control_mode",
          "resize_mode")


def combine(enabled: bool, image: Image.Image | None, use_tab_image: bool, low_vram: bool, pixel_perfect: bool,
            module: str | None, model: str | None, weight: float, guidance_start: float, guidance_end: float,
            processor_res: float, threshold_a: float, threshold_b: float, control_mode: str,
            resize_mode: str) -> dict[str, Any]:
    """The unit dict a REST client sends. No image when the unit is off (nothing to send) or uses
    the tab's image (img2img's image is the control image then, as in A1111)."""
    send_image = bool(enabled) and image is not None and not use_tab_image
    return {
        "enabled": bool(enabled),
        "image": encode_image(image) if send_image else None,
        "module": module or NO_MODULE,
        "model": model or NO_MODEL,
        "weight": float(weight),
        "resize_mode": _named(resize_mode, RESIZE_MODES, RESIZE_MODES[1]),
        "low_vram": bool(low_vram),
        "processor_res": int(processor_res),
        "threshold_a": float(threshold_a),
        "threshold_b": float(threshold_b),
        "guidance_start": float(guidance_start),
        "guidance_end": float(guidance_end),
        "control_mode": _named(control_mode, CONTROL_MODES, CONTROL_MODES[0]),
        "pixel_perfect": bool(pixel_perfect),
    }


def _or_default(value: Any, spec: SliderSpec | None, fallback: float) -> float:
    """A slider's value; -1 (A1111's "the preprocessor's default") as that default."""
    number = float(value)
    if number >= 0:
        return number
    return spec.value if spec is not None else fallback


def split(unit: Mapping[str, Any] | None, img2img: bool = False,
          detail: Mapping[str, Mapping[str, Any]] | None = None) -> list[Any]:
    """The controls' values (in :data:`FIELDS` order) for a unit dict; None: a unit left off.
    ``detail``: module_detail, for the defaults a unit's -1 values stand for."""
    unit = unit or {}
    sliders = module_sliders(detail or {}, str(unit.get("module") or NO_MODULE))
    image = unit.get("image")
    picture = decode_image(image) if isinstance(image, str) and image else None
    values = {
        "enabled": bool(unit.get("enabled", bool(unit))),
        "image": picture,
        "use_tab_image": img2img and picture is None,
        "low_vram": bool(unit.get("low_vram", False)),
        "pixel_perfect": bool(unit.get("pixel_perfect", False)),
        "module": str(unit.get("module") or NO_MODULE),
        "model": str(unit.get("model") or NO_MODEL),
        "weight": float(unit.get("weight", 1.0)),
        "guidance_start": float(unit.get("guidance_start", 0.0)),
        "guidance_end": float(unit.get("guidance_end", 1.0)),
        "processor_res": int(_or_default(unit.get("processor_res", -1), sliders.resolution, DEFAULT_RES)),
        "threshold_a": _or_default(unit.get("threshold_a", -1), sliders.threshold_a, DEFAULT_THRESHOLD),
        "threshold_b": _or_default(unit.get("threshold_b", -1), sliders.threshold_b, DEFAULT_THRESHOLD),
        "control_mode": _named(unit.get("control_mode"), CONTROL_MODES, CONTROL_MODES[0]),
        "resize_mode": _named(unit.get("resize_mode"), RESIZE_MODES, RESIZE_MODES[1]),
    }
    return [values[name] for name in FIELDS]


def _slider_update(spec: SliderSpec | None, with_value: bool, shown: bool = True) -> Any:
    """A slider following a module: its label and range (and default value when the user picked the
    module), hidden when the module has no such slider."""
    if spec is None:
        return gr.update(visible=False)
    shape = {"label": spec.label, "minimum": spec.minimum, "maximum": spec.maximum, "step": spec.step}
    return gr.update(**shape, visible=shown, **({"value": spec.value} if with_value else {}))


def slider_updates(detail: Mapping[str, Mapping[str, Any]], module: str, pixel_perfect: bool,
                   with_value: bool) -> tuple[Any, Any, Any]:
    """Updates of the resolution, threshold A and threshold B sliders for ``module`` (pixel perfect
    picks the resolution itself, so its slider is hidden then)."""
    sliders = module_sliders(detail, module)
    return (_slider_update(sliders.resolution, with_value, shown=not pixel_perfect),
            _slider_update(sliders.threshold_a, with_value), _slider_update(sliders.threshold_b, with_value))


def _slider(spec: SliderSpec | None, fallback: float, label: str, elem_id: str) -> gr.Slider:
    if spec is None:
        step = 1 if fallback > 2 else 0.01
        return gr.Slider(label=label, value=fallback, minimum=0, maximum=max(2048, fallback), step=step,
                         visible=False, elem_id=elem_id)
    return gr.Slider(label=spec.label, value=spec.value, minimum=spec.minimum, maximum=spec.maximum, step=spec.step,
                     elem_id=elem_id)


@dataclass(frozen=True)
class UnitControls:
    """One unit's controls: ``values`` in :data:`FIELDS` order, and its buttons and preview."""

    values: tuple[Any, ...]
    refresh: gr.Button
    preview: gr.Button
    preview_image: gr.Image

    def field(self, name: str) -> Any:
        return self.values[FIELDS.index(name)]


def _build_unit(ctx: UiPanel, index: int, models: Sequence[str], modules: Sequence[str],
                detail: Mapping[str, Mapping[str, Any]]) -> UnitControls:
    p = f"{ctx.elem_prefix}_unit{index}"
    module = NO_MODULE if NO_MODULE in modules or not modules else modules[0]
    sliders = module_sliders(detail, module)
    with gr.Row():
        image = gr.Image(label="Control image", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                         height=256, elem_id=f"{p}_image")
        preview_image = gr.Image(label="Preprocessor preview", type="pil", interactive=False, height=256,
                                 visible=False, elem_id=f"{p}_preview_image")
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{p}_enable")
        use_tab = gr.Checkbox(label="Use the img2img image", value=ctx.tab == "img2img",
                              visible=ctx.tab == "img2img", elem_id=f"{p}_use_tab_image")
        low_vram = gr.Checkbox(label="Low VRAM", value=False, elem_id=f"{p}_low_vram")
        pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=f"{p}_pixel_perfect")
    with gr.Row():
        # custom values: a pasted infotext may name a module by A1111's other name, or a model whose
        # file changed since (its hash differs); the server resolves or refuses them with the list
        module_box = gr.Dropdown(list(modules), value=module, label="Preprocessor", allow_custom_value=True,
                                 elem_id=f"{p}_module")
        model = gr.Dropdown([NO_MODEL, *models], value=NO_MODEL, label="Model", allow_custom_value=True,
                            elem_id=f"{p}_model")
        refresh = gr.Button("\u21bb", elem_id=f"{p}_refresh", elem_classes="tool-button", scale=0, min_width=40)
        preview = gr.Button("Preview", elem_id=f"{p}_preview", scale=0, min_width=80)
    weight = gr.Slider(0, 2, value=1.0, step=0.05, label="Control Weight", elem_id=f"{p}_weight")
    with gr.Row():
        start = gr.Slider(0, 1, value=0.0, step=0.01, label="Starting Control Step", elem_id=f"{p}_guidance_start")
        end = gr.Slider(0, 1, value=1.0, step=0.01, label="Ending Control Step", elem_id=f"{p}_guidance_end")
    resolution = _slider(sliders.resolution, DEFAULT_RES, "Preprocessor Resolution", f"{p}_processor_res")
    threshold_a = _slider(sliders.threshold_a, DEFAULT_THRESHOLD, "Threshold A", f"{p}_threshold_a")
    threshold_b = _slider(sliders.threshold_b, DEFAULT_THRESHOLD, "Threshold B", f"{p}_threshold_b")
    control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode",
                            elem_id=f"{p}_control_mode")
    resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[1], label="Resize Mode", elem_id=f"{p}_resize_mode")
    values = (enabled, image, use_tab, low_vram, pixel_perfect, module_box, model, weight, start, end, resolution,
              threshold_a, threshold_b, control_mode, resize_mode)
    return UnitControls(values=values, refresh=refresh, preview=preview, preview_image=preview_image)


def _wire_unit(ctx: UiPanel, unit: UnitControls, list_models: Callable[[Host], Sequence[str]],
               preprocessors: Preprocessors) -> None:
    """The unit's events: sliders following the module, model refresh, preview. All private."""
    module, pixel_perfect = unit.field("module"), unit.field("pixel_perfect")
    sliders = [unit.field("processor_res"), unit.field("threshold_a"), unit.field("threshold_b")]

    def on_module_picked(picked: str, perfect: bool) -> tuple[Any, Any, Any]:  # the user's pick: defaults too
        return slider_updates(preprocessors.detail(), picked, perfect, with_value=True)

    def on_module_changed(picked: str, perfect: bool) -> tuple[Any, Any, Any]:  # also a paste: values kept
        return slider_updates(preprocessors.detail(), picked, perfect, with_value=False)

    def on_refresh(chosen: str) -> Any:
        names = [NO_MODEL, *list_models(ctx.host)]
        return gr.update(choices=names, value=chosen if chosen in names else NO_MODEL)

    def on_upload() -> bool:  # an image of its own: the unit uses it, not the tab's
        return False

    def on_preview(image: Image.Image | None, picked: str, res: float, a: float, b: float) -> Any:
        if image is None:
            gr.Warning("Upload a control image to preview its preprocessing.")
            return gr.skip()
        try:
            detected = preprocessors.run(ctx.host, image, picked or NO_MODULE, int(res), float(a), float(b))
        except Exception as exc:  # shown next to the panel; the page keeps working
            log.warning("ControlNet preview with %s failed: %s", picked, exc)
            raise gr.Error(f"Preview with {picked} failed: {exc}") from exc
        return gr.update(value=detected, visible=True)

    private = {"api_visibility": "private", "show_progress": "hidden"}
    module.input(on_module_picked, inputs=[module, pixel_perfect], outputs=sliders, queue=False, **private)
    module.change(on_module_changed, inputs=[module, pixel_perfect], outputs=sliders, queue=False, **private)
    pixel_perfect.change(on_module_changed, inputs=[module, pixel_perfect], outputs=sliders, queue=False, **private)
    unit.refresh.click(on_refresh, inputs=[unit.field("model")], outputs=[unit.field("model")], queue=False,
                       **private)
    unit.field("image").upload(on_upload, outputs=[unit.field("use_tab_image")], queue=False, **private)
    unit.preview.click(on_preview, inputs=[unit.field("image"), module, *sliders], outputs=[unit.preview_image],
                       api_visibility="private")


def _hidden_unit() -> PanelValue:
    """A declared unit past the shown tabs: always left off (as A1111's panel, which sends only the
    units its tabs show); a pasted value for it is dropped."""
    return PanelValue(components=(gr.State(None),), combine=lambda _value: None, split=lambda _value: [None])


def build_panel(ctx: UiPanel, list_models: Callable[[Host], Sequence[str]], preprocessors: Preprocessors,
                declared: int = UNIT_COUNT) -> dict[str, PanelValue]:
    """The UI_PANEL handler: ControlNet's unit tabs, ``{"unit_0": PanelValue, ...}``. ``list_models``
    gives the model titles ("name [hash8]") found for the host; ``declared``: how many unit params the
    extension declares (those past the :data:`UNIT_COUNT` tabs get no controls and stay off)."""
    models = list(list_models(ctx.host))
    modules = list(preprocessors.names())
    detail = preprocessors.detail()
    img2img = ctx.tab == "img2img"
    built: dict[str, PanelValue] = {}
    with gr.Tabs(elem_id=f"{ctx.elem_prefix}_units"):
        for index in range(UNIT_COUNT):
            with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{ctx.elem_prefix}_unit{index}_tab"):
                unit = _build_unit(ctx, index, models, modules, detail)
                _wire_unit(ctx, unit, list_models, preprocessors)
            built[f"unit_{index}"] = PanelValue(components=unit.values, combine=combine,
                                                split=lambda value, i2i=img2img: split(value, i2i, detail))
    built.update({f"unit_{index}": _hidden_unit() for index in range(UNIT_COUNT, declared)})
    return built

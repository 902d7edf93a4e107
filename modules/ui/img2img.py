"""The img2img tab: an init image (uploaded, pasted or sketched on) reworked by the prompt."""

from __future__ import annotations

from dataclasses import replace

import gradio as gr

from modules.params import FRACTION_RANGE, GenerationRequest, ResizeMode
from modules.services.container import Services
from modules.ui.form_checks import ranged_number, span
from modules.ui.form_fields import Component, Values, number, request_from_values
from modules.ui.generation_form import GenerationForm, build_form, wire_generation
from modules.ui.image_inputs import editor_composite, png_bytes, require_image

PREFIX = "img2img"
SKETCH_COLOURS = ["#000000", "#ffffff", "#e03131", "#2f9e44", "#1971c2", "#f08c00", "#ae3ec9"]


def _controls() -> dict[str, Component]:
    """The init image (upload or sketch sub-tab), resize mode and denoising strength, by field name."""
    mode = gr.State("img2img")  # which sub-tab the picture comes from
    with gr.Tabs(elem_id="mode_img2img"):
        with gr.Tab("img2img", id="img2img_upload") as upload_tab:
            image = gr.Image(label="Image for img2img", type="pil", image_mode="RGB", height=360,
                             sources=["upload", "clipboard"], elem_id="img2img_image")
        with gr.Tab("Sketch", id="img2img_sketch") as sketch_tab:
            sketch = gr.ImageEditor(label="Sketch", type="pil", height=360, elem_id="img2img_sketch",
                                    sources=["upload", "clipboard"],
                                    brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"))
    upload_tab.select(lambda: "img2img", outputs=mode, api_visibility="private", queue=False)
    sketch_tab.select(lambda: "sketch", outputs=mode, api_visibility="private", queue=False)
    return {
        "init_image.mode": mode, "init_image": image, "init_image.sketch": sketch,
        "resize_mode": gr.Radio([m.value for m in ResizeMode], value=ResizeMode.JUST_RESIZE.value,
                                label="Resize mode", elem_id="img2img_resize_mode"),
        "denoising_strength": ranged_number("Denoising strength", 0.75, span(*FRACTION_RANGE),
                                            "img2img_denoising_strength", step=0.01),
    }


def img2img_request(values: Values) -> GenerationRequest:
    """The shared fields, with the picture of the active sub-tab and the img2img settings."""
    sketched = values["init_image.mode"] == "sketch"
    picture = editor_composite(values["init_image.sketch"]) if sketched else values["init_image"]
    picture = require_image(picture, "init_image", "upload or paste an image to rework")
    return replace(request_from_values(values), init_image=png_bytes(picture.convert("RGB")),
                   resize_mode=ResizeMode(values["resize_mode"]),
                   denoising_strength=number(values["denoising_strength"]))


def build_tab(services: Services) -> GenerationForm:
    """The img2img controls and their events; call inside a ``gr.Tab``. "Send to" fills ``init_image``."""
    form = build_form(PREFIX, services, _controls, send_to=(("txt2img", "txt2img"), ("inpaint", "inpaint"), ("extras", "extras")))
    wire_generation(form, services, img2img_request)
    return form

"""The img2img tab: an init image (uploaded, pasted or sketched on) reworked by the prompt."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import gradio as gr

from modules.params import GenerationRequest, ResizeMode
from modules.services.container import Services
from modules.ui.generation_form import (
    FormValues,
    GenerationForm,
    build_form,
    wire_generation,
)
from modules.ui.image_inputs import editor_composite, png_bytes, require_image

PREFIX = "img2img"
SKETCH_COLOURS = ["#000000", "#ffffff", "#e03131", "#2f9e44", "#1971c2", "#f08c00", "#ae3ec9"]


@dataclass
class Img2ImgTab:
    form: GenerationForm
    image: gr.Image


def build_tab(services: Services) -> Img2ImgTab:
    """The img2img controls and their events; call inside a ``gr.Tab``."""
    parts: dict[str, Any] = {}

    def extra() -> None:
        mode = gr.State("img2img")
        with gr.Tabs(elem_id="mode_img2img"):
            with gr.Tab("img2img", id="img2img_upload") as upload_tab:
                parts["image"] = gr.Image(label="Image for img2img", type="pil", image_mode="RGB", height=360,
                                          sources=["upload", "clipboard"], elem_id="img2img_image")
            with gr.Tab("Sketch", id="img2img_sketch") as sketch_tab:
                parts["sketch"] = gr.ImageEditor(label="Sketch", type="pil", height=360, elem_id="img2img_sketch",
                                                 sources=["upload", "clipboard"],
                                                 brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"))
        upload_tab.select(lambda: "img2img", outputs=mode, api_visibility="private", queue=False)
        sketch_tab.select(lambda: "sketch", outputs=mode, api_visibility="private", queue=False)
        parts["mode"] = mode
        parts["resize"] = gr.Radio([m.value for m in ResizeMode], value=ResizeMode.JUST_RESIZE.value,
                                   label="Resize mode", elem_id="img2img_resize_mode")
        parts["denoise"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                     elem_id="img2img_denoising_strength")

    form = build_form(PREFIX, services, extra, send_to=(("txt2img", "txt2img"), ("inpaint", "inpaint")))

    def make_request(values: FormValues, mode: str, image: Any, sketch: Any, resize: str,
                     denoise: float) -> GenerationRequest:
        picture = editor_composite(sketch) if mode == "sketch" else image
        picture = require_image(picture, "init_image", "upload or paste an image to rework")
        return replace(values.to_request(), init_image=png_bytes(picture.convert("RGB")),
                       resize_mode=ResizeMode(resize), denoising_strength=float(denoise))

    wire_generation(form, services, [parts["mode"], parts["image"], parts["sketch"], parts["resize"],
                                     parts["denoise"]], make_request)
    return Img2ImgTab(form=form, image=parts["image"])

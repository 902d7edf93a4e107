"""The inpaint tab: paint a mask on an image (or upload one), repaint under it; and outpainting.

Control names and meanings are A1111's (mask blur, mask mode, masked content, inpaint area,
only-masked padding); their elem_ids too, so users' scripts and CSS find them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import gradio as gr
from PIL import Image

from modules.errors import FieldError, ValidationError
from modules.params import GenerationRequest, MaskedContent, ResizeMode
from modules.services.container import Services
from modules.services.outpaint import OutpaintSides, outpaint_request
from modules.ui.generation_form import (
    FormValues,
    GenerationForm,
    build_form,
    wire_generation,
)
from modules.ui.image_inputs import (
    editor_background,
    editor_composite,
    editor_mask,
    png_bytes,
    require_image,
)
from modules.ui.img2img import SKETCH_COLOURS

PREFIX = "inpaint"
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
AREAS = ("Whole picture", "Only masked")
SIDES = ("left", "right", "up", "down")


@dataclass
class InpaintTab:
    form: GenerationForm
    editor: gr.ImageEditor


def _inputs(mode: str, editor: Any, sketch: Any, upload: Any, upload_mask: Any) -> tuple[Image.Image, Image.Image | None]:
    """(picture, mask) from whichever sub-tab is active."""
    if mode == "sketch":
        return require_image(editor_composite(sketch), "init_image", "upload an image to paint on"), editor_mask(sketch)
    if mode == "upload":
        mask = upload_mask.convert("L") if upload_mask is not None else None
        return require_image(upload, "init_image", "upload the image to inpaint"), mask
    return require_image(editor_background(editor), "init_image", "upload an image, then paint the mask"), \
        editor_mask(editor)


def _extra(parts: dict[str, Any]) -> None:
    mode = gr.State("brush")
    with gr.Tabs(elem_id="mode_inpaint"):
        with gr.Tab("Inpaint", id="inpaint_brush") as brush_tab:
            parts["editor"] = gr.ImageEditor(label="Image (paint the area to repaint)", type="pil", height=360,
                                             sources=["upload", "clipboard"], elem_id="img2maskimg",
                                             brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
        with gr.Tab("Inpaint sketch", id="inpaint_sketch") as sketch_tab:
            parts["sketch"] = gr.ImageEditor(label="Paint colours; the painted area is repainted", type="pil",
                                             height=360, sources=["upload", "clipboard"], elem_id="inpaint_sketch",
                                             brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"))
        with gr.Tab("Inpaint upload", id="inpaint_upload") as upload_tab:
            with gr.Row():
                parts["upload"] = gr.Image(label="Image", type="pil", image_mode="RGB", elem_id="img_inpaint_base")
                parts["upload_mask"] = gr.Image(label="Mask (white = repaint)", type="pil", image_mode="L",
                                                elem_id="img_inpaint_mask")
    for tab, name in ((brush_tab, "brush"), (sketch_tab, "sketch"), (upload_tab, "upload")):
        tab.select(lambda name=name: name, outputs=mode, api_visibility="private", queue=False)
    parts["mode"] = mode
    parts["blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
    with gr.Row():
        parts["mask_mode"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode",
                                      elem_id="img2img_mask_mode")
        parts["content"] = gr.Radio([m.value for m in MaskedContent], value=MaskedContent.ORIGINAL.value,
                                    label="Masked content", elem_id="img2img_inpainting_fill")
    with gr.Row():
        parts["area"] = gr.Radio(list(AREAS), value=AREAS[0], label="Inpaint area", elem_id="img2img_inpaint_full_res")
        parts["padding"] = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                     elem_id="img2img_inpaint_full_res_padding")
    parts["resize"] = gr.Radio([m.value for m in ResizeMode], value=ResizeMode.JUST_RESIZE.value, label="Resize mode",
                               elem_id="inpaint_resize_mode")
    parts["denoise"] = gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                                 elem_id="inpaint_denoising_strength")
    with gr.Accordion("Outpainting", open=False, elem_id="inpaint_outpainting"):
        parts["out_pixels"] = gr.Slider(8, 512, value=64, step=8, label="Pixels to expand", elem_id="outpaint_pixels")
        parts["out_sides"] = gr.CheckboxGroup(list(SIDES), value=["right"], label="Outpainting direction",
                                              elem_id="outpaint_direction")
        parts["out_button"] = gr.Button("Outpaint", variant="primary", elem_id="inpaint_outpaint")


def build_tab(services: Services) -> InpaintTab:
    """The inpaint controls and their events; call inside a ``gr.Tab``."""
    parts: dict[str, Any] = {}
    form = build_form(PREFIX, services, lambda: _extra(parts), send_to=(("img2img", "img2img"),))
    names = ("mode", "editor", "sketch", "upload", "upload_mask", "blur", "mask_mode", "content", "area", "padding",
             "resize", "denoise", "out_pixels", "out_sides")
    extras = [parts[name] for name in names]

    def make_request(values: FormValues, mode: str, editor: Any, sketch: Any, upload: Any, upload_mask: Any,
                     blur: float, mask_mode: str, content: str, area: str, padding: float, resize: str,
                     denoise: float, *_outpaint: Any) -> GenerationRequest:
        picture, mask = _inputs(mode, editor, sketch, upload, upload_mask)
        if mask is None:
            raise_no_mask()
        return replace(values.to_request(), init_image=png_bytes(picture.convert("RGB")), mask=png_bytes(mask),
                       mask_blur=int(blur), invert_mask=mask_mode == MASK_MODES[1],
                       masked_content=MaskedContent(content), inpaint_only_masked=area == AREAS[1],
                       only_masked_padding=int(padding), resize_mode=ResizeMode(resize),
                       denoising_strength=float(denoise))

    def make_outpaint(values: FormValues, mode: str, editor: Any, sketch: Any, upload: Any, upload_mask: Any,
                      blur: float, mask_mode: str, content: str, area: str, padding: float, resize: str,
                      denoise: float, pixels: float, sides: list[str]) -> GenerationRequest:
        picture, _mask = _inputs(mode, editor, sketch, upload, upload_mask)
        amount = int(pixels)
        chosen = OutpaintSides(**{side: amount for side in sides})
        request = replace(values.to_request(), init_image=png_bytes(picture.convert("RGB")), mask_blur=int(blur),
                          denoising_strength=float(denoise))
        return outpaint_request(request, chosen, services.settings.limits.max_size)

    wire_generation(form, services, extras, make_request)
    wire_generation(form, services, extras, make_outpaint, triggers=[parts["out_button"].click],
                    with_stop_buttons=False)
    return InpaintTab(form=form, editor=parts["editor"])


def raise_no_mask() -> None:
    raise ValidationError([FieldError("mask", "nothing is masked: paint over the area to repaint (or upload a mask)")])

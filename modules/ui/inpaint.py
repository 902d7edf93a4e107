"""The inpaint tab: paint a mask on an image (or upload one), repaint under it; and outpainting.

Control names and meanings are A1111's (mask blur, mask mode, masked content, inpaint area,
only-masked padding); their elem_ids too, so users' scripts and CSS find them.
"""

from __future__ import annotations

from dataclasses import replace

import gradio as gr
from PIL import Image

from modules.errors import FieldError, ValidationError
from modules.params import FRACTION_RANGE, GenerationLimits, GenerationRequest, MaskedContent, ResizeMode
from modules.services.container import Services
from modules.services.outpaint import OutpaintSides, outpaint_request
from modules.ui.form_checks import ranged_number, span
from modules.ui.form_fields import Component, Values, number, request_from_values, whole
from modules.ui.generation_form import GenerationForm, build_form, wire_generation
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


def _picture_and_mask(values: Values) -> tuple[Image.Image, Image.Image | None]:
    """(picture, mask) from whichever sub-tab is active."""
    mode = values["inpaint.mode"]
    if mode == "sketch":
        sketch = values["inpaint.sketch"]
        return require_image(editor_composite(sketch), "init_image", "upload an image to paint on"), editor_mask(sketch)
    if mode == "upload":
        upload_mask = values["inpaint.upload_mask"]
        return (require_image(values["inpaint.upload"], "init_image", "upload the image to inpaint"),
                upload_mask.convert("L") if upload_mask is not None else None)
    editor = values["init_image"]
    return require_image(editor_background(editor), "init_image", "upload an image, then paint the mask"), \
        editor_mask(editor)


def _image_sources() -> dict[str, Component]:
    """The three ways to give the picture and its mask (sub-tabs), and which one is active."""
    mode = gr.State("brush")
    with gr.Tabs(elem_id="mode_inpaint"):
        with gr.Tab("Inpaint", id="inpaint_brush") as brush_tab:
            editor = gr.ImageEditor(label="Image (paint the area to repaint)", type="pil", height=360,
                                    sources=["upload", "clipboard"], elem_id="img2maskimg",
                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"))
        with gr.Tab("Inpaint sketch", id="inpaint_sketch") as sketch_tab:
            sketch = gr.ImageEditor(label="Paint colours; the painted area is repainted", type="pil",
                                    height=360, sources=["upload", "clipboard"], elem_id="inpaint_sketch",
                                    brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"))
        with gr.Tab("Inpaint upload", id="inpaint_upload") as upload_tab:
            with gr.Row():
                upload = gr.Image(label="Image", type="pil", image_mode="RGB", elem_id="img_inpaint_base")
                upload_mask = gr.Image(label="Mask (white = repaint)", type="pil", image_mode="L",
                                       elem_id="img_inpaint_mask")
    for tab, name in ((brush_tab, "brush"), (sketch_tab, "sketch"), (upload_tab, "upload")):
        tab.select(lambda name=name: name, outputs=mode, api_visibility="private", queue=False)
    # The brush editor is where "send to" puts a picture: it is the tab's init image.
    return {"inpaint.mode": mode, "init_image": editor, "inpaint.sketch": sketch, "inpaint.upload": upload,
            "inpaint.upload_mask": upload_mask}


def _controls(buttons: dict[str, gr.Button], limits: GenerationLimits) -> dict[str, Component]:
    """The inpaint and outpaint controls by field name; the Outpaint button goes into ``buttons``."""
    fields = _image_sources()
    fields["mask_blur"] = ranged_number("Mask blur", 4, span(0, limits.max_mask_blur), "img2img_mask_blur")
    with gr.Row():
        fields["invert_mask"] = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode",
                                         elem_id="img2img_mask_mode")
        fields["masked_content"] = gr.Radio([m.value for m in MaskedContent], value=MaskedContent.ORIGINAL.value,
                                            label="Masked content", elem_id="img2img_inpainting_fill")
    with gr.Row():
        fields["inpaint_only_masked"] = gr.Radio(list(AREAS), value=AREAS[0], label="Inpaint area",
                                                 elem_id="img2img_inpaint_full_res")
        fields["only_masked_padding"] = ranged_number("Only masked padding, pixels", 32, span(0, limits.max_size),
                                                      "img2img_inpaint_full_res_padding", step=4)
    fields["resize_mode"] = gr.Radio([m.value for m in ResizeMode], value=ResizeMode.JUST_RESIZE.value,
                                     label="Resize mode", elem_id="inpaint_resize_mode")
    fields["denoising_strength"] = ranged_number("Denoising strength", 0.75, span(*FRACTION_RANGE),
                                                 "inpaint_denoising_strength", step=0.01)
    with gr.Accordion("Outpainting", open=False, elem_id="inpaint_outpainting"):
        fields["outpaint.pixels"] = ranged_number("Pixels to expand", 64, f"each side, {span(0, limits.max_size)}",
                                                  "outpaint_pixels", step=8)
        fields["outpaint.sides"] = gr.CheckboxGroup(list(SIDES), value=["right"], label="Outpainting direction",
                                                    elem_id="outpaint_direction")
        buttons["outpaint"] = gr.Button("Outpaint", variant="primary", elem_id="inpaint_outpaint")
    return fields


def inpaint_request(values: Values) -> GenerationRequest:
    """The shared fields, with the picture, its mask and the inpaint settings."""
    picture, mask = _picture_and_mask(values)
    if mask is None:
        raise_no_mask()
    return replace(request_from_values(values), init_image=png_bytes(picture.convert("RGB")), mask=png_bytes(mask),
                   mask_blur=whole(values["mask_blur"]), invert_mask=values["invert_mask"] == MASK_MODES[1],
                   masked_content=MaskedContent(values["masked_content"]),
                   inpaint_only_masked=values["inpaint_only_masked"] == AREAS[1],
                   only_masked_padding=whole(values["only_masked_padding"]),
                   resize_mode=ResizeMode(values["resize_mode"]),
                   denoising_strength=number(values["denoising_strength"]))


def outpaint_request_from(values: Values, max_size: int) -> GenerationRequest:
    """The picture extended by ``outpaint.pixels`` on each of ``outpaint.sides``: an inpaint of the border."""
    picture, _mask = _picture_and_mask(values)
    amount = whole(values["outpaint.pixels"])
    chosen = OutpaintSides(**{side: amount for side in values["outpaint.sides"]})
    request = replace(request_from_values(values), init_image=png_bytes(picture.convert("RGB")),
                      mask_blur=whole(values["mask_blur"]), denoising_strength=number(values["denoising_strength"]))
    return outpaint_request(request, chosen, max_size)


def build_tab(services: Services) -> GenerationForm:
    """The inpaint controls and their events; call inside a ``gr.Tab``. "Send to" fills ``init_image``."""
    buttons: dict[str, gr.Button] = {}
    form = build_form(PREFIX, services, lambda: _controls(buttons, services.settings.limits), send_to=(("img2img", "img2img"), ("extras", "extras")))
    wire_generation(form, services, inpaint_request)
    wire_generation(form, services, lambda values: outpaint_request_from(values, services.settings.limits.max_size),
                    triggers=[buttons["outpaint"].click], with_stop_buttons=False)
    return form


def raise_no_mask() -> None:
    raise ValidationError([FieldError("mask", "nothing is masked: paint over the area to repaint (or upload a mask)")])

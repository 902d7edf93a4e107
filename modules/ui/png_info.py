"""The PNG Info tab: read the parameters any image carries, and send them to a generating tab."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
from PIL import Image, UnidentifiedImageError

from modules.infotext import parse_infotext
from modules.services.extras_run import POSTPROCESSING_KEY
from modules.services.images import infotext_of
from modules.ui import escape


@dataclass
class PngInfoTab:
    image: gr.Image
    text: gr.Textbox  # the raw parameters text, what "send to" reads
    send_buttons: dict[str, gr.Button]


def _table(text: str) -> str:
    parsed = parse_infotext(text)
    rows = [("Prompt", parsed.prompt), ("Negative prompt", parsed.negative_prompt),
            *((k, v) for k, v in parsed.params.items() if not k.endswith(("-1", "-2")))]
    cells = "".join(f"<tr><th>{escape.text(k)}</th><td>{escape.text(v)}</td></tr>" for k, v in rows if v)
    return f'<table class="atelier-params">{cells}</table>'


def read(path: str | None) -> tuple[str, str]:
    """(raw text, table html) for an uploaded image file."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as image:
            text = infotext_of(image)
            extras = image.info.get(POSTPROCESSING_KEY)
    except (UnidentifiedImageError, OSError):
        return "", "<p>This file is not an image Atelier can read.</p>"
    # What the Extras tab did to it (A1111's "postprocessing" text), below its parameters.
    done = f'<p class="atelier-note">Postprocessing: {escape.text(extras)}</p>' if isinstance(extras, str) else ""
    if not text:
        return "", (done or "<p>This image carries no generation parameters.</p>")
    return text, _table(text) + done


def build_tab() -> PngInfoTab:
    with gr.Row():
        with gr.Column():
            image = gr.Image(label="Source", type="filepath", sources=["upload", "clipboard"], elem_id="pnginfo_image",
                             height=420)
        with gr.Column():
            table = gr.HTML(elem_id="pnginfo_table")
            text = gr.Textbox(label="Parameters", lines=6, interactive=False, buttons=["copy"],
                              elem_id="pnginfo_generation_info")
            with gr.Row():
                send = {target: gr.Button(f"Send to {target}", elem_id=f"pnginfo_send_to_{target}")
                        for target in ("txt2img", "img2img", "inpaint", "extras")}
    image.change(read, inputs=[image], outputs=[text, table], api_visibility="private")
    return PngInfoTab(image=image, text=text, send_buttons=send)

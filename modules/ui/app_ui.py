"""The whole page: the checkpoint bar on top, then one tab per feature."""

from __future__ import annotations

import gradio as gr

from modules import __version__
from modules.services.container import Services
from modules.ui import checkpoints, txt2img


def build_ui(services: Services) -> gr.Blocks:
    """Build the Blocks. Outputs are served in place (no copy into Gradio's cache)."""
    gr.set_static_paths(paths=[services.paths.outputs_dir])
    with gr.Blocks(title="Atelier", analytics_enabled=False) as demo:
        checkpoints.build_bar(services)
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img.build_tab(services)
        gr.Markdown(f"Atelier {__version__} · device: {services.device.describe()}", elem_id="footer")
    return demo

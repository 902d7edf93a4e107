"""The whole page: the checkpoint bar on top, then one tab per feature."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from modules import __version__
from modules.services.container import Services
from modules.ui import checkpoints, img2img, inpaint, txt2img
from modules.ui.send_to import wire_send


def build_ui(services: Services) -> gr.Blocks:
    """Build the Blocks. Outputs are served in place (no copy into Gradio's cache)."""
    gr.set_static_paths(paths=[services.paths.outputs_dir])
    with gr.Blocks(title="Atelier", analytics_enabled=False) as demo:
        checkpoints.build_bar(services)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.build_tab(services)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.build_tab(services)
            with gr.Tab("Inpaint", id="inpaint", elem_id="tab_inpaint"):
                inp = inpaint.build_tab(services)
        wire_send(t2i, "img2img", i2i.form, tabs, image=i2i.image)
        wire_send(t2i, "inpaint", inp.form, tabs, image=inp.editor, as_editor=True)
        wire_send(i2i.form, "txt2img", t2i, tabs)
        wire_send(i2i.form, "inpaint", inp.form, tabs, image=inp.editor, as_editor=True)
        wire_send(inp.form, "img2img", i2i.form, tabs, image=i2i.image)
        gr.Markdown(f"Atelier {__version__} · device: {services.device.describe()}", elem_id="footer")
    return demo


# What a browser needs before it has logged in: the login page and its static assets. Gradio
# itself answers these (the config route says 401 until the login succeeds).
_OPEN_EXACT = ("/", "/login", "/login/", "/logout", "/favicon.ico", "/manifest.json", "/robots.txt", "/theme.css",
               "/config", "/config/", "/gradio_api/login_check", "/gradio_api/login_check/", "/gradio_api/app_id",
               "/gradio_api/app_id/", "/pwa_icon")
_OPEN_PREFIXES = ("/assets/", "/static/", "/svelte/", "/pwa_icon/")


def open_paths(subpath: str) -> Callable[[str], bool]:
    """Whether a path is open without a login, for a UI mounted at ``subpath``."""

    def is_open(path: str) -> bool:
        if subpath:
            if path == subpath:
                return True
            if not path.startswith(subpath + "/"):
                return False
            path = path[len(subpath):]
        return path in _OPEN_EXACT or path.startswith(_OPEN_PREFIXES)

    return is_open

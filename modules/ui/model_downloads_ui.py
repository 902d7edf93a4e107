"""The "Download a standard model" panel (in the Extras tab): a user-chosen download with a
progress bar, checked against its SHA-256. Nothing is ever downloaded without this click."""

from __future__ import annotations

from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.model_downloads import KnownModel
from modules.ui import escape
from modules.ui.common import ui_error


def _describe(model: KnownModel, installed: bool) -> str:
    size = f", {model.size / 2**20:.0f} MiB" if model.size else ""
    state = "installed" if installed else "not downloaded"
    return (f"**{escape.markdown(model.name)}** ({model.kind}{size}, {state}): `{escape.markdown(model.filename)}` "
            f"into `models/{escape.markdown(model.folder)}` from {escape.markdown(model.url)}, "
            f"SHA-256 `{model.sha256[:16]}…`")


def build_panel(services: Services) -> Any:
    """The panel; returns the Download click's event, for the caller to chain a refresh of its lists."""
    fetcher = services.fetcher
    names = [m.name for m in fetcher.known]
    with gr.Accordion("Download a standard model", open=False, elem_id="extras_downloads"):
        choice = gr.Dropdown(names, value=names[0], label="Model", elem_id="extras_download_model")
        about = gr.Markdown(_describe(fetcher.known[0], fetcher.installed(fetcher.known[0])),
                            elem_id="extras_download_about")
        button = gr.Button("Download", size="sm", elem_id="extras_download")
        status = gr.Markdown("", elem_id="extras_download_status")

    def described(name: str) -> str:
        model = fetcher.require(name)
        return _describe(model, fetcher.installed(model))

    @changes_server  # a file in the models folder, for everyone
    def download(name: str, progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
        def report(done: int, total: int) -> None:
            progress((done, total) if total else None, desc=f"Downloading {name}", unit="bytes")

        try:
            path = fetcher.download(name, on_progress=report)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return f"Ready: `{escape.markdown(path)}`", described(name)

    choice.change(described, inputs=[choice], outputs=[about], api_visibility="private", queue=False)
    return button.click(download, inputs=[choice], outputs=[status, about], api_visibility="private")

"""The Gallery tab: every output, newest first, by folder and date, searchable, paged; select one to
see it full size with its parameters, send it to a tab, see its folder, or delete it (confirmed)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.gallery import GalleryPage, GalleryQuery
from modules.services.images import read_infotext
from modules.ui.common import ui_error

ALL = "All"


@dataclass
class GalleryTab:
    selected: gr.State  # the selected image's path relative to outputs/ (server-side, not editable by the page)
    info: gr.Textbox  # its parameters text
    send_buttons: dict[str, gr.Button]
    pick: Callable[[str, str], tuple[str | None, str]]  # for "send to": (checked absolute path, infotext)


def _query(text: str, folder: str, date: str, model: str, sampler: str, seed: float | None, size: str) -> GalleryQuery:
    return GalleryQuery(text=text or "", folder="" if folder in ("", ALL, None) else folder,
                        date="" if date in ("", ALL, None) else date, model=(model or "").strip(),
                        sampler=(sampler or "").strip(), seed=None if seed in (None, "") else int(seed),
                        size=(size or "").strip())


def build_tab(services: Services, tab: gr.Tab) -> GalleryTab:
    gallery_service = services.gallery
    with gr.Row():
        folder = gr.Dropdown([ALL], value=ALL, label="Folder", elem_id="gallery_folder")
        date = gr.Dropdown([ALL], value=ALL, label="Date", elem_id="gallery_date")
        text = gr.Textbox(label="Search prompts", elem_id="gallery_search", scale=2)
        refresh = gr.Button("🔄 Refresh", elem_id="gallery_refresh", scale=0)
    with gr.Accordion("Search by parameter", open=False):
        with gr.Row():
            model = gr.Textbox(label="Model", elem_id="gallery_model")
            sampler = gr.Textbox(label="Sampler", elem_id="gallery_sampler")
            seed = gr.Number(label="Seed", precision=0, value=None, elem_id="gallery_seed")
            size = gr.Textbox(label="Size (WxH)", elem_id="gallery_size")
    with gr.Row():
        with gr.Column(scale=3):
            thumbs = gr.Gallery(label="Images", columns=6, height=560, allow_preview=False, elem_id="gallery_images")
            with gr.Row():
                previous = gr.Button("◀ Previous", size="sm", elem_id="gallery_prev")
                page_info = gr.Markdown("", elem_id="gallery_page_info")
                following = gr.Button("Next ▶", size="sm", elem_id="gallery_next")
        with gr.Column(scale=2):
            full = gr.Image(label="Selected", type="filepath", interactive=False, elem_id="gallery_full", height=420)
            info = gr.Textbox(label="Parameters", lines=5, interactive=False, buttons=["copy"], elem_id="gallery_info")
            location = gr.Textbox(label="Folder", interactive=False, elem_id="gallery_folder_path", buttons=["copy"])
            with gr.Row():
                send = {t: gr.Button(f"Send to {t}", size="sm", elem_id=f"gallery_send_to_{t}")
                        for t in ("txt2img", "img2img", "inpaint")}
            delete = gr.Button("🗑️ Delete", size="sm", variant="stop", elem_id="gallery_delete")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Yes, delete this image", variant="stop", size="sm", elem_id="gallery_delete_confirm")
                cancel = gr.Button("Cancel", size="sm", elem_id="gallery_delete_cancel")
    page_no = gr.State(1)
    items = gr.State([])  # relative paths on the page
    selected_relative = gr.State("")
    filters = [text, folder, date, model, sampler, seed, size]

    def show(page: GalleryPage) -> tuple[Any, ...]:
        try:
            thumbs = gallery_service.thumbnails(page.items)  # made in parallel, cached
        except (OSError, AtelierError) as exc:
            raise gr.Error("Some images changed while loading; press Refresh.") from exc
        shown = [(str(path), item.relative.rsplit("/", 1)[-1]) for path, item in zip(thumbs, page.items, strict=True)]
        label = f"Page {page.page} of {max(page.pages, 1)} · {page.total} image(s)"
        return shown, label, page.page, [item.relative for item in page.items]

    def load(number: int, *values: Any) -> tuple[Any, ...]:
        return show(gallery_service.page(_query(*values), max(1, int(number))))

    def on_refresh(*values: Any) -> tuple[Any, ...]:
        gallery_service.refresh()
        folders = [ALL, *gallery_service.folders()]
        dates = [ALL, *gallery_service.dates()]
        return (gr.update(choices=folders), gr.update(choices=dates), *load(1, *values))

    def on_select(relatives: list[str], evt: gr.SelectData) -> tuple[Any, ...]:
        index = evt.index if isinstance(evt.index, int) else 0
        try:
            path = gallery_service.resolve(relatives[index])
        except (AtelierError, IndexError) as exc:
            raise gr.Error("That image is no longer there; press Refresh.") from exc
        return str(path), read_infotext(path) or "", str(path.parent), relatives[index], gr.Row(visible=False)

    @changes_server  # deletes a file from outputs/
    def on_delete(relative: str, number: int, *values: Any) -> tuple[Any, ...]:
        try:
            gallery_service.delete(relative or "")
        except AtelierError as exc:
            raise ui_error(exc) from exc
        gr.Info("Deleted.")
        return (None, "", "", "", gr.Row(visible=False), *load(number, *values))

    page_outputs = [thumbs, page_info, page_no, items]
    private = {"api_visibility": "private"}
    for trigger in (refresh.click, tab.select):
        trigger(on_refresh, inputs=filters, outputs=[folder, date, *page_outputs], **private)
    for control in (text, folder, date, model, sampler, seed, size):
        (control.submit if isinstance(control, (gr.Textbox, gr.Number)) else control.change)(
            lambda *v: load(1, *v), inputs=filters, outputs=page_outputs, **private)
    previous.click(lambda n, *v: load(n - 1, *v), inputs=[page_no, *filters], outputs=page_outputs, **private)
    following.click(lambda n, *v: load(n + 1, *v), inputs=[page_no, *filters], outputs=page_outputs, **private)
    selection = [full, info, location, selected_relative, confirm_row]
    thumbs.select(on_select, inputs=[items], outputs=selection, **private)
    delete.click(lambda p: gr.Row(visible=bool(p)), inputs=[selected_relative], outputs=[confirm_row], **private)
    cancel.click(lambda: gr.Row(visible=False), outputs=[confirm_row], **private)
    confirm.click(on_delete, inputs=[selected_relative, page_no, *filters], outputs=[*selection, *page_outputs],
                  **private)
    def pick(relative: str, text: str) -> tuple[str | None, str]:
        if not relative:
            return None, ""
        try:
            return str(gallery_service.resolve(relative)), text  # re-checked: the file may be gone
        except AtelierError as exc:
            raise ui_error(exc) from exc

    return GalleryTab(selected=selected_relative, info=info, send_buttons=send, pick=pick)

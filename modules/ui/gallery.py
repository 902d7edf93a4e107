"""The Gallery tab: every output, newest first, by folder and date, searchable, paged; select one to
see it full size with its parameters, send it to a tab, see its folder, or delete it (confirmed).
When outputs go per user, a signed-in user who is no admin sees only their own folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.identity import is_admin
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.gallery import GalleryPage, GalleryQuery
from modules.services.images import read_infotext, user_folder
from modules.ui import icons
from modules.ui.common import ui_error
from modules.ui.session import identity_of

ALL = "All"


@dataclass
class GalleryTab:
    selected: gr.State  # the selected image's path relative to outputs/ (server-side, not editable by the page)
    info: gr.Textbox  # its parameters text
    send_buttons: dict[str, gr.Button]
    pick: Callable[[str, str], tuple[str | None, str]]  # for "send to": (checked absolute path, infotext)


@dataclass(frozen=True)
class _Filters:
    """The search controls, read by name into a :class:`GalleryQuery`."""

    text: gr.Textbox
    folder: gr.Dropdown
    date: gr.Dropdown
    model: gr.Textbox
    sampler: gr.Textbox
    seed: gr.Number
    size: gr.Textbox

    def components(self) -> set[Any]:
        return {self.text, self.folder, self.date, self.model, self.sampler, self.seed, self.size}

    def query(self, values: dict[Any, Any], within: str = "") -> GalleryQuery:
        folder, date, seed = values[self.folder], values[self.date], values[self.seed]
        return GalleryQuery(text=values[self.text] or "", folder="" if folder in ("", ALL, None) else folder,
                            date="" if date in ("", ALL, None) else date, model=(values[self.model] or "").strip(),
                            sampler=(values[self.sampler] or "").strip(), seed=None if seed in (None, "") else int(seed),
                            size=(values[self.size] or "").strip(), within=within)


def own_folder(services: Services, request: gr.Request | None) -> str:
    """The one folder under outputs/ the viewer may see: their own when outputs go per user and
    they are no admin; "" (everything) otherwise."""
    identity = identity_of(request)
    if is_admin(identity) or not services.options.get().outputs_per_user:
        return ""
    assert identity is not None
    return user_folder(identity.name)


@dataclass(frozen=True)
class _View:
    """The page of thumbnails and the selected image's panel."""

    thumbs: gr.Gallery
    page_info: gr.Markdown
    previous: gr.Button
    following: gr.Button
    full: gr.Image
    info: gr.Textbox
    location: gr.Textbox
    send: dict[str, gr.Button]
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    cancel: gr.Button


def _build_filters() -> tuple[_Filters, gr.Button]:
    with gr.Row():
        folder = gr.Dropdown([ALL], value=ALL, label="Folder", elem_id="gallery_folder")
        date = gr.Dropdown([ALL], value=ALL, label="Date", elem_id="gallery_date")
        text = gr.Textbox(label="Search prompts (press Enter)", placeholder="Type words, then press Enter",
                          elem_id="gallery_search", scale=2)
        refresh = gr.Button(f"{icons.REFRESH} Refresh", elem_id="gallery_refresh", scale=0)
    with gr.Accordion("Search by parameter", open=False):
        with gr.Row():
            model = gr.Textbox(label="Model", elem_id="gallery_model")
            sampler = gr.Textbox(label="Sampler", elem_id="gallery_sampler")
            seed = gr.Number(label="Seed", precision=0, value=None, elem_id="gallery_seed")
            size = gr.Textbox(label="Size (WxH)", elem_id="gallery_size")
    return _Filters(text, folder, date, model, sampler, seed, size), refresh


def _build_view() -> _View:
    with gr.Row():
        with gr.Column(scale=3):
            thumbs = gr.Gallery(label="Images", columns=6, height=560, allow_preview=False, elem_id="gallery_images")
            with gr.Row():
                previous = gr.Button("\u2039 Previous", size="sm", elem_id="gallery_prev")
                page_info = gr.Markdown("", elem_id="gallery_page_info")
                following = gr.Button("Next \u203a", size="sm", elem_id="gallery_next")
        with gr.Column(scale=2):
            full = gr.Image(label="Selected", type="filepath", interactive=False, elem_id="gallery_full", height=420)
            info = gr.Textbox(label="Parameters", lines=5, interactive=False, buttons=["copy"], elem_id="gallery_info")
            location = gr.Textbox(label="Folder", interactive=False, elem_id="gallery_folder_path", buttons=["copy"])
            with gr.Row():
                send = {t: gr.Button(f"Send to {t}", size="sm", elem_id=f"gallery_send_to_{t}")
                        for t in ("txt2img", "img2img", "inpaint", "extras")}
            delete = gr.Button(f"{icons.DELETE} Delete", size="sm", variant="stop", elem_id="gallery_delete")
            with gr.Row(visible=False) as confirm_row:
                confirm = gr.Button("Yes, delete this image", variant="stop", size="sm", elem_id="gallery_delete_confirm")
                cancel = gr.Button("Cancel", size="sm", elem_id="gallery_delete_cancel")
    return _View(thumbs, page_info, previous, following, full, info, location, send, delete, confirm_row, confirm,
                 cancel)


def build_tab(services: Services, tab: gr.Tab) -> GalleryTab:
    filters, refresh = _build_filters()
    view = _build_view()
    page_no = gr.State(1)
    items = gr.State([])  # relative paths on the page
    selected_relative = gr.State("")
    pages = _Pages(services, filters, view, page_no, items)
    private = {"api_visibility": "private"}
    searched = filters.components()
    for trigger in (refresh.click, tab.select):
        trigger(pages.on_refresh, inputs=searched, outputs={filters.folder, filters.date, *pages.outputs}, **private)
    for control in (filters.text, filters.folder, filters.date, filters.model, filters.sampler, filters.seed,
                    filters.size):
        (control.submit if isinstance(control, (gr.Textbox, gr.Number)) else control.change)(
            pages.first, inputs=searched, outputs=pages.outputs, **private)
    view.previous.click(pages.previous, inputs={page_no, *searched}, outputs=pages.outputs, **private)
    view.following.click(pages.following, inputs={page_no, *searched}, outputs=pages.outputs, **private)
    _wire_selection(services, view, pages, items, selected_relative, page_no)
    return GalleryTab(selected=selected_relative, info=view.info, send_buttons=view.send,
                      pick=lambda relative, text: _pick(services, relative, text))


class _Pages:
    """Loading a page of thumbnails for the filters' values (handlers take Gradio's named values)."""

    def __init__(self, services: Services, filters: _Filters, view: _View, page_no: gr.State, items: gr.State) -> None:
        self.services = services
        self.gallery = services.gallery
        self.filters = filters
        self.view = view
        self.page_no = page_no
        self.items = items
        self.outputs = {view.thumbs, view.page_info, page_no, items}

    def load(self, number: int, values: dict[Any, Any], request: gr.Request | None) -> dict[Any, Any]:
        within = own_folder(self.services, request)
        page: GalleryPage = self.gallery.page(self.filters.query(values, within), max(1, int(number)))
        try:
            thumbs = self.gallery.thumbnails(page.items)  # made in parallel, cached
        except (OSError, AtelierError) as exc:
            raise gr.Error("Some images changed while loading; press Refresh.") from exc
        shown = [(str(path), item.caption) for path, item in zip(thumbs, page.items, strict=True)]
        label = f"Page {page.page} of {max(page.pages, 1)} · {page.total} image(s)"
        return {self.view.thumbs: shown, self.view.page_info: label, self.page_no: page.page,
                self.items: [item.relative for item in page.items]}

    def first(self, values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        return self.load(1, values, request)

    def previous(self, values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        return self.load(values[self.page_no] - 1, values, request)

    def following(self, values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        return self.load(values[self.page_no] + 1, values, request)

    def on_refresh(self, values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        self.gallery.refresh()
        within = own_folder(self.services, request)
        return {self.filters.folder: gr.update(choices=[ALL, *self.gallery.folders(within)]),
                self.filters.date: gr.update(choices=[ALL, *self.gallery.dates(within)]),
                **self.load(1, values, request)}


def _wire_selection(services: Services, view: _View, pages: _Pages, items: gr.State, selected: gr.State,
                    page_no: gr.State) -> None:
    """Selecting an image shows it with its parameters; Delete asks, and the confirmed delete removes it."""
    gallery_service = services.gallery
    selection = {view.full, view.info, view.location, selected, view.confirm_row}

    def on_select(relatives: list[str], evt: gr.SelectData) -> dict[Any, Any]:
        index = evt.index if isinstance(evt.index, int) else 0
        try:
            path = gallery_service.resolve(relatives[index])
        except (AtelierError, IndexError) as exc:
            raise gr.Error("That image is no longer there; press Refresh.") from exc
        return {view.full: str(path), view.info: read_infotext(path) or "", view.location: str(path.parent),
                selected: relatives[index], view.confirm_row: gr.Row(visible=False)}

    @changes_server  # deletes a file from outputs/
    def on_delete(values: dict[Any, Any], request: gr.Request) -> dict[Any, Any]:
        try:
            gallery_service.delete(values[selected] or "")
        except AtelierError as exc:
            raise ui_error(exc) from exc
        gr.Info("Deleted.")
        return {view.full: None, view.info: "", view.location: "", selected: "",
                view.confirm_row: gr.Row(visible=False), **pages.load(values[page_no], values, request)}

    private = {"api_visibility": "private"}
    view.thumbs.select(on_select, inputs=[items], outputs=selection, **private)
    view.delete.click(lambda p: gr.Row(visible=bool(p)), inputs=[selected], outputs=[view.confirm_row], **private)
    view.cancel.click(lambda: gr.Row(visible=False), outputs=[view.confirm_row], **private)
    view.confirm.click(on_delete, inputs={selected, page_no, *pages.filters.components()},
                       outputs=selection | pages.outputs, **private)


def _pick(services: Services, relative: str, text: str) -> tuple[str | None, str]:
    """For "send to": the checked absolute path of the selected image, and its infotext."""
    if not relative:
        return None, ""
    try:
        return str(services.gallery.resolve(relative)), text  # re-checked: the file may be gone
    except AtelierError as exc:
        raise ui_error(exc) from exc

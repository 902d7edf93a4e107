"""The Queue tab's history: the viewer's ended jobs (an admin's: everyone's), newest first, searched
and paged; the picked one's files and parameters, "Run again", "Send to" a tab, and delete (with
its files, after a second click)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.identity import Identity
from modules.server_effects import deletes_own_files
from modules.services.container import Services
from modules.services.images import read_infotext
from modules.services.job_store import StoredFile, StoredJob
from modules.services.queue_view import HistoryEntry
from modules.ui import icons
from modules.ui.common import ui_error
from modules.ui.session import identity_of

HEADERS = ["When", "Owner", "State", "Kind", "Prompt", "Images"]
COLUMN_WIDTHS = ["15%", "12%", "11%", "9%", "45%", "8%"]
PAGE_SIZE = 20
SEND_TARGETS = ("txt2img", "img2img", "inpaint")
Updates = dict[Any, Any]


def short_prompt(prompt: str, limit: int = 80) -> str:
    text = " ".join(prompt.split()) or "(empty prompt)"
    return text if len(text) <= limit else text[:limit].rstrip() + "…"


def when_text(job: StoredJob) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.finished_at or job.submitted_at))


def history_rows(items: Sequence[HistoryEntry]) -> list[list[object]]:
    """The history table's rows, in the order given (newest first)."""
    return [[when_text(h.job), h.job.owner or "—", h.job.state.value, h.job.kind, short_prompt(h.job.request.prompt),
             sum(1 for f in h.job.files if f.index >= 0)] for h in items]


def history_choices(items: Sequence[HistoryEntry]) -> list[tuple[str, str]]:
    return [(f"{when_text(h.job)} · {h.job.state.value} · {short_prompt(h.job.request.prompt, 40)}", h.job.id)
            for h in items]


def page_text(page: int, total: int) -> str:
    return f"Page {page} of {pages_of(total)} · {total} job(s)"


def pages_of(total: int) -> int:
    return max(1, -(-total // PAGE_SIZE))


def shown_files(job: StoredJob) -> list[StoredFile]:
    """The job's files still on disk: the grid first, then the images in order."""
    return sorted((f for f in job.files if f.path.is_file()), key=lambda f: f.index)


def picked_of(job: StoredJob) -> dict[str, Any]:
    """What "Send to" needs of a job: its first image and its parameters (the stored infotext, else
    the first file's PNG parameters)."""
    files = shown_files(job)
    image = next((f for f in files if f.index >= 0), files[0] if files else None)
    infotext = job.infotext or (read_infotext(image.path) if image is not None else None) or ""
    return {"id": job.id, "path": str(image.path) if image is not None else None, "infotext": infotext}


def send_pick(picked: dict[str, Any] | None) -> tuple[str | None, str]:
    """(image path, infotext) of the picked job for the send wiring; a file deleted since is left out."""
    if not picked:
        return None, ""
    path = picked.get("path")
    return (path if path and Path(path).is_file() else None), picked.get("infotext") or ""


@dataclass(frozen=True)
class AfterRun:
    """How the queue part of the tab refreshes after "Run again" queued a job."""

    outputs: set[Any]
    updates: Callable[[Identity | None], Updates]


@dataclass(frozen=True)
class HistorySection:
    search: gr.Textbox
    refresh: gr.Button
    table: gr.Dataframe
    page_info: gr.Markdown
    previous: gr.Button
    following: gr.Button
    pick: gr.Dropdown
    files: gr.Gallery
    info: gr.Textbox
    run_again: gr.Button
    send: dict[str, gr.Button]
    delete: gr.Button
    confirm_row: gr.Row
    confirm: gr.Button
    keep: gr.Button
    page_no: gr.State
    picked: gr.State

    def page_outputs(self) -> set[Any]:
        return {self.table, self.page_info, self.pick, self.page_no, *self.selection_outputs()}

    def selection_outputs(self) -> set[Any]:
        return {self.files, self.info, self.picked, self.confirm_row}


def build_section() -> HistorySection:
    with gr.Row():
        search = gr.Textbox(label="Search prompts (press Enter)", max_lines=1, scale=4, elem_id="queue_history_search")
        refresh = gr.Button(f"{icons.REFRESH} Refresh", size="sm", scale=0, elem_id="queue_history_refresh")
    table = gr.Dataframe(value=[], headers=HEADERS, interactive=False, wrap=True, column_widths=COLUMN_WIDTHS,
                         elem_id="queue_history_table", elem_classes="atelier-dataframe")
    with gr.Row():
        previous = gr.Button("\u2039 Previous", size="sm", elem_id="queue_history_prev")
        page_info = gr.Markdown("", elem_id="queue_history_page_info")
        following = gr.Button("Next \u203a", size="sm", elem_id="queue_history_next")
    pick = gr.Dropdown([], label="Ended job", value=None, allow_custom_value=True, elem_id="queue_history_pick")
    with gr.Row():
        files = gr.Gallery(label="Its files", columns=6, height=260, allow_preview=True,
                           elem_id="queue_history_files", scale=3)
        info = gr.Textbox(label="Parameters", lines=6, interactive=False, buttons=["copy"],
                          elem_id="queue_history_info", scale=2)
    with gr.Row():
        run_again = gr.Button("Run again", variant="primary", size="sm", elem_id="queue_run_again")
        send = {t: gr.Button(f"Send to {t}", size="sm", elem_id=f"queue_send_to_{t}") for t in SEND_TARGETS}
        delete = gr.Button(f"{icons.DELETE} Delete", size="sm", variant="stop", elem_id="queue_history_delete")
    with gr.Row(visible=False) as confirm_row:
        confirm = gr.Button("Yes, delete this job and its files", variant="stop", size="sm",
                            elem_id="queue_history_delete_confirm")
        keep = gr.Button("Keep it", size="sm", elem_id="queue_history_delete_cancel")
    return HistorySection(search, refresh, table, page_info, previous, following, pick, files, info, run_again, send,
                          delete, confirm_row, confirm, keep, gr.State(1), gr.State(None))


def _selection(section: HistorySection, job: StoredJob | None) -> Updates:
    if job is None:
        return {section.files: [], section.info: "", section.picked: None,
                section.confirm_row: gr.Row(visible=False)}
    items = [(str(f.path), "Grid" if f.index < 0 else f"Seed {f.seed}" if f.seed is not None else "")
             for f in shown_files(job)]
    picked = picked_of(job)
    note = f"{icons.WARNING} {job.error}\n\n" if job.error else ""
    return {section.files: items, section.info: note + picked["infotext"], section.picked: picked,
            section.confirm_row: gr.Row(visible=False)}


def _page(services: Services, section: HistorySection, viewer: Identity | None, search: str,
          number: int) -> Updates:
    """A page of the history for ``viewer``, its first job picked."""
    view = services.queue_view
    number = max(1, int(number or 1))
    items, total = view.history(viewer, search or "", PAGE_SIZE, (number - 1) * PAGE_SIZE)
    if not items and number > 1:  # past the end (jobs deleted meanwhile): the last page
        number = pages_of(total)
        items, total = view.history(viewer, search or "", PAGE_SIZE, (number - 1) * PAGE_SIZE)
    choices = history_choices(items)
    return {section.table: history_rows(items), section.page_info: page_text(number, total),
            section.page_no: number,
            section.pick: gr.update(choices=choices, value=choices[0][1] if choices else None),
            **_selection(section, items[0].job if items else None)}


def wire_section(services: Services, section: HistorySection, tab: gr.Tab, after_run: AfterRun) -> None:
    view = services.queue_view
    s = section

    def first(values: dict[Any, Any], request: gr.Request) -> Updates:
        return _page(services, s, identity_of(request), values[s.search], 1)

    def previous(values: dict[Any, Any], request: gr.Request) -> Updates:
        return _page(services, s, identity_of(request), values[s.search], values[s.page_no] - 1)

    def following(values: dict[Any, Any], request: gr.Request) -> Updates:
        number = min(values[s.page_no] + 1, 10**6)
        return _page(services, s, identity_of(request), values[s.search], number)

    def on_pick(job_id: str | None, request: gr.Request) -> Updates:
        if not job_id:
            return _selection(s, None)
        try:
            found = view.entry(identity_of(request), job_id)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return _selection(s, found.job if isinstance(found, HistoryEntry) else None)

    def on_run_again(picked: dict[str, Any] | None, request: gr.Request) -> Updates:
        viewer = identity_of(request)
        if not picked:
            raise gr.Error("Pick an ended job first.")
        try:
            job = view.run_again(viewer, picked["id"])
        except AtelierError as exc:  # a limit refused it: the message names the limit
            raise ui_error(exc) from exc
        position = services.queue.position(job)
        gr.Info(f"Queued again: position {position}." if position else "Queued again.")
        return after_run.updates(viewer)

    @deletes_own_files  # a user's own; without any sign-in, not from the network
    def on_delete(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = identity_of(request)
        picked = values[s.picked]
        if not picked:
            raise gr.Error("Pick an ended job first.")
        try:
            deleted = view.delete(viewer, picked["id"])
        except AtelierError as exc:
            raise ui_error(exc) from exc
        gr.Info(f"Deleted the job and {deleted} file(s).")
        return _page(services, s, viewer, values[s.search], values[s.page_no])

    quiet = {"api_visibility": "private", "concurrency_limit": None}
    paging = {s.search, s.page_no}
    for trigger in (tab.select, s.refresh.click, s.search.submit):
        trigger(first, inputs=paging, outputs=s.page_outputs(), show_progress="hidden", **quiet)
    s.previous.click(previous, inputs=paging, outputs=s.page_outputs(), **quiet)
    s.following.click(following, inputs=paging, outputs=s.page_outputs(), **quiet)
    s.pick.input(on_pick, inputs=[s.pick], outputs=s.selection_outputs(), **quiet)
    s.run_again.click(on_run_again, inputs=[s.picked], outputs=after_run.outputs, **quiet)
    s.delete.click(lambda p: gr.Row(visible=bool(p)), inputs=[s.picked], outputs=[s.confirm_row], **quiet)
    s.keep.click(lambda: gr.Row(visible=False), outputs=[s.confirm_row], **quiet)
    s.confirm.click(on_delete, inputs={*paging, s.picked}, outputs=s.page_outputs(), **quiet)


"""The Queue tab: every job in line (others' prompts hidden from non-admins), its owner, place,
state and ETA, refreshed while the tab is shown; cancel a job, and (admins) move one in line; the
viewer's running job with its progress and preview. Below it, the history (:mod:`queue_history`).

The pure functions here turn the queue view's entries into the table's rows and the picker's
choices; the handlers only ask :class:`~modules.services.queue_view.QueueView`, which decides what
each viewer may see and do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import AtelierError
from modules.identity import Identity, is_admin
from modules.server_effects import changes_server
from modules.services.container import Services
from modules.services.queue_view import QueueEntry
from modules.ui import icons, queue_history
from modules.ui.common import progress_html, ui_error
from modules.ui.queue_history import short_prompt
from modules.ui.session import identity_of

HEADERS = ["#", "Owner", "State", "Kind", "Prompt", "Size", "Steps", "Images", "ETA", "Progress"]
COLUMN_WIDTHS = ["5%", "11%", "9%", "8%", "30%", "9%", "6%", "7%", "7%", "8%"]
HIDDEN = "hidden"  # what a non-admin sees of another user's prompt
REFRESH_SECONDS = 2.0
TAB_LABEL = "Queue"
Updates = dict[Any, Any]


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = max(0, int(round(seconds)))
    return f"{whole // 60}:{whole % 60:02d}"


def queue_rows(entries: Sequence[QueueEntry]) -> list[list[object]]:
    """The table's rows: running jobs first (marked ▶), then the waiting ones by their place."""
    rows: list[list[object]] = []
    for e in entries:
        size = f"{e.width}x{e.height}" if e.width and e.height else ""
        progress = f"{e.progress * 100:.0f}%" + (f" ({e.step}/{e.total_steps})" if e.total_steps else "")
        rows.append(["▶" if e.state == "running" else e.position, e.owner or "—",
                     e.state + (" (pinned)" if e.pinned else ""), e.kind,
                     HIDDEN if e.prompt is None else short_prompt(e.prompt), size, e.steps or "", e.images or "",
                     eta_text(e.eta_seconds), progress if e.state == "running" else ""])
    return rows


def action_choices(entries: Sequence[QueueEntry], viewer: Identity | None) -> list[tuple[str, str]]:
    """The jobs the viewer may act on: their own, or every job for an admin."""
    admin = is_admin(viewer)
    return [(f"{'running' if e.state == 'running' else f'#{e.position}'} · {e.owner or '—'} · "
             f"{short_prompt(e.prompt or '', 40)}", e.id)
            for e in entries if e.id is not None and (e.mine or admin)]


def summary_text(entries: Sequence[QueueEntry]) -> str:
    running = sum(1 for e in entries if e.state == "running")
    waiting = len(entries) - running
    if not entries:
        return "The queue is empty."
    return f"{running} running, {waiting} waiting."


@dataclass(frozen=True)
class QueueTab:
    """What the page wires across tabs: the history's "Send to" buttons."""

    picked: gr.State  # the picked history job: {"id", "path", "infotext"}, set by the server only
    send_buttons: dict[str, gr.Button]

    @staticmethod
    def pick(picked: dict[str, Any] | None) -> tuple[str | None, str]:
        return queue_history.send_pick(picked)


@dataclass(frozen=True)
class _Line:
    """The queue part of the tab."""

    summary: gr.Markdown
    table: gr.Dataframe
    refresh: gr.Button
    progress: gr.HTML
    preview: gr.Image
    pick: gr.Dropdown
    cancel: gr.Button
    admin_row: gr.Row
    position: gr.Number
    move: gr.Button
    shown: gr.State  # (rows, choices) last sent: what a tick did not change, it does not send

    def outputs(self) -> set[Any]:
        return {self.summary, self.table, self.progress, self.preview, self.pick, self.shown}


def _build_line() -> _Line:
    with gr.Row():
        summary = gr.Markdown("", elem_id="queue_summary")
        refresh = gr.Button(f"{icons.REFRESH} Refresh", size="sm", scale=0, elem_id="queue_refresh")
    table = gr.Dataframe(value=[], headers=HEADERS, interactive=False, wrap=True, column_widths=COLUMN_WIDTHS,
                         elem_id="queue_table", elem_classes="atelier-dataframe")
    progress = gr.HTML("", elem_id="queue_progress")
    preview = gr.Image(label="Preview of your job", interactive=False, visible=False, height=256,
                       elem_id="queue_preview")
    with gr.Row():
        pick = gr.Dropdown([], label="Job", value=None, allow_custom_value=True, elem_id="queue_pick", scale=4)
        cancel = gr.Button("Cancel job", variant="stop", size="sm", scale=1, elem_id="queue_cancel")
    with gr.Row(visible=False) as admin_row:
        position = gr.Number(label="Move to position", value=1, precision=0, minimum=1, elem_id="queue_move_position")
        move = gr.Button("Move", size="sm", elem_id="queue_move")
    return _Line(summary, table, refresh, progress, preview, pick, cancel, admin_row, position, move,
                 gr.State(None))


def build_tab(services: Services, tab: gr.Tab, tabs: gr.Tabs) -> QueueTab:
    """The tab's content; call inside its ``gr.Tab`` (``tabs``: the page's tabs, for the timer)."""
    line = _build_line()
    gr.Markdown("### History")
    history = queue_history.build_section()
    _wire_line(services, line, tab, tabs)
    queue_history.wire_section(services, history, tab, after_run=_refresher(services, line))
    return QueueTab(picked=history.picked, send_buttons=history.send)


def _line_updates(services: Services, line: _Line, viewer: Identity | None, picked: str | None,
                  shown: Any) -> Updates:
    """The queue's state now; parts unchanged since the last refresh (``shown``) are skipped."""
    entries = services.queue_view.entries(viewer)
    rows, choices = queue_rows(entries), action_choices(entries, viewer)
    old_rows, old_choices = shown if shown else (None, None)
    updates: Updates = {line.summary: summary_text(entries), line.shown: (rows, choices),
                        line.table: gr.skip() if rows == old_rows else rows, line.pick: gr.skip()}
    if choices != old_choices:
        # The value is only set when the picked job is gone: a pick made while this refresh was
        # under way must not be undone by it.
        values = [value for _, value in choices]
        updates[line.pick] = (gr.update(choices=choices) if picked in values
                              else gr.update(choices=choices, value=default_pick(entries, values)))
    return updates | _own_progress(services, line, entries)


def default_pick(entries: Sequence[QueueEntry], values: Sequence[str]) -> str | None:
    """The job picked when none is: the first waiting one the viewer may act on (a running job has
    its own Interrupt button in its tab), else the running one."""
    waiting = [e.id for e in entries if e.state != "running" and e.id in values]
    return waiting[0] if waiting else (values[0] if values else None)


def _own_progress(services: Services, line: _Line, entries: Sequence[QueueEntry]) -> Updates:
    """The viewer's running job: its progress bar and live preview (nothing for others' jobs)."""
    own = next((e for e in entries if e.state == "running" and e.mine and e.id), None)
    job = services.queue.get(own.id) if own is not None and own.id else None
    if job is None:
        return {line.progress: "", line.preview: gr.update(value=None, visible=False)}
    image = job.context.preview()
    return {line.progress: progress_html(services.queue.snapshot(job)),
            line.preview: gr.update(value=image, visible=image is not None)}


def _refresher(services: Services, line: _Line) -> queue_history.AfterRun:
    return queue_history.AfterRun(outputs=line.outputs(),
                                  updates=lambda viewer: _line_updates(services, line, viewer, None, None))


def _wire_line(services: Services, line: _Line, tab: gr.Tab, tabs: gr.Tabs) -> None:
    view = services.queue_view
    timer = gr.Timer(REFRESH_SECONDS, active=False)

    def refresh(values: dict[Any, Any], request: gr.Request) -> Updates:
        return _line_updates(services, line, identity_of(request), values[line.pick], values[line.shown])

    def on_show(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = identity_of(request)
        return (_line_updates(services, line, viewer, values[line.pick], None)
                | {line.admin_row: gr.Row(visible=is_admin(viewer))})

    def on_tab(evt: gr.SelectData) -> gr.Timer:
        return gr.Timer(active=evt.value == TAB_LABEL)  # ticks only while the Queue tab is shown

    def on_cancel(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = identity_of(request)
        job_id = values[line.pick]
        if not job_id:
            raise gr.Error("Pick a job first.")
        try:
            view.cancel(viewer, job_id)
        except AtelierError as exc:
            raise ui_error(exc) from exc
        gr.Info("Cancelled.")
        return _line_updates(services, line, viewer, None, None)

    @changes_server  # reorders everyone's jobs: admins only (the guard refuses users)
    def on_move(values: dict[Any, Any], request: gr.Request) -> Updates:
        viewer = identity_of(request)
        if not is_admin(viewer):
            raise gr.Error("Only admins may reorder the queue.")
        job_id, position = values[line.pick], values[line.position]
        if not job_id or not position or int(position) < 1:
            raise gr.Error("Pick a waiting job and a position from 1.")
        try:
            view.move(viewer, job_id, int(position))
        except AtelierError as exc:
            raise ui_error(exc) from exc
        return _line_updates(services, line, viewer, job_id, None)

    inputs = {line.pick, line.shown}
    quiet = {"api_visibility": "private", "show_progress": "hidden", "concurrency_limit": None}
    timer.tick(refresh, inputs=inputs, outputs=line.outputs(), queue=False, api_visibility="private",
               show_progress="hidden")
    tabs.select(on_tab, outputs=[timer], queue=False, api_visibility="private", show_progress="hidden")
    tab.select(on_show, inputs=inputs, outputs=line.outputs() | {line.admin_row}, **quiet)
    line.refresh.click(on_show, inputs=inputs, outputs=line.outputs() | {line.admin_row}, **quiet)
    line.cancel.click(on_cancel, inputs=inputs, outputs=line.outputs(), **quiet)
    line.move.click(on_move, inputs={*inputs, line.position}, outputs=line.outputs(), **quiet)

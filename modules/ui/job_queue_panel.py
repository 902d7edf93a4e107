"""A generating tab's view of the job queue: the user's waiting jobs (each cancellable), and the
stream of one job's progress, live preview and results into the tab's result components.

Every generating tab shows the same list: the signed-in user's jobs still waiting, with their place
in line and the start of their prompt. The stream serves both a Generate click and a page that is
opened (or reloaded) while the user's job runs, so a second tab shows what the first one started.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from modules.params import GenerationRequest, GenerationResult
from modules.services.job_types import ExtrasJob, Job, ModelSwitch, ProgressSnapshot
from modules.services.queue_contract import JobQueueContract
from modules.ui import escape
from modules.ui.common import POLL_SECONDS, progress_html, wait_for
from modules.ui.session import user_of

Updates = dict[Any, Any]  # an event's outputs by component
PROMPT_SHOWN = 40  # characters of a waiting job's prompt shown in the list


@dataclass(frozen=True)
class QueuePanel:
    """The user's waiting jobs: a list with each one's place in line, and a picker with Cancel."""

    listing: gr.HTML
    pick: gr.Dropdown
    cancel: gr.Button

    def outputs(self) -> list[Any]:
        return [self.listing, self.pick, self.cancel]


@dataclass(frozen=True)
class JobView:
    """The components a job's progress and results go to."""

    job_id: gr.State
    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    info: gr.Textbox
    infos: gr.State
    panel: QueuePanel

    def outputs(self) -> list[Any]:
        return [self.job_id, self.progress, self.preview, self.gallery, self.info, self.infos, *self.panel.outputs()]


def build_panel(prefix: str) -> QueuePanel:
    listing = gr.HTML("", elem_id=f"{prefix}_queue", elem_classes="job-queue")
    with gr.Row():
        pick = gr.Dropdown([], label="Waiting job", visible=False, elem_id=f"{prefix}_queue_pick", scale=4)
        cancel = gr.Button("Cancel waiting job", size="sm", visible=False, elem_id=f"{prefix}_queue_cancel", scale=1)
    return QueuePanel(listing, pick, cancel)


def describe(job: Job) -> str:
    """What a waiting job is, in a few words: the start of its prompt for a generation."""
    spec = job.spec
    if isinstance(spec, GenerationRequest):
        text = spec.prompt.strip() or "(empty prompt)"
        return text if len(text) <= PROMPT_SHOWN else text[:PROMPT_SHOWN].rstrip() + "…"
    if isinstance(spec, ModelSwitch):
        return f"load checkpoint {spec.checkpoint}"
    return "Extras" if isinstance(spec, ExtrasJob) else "unload checkpoint"


def place_in_line(job_queue: JobQueueContract, job: Job) -> int:
    """The job's place counting the running jobs first: 2 for the job right behind the one running."""
    position = job_queue.position(job)
    return position + len(job_queue.running()) if position else 0


def waiting_ids(job_queue: JobQueueContract, user: str | None) -> tuple[str, ...]:
    return tuple(job.id for job in job_queue.waiting(user))


def panel_updates(panel: QueuePanel, job_queue: JobQueueContract, user: str | None) -> Updates:
    """The list, picker and Cancel button for ``user``'s waiting jobs now (hidden when none wait)."""
    rows = [(place_in_line(job_queue, job), describe(job), job.id) for job in job_queue.waiting(user)]
    rows = [row for row in rows if row[0] > 0]  # one that started meanwhile is no longer waiting
    listing = "".join(f'<div class="job-queue-row">Queued: position {place} — {escape.text(text)}</div>'
                      for place, text, _ in rows)
    choices = [(f"{place}: {text}", job_id) for place, text, job_id in rows]
    return {panel.listing: listing,
            panel.pick: gr.update(choices=choices, value=choices[0][1] if choices else None, visible=bool(rows)),
            panel.cancel: gr.update(visible=bool(rows))}


def wire_cancel(panel: QueuePanel, job_queue: JobQueueContract) -> None:
    """Cancel ends the picked waiting job unrun; only its own user (or anyone, with shared jobs) may."""

    def on_cancel(job_id: str | None, request: gr.Request) -> Updates:
        user = user_of(request)
        if not job_id or not job_queue.cancel(job_id, user):
            gr.Warning("That job is no longer waiting: it started or ended already.")
        return panel_updates(panel, job_queue, user)

    panel.cancel.click(on_cancel, inputs=[panel.pick], outputs=panel.outputs(), concurrency_limit=None,
                       api_visibility="private")


def gallery_of(result: GenerationResult) -> tuple[list[tuple[Any, str]], list[dict[str, Any]]]:
    """The gallery's items (the grid first) and, per item, its seed, infotext and file."""
    shown = ([result.grid] if result.grid is not None else []) + list(result.images)
    # An image that could not be saved (disk full) is shown from its bytes.
    items = [(str(img.path) if img.path else Image.open(io.BytesIO(img.png)),
              "Grid" if img.index < 0 else f"Seed {img.seed}") for img in shown]
    infos = [{"seed": img.seed, "infotext": img.infotext, "path": str(img.path) if img.path else None}
             for img in shown]
    return items, infos


def progress_updates(view: JobView, job_id: str | None, snapshot: ProgressSnapshot, image: Any) -> Updates:
    return {view.job_id: job_id, view.progress: progress_html(snapshot),
            view.preview: gr.update(value=image, visible=image is not None)}


def result_updates(view: JobView, result: GenerationResult) -> Updates:
    """The finished job's images and parameters (a warning per note of the job)."""
    for note in result.warnings:
        gr.Info(escape.text(note))  # warnings quote prompts and file names
    items, infos = gallery_of(result)
    note = "Interrupted: kept the images finished before the stop." if result.interrupted else ""
    return {view.job_id: None, view.progress: note, view.preview: gr.update(value=None, visible=False),
            view.gallery: items, view.info: infos[0]["infotext"] if infos else "", view.infos: infos}


def watch(view: JobView, job_queue: JobQueueContract, job: Job, user: str | None) -> Iterator[Updates]:
    """Stream ``job`` into the view: the waiting list while it waits (the progress shown belongs to
    the job ahead), then its progress and preview; the caller reads ``job.future`` after."""
    listed: tuple[str, ...] | None = None
    for snapshot, image in wait_for(job, job_queue):
        updates: Updates = {}
        if (now := waiting_ids(job_queue, user)) != listed:
            listed = now
            updates |= panel_updates(view.panel, job_queue, user)
        if snapshot.queue_position == 0:
            updates |= progress_updates(view, job.id, snapshot, image)
        if updates:
            yield updates
    yield panel_updates(view.panel, job_queue, user)


def ended_unrun(job: Job) -> bool:
    """Whether a finished job never ran (cancelled or dropped while it waited): it has no results to show."""
    return job.context.snapshot(job.id, job.status, 0).elapsed_seconds == 0.0


def tab_of(request: GenerationRequest) -> str:
    """The generating tab a request came from: its form shows the job after a reload."""
    if request.init_image is None:
        return "txt2img"
    return "inpaint" if request.mask is not None else "img2img"


def own_job(job_queue: JobQueueContract, user: str | None, tab: str) -> Job | None:
    """The user's oldest running job from ``tab``, else the next one waiting (another user's: never)."""
    def mine(job: Job) -> bool:
        return isinstance(job.spec, GenerationRequest) and tab_of(job.spec) == tab and job_queue.may_control(job, user)

    return next((job for job in (*job_queue.running(), *job_queue.waiting(user)) if mine(job)), None)


def wire_follow(view: JobView, job_queue: JobQueueContract, tab: str) -> None:
    """On page load (a reload, a second tab): the user's running and waiting jobs from this tab,
    followed one after another into the view, as on the page that started them."""

    def follow(request: gr.Request) -> Iterator[Updates]:
        user = user_of(request)
        yield panel_updates(view.panel, job_queue, user)
        seen: set[str] = set()
        while (job := own_job(job_queue, user, tab)) is not None:
            if job.id in seen:  # a waiting job cancelled but not yet gone, or the last one ending
                time.sleep(POLL_SECONDS)
                continue
            seen.add(job.id)
            yield from watch(view, job_queue, job, user)
            try:
                result = job.future.result()
            except Exception:  # noqa: BLE001 - the page that started it reports its error
                continue
            if isinstance(result, GenerationResult) and not ended_unrun(job):
                yield result_updates(view, result)

    gr.on(None, follow, inputs=None, outputs=view.outputs(), concurrency_limit=None, show_progress="hidden",
          api_visibility="private")
